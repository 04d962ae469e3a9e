"""The console's accounts and sessions: login, wrong passwords, lockout per operator and
per client address, CSRF, session expiry, audit rows; on SQLite and PostgreSQL. Through the
Flask app (the browser tests in test_console_browser.py do it again in Chromium)."""

import pytest
from console_env import PASSWORD, add_operators, csrf
from web_env import Clock, make_web

from host_tools.server.web.console.accounts import (
    AccountError,
    Accounts,
    check_password,
    hash_password,
)
from host_tools.server.web.db import LockedStore

LOCKOUT = {"lockout": {"user_failures": 3, "addr_failures": 5, "window_s": 600},
           "session_idle_s": 300, "session_max_s": 3600}


@pytest.fixture(params=["sqlite", "postgresql"])
def web(request, tmp_path):
    url = None
    if request.param == "postgresql":
        import psycopg

        base = request.getfixturevalue("pg_url")
        with psycopg.connect(base, autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS console")
            c.execute("CREATE DATABASE console")
        url = base.rsplit("/", 1)[0] + "/console"
    clock = Clock(1_800_000_000.0)
    w = make_web(tmp_path, config={"console": LOCKOUT}, clock=clock, store_url=url)
    w.clock = clock
    add_operators(w)
    yield w
    w.store.close()
    w.side.close()


def client(web, addr="10.0.0.1"):
    c = web.app.test_client()
    c.environ_base["REMOTE_ADDR"] = addr
    return c


def login(c, name, password=PASSWORD, next_url=""):
    tok = csrf(c.get("/console/login").text)
    return c.post("/console/login", data={"csrf": tok, "name": name, "password": password,
                                          "next": next_url})


def actions(web, **kw):
    return [r["action"] for r in web.console.accounts.audit_rows(**kw)]


def test_scrypt_hash_checks_only_its_password():
    h = hash_password("a long passphrase")
    assert h.startswith("scrypt$16384$8$1$")
    assert check_password(h, "a long passphrase")
    assert not check_password(h, "a long passphrasE")
    assert hash_password("a long passphrase") != h  # a new salt each time
    assert not check_password("md5$abc", "x") and not check_password("garbage", "x")


def test_login_opens_a_session_with_a_safe_cookie(web):
    c = client(web)
    r = login(c, "attendant")
    assert r.status_code == 303 and r.headers["Location"] == "/console/"
    cookie = r.headers["Set-Cookie"]
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/console"):
        assert flag in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    home = c.get("/console/")
    assert home.status_code == 200
    assert 'id="operator-role" class="role role-attendant">attendant' in home.text
    # the database holds only the token's hash: a copy of it opens no session
    rows = web.console.accounts.query("SELECT token_hash FROM operator_sessions")
    assert len(rows) == 1 and token not in rows[0][0]
    assert actions(web, actor="attendant") == ["login"]


def test_login_goes_back_to_the_page_asked_for_and_nowhere_else(web):
    c = client(web)
    r = c.get("/console/audit?actor=x")
    assert r.status_code == 302 and "next=/console/audit" in r.headers["Location"]
    assert login(c, "owner", next_url="/console/audit?actor=x").headers["Location"] == \
        "/console/audit?actor=x"
    c2 = client(web)
    assert login(c2, "owner", next_url="//evil.example/").headers["Location"] == "/console/"


def test_wrong_password_is_refused_and_audited(web):
    c = client(web)
    r = login(c, "viewer", "not the password")
    assert r.status_code == 401 and "Wrong name or password" in r.text
    assert "Set-Cookie" not in r.headers or "washpay_console" not in r.headers["Set-Cookie"]
    assert c.get("/console/").status_code == 302
    assert actions(web, actor="viewer") == ["login_failed"]
    # an unknown name gets the same answer
    r = login(c, "nobody", "not the password")
    assert r.status_code == 401 and "Wrong name or password" in r.text


def test_a_name_is_locked_after_repeated_failures_until_the_window_passes(web):
    c = client(web)
    for _ in range(3):
        assert login(c, "viewer", "wrong password!").status_code == 401
    # now even the right password is refused, from another address too
    r = login(client(web, "10.0.0.2"), "viewer")
    assert r.status_code == 429 and "Too many failed logins for this account" in r.text
    assert "login_locked" in actions(web, actor="viewer")
    # another operator from the first address is not locked
    assert login(c, "attendant").status_code == 303
    web.clock.t += 601
    assert login(client(web, "10.0.0.2"), "viewer").status_code == 303


def test_a_new_password_unlocks_a_locked_name(web):
    c = client(web)
    for _ in range(3):
        login(c, "viewer", "wrong password!")
    assert login(c, "viewer").status_code == 429
    web.console.accounts.passwd("viewer", "a brand new password")
    assert login(c, "viewer", "a brand new password").status_code == 303


def test_an_address_is_locked_after_failures_on_any_names(web):
    c = client(web, "10.9.9.9")
    for name in ("a1", "a2", "a3", "a4", "a5"):
        assert login(c, name, "guessing guessing").status_code == 401
    r = login(c, "owner")
    assert r.status_code == 429 and "this address" in r.text
    assert login(client(web, "10.9.9.10"), "owner").status_code == 303


def test_forms_without_the_csrf_token_are_refused(web):
    c = client(web)
    r = c.post("/console/login", data={"name": "owner", "password": PASSWORD})
    assert r.status_code == 400 and "form expired" in r.text
    assert login(c, "owner").status_code == 303
    # logged in: the session's own token is required; a wrong one ends nothing
    r = c.post("/console/logout", data={"csrf": "forged"})
    assert r.status_code == 400
    assert c.get("/console/").status_code == 200
    assert "csrf_refused" in actions(web, actor="owner")
    page = c.get("/console/").text
    r = c.post("/console/logout", data={"csrf": csrf(page)})
    assert r.status_code == 303
    assert c.get("/console/").status_code == 302
    assert actions(web, actor="owner")[0] == "logout"


def test_a_session_ends_when_idle_too_long(web):
    c = client(web)
    login(c, "viewer")
    web.clock.t += 299
    assert c.get("/console/").status_code == 200  # used: its idle time starts again
    web.clock.t += 299
    assert c.get("/console/").status_code == 200
    web.clock.t += 301
    r = c.get("/console/")
    assert r.status_code == 302 and "/console/login" in r.headers["Location"]
    assert web.console.accounts.query("SELECT COUNT(*) FROM operator_sessions")[0][0] == 0


def test_a_session_ends_at_its_maximum_age_even_in_use(web):
    c = client(web)
    login(c, "viewer")
    for _ in range(12):
        web.clock.t += 290
        assert c.get("/console/").status_code == 200
    web.clock.t += 290  # 3770 s after login, never idle 300 s
    assert c.get("/console/").status_code == 302


def test_removing_an_operator_ends_their_sessions_and_role_changes_apply_at_once(web):
    acc = web.console.accounts
    acc.add("carol", "owner", PASSWORD)
    c = client(web)
    login(c, "carol")
    assert c.get("/console/audit").status_code == 200
    # demoted in the database (as `user passwd --role` does, minus the session end)
    with acc.tx() as tx:
        tx.execute("UPDATE operators SET role = 'viewer' WHERE name = 'carol'")
    assert c.get("/console/audit").status_code == 403
    acc.remove("carol")
    assert c.get("/console/").status_code == 302


def test_account_rules(web):
    acc = web.console.accounts
    with pytest.raises(AccountError, match="at least 10"):
        acc.add("dave", "viewer", "short")
    with pytest.raises(AccountError, match="role 'boss'"):
        acc.add("dave", "boss", PASSWORD)
    with pytest.raises(AccountError, match="operator name"):
        acc.add("Dave Smith", "viewer", PASSWORD)
    with pytest.raises(AccountError, match="exists"):
        acc.add("owner", "owner", PASSWORD)
    with pytest.raises(AccountError, match="last owner"):
        acc.remove("owner")
    with pytest.raises(AccountError, match="last owner"):
        acc.passwd("owner", PASSWORD, role="viewer")
    with pytest.raises(AccountError, match="no operator"):
        acc.remove("zed")
    assert [u["name"] for u in acc.list()] == ["attendant", "owner", "viewer"]


def test_accounts_share_the_ledger_with_another_process(web):
    # `washpay server user add` opens the same database on its own connection
    from host_tools.server.store import open_store

    other = open_store(web.store.url if web.store.dialect != "sqlite" else web.store.path)
    try:
        Accounts(other, LockedStore(other).lock).add("erin", "attendant", PASSWORD)
    finally:
        other.close()
    c = client(web)
    assert login(c, "erin").status_code == 303
    assert "role-attendant" in c.get("/console/").text
