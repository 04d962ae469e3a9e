"""What the update tests share: releases built by the host's own tool (real mpy-cross, signed
with a real Ed25519 key), firmware variants that fail on purpose, and a minimal release
server that follows docs/ota.md on a real Mosquitto (the real one is `washpay server release`;
this one exists so the board's side can be proven on its own, and misbehaves on request)."""

import contextlib
import json
import shutil
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sync_env import FIRMWARE, SITE_KEY, make_broker, online, write_site_key

from host_tools import journal as J
from host_tools import keys as K
from host_tools import release as REL
from host_tools.bench.update import Release, ReleaseServer  # noqa: F401 (the tests' server)
from host_tools.sim.client import SimBoard, SimError

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
DEVICE = "sim-0001"


def public_line(key=KEY):
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return f"ed25519 {raw.hex()}\n"


def firmware_variant(dest, version, change=None):
    """A copy of firmware/ whose VERSION is `version`; change(app_source) -> new source."""
    shutil.copytree(FIRMWARE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    init = dest / "washpay" / "__init__.py"
    text = init.read_text()
    init.write_text(text.replace(f'VERSION = "{REL.P.firmware_version()}"',
                                 f'VERSION = "{version}"'))
    if change:
        app = dest / "washpay" / "app.py"
        app.write_text(change(app.read_text()))
    return dest


def raises_at_import(src):
    return 'raise ImportError("this release is broken at import")\n' + src


def hangs_in_main_loop(src):
    anchor = '        wdt = self.board.watchdog(self.cfg["watchdog_ms"])\n'
    assert anchor in src
    return src.replace(anchor, anchor + "        while True:  # a release whose loop hangs\n"
                                        "            pass\n")


def build_release(base, version, change=None, key=KEY, **kw):
    """A signed release directory of firmware `version` for the sim board."""
    fw = firmware_variant(base / f"fw-{version}", version, change)
    out = base / f"rel-{version}"
    REL.build(version, out, key, ["sim"], firmware_dir=fw, now=int(time.time()), **kw)
    return out


def resigned(base, release_dir, name, key=KEY, **changes):
    """A copy of a release whose manifest has `changes` and is signed again by `key`: the
    files stay, so a refusal test needs no new build."""
    d = Path(base) / name
    shutil.copytree(release_dir, d)
    doc = json.loads((d / "manifest.json").read_bytes())
    doc.update(changes)
    manifest = REL.manifest_bytes(doc)
    (d / "manifest.json").write_bytes(manifest)
    (d / "manifest.sig").write_text(key.sign(REL.digest_message(manifest)).hex() + "\n")
    return d


@contextlib.contextmanager
def rig(tmp, config=None, release_pub=True, micropython=None):
    """A broker, the minimal release server and the simulated board online (its
    config.json: quick sync and trial settings, then `config`); `micropython`: another
    interpreter (the 32-bit one), else the environment's."""
    broker = make_broker(tmp / "broker").start()
    url = f"mqtt://127.0.0.1:{broker.port}"
    try:
        server = ReleaseServer(url, SITE_KEY)
    except Exception:
        broker.stop()  # no Mosquitto left behind by a test that could not start
        raise
    st = tmp / "st"
    (st / "provision").mkdir(parents=True)
    cfg = {"device_id": DEVICE, "broker": url, "watchdog_ms": 2000,
           "sync": {"keepalive_s": 5, "backoff_min_ms": 200, "backoff_max_ms": 1000},
           "ota": {"healthy_s": 2, "trial_s": 60}, **(config or {})}
    (st / "provision" / "config.json").write_text(json.dumps(cfg))
    if release_pub:
        (st / "provision" / "release.pub").write_text(public_line())
    write_site_key(st / "site.key")
    # 1 MiB: the sim runs the firmware from source (its bytecode in the heap) and keeps its
    # own models there; the board's own figures are host_tools/bench/heap.py's (32-bit)
    sim = SimBoard(st, log=tmp / "sim.log", heap="1m", micropython=micropython).start()
    try:
        online(sim)
        yield sim, server, st
    finally:
        sim.stop()
        server.stop()
        broker.stop()


def pay(sim, *coins):
    """Insert coins; one the board rejected (a pulse train mistimed on a loaded host: the
    board refuses what it cannot classify) is inserted again, as a customer would."""
    for coin in coins:
        for attempt in range(3):
            try:
                sim.insert_coin(coin)
                break
            except SimError:
                if attempt == 2:
                    raise


def records(state):
    """The board's journal (its flash file, the board powered off), verified by the host's
    decoder: each record's fields."""
    report = J.verify(J.load_inputs([state / "flash.bin"]),
                      J.Keys(K.load_site_key(state / "site.key"), DEVICE))
    assert report.ok, report.problems
    return [dict(r.fields) for r in report.records]


def journal(state):
    return [(r.get("type"), r.get("reason")) for r in records(state)]


def version(sim):
    return sim.wait_for(lambda s: (s.get("firmware") or {}).get("version"), timeout=30,
                        what="the firmware's status")["firmware"]["version"]
