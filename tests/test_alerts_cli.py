"""`washpay server alerts|notices|phone` as an operator types them, and `server run`
refusing an alerts config it cannot use (exit status 2, what to fix, nothing started)."""

import json
import subprocess
import sys
from pathlib import Path

from sync_env import write_site_key

from host_tools.server.alerts import rules
from host_tools.server.alerts.config import parse
from host_tools.server.alerts.engine import create_tables, raise_and_notify
from host_tools.server.store import open_store

ROOT = Path(__file__).resolve().parent.parent


def washpay(*args):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_alerts_are_listed_and_acknowledged(tmp_path):
    db = tmp_path / "ledger.db"
    store = open_store(db)
    create_tables(store)
    with store.transaction() as tx:
        (aid,) = raise_and_notify(tx, parse({"webhooks": [
            {"url": "http://127.0.0.1:9/h", "secret": "s" * 16}]}), rules.Alert(
            "card_lockout", "sim-0001", "04a1b2c3", "warning", "card 04a1b2c3 locked out"))
        tx.execute("UPDATE notices SET state = 'dead', last_error = 'HTTP 500'")
    store.close()
    r = washpay("server", "alerts", "--db", db)
    assert r.returncode == 0
    assert "card_lockout" in r.stdout and "card 04a1b2c3 locked out" in r.stdout
    assert "not acknowledged" in r.stdout
    r = washpay("server", "alerts", "ack", aid, "--db", db)
    assert r.returncode == 2 and "--by NAME" in r.stderr
    r = washpay("server", "alerts", "ack", aid, "--by", "ann", "--note", "card kept", "--db", db)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"alert {aid} (card_lockout sim-0001) acknowledged by ann"
    r = washpay("server", "alerts", "ack", aid, "--by", "bob", "--db", db)
    assert r.returncode == 2 and "acknowledged by ann already" in r.stderr
    r = washpay("server", "alerts", "--state", "all", "--json", "--db", db)
    (a,) = json.loads(r.stdout)
    assert (a["acked_by"], a["ack_note"]) == ("ann", "card kept")
    assert washpay("server", "alerts", "--db", db).stdout.strip() == "no open alerts"
    # the dead letter
    r = washpay("server", "notices", "--state", "dead", "--db", db)
    assert r.returncode == 0 and "dead" in r.stdout and "last error: HTTP 500" in r.stdout
    nid = int(r.stdout.split()[0])
    r = washpay("server", "notices", "retry", nid, "--db", db)
    assert r.returncode == 0 and "queued again" in r.stdout
    r = washpay("server", "notices", "retry", nid, "--db", db)
    assert r.returncode == 2 and "not a dead letter" in r.stderr


def test_phone_links_from_the_command_line(tmp_path):
    db = tmp_path / "ledger.db"
    open_store(db).close()
    r = washpay("server", "phone", "link", "04a1b2c3", "0151 234", "--db", db)
    assert r.returncode == 2 and "an international number" in r.stderr
    r = washpay("server", "phone", "link", "04A1B2C3", "+44 7700 900123", "--threshold", 300,
                "--db", db)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "card 04a1b2c3 linked to +447700900123 (threshold 300)"
    r = washpay("server", "phone", "list", "--json", "--db", db)
    assert [(x["uid"], x["phone"], x["threshold"]) for x in json.loads(r.stdout)] == \
        [("04a1b2c3", "+447700900123", 300)]
    assert washpay("server", "phone", "unlink", "04a1b2c3", "--db", db).returncode == 0
    r = washpay("server", "phone", "unlink", "04a1b2c3", "--db", db)
    assert r.returncode == 2 and "is not linked" in r.stderr


def test_no_ledger_is_said(tmp_path):
    r = washpay("server", "alerts", "--db", tmp_path / "none.db")
    assert r.returncode == 2 and "no ledger at" in r.stderr


def test_server_run_refuses_an_alerts_config_it_cannot_use(tmp_path):
    cfg = tmp_path / "server.json"
    cfg.write_text(json.dumps({"alerts": {"webhooks": [{"url": "http://x", "secret": "abc"}]}}))
    key = write_site_key(tmp_path / "site.key")
    r = washpay("server", "run", "--site-key", key, "--broker", "mqtt://127.0.0.1:9",
                "--db", tmp_path / "ledger.db", "--web-config", cfg)
    assert r.returncode == 2
    assert "alerts.webhooks[0].secret: a shared secret of at least 16 characters" in r.stderr
