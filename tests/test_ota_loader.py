"""The loader (firmware/bootslot.py, docs/ota.md "The loader"), the one piece an update never
replaces: every pointer state, a garbled or torn pointer, a missing slot, the trial boot
counter and deadline, an import that raises. It runs under the real MicroPython on a
LittleFS volume of the simulated flash (tests/ota_workload.py), with power cuts at every
program and erase of every pointer write it makes, clean and torn.
"""

import json
import subprocess

import pytest
from conftest import FIRMWARE, ROOT, SIM, micropython_path

PRELUDE = """
import sys
for p in (@PATHS@):
    sys.path.append(p)
from ota_workload import *
import bootslot as L
R = MOUNT
img = blank_image()
fl = mount(img)

def pointer(**kw):
    p = L.fresh()
    p.update(kw)
    put(R + "/slot.json", json.dumps(p).encode())

def state():
    return json.loads(get(R + "/slot.json")) if get(R + "/slot.json") else None

class Reset(BaseException):
    pass

class Machine:
    resets = 0
    def reset(self):
        Machine.resets += 1
        raise Reset()

sys.modules["machine"] = Machine()
""".replace("@PATHS@", ", ".join(repr(str(p)) for p in (FIRMWARE, SIM, ROOT / "tests")))


def run(code, timeout=120):
    proc = subprocess.run([micropython_path(), "-X", "heapsize=8m", "-c", PRELUDE + code],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    out = [json.loads(line[3:]) for line in proc.stdout.splitlines() if line.startswith("@@ ")]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_no_pointer_boots_the_factory_firmware_and_writes_nothing():
    [r] = run("""
p = L.choose(R)
emit({"run": p["run"], "trial": p["trial"], "note": p["note"], "programs": fl.programs,
      "file": state()})
""")
    assert r == {"run": "base", "trial": False, "note": None, "programs": 0, "file": None}


def test_a_confirmed_slot_boots_without_a_flash_write():
    [r] = run("""
slot("a", "0.2.0")
pointer(run="a", version="0.2.0")
n = fl.programs + fl.erases
p = L.choose(R)
emit({"run": p["run"], "ops": fl.programs + fl.erases - n})
""")
    assert r == {"run": "a", "ops": 0}


def test_trial_boots_count_then_go_back_to_the_previous_slot():
    out = run("""
slot("a", "0.2.0"); slot("b", "0.3.0")
pointer(run="b", prev="a", prev_version="0.2.0", version="0.3.0", trial=True)
for i in range(5):
    p = L.choose(R)
    emit({"run": p["run"], "boots": p["boots"], "trial": p["trial"], "note": p["note"],
          "version": p["version"], "stored": state()["run"]})
""")
    assert [(r["run"], r["boots"], r["trial"]) for r in out] == [
        ("b", 1, True), ("b", 2, True), ("b", 3, True), ("a", 0, False), ("a", 0, False)]
    assert out[3]["note"] == {"kind": "rollback", "version": "0.3.0",
                              "reason": "not healthy after 3 boots"}
    assert out[3]["version"] == "0.2.0" and out[3]["stored"] == "a"
    # the note stays until the app has journaled it
    assert out[4]["note"] == out[3]["note"]


def test_a_missing_slot_goes_back_to_prev_else_to_base():
    out = run("""
slot("a", "0.2.0")
pointer(run="b", prev="a", prev_version="0.2.0", version="0.3.0", trial=True)
p = L.choose(R)
emit({"run": p["run"], "note": p["note"]})
pointer(run="b", version="0.3.0")
p = L.choose(R)
emit({"run": p["run"], "note": p["note"]})
pointer(run="a", prev="b", prev_version="0.1.0", version="0.2.0", trial=True)
import os
os.remove(R + "/slot_a/files/washpay/app.py"); os.remove(R + "/slot_a/files/washpay/__init__.py")
os.rmdir(R + "/slot_a/files/washpay")
p = L.choose(R)
emit({"run": p["run"], "note": p["note"]})
""")
    assert out[0] == {"run": "a", "note": {"kind": "rollback", "version": "0.3.0",
                                           "reason": "slot b missing"}}
    assert out[1]["run"] == "base" and out[1]["note"]["reason"] == "slot b missing"
    # neither a (gone) nor its prev b (never there): the factory firmware
    assert out[2]["run"] == "base" and out[2]["note"]["reason"] == "slot a missing"


GARBLED = {
    "empty": "",
    "torn JSON": '{"run": "b", "prev": "a", "tri',
    "not an object": "[1, 2]",
    "unknown slot": '{"run": "c"}',
    "prev equals run": '{"run": "a", "prev": "a"}',
    "trial not a bool": '{"run": "a", "trial": 1}',
    "boots not an int": '{"run": "a", "trial": true, "boots": "1"}',
    "staging into the running slot": '{"run": "a", "stage": {"slot": "a"}}',
    "too long": '{"run": "base", "pad": "' + "x" * 1100 + '"}',
    "erased flash": "\xff" * 64,
}


@pytest.mark.parametrize("name", list(GARBLED))
def test_a_garbled_pointer_boots_the_factory_firmware_with_a_note(name):
    out = run("""
slot("a", "0.2.0")
put(R + "/slot.json", @TEXT@.encode())
p = L.choose(R)
emit({"run": p["run"], "note": p["note"], "stored": state()})
p = L.choose(R)
emit({"run": p["run"], "note": p["note"]})
""".replace("@TEXT@", repr(GARBLED[name])))
    assert out[0]["run"] == "base"
    assert out[0]["note"] == {"kind": "rollback", "version": None, "reason": "pointer unreadable"}
    assert out[0]["stored"]["run"] == "base"  # rewritten as a valid pointer
    assert out[1] == {"run": "base", "note": out[0]["note"]}


def test_confirm_and_clear_note_persist():
    [r] = run("""
slot("a", "0.2.0"); slot("b", "0.3.0")
pointer(run="b", prev="a", prev_version="0.2.0", version="0.3.0", trial=True,
        note={"kind": "rollback", "version": "0.4.0", "reason": "x"})
L._state = L.choose(R); L._root = R
L.confirm()
L.clear_note()
emit(state())
""")
    assert r["run"] == "b" and r["trial"] is False and r["boots"] == 0
    assert r["prev"] is None and r["note"] is None and r["version"] == "0.3.0"


# ---- every pointer write the loader makes, cut at each of its flash operations
SWEEP = """
import os
def setup():
    slot("a", "0.2.0"); slot("b", "0.3.0")
    pointer(run="b", prev="a", prev_version="0.2.0", version="0.3.0", trial=True, boots=%d)
setup()
before = state()
base = bytes(img)
unmount()

def one(cut, torn):
    image = bytearray(base)
    f = mount(image)
    if cut:
        f.arm_cut(cut, torn)
    try:
        L.choose(R)
    except Exception:
        if not f.fired:
            raise
    unmount()
    mount(bytearray(image))
    try:
        got = L.read(R)
    except ValueError:
        got = "unreadable"
    after = L.choose(R)  # the next boot decides on what reached the flash
    unmount()
    return got, f.fired, after["run"]

clean, _, _ = one(0, False)
emit({"before": before, "after": clean})
n = 1
while True:
    got_t, fired, run_t = one(n, True)
    got_c, _, run_c = one(n, False)
    if not fired:
        break
    emit({"cut": n, "torn": got_t, "clean": got_c, "runs": [run_t, run_c]})
    n += 1
"""


@pytest.mark.parametrize("boots,expect", [(0, "b"), (2, "b"), (3, "a")],
                         ids=["first trial boot", "last trial boot", "rollback"])
def test_power_cut_at_every_flash_operation_of_a_loader_write(boots, expect):
    out = run(SWEEP % boots, timeout=600)
    before, after = out[0]["before"], out[0]["after"]
    cuts = out[1:]
    assert after != before and after["run"] == expect
    assert len(cuts) >= 2, "a pointer write is several flash operations"
    for c in cuts:
        for got in (c["torn"], c["clean"]):
            # the old pointer or the new one, whole; never a mix, never unreadable
            assert got in (before, after), c
        # and the next boot runs a complete version: the trial slot or the one before it
        assert set(c["runs"]) <= {"a", "b"}, c


# ---- start(): the slot's code, an import that raises, the trial deadline
def test_start_imports_the_app_from_the_slot():
    [r] = run("""
slot("a", "0.2.0")
pointer(run="a", version="0.2.0")
app_run = L.start(R)
import washpay
emit({"ran": app_run(), "file": washpay.__file__, "idle": L.idle()})
""")
    assert r == {"ran": "0.2.0", "file": "/flash/slot_a/files/washpay/__init__.py",
                 "idle": True}


def test_an_import_that_raises_on_trial_goes_back_at_once():
    [r] = run("""
slot("a", "0.2.0")
slot("b", "0.3.0", app="raise ValueError('boom at import')\\n")
pointer(run="b", prev="a", prev_version="0.2.0", version="0.3.0", trial=True)
try:
    L.start(R)
    emit({"reset": False})
except Reset:
    emit({"reset": Machine.resets, "stored": state()})
""")
    assert r["reset"] == 1
    assert r["stored"]["run"] == "a" and r["stored"]["trial"] is False
    assert r["stored"]["note"]["version"] == "0.3.0"
    assert r["stored"]["note"]["reason"].startswith("import failed: ValueError('boom at import'")


APP_LOOP = """import asyncio
import bootslot

async def main():
    await asyncio.sleep_ms(200)
    if %r:
        bootslot.confirm()
    await asyncio.sleep(3)
    return "ran out"

def run():
    return asyncio.run(main())
"""


@pytest.mark.parametrize("confirms", [True, False], ids=["confirmed", "never healthy"])
def test_the_trial_deadline(confirms):
    [r] = run("""
slot("a", "0.2.0")
slot("b", "0.3.0", app=%r)
pointer(run="b", prev="a", prev_version="0.2.0", version="0.3.0", trial=True, trial_s=1)
try:
    emit({"ran": L.start(R)(), "stored": state()})
except Reset:
    emit({"reset": Machine.resets, "stored": state()})
""" % (APP_LOOP % confirms))
    if confirms:
        assert r["ran"] == "ran out" and r["stored"]["run"] == "b"
        assert r["stored"]["trial"] is False
    else:
        assert r["reset"] == 1 and r["stored"]["run"] == "a"
        assert r["stored"]["note"]["reason"] == "not healthy within 1 s"
