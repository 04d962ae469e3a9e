"""Alerts, notices, remote start and refunds end to end: the whole firmware on the
simulated board under micropython, the real Mosquitto, `washpay server run`'s Server with
its alerts engine and courier threads on a SQLite ledger, the console in the same web
app, a local fake SMS gateway (a real HTTP server), and headless Chromium for the pages.

- a card linked to a phone (`washpay server phone link`) pays on the board; once the
  board's journal is uploaded, the low-balance SMS reaches the gateway;
- an attendant acknowledges an alert in the browser;
- an attendant's remote start with a reason starts the simulated washer;
- an attendant's refund over the limit is refused.

Screenshots of the pages go to $WASHPAY_CONSOLE_SCREENSHOTS (default docs/console, beside
the other console pages' own, named alerts-*)."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alerts_env import Receiver
from card_helpers import UID4, issued_image
from console_env import PASSWORD, add_operators
from sync_env import SITE_KEY, make_broker, online, sync_of, write_site_key
from test_card_device import card, card_key, lift, tap
from web_env import headless_chromium, wait_until

from host_tools.server.alerts import book, rules
from host_tools.server.alerts.config import parse
from host_tools.server.alerts.engine import raise_and_notify
from host_tools.server.notices import outbox
from host_tools.server.store import open_store

pytestmark = pytest.mark.device

ROOT = Path(__file__).resolve().parent.parent
# build/: a test run leaves the tree clean; WASHPAY_CONSOLE_SCREENSHOTS=docs/console refreshes
# the screenshots the README shows
SHOTS = Path(os.environ.get("WASHPAY_CONSOLE_SCREENSHOTS") or ROOT / "build" / "console-screens")
DEVICE = "sim-0001"
TOKEN = "gateway-token-7"
PHONE = "+4915112345678"
QUIET = lambda *a: None  # noqa: E731


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    from host_tools.server.service import Server
    from host_tools.server.web import Web
    from host_tools.sim.client import SimBoard

    tmp = tmp_path_factory.mktemp("alerts")
    gateway = Receiver(token=TOKEN)
    broker = make_broker(tmp / "broker").start()
    url = f"mqtt://127.0.0.1:{broker.port}"
    db = tmp / "ledger.db"
    alerts_doc = {"sms_gateway": {"url": gateway.url, "token": TOKEN},
                  "low_balance": {"threshold": 500}, "check_every_s": 0.5,
                  "delivery": {"backoff_s": 0.2}}
    server = sim = web = None
    try:
        server = Server(f"sqlite:///{db}", SITE_KEY, url, log=QUIET,
                        alerts=parse(alerts_doc)).start()
        st = tmp / "st"
        (st / "provision").mkdir(parents=True)
        cfg = {"device_id": DEVICE, "broker": url, "card": {"repeat_ms": 0},
               "sync": {"keepalive_s": 5, "backoff_min_ms": 200, "backoff_max_ms": 1000}}
        (st / "provision" / "config.json").write_text(json.dumps(cfg))
        write_site_key(st / "site.key")
        sim = SimBoard(st, log=tmp / "sim.log").start()
        online(sim)
        web = Web({"machines": {DEVICE: {"name": "Washer 1",
                                         "config": str(st / "provision" / "config.json")}},
                   "alerts": alerts_doc, "console": {"attendant_refund_limit": 300},
                   "sandbox": {"secret": "sandbox-test-secret"}},
                  f"sqlite:///{db}", SITE_KEY, server.send_command, log=QUIET
                  ).start("127.0.0.1", 0)
        add_operators(web)
        yield {"sim": sim, "server": server, "web": web, "db": db, "gateway": gateway}
    finally:
        if web:
            web.stop()
        if sim:
            sim.stop()
        if server:
            with contextlib.suppress(Exception):
                server.stop()
        broker.stop()
        gateway.close()


def _desktop_browser():
    return headless_chromium(1280, 900)  # the console is a desk screen first


@pytest.fixture(scope="module")
def browser(rig):
    b = _desktop_browser()
    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of the console's alert pages: {SHOTS}")
    try:
        yield b
    finally:
        b.quit()


wait = wait_until


def login(b, web, name):
    from selenium.webdriver.common.by import By

    b.delete_all_cookies()
    b.get(f"{web.url}/console/login")
    b.find_element(By.ID, "name").send_keys(name)
    b.find_element(By.ID, "password").send_keys(PASSWORD)
    b.find_element(By.ID, "login-submit").click()
    wait(lambda: b.find_elements(By.ID, "operator-name"), what="logged in")


def flashes(b):
    """The messages shown above the page ([] while a new page replaces the old one)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return [e.text for e in b.find_elements(By.CSS_SELECTOR, ".flash")]
    except StaleElementReferenceException:
        return []


def uploaded(sim):
    return sim.wait_for(lambda s: sync_of(s).get("acked") == s["journal"]["last_seq"],
                        timeout=30, what="the journal uploaded")


def end_cycle(sim):
    sim.call("washer", state="idle")
    sim.wait_for(lambda s: s["state"] in ("idle", "credit"), timeout=30, what="cycle's end")
    sim.call("washer", state="auto")


def test_a_linked_card_paying_below_its_threshold_gets_an_sms(rig):
    sim, gw = rig["sim"], rig["gateway"]
    r = subprocess.run([sys.executable, "-m", "host_tools.cli", "server", "phone", "link",
                        UID4.hex(), PHONE, "--db", str(rig["db"])],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"card {UID4.hex()} linked to {PHONE}"
    sim.select_program("quick")
    st = tap(sim, issued_image(UID4, 600, card_key=card_key(sim)))  # 6.00 - 2.50 = 3.50
    assert card(st)["last"]["result"].startswith("paid"), card(st)["last"]
    lift(sim)
    uploaded(sim)
    wait(lambda: gw.got, what="the SMS at the gateway")
    (_, path, headers, body) = gw.got[0]
    assert path == "/messages" and headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(body) == {
        "to": PHONE, "text": f"Your laundry card {UID4.hex()} has 3.50 EUR left. Top it up "
                             "before your next wash."}
    store = open_store(f"sqlite:///{rig['db']}")
    try:
        wait(lambda: [n for n in outbox.listing(store) if n["state"] == "sent"],
             what="the notice recorded as sent")
        (n,) = outbox.listing(store)
    finally:
        store.close()
    assert (n["channel"], n["destination"], n["attempts"]) == ("sms", PHONE, 1)
    sim.wait_for(lambda s: s["state"] == "running", what="the paid cycle running")
    end_cycle(sim)


def test_an_attendant_acknowledges_an_alert_in_the_browser(rig, browser):
    from selenium.webdriver.common.by import By

    web = rig["web"]
    with web.db.tx() as tx:
        (aid,) = raise_and_notify(tx, parse({}), rules.Alert(
            "start_failed", DEVICE, "", "warning",
            "washer did not start quick (no confirm): price given back as credit"))
    login(browser, web, "attendant")
    browser.get(f"{web.url}/console/alerts")
    row = browser.find_element(By.ID, f"alert-{aid}")
    row.find_element(By.NAME, "note").send_keys("door latch fixed")
    browser.save_screenshot(str(SHOTS / "alerts-1-open.png"))
    row.find_element(By.CSS_SELECTOR, "button.ack").click()
    wait(lambda: any("acknowledged" in f for f in flashes(browser)),
         what=f"the ack: {browser.current_url} {browser.find_element(By.TAG_NAME, 'main').text}")
    assert not browser.find_elements(By.ID, f"alert-{aid}")  # no longer open
    browser.get(f"{web.url}/console/alerts?state=all")
    row = browser.find_element(By.ID, f"alert-{aid}")
    assert row.get_attribute("data-state") == "acknowledged"
    assert "by attendant" in row.text and "door latch fixed" in row.text
    browser.save_screenshot(str(SHOTS / "alerts-2-acknowledged.png"))
    with web.db.tx() as tx:
        assert book.get(tx, aid)["acked_by"] == "attendant"


def test_a_remote_start_with_a_reason_starts_the_washer(rig, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    sim, web = rig["sim"], rig["web"]
    pulses = sim.wait_for(lambda s: s["state"] in ("idle", "credit"),
                          what="the machine free")["relay_pulses"]
    uploaded(sim)
    login(browser, web, "attendant")
    browser.get(f"{web.url}/console/remote-start")
    Select(browser.find_element(By.ID, "start-device")).select_by_value(DEVICE)
    Select(browser.find_element(By.ID, "start-program")).select_by_value("quick")
    browser.find_element(By.ID, "start-reason").send_keys("coins jammed, customer paid")
    browser.save_screenshot(str(SHOTS / "alerts-3-remote-start.png"))
    browser.find_element(By.ID, "start").click()
    msg = wait(lambda: [f for f in flashes(browser) if DEVICE in f], what="the reply")
    assert msg[0].startswith(f"{DEVICE} started quick (journal record"), msg
    st = sim.wait_for(lambda s: s["state"] == "running", what="the washer started")
    assert st["relay_pulses"] == pulses + 1  # the start relay drove the washer once
    uploaded(sim)
    store = open_store(f"sqlite:///{rig['db']}")
    try:
        rows = store.query(
            "SELECT r.type, c.args FROM records r JOIN commands c ON c.id = r.source "
            "WHERE r.device = ? AND r.type = 'remote_start'", (DEVICE,))
    finally:
        store.close()
    assert [(t, json.loads(a)["reason"]) for t, a in rows] == [
        ("remote_start", "coins jammed, customer paid")]
    audit = [r for r in web.console.accounts.audit_rows(limit=50)
             if r["action"] == "remote_start"]
    assert audit[0]["actor"] == "attendant" and audit[0]["target"] == DEVICE
    end_cycle(sim)


def test_an_attendants_refund_over_the_limit_is_refused(rig, browser):
    from selenium.webdriver.common.by import By

    web = rig["web"]
    login(browser, web, "attendant")
    browser.get(f"{web.url}/console/refunds")
    browser.find_element(By.ID, "refund-amount").send_keys("900")
    browser.find_element(By.ID, "refund-reason").send_keys("machine ate the coins")
    browser.find_element(By.ID, "refund").click()
    msg = wait(lambda: [f for f in flashes(browser) if "limit" in f], what="the refusal")
    assert msg[0].startswith("Over your limit: an attendant refunds at most 300")
    browser.save_screenshot(str(SHOTS / "alerts-4-refund-refused.png"))
    assert web.db.query("SELECT count(*) FROM console_refunds")[0][0] == 0
    # within the limit it is recorded
    browser.find_element(By.ID, "refund-amount").send_keys("200")
    browser.find_element(By.ID, "refund-reason").send_keys("machine ate the coins")
    browser.find_element(By.ID, "refund").click()
    msg = wait(lambda: [f for f in flashes(browser) if "Manual refund" in f],
               what="the refund")
    assert msg[0].endswith("recorded: give the customer the money.")
    assert [tuple(r) for r in web.db.query(
        "SELECT device, amount, operator FROM console_refunds")] == [(DEVICE, 200,
                                                                      "attendant")]
