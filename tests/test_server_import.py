"""`washpay server import`: a journal pulled off a board without network goes into the ledger
through the MQTT ingest's own path (Ingest.batch): the ledger ends up the same as if the
board had synced, with the same duplicates, gaps and forks, on SQLite and on PostgreSQL.
The journals are written by the firmware's Journal under micropython (a pulled directory
is that journal's directory as it is on the board)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from sync_env import SITE_KEY, coin_day, firmware_records
from test_server_ingest import batch

from host_tools.server import importer as I
from host_tools.server.ingest import Ingest
from host_tools.server.store import open_store

ROWS = "SELECT seq, raw, verified, type, amount, credit FROM records WHERE device = ? ORDER BY seq"


@pytest.fixture(scope="module")
def pulled(tmp_path_factory):
    """A board's journal directory, as `washpay journal pull` copies it: 101 records."""
    root = tmp_path_factory.mktemp("pull") / "journal"
    recs = firmware_records(root, [("boot", {})] + coin_day(100))
    return root, recs


def rows(store, device="sim-0001"):
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
            for r in store.query(ROWS, (device,))]


def do_import(store, paths, device="sim-0001"):
    records, _ = I.read_pull(paths, SITE_KEY, device)
    return I.import_records(store, SITE_KEY, device, records)


def test_import_stores_what_mqtt_would(store_url, pulled, tmp_path):
    root, recs = pulled
    store = open_store(store_url)
    try:
        t = do_import(store, [root.parent])
        assert (t["stored"], t["duplicates"], t["parked"], t["ack"]) == (101, 0, 0, 101)
        assert t["problems"] == []
        imported = rows(store)
    finally:
        store.close()
    # the same records over the MQTT path, in the board's batch sizes
    mqtt = open_store(f"sqlite:///{tmp_path}/mqtt.db")
    try:
        ingest = Ingest(mqtt, SITE_KEY)
        for i in range(0, len(recs), 32):
            assert ingest.batch("sim-0001", batch(recs[i:i + 32], last=len(recs))).problems == []
        assert rows(mqtt) == imported
    finally:
        mqtt.close()
    assert [r[1] for r in imported] == recs and {r[2] for r in imported} == {1}


def test_import_again_or_after_mqtt_is_deduplicated(store_url, pulled):
    root, recs = pulled
    store = open_store(store_url)
    try:
        ingest = Ingest(store, SITE_KEY)
        ingest.batch("sim-0001", batch(recs[:50], last=50))  # what got through before
        t = do_import(store, [root])
        assert (t["stored"], t["duplicates"], t["ack"], t["problems"]) == (51, 50, 101, [])
        t = do_import(store, [root])
        assert (t["stored"], t["duplicates"], t["ack"], t["problems"]) == (0, 101, 101, [])
        assert len(rows(store)) == 101
    finally:
        store.close()


def test_a_gap_waits_and_a_fork_is_reported(store_url, pulled, tmp_path):
    root, recs = pulled
    # a pull with a stage file lost: the records after it wait for it, as over MQTT
    holed = tmp_path / "holed" / "journal"
    shutil.copytree(root, holed)
    stage = sorted((holed / "stage").iterdir())
    lost = next(p for p in stage if int.from_bytes(p.read_bytes()[4:8], "big") == 95)
    lost.unlink()
    store = open_store(store_url)
    try:
        t = do_import(store, [holed])
        assert t["ack"] == 94 and t["parked"] == 6 and t["stored"] == 94
        t = do_import(store, [root])  # the whole pull: the parked records are taken
        assert t["ack"] == 101 and len(rows(store)) == 101
        # another history under the same sequence numbers: a fork, kept as evidence
        other = firmware_records(tmp_path / "other" / "journal", [("boot", {})] + coin_day(10))
        assert other[0] != recs[0]
        t = do_import(store, [tmp_path / "other"])
        assert {k for k, _, _ in t["problems"]} == {"fork"} and len(t["problems"]) == 11
        assert t["stored"] == 0 and t["ack"] == 101
        evidence = store.query("SELECT count(*) FROM problems WHERE device = ? AND kind = ?",
                               ("sim-0001", "fork"))
        assert evidence[0][0] == 11
    finally:
        store.close()


def washpay(*args):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_cli(pulled, tmp_path):
    root, _ = pulled
    key = tmp_path / "site.key"
    key.write_text(SITE_KEY.hex() + "\n")
    db = tmp_path / "ledger.db"
    r = washpay("server", "import", str(root), "--device", "sim-0002", "--site-key", str(key),
                "--db", str(db))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("washpay server import: no record verifies with this key and device "
                        "id: wrong site key or --device?\n")
    assert not db.exists()  # nothing stored, no ledger made
    r = washpay("server", "import", str(tmp_path / "nothing"), "--device", "sim-0001",
                "--site-key", str(key), "--db", str(db))
    assert r.returncode == 2 and "cannot read" in r.stderr and "nothing" in r.stderr
    (tmp_path / "empty").mkdir()
    r = washpay("server", "import", str(tmp_path / "empty"), "--device", "sim-0001",
                "--site-key", str(key), "--db", str(db))
    assert r.returncode == 2 and "no journal records in" in r.stderr
    assert not db.exists()
    r = washpay("server", "import", str(root), "--device", "sim-0001", "--site-key", str(key),
                "--db", str(db))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("imported 101 records of sim-0001 (seq 1-101): 101 stored, 0 "
                               "already in the ledger, 0 waiting for missing records\n")
    assert "washpay journal settle --port P --device sim-0001" in r.stdout
    r = washpay("server", "report", "--db", str(db), "--format", "json")
    assert r.returncode == 0 and "sim-0001" in r.stdout
    assert Path(db).exists()
