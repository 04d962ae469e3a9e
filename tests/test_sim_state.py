"""`washpay sim run --state DIR`: what it does with the directory it is given.

One simulator per state directory (a lock on DIR/sim.lock, free again when its holder dies),
and a flash that the boot cannot mount is never formatted behind the operator's back: only
an erased flash is, or any flash with an explicit --format (docs/provisioning.md)."""

import hashlib
import json
import os
import signal
import subprocess
import sys

from conftest import ROOT

from host_tools.sim.client import SimBoard


def washpay(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "host_tools.cli", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ---- item 4: one simulator per state directory
def test_second_simulator_on_the_same_state_is_refused(tmp_path):
    st = tmp_path / "st"
    with SimBoard(st, log=tmp_path / "sim.log") as board:
        board.wait_ready()
        first = board.status()
        r = washpay("sim", "run", "--state", str(st), "--quiet", timeout=60)
        line = one_line_error(r, "in use", str(board.proc.pid))
        assert "--state" in line  # says what to do
        # the first board is untouched: same process, its control socket still answers
        assert (st / "ctl.sock").exists()
        after = board.status()
        assert after["boots"] == first["boots"] and after["power"] == "on"


def test_lock_of_a_dead_simulator_is_recovered(tmp_path):
    st = tmp_path / "st"
    # a process that took the lock and died without a word (kill -9): its lock dies with it
    code = ("import os, signal, sys; from pathlib import Path; "
            "from host_tools.sim.runner import lock_state; "
            f"lock_state(Path({str(st)!r})); os.kill(os.getpid(), signal.SIGKILL)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == -signal.SIGKILL
    assert (st / "sim.lock").exists()
    with SimBoard(st, log=tmp_path / "sim.log") as board:
        assert board.wait_ready()["state"] == "idle"


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- item 3: a flash the boot cannot mount is kept, not formatted
def board_with_journal(tmp_path, coins=(200, 100, 50)):
    st = tmp_path / "st"
    with SimBoard(st, log=tmp_path / "sim.log") as board:
        board.wait_ready()
        for c in coins:
            board.insert_coin(c)
    return st


def decoded(st, dump):
    r = washpay("journal", "decode", str(dump), "--site-key", str(st / "site.key"),
                "--device", "sim-0001", "--format", "jsonl")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verification: OK" in r.stderr and "raw blocks" in r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def refused_then_formatted(tmp_path, st, *words):
    flash = st / "flash.bin"
    before = sha(flash)
    r = washpay("sim", "run", "--state", str(st), "--quiet", timeout=60)
    one_line_error(r, "nothing was changed", "journal decode", "--format", *words)
    assert sha(flash) == before  # not a byte written
    # the way out: the journal from the damaged dump, then an explicit --format
    rows = decoded(st, flash)
    assert [(r["type"], r["credit"]) for r in rows] == [
        ("boot", 0), ("coin", 200), ("coin", 300), ("coin", 350)]
    with SimBoard(st, log=tmp_path / "sim2.log", args=["--format"]) as board:
        st2 = board.wait_ready()
        assert st2["journal"]["count"] == 1 and st2["credit"] == 0  # a new journal
    assert sha(st / "flash.bin.unmountable") == before  # the old flash, kept
    # the formatted flash mounts: the next start needs no --format and keeps its journal
    with SimBoard(st, log=tmp_path / "sim3.log") as board:
        assert board.wait_ready()["journal"]["count"] == 2


def test_unmountable_flash_is_refused_and_kept(tmp_path):
    st = board_with_journal(tmp_path)
    with open(st / "flash.bin", "r+b") as f:
        f.write(b"\0" * 8192)  # both superblocks gone: LittleFS cannot mount it
    refused_then_formatted(tmp_path, st, "no LittleFS volume that mounts")


def test_truncated_flash_is_refused_and_kept(tmp_path):
    # the reproduction: truncate -s 1000000 state/flash.bin
    st = board_with_journal(tmp_path)
    os.truncate(st / "flash.bin", 1_000_000)
    refused_then_formatted(tmp_path, st, "1000000 bytes")


def test_blank_flash_is_still_formatted(tmp_path):
    st = board_with_journal(tmp_path, coins=(100,))
    size = (st / "flash.bin").stat().st_size
    (st / "flash.bin").write_bytes(b"\xff" * size)  # an erased chip (esptool erase-flash)
    with SimBoard(st, log=tmp_path / "sim2.log") as board:
        assert board.wait_ready()["journal"]["count"] == 1  # formatted, factory files in
    assert b"blank flash, formatting" in (st / "console.log").read_bytes()


# ---- item 3 on a real board: boards/esp32/_boot.py under the real MicroPython, with the
# port's flashbdev (the vfs partition) standing on a file and a stand-in for its inisetup
BOOT_STUBS = {
    "flashbdev.py": """
import sim_flash
bdev = sim_flash.SimFlash(open({path!r}, "r+b"), 64)
""",
    "inisetup.py": """
import vfs
from flashbdev import bdev
def setup():  # the port's: format (its first block is erased, as _boot.py made sure)
    print("Performing initial setup")
    vfs.VfsLfs2.mkfs(bdev)
    vfs.mount(vfs.VfsLfs2(bdev), "/")
    with open("boot.py", "w") as f:
        f.write("# stock boot.py")
""",
}
BOOT_RUN = """
import vfs, os
import flashbdev, inisetup  # frozen on a board: there before any file system
src = open({boot!r}).read()
vfs.umount("/")  # the board starts with nothing mounted
exec(src)
print("mounted:", sorted(os.listdir("/")) or "nothing")
"""


def run_board_boot(tmp_path, flash):
    from conftest import SIM, run_micropython

    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for name, text in BOOT_STUBS.items():
        (stubs / name).write_text(text.format(path=str(flash)))
    code = BOOT_RUN.format(boot=str(ROOT / "boards" / "esp32" / "_boot.py"))
    return run_micropython(code, extra_path=(stubs, SIM))[1]


def test_board_boot_formats_only_an_erased_partition(tmp_path):
    flash = tmp_path / "vfs.bin"
    flash.write_bytes(b"\xff" * 64 * 4096)
    out = run_board_boot(tmp_path, flash)
    assert "Performing initial setup" in out and "mounted: ['boot.py']" in out
    good = flash.read_bytes()
    # a volume that mounts is mounted, untouched by any setup
    out = run_board_boot(tmp_path, flash)
    assert "Performing initial setup" not in out and "mounted: ['boot.py']" in out
    assert flash.read_bytes() == good
    # its first block erased and the second one damaged: stock formats this one (its check
    # looks at the first block only); ours keeps it, says so, and mounts nothing
    damaged = b"\xff" * 4096 + b"\0" * 4096 + good[8192:]
    flash.write_bytes(damaged)
    out = run_board_boot(tmp_path, flash)
    assert "washpay: out of order: flash refused" in out and "esptool read-flash" in out
    assert "Performing initial setup" not in out and "mounted: nothing" in out
    assert flash.read_bytes() == damaged
