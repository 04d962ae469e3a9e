"""The full scenario the firmware's heap is measured and budgeted with (issue 13): one
simulated board with every payment source and sync on, driven through a working day:

  coin wash, card payment, QR token (all offline: a backlog) -> network up, the backlog
  synced to a real Mosquitto (TLS or plain MQTT) and acknowledged by the server -> a remote
  start, a price push and a blacklist push from the server -> everything acknowledged.

`run(...)` returns a `Result`: whether every step did what it should with no reset and no
MemoryError, and the firmware's live GC heap at the end (after a collection). `make bench`
(host_tools/bench/heap.py) bisects the smallest heap it passes in; tests/test_heap_budget.py
runs it at the budget under the 32-bit interpreter.
"""

import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

from host_tools.sim.client import SimBoard, SimClient, SimError

ROOT = Path(__file__).resolve().parents[2]
SITE_KEY = bytes(range(32))  # the tests' site key
DEVICE = "sim-0001"
UID = bytes.fromhex("04a1b2c3")


class Result:
    def __init__(self):
        self.ok = False
        self.step = None  # the step that failed
        self.error = None
        self.live = None  # firmware's live heap after the scenario (bytes)
        self.baseline = None  # the simulator's own share (and what was set aside)
        self.boots = None
        self.after = {}  # step -> firmware's live heap when it was done (bytes)
        self.oom = False  # it failed for want of memory (else: a timeout, a refusal)

    def __repr__(self):
        return (f"Result(ok={self.ok}, step={self.step!r}, error={self.error!r}, "
                f"live={self.live})")


@contextlib.contextmanager
def site(tmp):
    """A Mosquitto broker (plain and TLS ports) and the ledger server on SQLite."""
    from host_tools import broker as B
    from host_tools.server.service import Server

    tmp = Path(tmp)
    B.init(tmp / "broker", SITE_KEY, (DEVICE,))
    broker = B.Broker(tmp / "broker").start()
    server = None
    try:
        server = Server(f"sqlite:///{tmp}/ledger.db", SITE_KEY,
                        f"mqtt://127.0.0.1:{broker.port}", log=lambda *a: None).start()
        yield broker, server
    finally:
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop()
        broker.stop()


def card_image(balance=5000):
    """An issued card (the site's card key), as `washpay sim ctl card tap FILE` takes it."""
    from host_tools import wallet as W

    sim_dir = str(ROOT / "boards" / "sim")
    if sim_dir not in sys.path:
        sys.path.insert(0, sim_dir)
    from sim_mfrc522 import blank_blocks  # the simulator's card model (plain Python)

    blocks = blank_blocks(UID)
    for b, data in W.issue_blocks(W.site_card_key(SITE_KEY), UID, balance, "").items():
        blocks[16 * b : 16 * b + 16] = data
    return {"uid": UID.hex(), "blocks": [blocks[16 * i : 16 * i + 16].hex() for i in range(64)]}


SUBSYSTEMS = ("card", "qr", "display", "sync")  # what `without` can leave out


def prepare(state, broker, tls, without=(), files=None):
    """The board's factory files: config with sync on, the broker's CA, the site key;
    `without`: subsystems the board does not have (no reader pins, no scanner pins, no
    display, no broker), to measure what each one costs; `files`: {name: text} more of
    them (a main.py there runs instead of the firmware's)."""
    state = Path(state)
    prov = state / "provision"
    prov.mkdir(parents=True)
    url = (f"mqtts://127.0.0.1:{broker.tls_port}" if tls
           else f"mqtt://127.0.0.1:{broker.port}")
    cfg = {"device_id": DEVICE, "broker": url,
           "sync": {"keepalive_s": 10, "backoff_min_ms": 200, "backoff_max_ms": 1000},
           "card": {"repeat_ms": 0}}
    if "sync" in without:
        del cfg["broker"], cfg["sync"]
        tls = False
    (prov / "config.json").write_text(json.dumps(cfg))
    board = json.loads((ROOT / "boards" / "sim" / "board.json").read_text())
    gone = {"card": ("card_cs", "card_rst"), "qr": ("qr_tx", "qr_rx")}
    for part in without:
        for pin in gone.get(part, ()):
            del board["pins"][pin]
    if "display" in without:
        del board["display"]
    (prov / "board.json").write_text(json.dumps(board))
    if tls:
        shutil.copy(broker.dir / "ca.der", prov / "broker_ca.der")
    for name, text in (files or {}).items():
        (prov / name).write_text(text)
    (state / "site.key").write_text(SITE_KEY.hex() + "\n")
    (state / "site.key").chmod(0o600)


def _sync(st):
    return (st.get("firmware") or {}).get("sync") or {}


def _uploaded(st):
    return _sync(st).get("acked") == (st.get("journal") or {}).get("last_seq")


def _end_cycle(sim):
    sim.call("washer", state="idle")
    sim.wait_for(lambda s: s["state"] in ("idle", "credit"), what="the cycle's end")
    sim.call("washer", state="auto")


def _command(server, kind, **args):
    from host_tools.server import commands as C

    payload, cid = C.build(SITE_KEY, DEVICE, kind, **args)
    mark = server.send_command(DEVICE, cid.hex(), kind, payload, args)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for r in server.results[mark:]:
            if r.get("cmd") == cid.hex():
                return r
        time.sleep(0.05)
    raise SimError(f"no reply to the {kind} command within 20 s")


def steps(sim, server, without=()):
    """The scenario, step by step: yields each step's name before it runs (the steps of a
    subsystem in `without` are left out)."""
    yield "boot"
    sim.wait_ready(timeout=30)
    sim.call("net", state="down")
    yield "coin wash"
    for coin in (200, 100, 50):
        sim.insert_coin(coin, timeout=15)
    sim.select_program("standard")
    sim.call("button", name="start")
    sim.wait_for(lambda s: s["state"] == "running", timeout=15, what="running")
    _end_cycle(sim)
    if "card" not in without:
        yield from _card_step(sim)
    if "qr" not in without:
        yield from _qr_step(sim)
    if "sync" not in without:
        yield from _sync_steps(sim, server)


def _card_step(sim):
    yield "card payment"
    sim.call("card", action="tap", image=card_image())
    sim.wait_for(lambda s: s["state"] == "running", timeout=15, what="paid by card")
    sim.call("card", action="remove")
    _end_cycle(sim)


def _qr_step(sim):
    from host_tools import token as T

    yield "QR token"
    sim.wait_for(lambda s: ((s.get("firmware") or {}).get("qr") or {})
                 .get("scanner", {}).get("reading"), timeout=20, what="the scanner")
    text, _ = T.issue_token(SITE_KEY, DEVICE, "quick", 1800)
    deadline = time.monotonic() + 10
    while not sim.call("qr", text=text).get("sent"):
        if time.monotonic() > deadline:
            raise SimError("the scanner never sent the token")
        time.sleep(0.2)
    sim.wait_for(lambda s: s["state"] == "running", timeout=15, what="started by the token")
    _end_cycle(sim)


def _sync_steps(sim, server):
    yield "backlog synced"
    sim.call("net", state="up")
    sim.wait_for(lambda s: _sync(s).get("link") == "up", timeout=40, what="online")
    sim.wait_for(_uploaded, timeout=40, what="the backlog acknowledged")
    yield "remote start"
    res = _command(server, "start", program="quick")
    if res.get("result") != "started":
        raise SimError(f"remote start: {res}")
    sim.wait_for(lambda s: s["state"] == "running", timeout=15, what="the remote start")
    _end_cycle(sim)
    yield "price push"
    res = _command(server, "price", prices={"quick": 300})
    if res.get("result") != "done":
        raise SimError(f"price push: {res}")
    yield "blacklist push"
    res = _command(server, "blacklist-add", cards=[("04d5e6f7", "lost", 1_780_000_000)])
    if res.get("result") != "done":
        raise SimError(f"blacklist push: {res}")
    yield "all acknowledged"
    sim.wait_for(_uploaded, timeout=30, what="everything acknowledged")


def _live(sim, samples=3):
    """The firmware's live heap: the least of a few collections 50 ms apart (a collection
    keeps what a stale pointer on the stack still names: a single one varies by ~1 KiB)."""
    least = None
    for i in range(samples):
        if i:
            time.sleep(0.05)
        h = sim.call("heap")
        n = h["alloc"] - h["sim_baseline"]
        least = n if least is None else min(least, n)
    return least


class OutOfMemory(Exception):
    """The firmware ran out of heap, crashed or reset: the run fails at once (SimClient's
    polls swallow SimError, not this)."""


class WatchedClient(SimClient):
    """A control-channel client whose every status poll also reads the console log: a
    MemoryError, a traceback, a crash or a reset ends the run at once instead of at a
    step's timeout."""

    def __init__(self, state):
        super().__init__(state)
        self._seen = 0

    def status(self):
        log = self.state / "console.log"
        if log.exists():
            with open(log, "rb") as f:
                f.seek(max(0, self._seen - 64))  # a word cut in two by the last read
                text = f.read()
                self._seen = f.tell()
            # any traceback: the firmware survived an exception it should not have had
            for bad in (b"MemoryError", b"memory allocation failed", b"crashed; resetting",
                        b"Traceback"):
                if bad in text:
                    at = text.index(bad)
                    what = text[at : at + 600].decode(errors="replace").strip()
                    raise OutOfMemory(f"the firmware ran out of memory or crashed: {what}")
        st = super().status()
        if st.get("boots", 1) > 1:
            raise OutOfMemory("the board reset during the scenario")
        return st


def attempt(tmp, tries=3, **kw):
    """`run` until it passes or fails for want of memory, at most `tries` times: a failure
    of another kind (a coin train mistimed on a loaded machine, an MQTT ack late) must not
    pass for a heap too small. The last Result."""
    for i in range(tries):
        r = run(Path(tmp) / f"try{i}", **kw)
        if r.ok or r.oom:
            break
    return r


def run(tmp, firmware=None, micropython=None, fw_heap=None, tls=True, heap="1m",
        site_rig=None, without=(), heap_map=False, files=None):
    """Run the scenario once on a fresh board; a Result. `firmware`: None (source), a
    directory of .mpy, or a .romfs image; `fw_heap`: the firmware's own GC heap ("96k");
    `site_rig`: (broker, server) to share between runs, else one of its own; `heap_map`:
    the firmware's heap block map and qstr figures at the end, in STATE/console.log;
    `files`: more factory files (prepare). `heap`: the interpreter's whole heap; what the
    firmware does not get is one block set aside that every collection scans (0.8 ms a
    collection at 3 MiB on this host, a cost a board does not have): no larger than needed."""
    tmp = Path(tmp)
    res = Result()
    with contextlib.ExitStack() as stack:
        if site_rig is None:
            site_rig = stack.enter_context(site(tmp / "site"))
        broker, server = site_rig
        state = tmp / "st"
        prepare(state, broker, tls, without, files)
        sim = SimBoard(state, heap=heap, firmware=firmware, micropython=micropython,
                       fw_heap=fw_heap, log=tmp / "sim.log")
        sim.client = WatchedClient(state)
        try:
            sim.start()
            for step in steps(sim, server, without):
                if res.step is not None:
                    res.after[res.step] = _live(sim)
                res.step = step
            res.after[res.step] = _live(sim)
            res.step = None
            st = sim.status()
            res.boots = st.get("boots")
            res.live = _live(sim, 5)
            h = sim.call("heap", map=heap_map)
            res.baseline = h["sim_baseline"]
            sim.status()
            res.ok = True
        except (SimError, OutOfMemory, OSError, KeyError, TypeError) as e:
            res.error = str(e)[:700]
            res.oom = "MemoryError" in str(e) or "memory allocation failed" in str(e)
        finally:
            sim.stop()
    return res

