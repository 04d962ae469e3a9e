"""Sync on the simulated board: the whole firmware (washpay.app) under the real micropython,
driven through the control channel, uploading to a real Mosquitto (TLS, per-device
credentials) and the real `washpay server` ingest."""

import contextlib
import json
import shutil
import time
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from sync_env import SITE_KEY, MicroPythonScript, ledger, make_broker, sync_of, write_site_key

from host_tools.server.service import Server
from host_tools.sim.client import SimBoard

pytestmark = pytest.mark.device

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "boards" / "sim"
QUIET = lambda *a: None  # noqa: E731
FAST = {"keepalive_s": 5, "backoff_min_ms": 200, "backoff_max_ms": 1500,
        "ack_timeout_ms": 4000}


@pytest.fixture
def broker(tmp_path):
    b = make_broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def server(broker, tmp_path):
    s = Server(f"sqlite:///{tmp_path}/ledger.db", SITE_KEY, f"mqtt://127.0.0.1:{broker.port}",
               log=QUIET).start()
    yield s
    with contextlib.suppress(Exception):
        s.stop()


def provisioned(tmp_path, broker, tls=True, sync=None):
    """A state directory whose blank flash gets a config that points at the broker."""
    st = tmp_path / "st"
    prov = st / "provision"
    prov.mkdir(parents=True)
    url = (f"mqtts://127.0.0.1:{broker.tls_port}" if tls
           else f"mqtt://127.0.0.1:{broker.port}")
    cfg = {"device_id": "sim-0001", "broker": url, "sync": {**FAST, **(sync or {})}}
    (prov / "config.json").write_text(json.dumps(cfg))
    if tls:
        shutil.copy(broker.dir / "ca.der", prov / "broker_ca.der")
    write_site_key(st / "site.key")
    return st


def all_acked(st):
    s = sync_of(st)
    return bool(s) and s["acked"] == st["journal"].get("last_seq") and s["link"] == "up"


def types_in(store):
    return [r[0] for r in store.query(
        "SELECT type FROM records WHERE device = 'sim-0001' ORDER BY seq")]


def test_board_syncs_over_tls_and_keeps_selling_offline(tmp_path, broker, server):
    st_dir = provisioned(tmp_path, broker, tls=True)
    with SimBoard(st_dir, log=tmp_path / "sim.log") as sim:
        st = sim.wait_for(all_acked, timeout=30, what="the boot record acknowledged")
        assert sync_of(st)["connects"] == 1
        sim.insert_coin(200)
        sim.wait_for(all_acked, timeout=20, what="the coin acknowledged")
        sim.call("net", state="down")
        st = sim.wait_for(lambda s: sync_of(s).get("link") == "down", what="link down")
        # the network is gone: the machine still sells
        sim.insert_coin(100)
        sim.insert_coin(50)
        sim.select_program("standard")
        sim.call("button", name="start")
        st = sim.wait_for(lambda s: s["state"] == "running", what="a vend while offline")
        assert st["journal"]["unsynced"] >= 4
        assert sync_of(st)["acked"] < st["journal"]["last_seq"]
        sim.call("net", state="up")
        st = sim.wait_for(all_acked, timeout=30, what="the offline records acknowledged")
        assert sync_of(st)["connects"] == 2
        last = st["journal"]["last_seq"]
    book = ledger(server.store)
    assert sorted(book) == list(range(1, last + 1))
    kinds = types_in(server.store)
    assert kinds[0] == "boot" and kinds.count("coin") == 3 and "vend_start" in kinds


def test_a_board_with_a_bad_ca_file_still_sells(tmp_path, broker):
    st_dir = provisioned(tmp_path, broker, tls=True)
    (st_dir / "provision" / "broker_ca.der").write_bytes(b"not a certificate")
    with SimBoard(st_dir, log=tmp_path / "sim.log") as sim:
        st = sim.wait_ready()
        sim.insert_coin(200)
        st = sim.wait_for(lambda s: sync_of(s).get("link_error"), timeout=20,
                          what="the link's error")
        assert sync_of(st)["link"] == "disabled"
        assert "/broker_ca.der is not a DER certificate" in sync_of(st)["link_error"]
        assert sync_of(st)["acked"] == 0 and sync_of(st)["backlog"] == 2
        assert st["credit"] == 200


# ---- a board with a big backlog already in its flash
PREFILL = """
import json, vfs
from binascii import hexlify, unhexlify
import sim_flash
from washpay.journal import Journal
from washpay.keys import device_secret, journal_keys
A = json.loads(%r)
f = open(A["flash"], "r+b")
dev = sim_flash.SimFlash(f, A["blocks"], 4096)
if A["format"]:
    vfs.VfsLfs2.mkfs(dev)
vfs.mount(vfs.VfsLfs2(dev), "/flash")
for name, hexdata in A["files"].items():
    with open("/flash/" + name, "wb") as out:
        out.write(unhexlify(hexdata))
secret = device_secret(unhexlify(A["site"]), "sim-0001")
j = Journal("/flash/journal", journal_keys(secret), capacity=6200)
t = 1780000000
for i in range(A["n"]):
    if i %% 5 == 4:
        j.append("vend_start", price=250, program="quick", credit=0, state="starting", t=t + i)
    else:
        j.append("coin", amount=50, credit=50, state="credit", t=t + i)
for seq, rec in j.sealed(0):
    print(json.dumps({"seq": seq, "raw": hexlify(rec).decode(), "synced": j.synced_seq}))
f.close()
"""


def flash_script(flash, n=0, files=None, fmt=False):
    args = {"flash": str(flash), "blocks": 512, "format": fmt, "n": n,
            "site": SITE_KEY.hex(), "files": {k: v.hex() for k, v in (files or {}).items()}}
    s = MicroPythonScript(PREFILL % json.dumps(args), heap="4m", extra_path=[SIM])
    try:
        rc = s.wait(300)
    finally:
        s.close()
    assert rc == 0, s.log
    return {e["seq"]: bytes.fromhex(e["raw"]) for e in s.events}, (
        s.events[0]["synced"] if s.events else 0)


def prefilled(tmp_path, port, n):
    st = tmp_path / "st"
    st.mkdir()
    write_site_key(st / "site.key")
    flash = st / "flash.bin"
    flash.write_bytes(b"\xff" * (512 * 4096))
    board = (SIM / "board.json").read_bytes()
    cfg = {"device_id": "sim-0001", "broker": f"mqtt://127.0.0.1:{port}",
           "sync": {**FAST, "batch": 4}}
    from host_tools import keys

    secrets = json.dumps(keys.secrets_json(SITE_KEY, "sim-0001")).encode()
    known, _ = flash_script(flash, n, {"board.json": board,
                                       "config.json": json.dumps(cfg).encode(),
                                       "secrets.json": secrets}, fmt=True)
    return st, known


def on_flash(st_dir, tmp_path):
    """The journal on a powered-off board's flash (read from a copy): {seq: raw}, cursor."""
    copy = tmp_path / "inspect.bin"
    shutil.copy(st_dir / "flash.bin", copy)
    return flash_script(copy)


def test_power_cuts_mid_upload_lose_nothing(tmp_path, broker, server):
    proxy = FaultProxy("127.0.0.1", broker.port).start()
    proxy.set(rate=20_000)  # slow enough that every cut lands mid-upload
    st_dir, known = prefilled(tmp_path, proxy.port, 1200)
    sim = SimBoard(st_dir, log=tmp_path / "sim.log")
    with sim, contextlib.closing(proxy):
        seen_cursor = 0
        # cut the power three times while the backlog drains: once mid-batch, twice at a
        # flash operation (the only flash writes now are the acks: head and deletions)
        for cut in (None, 2, 5):
            sim.wait_for(lambda s, c=seen_cursor: sync_of(s).get("acked", 0) > c + 60,
                         timeout=60, what="upload progress")
            if cut is None:
                sim.call("power", state="cut")
            else:
                sim.call("power", state="cut", after_ops=cut)
                sim.wait_for(lambda s: s["power"] == "off", timeout=30, what="the cut")
            held, cursor = on_flash(st_dir, tmp_path)
            assert cursor >= seen_cursor  # the cursor never goes back
            seqs = sorted(held)
            # everything after the cursor is still there, byte for byte
            assert seqs[0] <= cursor + 1 and seqs == list(range(seqs[0], seqs[-1] + 1))
            for seq in seqs:
                if seq in known:
                    assert held[seq] == known[seq]
            seen_cursor = cursor
            time.sleep(0.3)
            sim.call("power", state="on")
        proxy.heal()
        st = sim.wait_for(all_acked, timeout=90, what="the whole backlog acknowledged")
        last = st["journal"]["last_seq"]
    book = ledger(server.store)
    assert sorted(book) == list(range(1, last + 1))
    for seq, raw in known.items():
        assert book[seq] == raw
    assert types_in(server.store).count("boot") == 4  # the first boot and three after cuts
