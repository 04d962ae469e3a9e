"""`washpay sim run --state DIR`: what it does with the directory it is given.

One simulator per state directory (a lock on DIR/sim.lock, free again when its holder dies),
and a flash that the boot cannot mount is never formatted behind the operator's back: only
an erased flash is, or any flash with an explicit --format (docs/provisioning.md)."""

import hashlib
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
