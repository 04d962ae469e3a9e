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
