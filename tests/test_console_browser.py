"""The operator console in a real browser: Debian's headless chromium driven by Selenium,
the console served by the web app in the ledger server's process, the real Mosquitto and
the whole firmware on the simulated board under micropython.

Logging in (a wrong password first), a name locked after repeated failures, a sale on the
board appearing on the fleet and device pages once synced, asking the board for its status
(its firmware version and journal level then shown), a forged form refused, a session
that ended, a viewer kept out of an owner's page, and the audit log of all of it.

Screenshots of the main pages go to $WASHPAY_CONSOLE_SCREENSHOTS (default docs/console in
the repository: the README shows them). Skipped, saying why, without chromium and
chromedriver (scripts/system-packages.sh installs them) or without Mosquitto."""

import os
import time
from pathlib import Path

import pytest
from console_env import PASSWORD, add_operators
from sync_env import SITE_KEY, command_rig, need_mosquitto
from web_env import headless_chromium, wait_until

from host_tools.server.web import Web

pytestmark = pytest.mark.device

ROOT = Path(__file__).resolve().parent.parent
# build/: a test run leaves the tree clean; WASHPAY_CONSOLE_SCREENSHOTS=docs/console refreshes
# the screenshots the README shows
SHOTS = Path(os.environ.get("WASHPAY_CONSOLE_SCREENSHOTS") or ROOT / "build" / "console-screens")
DEVICE = "sim-0001"
CONSOLE = {"lockout": {"user_failures": 3, "addr_failures": 50, "window_s": 600},
           "session_idle_s": 600}


def _browser():
    return headless_chromium(1280, 860)  # an office screen: the console is read at a desk


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    need_mosquitto()
    browser = _browser()
    tmp = tmp_path_factory.mktemp("console")
    try:
        with command_rig(tmp) as r:
            cfg = {"machines": {DEVICE: {"name": "Washer 1 (ground floor)",
                                         "config": str(r["state"] / "provision" /
                                                       "config.json")}},
                   "sandbox": {"secret": "sandbox-test-secret"}, "console": CONSOLE}
            web = Web(cfg, f"sqlite:///{r['db']}", SITE_KEY, r["server"].send_command,
                      log=lambda m: None).start("127.0.0.1", 0)
            add_operators(web)
            SHOTS.mkdir(parents=True, exist_ok=True)
            print(f"\nscreenshots of the console: {SHOTS}")
            try:
                yield {**r, "web": web, "browser": browser}
            finally:
                web.stop()
    finally:
        browser.quit()


def shot(b, name):
    b.save_screenshot(str(SHOTS / f"{name}.png"))


wait = wait_until


def by_id(b, i):
    from selenium.webdriver.common.by import By

    return b.find_element(By.ID, i)


def text_of(b, i):
    from selenium.webdriver.common.by import By

    found = b.find_elements(By.ID, i)
    return found[0].text if found else None


def login(b, url, name, password=PASSWORD, path="/console/login"):
    b.get(url + path)
    wait(lambda: text_of(b, "login-submit") is not None, what="the login form")
    by_id(b, "name").send_keys(name)
    by_id(b, "password").send_keys(password)
    by_id(b, "login-submit").click()


def logout(b):
    if text_of(b, "logout") is not None:
        by_id(b, "logout").click()
        wait(lambda: text_of(b, "logged-out") is not None, what="logged out")
    b.delete_all_cookies()


def audit(rig, **kw):
    return rig["web"].console.accounts.audit_rows(**kw)


def idle(sim):
    sim.wait_for(lambda s: s["state"] in ("idle", "credit"), timeout=60,
                 what="the machine free")
    sim.wait_for(lambda s: ((s.get("firmware") or {}).get("sync") or {}).get("acked")
                 == (s.get("journal") or {}).get("last_seq"), timeout=30,
                 what="the journal uploaded")


def test_login_refuses_a_wrong_password_then_lets_the_owner_in(rig):
    b, web = rig["browser"], rig["web"]
    b.get(web.url + "/console/fleet")
    wait(lambda: "/console/login" in b.current_url, what="the way to the login page")
    shot(b, "1-login")
    login(b, web.url, "owner", "not my password at all", path=b.current_url[len(web.url):])
    wait(lambda: text_of(b, "error-code"), what="the refusal")
    assert text_of(b, "error-code") == "Wrong name or password"
    assert text_of(b, "operator-name") is None
    assert audit(rig, action="login_failed")[0]["target"] == "owner"
    login(b, web.url, "owner", path="/console/login?next=/console/fleet")
    wait(lambda: b.current_url.endswith("/console/fleet"), what="the fleet page")
    assert text_of(b, "operator-name") == "owner"
    assert text_of(b, "operator-role") == "owner"
    cookie = b.get_cookie("washpay_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/console"
    logout(b)


def test_a_name_is_locked_after_repeated_failures(rig):
    b, web = rig["browser"], rig["web"]
    for _ in range(3):
        login(b, web.url, "attendant", "guessing the password")
        wait(lambda: text_of(b, "error-code"), what="the refusal")
        assert text_of(b, "error-code") == "Wrong name or password"
    login(b, web.url, "attendant")  # the right password, too late
    wait(lambda: text_of(b, "error-code"), what="the lockout")
    assert text_of(b, "error-code") == "Locked out"
    assert "Too many failed logins for this account" in text_of(b, "error-message")
    shot(b, "6-locked-out")
    assert text_of(b, "operator-name") is None
    assert audit(rig, action="login_locked")[0]["target"] == "attendant"
    # an owner unlocks it with a new password
    web.console.accounts.passwd("attendant", PASSWORD)
    login(b, web.url, "attendant")
    wait(lambda: text_of(b, "operator-role"), what="logged in")
    assert text_of(b, "operator-role") == "attendant"
    logout(b)


def text_of_version(sim):
    return sim.status()["firmware"]["version"]


def pay_coin(sim, value, tries=8):
    """Drop a coin; again if the board gave it back (a pulse train a loaded host could not
    time is journaled coin_rejected and credits nothing, as on a real acceptor)."""
    for _ in range(tries):
        st = sim.firmware_status()
        credit, count = st["credit"], st["journal"]["count"]
        sim.call("coin", value=value)
        st = sim.wait_for(lambda s, c=credit, n=count: s["credit"] > c or (
            s["journal"]["count"] > n and s["journal"]["last_type"] == "coin_rejected"),
            timeout=15, what="the coin credited or given back")
        if st["credit"] > credit:
            return st
    raise AssertionError(f"the board gave back {tries} coins of {value}: host too loaded?")


def test_a_sale_on_the_board_shows_on_the_fleet_and_device_pages(rig):
    sim, b, web = rig["sim"], rig["browser"], rig["web"]
    idle(sim)
    st = sim.firmware_status()
    program = st["program"]
    price = next(p["price"] for p in st["firmware"]["programs"] if p["name"] == program)
    while sim.status()["credit"] < price:
        pay_coin(sim, 50)
    sim.call("button", name="start")
    sim.wait_for(lambda s: s["state"] in ("starting", "running"), timeout=20,
                 what="the vend")
    idle(sim)
    last = sim.status()["journal"]["last_seq"]

    login(b, web.url, "attendant", path="/console/login?next=/console/fleet")
    wait(lambda: b.current_url.endswith("/console/fleet"), what="the fleet page")
    row = by_id(b, f"dev-{DEVICE}")
    assert row.get_attribute("data-online") == "1"
    assert "Washer 1 (ground floor)" in row.text and "online" in row.text
    from selenium.webdriver.common.by import By

    assert row.find_element(By.CLASS_NAME, "backlog").text.startswith("0")
    row.find_element(By.TAG_NAME, "a").click()
    wait(lambda: text_of(b, "events"), what="the device page")
    types = [r.get_attribute("data-type") for r in b.find_elements(By.CLASS_NAME, "event-row")]
    seqs = [int(r.get_attribute("data-seq"))
            for r in b.find_elements(By.CLASS_NAME, "event-row")]
    assert seqs[0] == last  # the board's newest record, through MQTT into the ledger
    assert "vend_start" in types and types.count("coin") >= 2
    coins = [r.text for r in b.find_elements(By.CSS_SELECTOR, ".event-row[data-type=coin]")]
    assert any("0.50 EUR" in t for t in coins)
    assert "Every record stored verified" in text_of(b, "verification")
    assert text_of(b, "v-stored").startswith(f"{last} ({last} verified)")

    # the firmware version and journal level come with the board's status: ask for it
    assert "ask for status" in text_of(b, "firmware")
    by_id(b, "ask-status").click()
    wait(lambda: "Status asked" in b.page_source, what="the request sent")

    def answered():
        b.refresh()
        return "ask for status" not in (text_of(b, "firmware") or "ask for status")

    wait(answered, timeout=30, what="the board's status reply on the page")
    assert text_of(b, "firmware") == text_of_version(sim)
    assert text_of(b, "journal-level").startswith("ok, ")
    shot(b, "3-device")
    b.get(web.url + "/console/fleet")
    wait(lambda: text_of(b, "fleet"), what="the fleet page")
    row = by_id(b, f"dev-{DEVICE}")
    assert row.find_element(By.CLASS_NAME, "firmware").text == text_of_version(sim)
    assert row.find_element(By.CLASS_NAME, "journal").text == "ok"
    shot(b, "2-fleet")
    rows = audit(rig, action="status_request")
    assert rows[0]["actor"] == "attendant" and rows[0]["target"] == DEVICE
    done = web.db.query("SELECT status FROM commands WHERE id = ?",
                        (rows[0]["detail"]["command"],))
    assert done == [("done",)]


def test_a_forged_form_is_refused(rig):
    b, web = rig["browser"], rig["web"]
    b.get(f"{web.url}/console/devices/{DEVICE}")
    wait(lambda: text_of(b, "ask-status"), what="the device page")
    sent = web.db.query("SELECT COUNT(*) FROM commands WHERE kind = 'status'")[0][0]
    # a page elsewhere posting to the console has no token; here: the token replaced
    b.execute_script("const f = document.getElementById('ask-status').form;"
                     "f.querySelector('input[name=csrf]').value = 'forged'; f.submit();")
    wait(lambda: text_of(b, "error-code"), what="the refusal")
    assert "did not come from this console" in text_of(b, "error-message")
    assert web.db.query("SELECT COUNT(*) FROM commands WHERE kind = 'status'")[0][0] == sent
    assert audit(rig, action="csrf_refused")[0]["actor"] == "attendant"


def test_a_session_ends_after_its_idle_time(rig):
    b, web = rig["browser"], rig["web"]
    b.get(web.url + "/console/")
    wait(lambda: text_of(b, "operator-name"), what="still logged in")
    real = web.console.clock
    web.console.clock = lambda: time.time() + CONSOLE["session_idle_s"] + 5
    try:
        b.get(web.url + "/console/fleet")
        wait(lambda: "/console/login" in b.current_url, what="the login page again")
        assert text_of(b, "operator-name") is None
    finally:
        web.console.clock = real
    # the session is gone for good, not just hidden for a while
    b.get(web.url + "/console/fleet")
    wait(lambda: "/console/login" in b.current_url, what="still the login page")
    b.delete_all_cookies()


def test_a_viewer_sees_the_fleet_but_not_the_owners_pages(rig):
    b, web = rig["browser"], rig["web"]
    login(b, web.url, "viewer")
    wait(lambda: text_of(b, "operator-role"), what="logged in")
    shot(b, "5-home-viewer")
    nav = text_of(b, "console-nav")
    assert "Fleet" in nav and "Audit log" not in nav
    b.get(f"{web.url}/console/devices/{DEVICE}")
    wait(lambda: text_of(b, "events"), what="the device page")
    assert text_of(b, "ask-status") is None  # no button for a viewer
    b.get(web.url + "/console/audit")
    wait(lambda: text_of(b, "error-code"), what="the refusal")
    assert text_of(b, "error-code") == "Not allowed"
    assert "needs the owner role" in text_of(b, "error-message")
    logout(b)


def test_the_owner_reads_the_audit_log(rig):
    from selenium.webdriver.common.by import By

    b, web = rig["browser"], rig["web"]
    login(b, web.url, "owner", path="/console/login?next=/console/audit")
    wait(lambda: text_of(b, "audit"), what="the audit log")
    actions = [r.get_attribute("data-action")
               for r in b.find_elements(By.CLASS_NAME, "audit-row")]
    for a in ("login", "login_failed", "login_locked", "logout", "status_request",
              "csrf_refused", "refused"):
        assert a in actions, a
    shot(b, "4-audit")
    logout(b)
