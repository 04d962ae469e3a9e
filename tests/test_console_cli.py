"""`washpay server user add|remove|passwd|list` as processes, on a SQLite ledger and a
PostgreSQL one: passwords from a file or standard input (never an argument), clear errors
and nothing changed on bad input, an audit row per change, and the console's login takes
what the command wrote."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from host_tools.server.store import open_store
from host_tools.server.web.console.accounts import Accounts
from host_tools.server.web.db import LockedStore

ROOT = Path(__file__).resolve().parent.parent


def washpay(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, input=stdin, timeout=120)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    import psycopg

    base = request.getfixturevalue("pg_url")
    with psycopg.connect(base, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS users")
        c.execute("CREATE DATABASE users")
    return base.rsplit("/", 1)[0] + "/users"


def accounts(db):
    store = open_store(db)
    return store, Accounts(store, LockedStore(store).lock)


def test_user_lifecycle(db, tmp_path):
    pw = tmp_path / "ann.pw"
    pw.write_text("a long enough passphrase\n")
    r = washpay("server", "user", "add", "Ann", "--role", "owner", "--password-file", pw,
                "--db", db)
    assert r.returncode == 0, r.stderr
    assert "operator ann added (owner)" in r.stdout
    r = washpay("server", "user", "add", "bob", "--role", "viewer", "--password-file", "-",
                "--db", db, stdin="bobs own passphrase\n")
    assert r.returncode == 0, r.stderr
    r = washpay("server", "user", "list", "--json", "--db", db)
    users = json.loads(r.stdout)
    assert [(u["name"], u["role"]) for u in users] == [("ann", "owner"), ("bob", "viewer")]
    store, acc = accounts(db)
    try:
        assert acc.verify("ann", "a long enough passphrase") == "owner"
        assert acc.verify("bob", "bobs own passphrase") == "viewer"
        assert acc.verify("bob", "a long enough passphrase") is None
        # nothing of the password is kept in the clear
        stored = acc.query("SELECT password FROM operators WHERE name = 'bob'")[0][0]
        assert "bobs" not in stored and stored.startswith("scrypt$")
        token, _ = acc.open_session("bob", "127.0.0.1")
    finally:
        store.close()
    r = washpay("server", "user", "passwd", "bob", "--role", "attendant", "--password-file",
                "-", "--db", db, stdin="bobs second passphrase\n")
    assert r.returncode == 0, r.stderr
    assert "sessions ended" in r.stdout
    store, acc = accounts(db)
    try:
        assert acc.verify("bob", "bobs own passphrase") is None
        assert acc.verify("bob", "bobs second passphrase") == "attendant"
        assert acc.session(token, 1e9, 1e9) is None  # the new password ended it
    finally:
        store.close()
    r = washpay("server", "user", "remove", "bob", "--db", db)
    assert r.returncode == 0 and "removed" in r.stdout
    r = washpay("server", "user", "list", "--db", db)
    assert "ann" in r.stdout and "bob" not in r.stdout
    store, acc = accounts(db)
    try:
        rows = acc.audit_rows()
    finally:
        store.close()
    assert [(a["action"], a["target"]) for a in reversed(rows)] == [
        ("user_add", "ann"), ("user_add", "bob"), ("user_passwd", "bob"),
        ("user_remove", "bob")]
    assert all(a["actor"].startswith("cli:") for a in rows)


def test_bad_input_says_what_to_do_and_changes_nothing(db, tmp_path):
    short = tmp_path / "short.pw"
    short.write_text("short\n")
    good = tmp_path / "good.pw"
    good.write_text("a long enough passphrase\n")
    empty = tmp_path / "empty.pw"
    empty.write_text("")
    cases = [
        (("add", "ann", "--role", "owner", "--password-file", short), "at least 10"),
        (("add", "ann", "--role", "owner", "--password-file", empty), "first line"),
        (("add", "ann", "--role", "owner", "--password-file", tmp_path / "nope"),
         "cannot read --password-file"),
        (("add", "ann smith", "--role", "owner", "--password-file", good), "operator name"),
        (("passwd", "ghost", "--password-file", good), "no operator ghost"),
        (("remove", "ghost"), "no operator ghost"),
    ]
    for args, want in cases:
        r = washpay("server", "user", *args, "--db", db)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert want in r.stderr, (args, r.stderr)
    # no terminal and no file: refused rather than reading a password from a pipe unasked
    r = washpay("server", "user", "add", "ann", "--role", "owner", "--db", db, stdin="")
    assert r.returncode == 2 and "--password-file" in r.stderr
    # a role not offered is argparse's refusal
    r = washpay("server", "user", "add", "ann", "--role", "boss", "--db", db)
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = washpay("server", "user", "list", "--db", db)
    assert "no operators" in r.stdout
    # the last owner stays
    assert washpay("server", "user", "add", "ann", "--role", "owner", "--password-file",
                   good, "--db", db).returncode == 0
    r = washpay("server", "user", "remove", "ann", "--db", db)
    assert r.returncode == 2 and "last owner" in r.stderr
    r = washpay("server", "user", "add", "ann", "--role", "viewer", "--password-file", good,
                "--db", db)
    assert r.returncode == 2 and "exists" in r.stderr


def test_no_ledger_is_named(tmp_path):
    r = washpay("server", "user", "list", "--db", tmp_path / "missing.db")
    assert r.returncode == 2 and "no ledger at" in r.stderr
    assert not (tmp_path / "missing.db").exists()
