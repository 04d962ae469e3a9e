"""A power cut at every flash program and erase of a whole update (docs/ota.md): the offer's
pointer write, the download into the slot, the checks, the switch, and the first boot's
trial count and confirmation; each cut clean and torn (half the operation applied). After
every cut the board boots what reached the flash, and:

- it boots one complete version: the factory one, or the new slot whole (every file's
  SHA-256 as the signed manifest says);
- /config.json and the journal's files are byte for byte what they were;
- the update then resumes from what the flash holds and ends switched and healthy (or, cut
  before the offer reached the pointer, the board still runs the old version).

The board's own code runs under the real micropython (the loader, washpay/ota/stage.py and
update.py) on a LittleFS volume of the simulated flash (tests/ota_workload.py); the release
is made and signed by the host's tool.
"""

import hashlib
import json
import subprocess
import time

from conftest import FIRMWARE, ROOT, SIM, micropython_path
from ota_env import KEY, public_line

from host_tools import release as REL

NOW = int(time.time())


def tiny_release(d):
    """A signed release of two files (several chunks each), written to directory d."""
    files = {
        "/washpay/__init__.py": b'VERSION = "0.2.0"\n',
        "/washpay/app.py": b"".join(b"# line %04d of a release big enough for chunks\n" % i
                                    for i in range(60)) + b"def run():\n    return 2\n",
    }
    doc = {"format": "washpay-release/1", "version": "0.2.0", "min_version": "0.0.0",
           "downgrade": False, "journal_formats": [2], "boards": ["sim"],
           "micropython": "1.26.0", "mpy": 6, "created": NOW, "expires": NOW + 86400,
           "files": [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                     for p, b in sorted(files.items())]}
    manifest = REL.manifest_bytes(doc)
    (d / "files" / "washpay").mkdir(parents=True)
    for p, b in files.items():
        (d / "files" / p.lstrip("/")).write_bytes(b)
    (d / "manifest.json").write_bytes(manifest)
    sig = KEY.sign(REL.digest_message(manifest))
    return manifest, sig


SCRIPT = r"""
import sys
for p in (@PATHS@):
    sys.path.append(p)
from ota_workload import *
import json, os
import bootslot as L
from hashlib import sha256
from washpay.ota.release import check_release, read_public_key
from washpay.ota.stage import Stage, MANIFEST
from washpay.ota import update as U

R = MOUNT
REL = @REL@
DIGEST = bytes.fromhex(@DIGEST@)
SIG = bytes.fromhex(@SIG@)
SIZE = @SIZE@
NOW = @NOW@
FILES = [f["path"] for f in json.loads(open(REL + "/manifest.json").read())["files"]]
CONFIG = b'{"device_id": "sim-0001", "broker": "mqtt://127.0.0.1:1883"}'
SEGMENT = bytes(range(256)) * 16

img = blank_image(64)
mount(img)
put(R + "/config.json", CONFIG)
put(R + "/journal/00000001.seg", SEGMENT)
put(R + "/release.pub", @PUB@.encode())
base = bytes(img)
unmount()
checks = {"public_key": None, "running": "0.1.0", "board_id": "sim", "journal_format": 2,
          "mpy": 6, "now": lambda: NOW}


def source(index, offset, length):
    path = REL + ("/manifest.json" if index == MANIFEST else "/files" + FILES[index])
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def stage_all():
    p = L.read(R)
    s = Stage(R, p["stage"], checks)
    while True:
        want = s.next()
        if want is None:
            break
        if s.accept(want[0], want[1], source(*want)):
            s.check()
    U.switch(R, p["stage"]["slot"], s.finish(), "0.1.0", 300)


def first_boot():
    L._state = L.choose(R)
    L._root = R
    if L._state["trial"]:
        L.confirm()


def whole_update():
    checks["public_key"] = read_public_key(R + "/release.pub")
    assert U.offer(R, DIGEST, SIG, SIZE, "0.2.0") is None
    stage_all()
    first_boot()


def booted():
    # what the board boots now, and whether that version is whole
    p = L.choose(R)
    run = p["run"]
    whole = True
    if run != "base":
        try:
            check_release(R + "/slot_" + run, checks["public_key"], "0.1.0", "sim", 2, 6, NOW)
        except Exception as e:
            whole = repr(e)
    return run, whole


def one(cut, torn):
    image = bytearray(base)
    f = mount(image)
    if cut:
        f.arm_cut(cut, torn)
    try:
        whole_update()
    except Exception:
        if not f.fired:
            raise
    unmount()
    mount(bytearray(image))
    checks["public_key"] = read_public_key(R + "/release.pub")
    run, whole = booted()
    kept = get(R + "/config.json") == CONFIG and get(R + "/journal/00000001.seg") == SEGMENT
    # the next boots: a staged download resumes, a trial confirms itself
    p = L.read(R)
    if p["stage"]:
        stage_all()
    first_boot()
    p = L.read(R)
    unmount()
    return {"cut": cut, "torn": torn, "fired": f.fired, "boot": run, "whole": whole,
            "kept": kept, "final": [p["run"], p["version"], p["trial"]]}


emit(one(0, False))
n = 1
while True:
    a = one(n, False)
    if not a["fired"]:
        break
    emit(a)
    emit(one(n, True))
    n += 1
"""


def test_power_cut_at_every_flash_operation_of_a_whole_update(tmp_path):
    rel = tmp_path / "rel"
    manifest, sig = tiny_release(rel)
    subs = {"@PATHS@": ", ".join(repr(str(p)) for p in (FIRMWARE, SIM, ROOT / "tests")),
            "@REL@": repr(str(rel)), "@DIGEST@": repr(hashlib.sha256(manifest).hexdigest()),
            "@SIG@": repr(sig.hex()), "@SIZE@": str(len(manifest)), "@NOW@": str(NOW),
            "@PUB@": repr(public_line())}
    code = SCRIPT
    for k, v in subs.items():
        code = code.replace(k, v)
    script = tmp_path / "sweep.py"
    script.write_text(code)
    t0 = time.monotonic()
    proc = subprocess.run([micropython_path(), "-X", "heapsize=16m", str(script)],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)
    out = [json.loads(line[3:]) for line in proc.stdout.splitlines() if line.startswith("@@ ")]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    clean, cuts = out[0], out[1:]
    assert clean["final"] == ["a", "0.2.0", False] and not clean["fired"]
    ops = len(cuts) // 2
    print(f"\n{ops} flash operations in a whole update, each cut clean and torn "
          f"({time.monotonic() - t0:.0f} s)")
    assert ops > 30
    lost = []
    for i, c in enumerate(cuts):
        assert c["boot"] in ("base", "a") and c["whole"] is True, c
        assert c["kept"], c
        if c["final"] == ["base", None, False]:
            lost.append(i)  # cut before the offer's pointer write landed: nothing to resume
        else:
            assert c["final"] == ["a", "0.2.0", False], c
    # only a cut before the offer reached the pointer loses it (the server offers again)
    kept = [i for i in range(len(cuts)) if i not in lost]
    assert not lost or max(lost) < min(kept)
