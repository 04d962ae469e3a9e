"""Benchmark of the board's release check (firmware/washpay/ota/, docs/release-format.md) on
both MicroPython interpreters: the unix port (64-bit) and the 32-bit one, whose objects have
the ESP32's sizes.

For a real release (this firmware, built and signed as `washpay release build` does, with a
throwaway key), loaded as .mpy the way a board imports it:
- time of one Ed25519 verify, of one whole manifest check (SHA-256, verify, JSON, rules) and
  of one release directory check (plus every file's SHA-256): median inside MicroPython
  (time.ticks_us), so process start-up does not count;
- heap: what importing washpay.ota keeps (gc.mem_alloc after a collect), what one verify
  and one manifest check allocate in all (gc.mem_alloc with the collector off), and the
  smallest -X heapsize (bisected to 1 KiB) with which the whole release check passes, next
  to the smallest with which the same script only imports what it needs to read the files.

Times compare revisions on one machine; an ESP32 at 240 MHz is some tens of times slower
than a host running the unix port.

    python -m host_tools.bench.release [runs]
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PRELUDE = """
import sys, gc, time
sys.path.insert(0, {files!r})
ROOT = {root!r}
with open(ROOT + '/release.pub') as f:
    PUB = bytes.fromhex(f.read().split()[1])
BOARD = ('0.0.1', 'sim', {journal}, {mpy})
NOW = {now}
"""

_MEASURE = """
def median_us(op, runs):
    op()
    times = []
    for _ in range(runs):
        t = time.ticks_us()
        op()
        times.append(time.ticks_diff(time.ticks_us(), t))
    times.sort()
    return times[runs // 2]

gc.collect()
before = gc.mem_alloc()
from washpay.ota import release as RL
from washpay.ota.ed25519 import verify
from hashlib import sha256
gc.collect()
print('import_kept', gc.mem_alloc() - before, 'B')
with open(ROOT + '/manifest.json', 'rb') as f:
    manifest = f.read()
sig = RL.read_signature(ROOT + '/manifest.sig')
msg = RL.signed_message(sha256(manifest).digest())
assert verify(PUB, msg, sig)

def allocated(op):
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    op()
    b = gc.mem_alloc()
    gc.enable()
    return b - a

check = lambda: RL.check_manifest(manifest, sig, PUB, *BOARD, NOW)
print('verify_alloc', allocated(lambda: verify(PUB, msg, sig)), 'B')
print('manifest_alloc', allocated(check), 'B')
runs = {runs}
print('verify_time', median_us(lambda: verify(PUB, msg, sig), runs) / 1000, 'ms')
print('manifest_time', median_us(check, runs) / 1000, 'ms')
print('release_time', median_us(lambda: RL.check_release(ROOT, PUB, *BOARD, NOW), 5) / 1000,
      'ms')
"""

_WHOLE = """
from washpay.ota import release as RL
RL.check_release(ROOT, PUB, *BOARD, NOW)
print('ok')
"""

_BASELINE = """
import json
from hashlib import sha256
print('ok')
"""


def interpreters():
    """[(name, path)] of the interpreters here: this environment's and the 32-bit one."""
    found = []
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        found.append(("unix64", str(here)))
    for p in (ROOT.parent / "shared" / "tools" / "micropython-i386",
              Path("/work/shared/tools/micropython-i386")):
        if p.is_file():
            found.append(("i386", str(p)))
            break
    return found


def _run(exe, script, heap):
    proc = subprocess.run([exe, "-X", f"heapsize={heap}", "-c", script], capture_output=True,
                          text=True, timeout=300)
    return proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc


def smallest_heap(exe, script, low=2048, high=1 << 20):
    """The smallest -X heapsize (bytes, to 1 KiB) with which `script` prints ok."""
    ok, proc = _run(exe, script, high)
    if not ok:
        raise RuntimeError(f"fails even with {high} bytes of heap:\n{proc.stderr}")
    while high - low > 1024:
        mid = (low + high) // 2
        if _run(exe, script, mid)[0]:
            high = mid
        else:
            low = mid
    return high


def make_release(tmp):
    """A release of this firmware signed with a throwaway key, and its public key file."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from host_tools import release as R

    key = Ed25519PrivateKey.generate()
    rel = Path(tmp) / "rel"
    doc = R.build(R.P.firmware_version(), rel, key, ["sim"])
    (rel / "release.pub").write_text(R.public_text(R.public_bytes(key)))
    return rel, doc


def bench(runs=21):
    """[(interpreter, name, value, unit)] for every interpreter found."""
    from host_tools import release as R

    rows = []
    with tempfile.TemporaryDirectory(prefix="washpay-bench-release-") as tmp:
        rel, doc = make_release(tmp)
        prelude = _PRELUDE.format(files=str(rel / "files"), root=str(rel),
                                  journal=R.journal_format(), mpy=doc["mpy"],
                                  now=int(time.time()))
        for name, exe in interpreters():
            proc = subprocess.run([exe, "-X", "heapsize=4m", "-c",
                                   prelude + _MEASURE.format(runs=int(runs))],
                                  capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"release benchmark failed under {exe}:\n{proc.stderr}")
            for line in proc.stdout.split("\n"):
                if line.strip():
                    what, value, unit = line.split()
                    rows.append((name, what, float(value) if "." in value else int(value),
                                 unit))
            whole = smallest_heap(exe, prelude + _WHOLE)
            base = smallest_heap(exe, prelude + _BASELINE)
            rows.append((name, "heap_min_release_check", whole, "B"))
            rows.append((name, "heap_min_baseline", base, "B"))
            rows.append((name, "heap_release_check_needs", whole - base, "B"))
        rows.append(("-", "release_files", len(doc["files"]), "files"))
        rows.append(("-", "release_manifest", (rel / "manifest.json").stat().st_size, "B"))
    return rows


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    runs = int(args[0]) if args else 21
    rows = bench(runs)
    print("## OTA release check on the board (firmware/washpay/ota), both interpreters\n")
    w = max(len(r[1]) for r in rows)
    for interp, name, value, unit in rows:
        print(f"  {interp:<7} {name:<{w}}  {value:>9}  {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
