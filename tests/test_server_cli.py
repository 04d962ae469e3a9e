"""The operator's commands end to end, as processes: `washpay broker init|run`,
`washpay server run|report`, and a simulated board started with `washpay sim run --broker`."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sync_env import ledger, need_mosquitto, write_site_key

from host_tools.server.store import open_store
from host_tools.sim.client import SimClient

pytestmark = pytest.mark.device

ROOT = Path(__file__).resolve().parent.parent


def washpay(*args, **kw):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, **kw)


def start(*args, log):
    return subprocess.Popen([sys.executable, "-m", "host_tools.cli", *map(str, args)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_operator_flow_from_broker_to_report(tmp_path):
    need_mosquitto()
    key = write_site_key(tmp_path / "site.key")
    bdir = tmp_path / "broker"
    r = washpay("broker", "init", "--dir", bdir, "--site-key", key,
                "--device", "sim-0001,sim-0002")
    assert r.returncode == 0, r.stderr
    assert "2 device(s)" in r.stdout
    settings = json.loads((bdir / "broker.json").read_text())
    passwd = (bdir / "passwd").read_text()
    assert passwd.count("$7$") == 3 and "sim-0002:" in passwd  # two boards and the server
    procs = []
    try:
        procs.append(start("broker", "run", "--dir", bdir, log=tmp_path / "broker.log"))
        db = tmp_path / "ledger.db"
        deadline = time.monotonic() + 20
        while "mosquitto running" not in (tmp_path / "broker.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "broker.log").read_text()
            time.sleep(0.05)
        procs.append(start("server", "run", "--site-key", key, "--db", db, "--broker",
                           f"mqtt://127.0.0.1:{settings['port']}", log=tmp_path / "server.log"))
        state = tmp_path / "st"
        procs.append(start("sim", "run", "--state", state, "--quiet", "--site-key", key,
                           "--broker", f"mqtts://127.0.0.1:{settings['tls_port']}",
                           "--broker-ca", bdir / "ca.der", log=tmp_path / "sim.log"))
        deadline = time.monotonic() + 20
        while not (state / "ctl.sock").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sim = SimClient(state)
        sim.wait_ready()
        assert sim.call("coin", value=200)
        st = sim.wait_for(
            lambda s: (s["firmware"].get("sync") or {}).get("acked") == s["journal"]["last_seq"]
            and s["credit"] == 200, timeout=40, what="the coin acknowledged")
        broker_url = f"mqtt://127.0.0.1:{settings['port']}"
        common = ["--device", "sim-0001", "--site-key", key, "--broker", broker_url,
                  "--db", db]
        r = washpay("server", "command", "price", "quick=300", *common)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["prices"] == {"quick": 300}
        r = washpay("server", "command", "start", "--program", "quick", *common)
        assert r.returncode == 0 and json.loads(r.stdout)["result"] == "started", r.stdout
        sim.wait_for(lambda s: s["state"] == "running", what="the remote start")
        r = washpay("server", "command", "start", "--program", "nosuch", *common)
        assert r.returncode == 1 and json.loads(r.stdout)["result"] == "refused"
        r = washpay("server", "command", "price", "quick", *common)
        assert r.returncode != 0 and "PROGRAM=PRICE" in r.stderr
        st = sim.wait_for(
            lambda s: (s["firmware"].get("sync") or {}).get("acked") == s["journal"]["last_seq"],
            timeout=40, what="everything acknowledged")
        last = st["journal"]["last_seq"]
        sim.call("stop")
    finally:
        codes = [stop(p) for p in reversed(procs)]
    assert codes[1:] == [0, 0], (tmp_path / "server.log").read_text()
    store = open_store(db)
    assert sorted(ledger(store)) == list(range(1, last + 1))
    store.close()
    r = washpay("server", "report", "--db", db, "--format", "json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    cash = [x for x in rep["revenue"] if x["type"] == "cash"]
    assert cash == [{"device": "sim-0001", "day": cash[0]["day"], "type": "cash",
                     "currency": "EUR", "count": 1, "amount": 200}]
    # the terminal's start paid nothing: an operator's free start at the machine's price,
    # apart from revenue
    assert not [x for x in rep["revenue"] if x["type"] == "app"]
    assert [(x["count"], x["amount"]) for x in rep["operator_starts"]] == [(1, 300)]
    (dev,) = rep["devices"]
    assert dev["device"] == "sim-0001" and dev["backlog"] == 0 and dev["stored"] == last
    r = washpay("server", "report", "--db", db)
    assert r.returncode == 0 and "Revenue per device" in r.stdout and "2.00" in r.stdout
    store = open_store(db)
    rows = store.query("SELECT kind, status, args FROM commands ORDER BY created")
    store.close()
    assert [r[:2] for r in rows] == [("price", "done"), ("start", "started"),
                                     ("start", "refused")]
    assert json.loads(rows[1][2])["operator"].startswith("cli:")


def test_report_without_a_ledger_says_what_to_do(tmp_path):
    r = washpay("server", "report", "--db", tmp_path / "none.db")
    assert r.returncode == 2
    assert "no ledger at" in r.stderr and "washpay server run" in r.stderr


def test_broker_init_refuses_a_device_id_that_cannot_be_a_topic(tmp_path):
    key = write_site_key(tmp_path / "site.key")
    r = washpay("broker", "init", "--dir", tmp_path / "b", "--site-key", key,
                "--device", "laundry/7")
    assert r.returncode == 2
    assert "cannot be an MQTT user and topic level" in r.stderr


def test_server_run_with_a_missing_key_file(tmp_path):
    r = washpay("server", "run", "--site-key", tmp_path / "nokey", "--broker",
                "mqtt://127.0.0.1:1")
    assert r.returncode == 2 and "no site key at" in r.stderr and "washpay site init" in r.stderr


def test_server_run_with_no_broker_there(tmp_path):
    key = write_site_key(tmp_path / "site.key")
    r = washpay("server", "run", "--site-key", key, "--db", tmp_path / "l.db",
                "--broker", "mqtt://127.0.0.1:9")
    assert r.returncode == 2 and "no connection to the broker" in r.stderr


def test_server_problems_lists_and_resolves(tmp_path):
    from sync_env import SITE_KEY, coin_day, firmware_records

    from host_tools.server import wire
    from host_tools.server.ingest import Ingest

    db = tmp_path / "ledger.db"
    store = open_store(db)
    ing = Ingest(store, SITE_KEY)
    day = firmware_records(tmp_path / "j", [("boot", {})] + coin_day(6))
    ing.batch("sim-0001", wire.build_batch(day[:3], 7))
    ing.batch("sim-0001", b"\x07")  # malformed
    ing.batch("sim-0001", wire.build_batch([day[2][:40] + bytes([day[2][40] ^ 1]) + day[2][41:]],
                                           7))  # record 3 again, different
    store.close()
    r = washpay("server", "problems", "--db", db, "--json")
    assert r.returncode == 0, r.stderr
    found = {p["kind"]: p for p in json.loads(r.stdout)}
    assert set(found) == {"malformed", "fork"}
    assert found["malformed"]["state"] == "open" and found["malformed"]["data_lost"] is None
    fork = found["fork"]["id"]
    r = washpay("server", "problems", "--db", db)
    assert "fork at 3  open, data lost: no" in r.stdout, r.stdout
    # a problem whose loss is not known needs the operator to say
    r = washpay("server", "problems", "--db", db, "--resolve", found["malformed"]["id"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--lost or --no-loss" in r.stderr
    r = washpay("server", "problems", "--db", db, "--resolve", 999)
    assert r.returncode == 2 and "no problem 999" in r.stderr
    r = washpay("server", "problems", "--db", db, "--resolve", fork, "--note", "board swapped")
    assert r.returncode == 0 and "data lost: no" in r.stdout, r.stderr
    r = washpay("server", "problems", "--db", db, "--resolve", found["malformed"]["id"],
                "--lost")
    assert r.returncode == 0, r.stderr
    r = washpay("server", "problems", "--db", db)
    assert r.stdout.strip() == "no open problems"
    r = washpay("server", "problems", "--db", db, "--all", "--json")
    got = {p["kind"]: (p["state"], p["data_lost"], p["resolution"]) for p in json.loads(r.stdout)}
    assert got == {"fork": ("resolved", "no", "operator: board swapped"),
                   "malformed": ("resolved", "yes", "operator: data lost")}
    r = washpay("server", "report", "--db", db, "--format", "json")
    rep = json.loads(r.stdout)
    assert rep["problems"] == []
    assert {(p["kind"], p["data_lost"]) for p in rep["resolved"]} == {("fork", "no"),
                                                                      ("malformed", "yes")}
