"""A site with no network, end to end on the simulated board through the real mpremote:
`washpay journal pull`, `washpay server import` into a SQLite ledger, `washpay journal settle`
(the board acknowledges what the ledger holds, checked record for record, with its own
Journal.ack), after which `provision --wipe-journal` is no longer refused. Refusals change
nothing on the board."""

import shutil
import sqlite3
import subprocess
import sys

import pytest
from conftest import ROOT

from host_tools import keys as K
from host_tools import provision as P

pytestmark = pytest.mark.device


def washpay(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_pull_import_settle_then_wipe_is_allowed(sim, tmp_path):
    state = tmp_path / "st"
    port = str(state / "console")
    key = str(state / "site.key")
    db = str(tmp_path / "ledger.db")
    site_key = K.load_site_key(key)
    sim.insert_coin(200)
    sim.insert_coin(100)
    assert P.journal_unsynced(port, site_key, "sim-0001") == 2  # the two coins
    P.restart(port)
    sim.wait_ready()

    # settle before the ledger has anything: refused, nothing changes
    r = washpay("journal", "settle", "--port", port, "--device", "sim-0001", "--db", db)
    assert r.returncode == 2 and "no ledger at" in r.stderr
    r = washpay("journal", "pull", "--port", port, "-o", str(tmp_path / "pulled"))
    assert r.returncode == 0, r.stderr
    r = washpay("server", "import", str(tmp_path / "pulled"), "--device", "sim-0001",
                "--site-key", key, "--db", db)
    assert r.returncode == 0, r.stdout + r.stderr
    pulled_last = int(r.stdout.split("(seq ")[1].split(")")[0].split("-")[1])
    st = sim.wait_ready()
    assert st["journal"]["last_seq"] == pulled_last + 1  # the pull's reset: a boot record

    r = washpay("journal", "settle", "--port", port, "--device", "sim-0002", "--db", db)
    assert r.returncode == 2 and "holds no record of sim-0002" in r.stderr
    r = washpay("journal", "settle", "--port", port, "--device", "sim-0001", "--db", db,
                "--upto", str(pulled_last + 1))
    assert r.returncode == 2 and f"only up to {pulled_last}" in r.stderr
    assert sim.wait_ready()["journal"]["unsynced"] == st["journal"]["unsynced"]

    # a ledger whose copy of the record is another history: refused on the board
    forged = str(tmp_path / "forged.db")
    shutil.copy(db, forged)
    with sqlite3.connect(forged) as c:
        c.execute("UPDATE records SET raw = ? WHERE device = 'sim-0001' AND seq = ?",
                  (bytes(128), pulled_last))
    r = washpay("journal", "settle", "--port", port, "--device", "sim-0001", "--db", forged)
    assert r.returncode == 2 and "is not the ledger's copy" in r.stderr, r.stderr
    st = sim.wait_ready()
    assert st["journal"]["unsynced"] == st["journal"]["last_seq"]  # nothing acknowledged

    r = washpay("journal", "settle", "--port", port, "--device", "sim-0001", "--db", db)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"settled: sim-0001 records up to {pulled_last} are in the ledger" in r.stdout
    st = sim.status()  # the command waited for the board to be back
    assert st["state"] == "credit" and st["credit"] == 300  # the credit is untouched
    # the board's cursor is the ledger's high-water mark; what is left unsynced is the boot
    # records of the resets since the pull
    assert st["journal"]["last_seq"] - st["journal"]["unsynced"] == pulled_last
    assert st["journal"]["unsynced"] >= 2
    # provision's wipe gate: only boot records are unsynced now, so a wipe may go ahead
    assert P.journal_unsynced(port, site_key, "sim-0001") == 0
    P.restart(port)
    sim.wait_ready()
    r = washpay("journal", "settle", "--port", port, "--device", "sim-0001", "--db", db)
    assert r.returncode == 0 and "already settled up to" in r.stdout



def test_a_board_rolled_back_behind_the_ledger_is_refused(sim, tmp_path):
    """The board's flash put back to an older copy after its journal reached the ledger: the
    ledger holds records the board does not have; nothing is acknowledged."""
    state = tmp_path / "st"
    port = str(state / "console")
    db = str(tmp_path / "ledger.db")
    sim.call("power", state="cut")
    old = (state / "flash.bin").read_bytes()
    sim.call("power", state="on")
    sim.wait_ready()
    for _ in range(3):
        sim.insert_coin(100)
    assert washpay("journal", "pull", "--port", port, "-o", str(tmp_path / "p")).returncode == 0
    r = washpay("server", "import", str(tmp_path / "p"), "--device", "sim-0001", "--site-key",
                str(state / "site.key"), "--db", db)
    assert r.returncode == 0, r.stderr
    sim.wait_ready()
    sim.call("power", state="cut")
    (state / "flash.bin").write_bytes(old)
    sim.call("power", state="on")
    sim.wait_ready()
    r = washpay("journal", "settle", "--port", port, "--device", "sim-0001", "--db", db)
    assert r.returncode == 2 and "a board rolled back or replaced" in r.stderr, r.stderr
    st = sim.wait_ready()
    assert st["journal"]["unsynced"] == st["journal"]["last_seq"]  # nothing acknowledged
