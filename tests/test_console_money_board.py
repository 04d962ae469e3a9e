"""The console's cards and prices pages acting on a real board: Debian's headless chromium
(Selenium) drives the console served by the web app, whose commands go out through the
ledger server's connection to the real Mosquitto, to the whole firmware on the simulated
board under micropython; what the board then does is read from the board itself.

- An owner blacklists a card on the card page: the board replies, the page shows it done,
  and the board refuses the card at the next tap (no start, the card untouched); the
  refusal reaches the ledger and the card page. Taken off the list, the card pays again.
- An owner pushes a price table on the prices page: the board replies, the page shows the
  version it holds, and coins then pay the new price.

Skipped, saying why, without chromium/chromedriver or Mosquitto."""

import contextlib
import json
import time

import pytest
from card_helpers import UID4, issued_image
from console_env import add_operators
from sync_env import SITE_KEY, command_rig, need_mosquitto
from test_console_money import attrs, fill_prices, go, login
from test_console_money import browser as browser  # noqa: F401,PLC0414 - the fixture

from host_tools import wallet as W
from host_tools.server.web import Web
from host_tools.sim.client import SimError

pytestmark = pytest.mark.device

DEVICE = "sim-0001"
UID = UID4.hex()


@pytest.fixture(scope="module")
def rig(tmp_path_factory, browser):  # noqa: F811 - the fixture imported above
    need_mosquitto()
    tmp = tmp_path_factory.mktemp("money-board")
    # repeat_ms 0: the test taps the card again within seconds, and means it
    with command_rig(tmp, {"pricing": {"version": 5}, "card": {"repeat_ms": 0}}) as r:
        cfg = {"machines": {DEVICE: {"name": "Washer 1", "config": str(
            r["state"] / "provision" / "config.json")}},
            "sandbox": {"secret": "sandbox-test-secret"}}
        web = Web(cfg, f"sqlite:///{r['db']}", SITE_KEY, r["server"].send_command,
                  log=lambda m: None).start("127.0.0.1", 0)
        add_operators(web)
        try:
            yield {**r, "web": web, "browser": browser}
        finally:
            web.stop()


def wait(pred, timeout=30.0, what="condition", every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def on_page(b, pred, what, timeout=30.0):
    """Reload the page until `pred()` holds (the page shows what the board did)."""
    def check():
        b.refresh()
        return pred()
    return wait(check, timeout, what, every=0.5)


def card_status(st):
    return st["firmware"]["card"]


def tap(sim, **what):
    """Hold a card to the reader once it has polled, wait until the firmware handled it;
    returns the screens shown since."""
    st = sim.wait_for(lambda s: card_status(s)["exchanges"] >= 2, what="the reader polling")
    taps, n0 = card_status(st)["counts"]["taps"], st["shown_n"]
    sim.call("card", action="tap", **what)
    st = sim.wait_for(lambda s: card_status(s)["counts"]["taps"] > taps, what="the tap")
    new = st["shown_n"] - n0
    return st, st["shown"][-new:] if new > 0 else st["shown"][-1:]


def free(sim):
    with contextlib.suppress(SimError):  # no card on the reader: nothing to lift
        sim.call("card", action="remove")
    if sim.status()["state"] == "running":
        sim.call("washer", state="idle")
    sim.wait_for(lambda s: s["state"] in ("idle", "credit"), what="the machine free")
    sim.call("washer", state="auto")


def ledger(rig, sql, args=()):
    return rig["server"].store.query(sql, args)


def test_a_card_blacklisted_in_the_console_is_refused_by_the_board(rig):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    sim, b, web = rig["sim"], rig["browser"], rig["web"]
    img = issued_image(UID4, 1000, card_key=W.site_card_key(SITE_KEY))
    st, _ = tap(sim, image=img)
    st = sim.wait_for(lambda s: s["state"] == "running", what="the card paying")
    pulses = st["relay_pulses"]
    free(sim)
    wait(lambda: ledger(rig, "SELECT balance FROM cards WHERE uid = ?", (UID,)),
         what="the card payment in the ledger")
    balance = ledger(rig, "SELECT balance FROM cards WHERE uid = ?", (UID,))[0][0]
    assert balance < 1000

    login(b, web, "owner")
    b.get(f"{web.url}/console/cards/{UID}")
    assert b.find_element(By.ID, "card-balance").get_attribute("data-balance") == str(balance)
    Select(b.find_element(By.NAME, "reason")).select_by_visible_text("lost")
    go(b, b.find_element(By.ID, "blacklist"))
    on_page(b, lambda: (DEVICE, "blacklisted", "done") in attrs(
        b, ".bl-row", "device", "state", "status"), "the board's reply to the blacklist")

    st, seen = tap(sim, uid=UID)
    assert any(s.startswith("Card blocked") for s in seen), seen
    st = sim.wait_for(lambda s: s["journal"]["last_type"] in ("card_refused", "type14"),
                      what="the refusal journaled")
    assert st["relay_pulses"] == pulses and st["state"] != "running"
    free(sim)
    # the refusal comes back through sync: the card page lists it
    on_page(b, lambda: ("card_refused",) in attrs(b, ".flag-row", "type"),
            "the refusal on the card page", timeout=60)
    row = ledger(rig, "SELECT reason FROM records WHERE type = 'card_refused' AND source = ?",
                 (UID,))
    assert row == [("blacklist: lost",)]

    go(b, b.find_element(By.ID, "unblacklist"))
    on_page(b, lambda: (DEVICE, "removed", "done") in attrs(
        b, ".bl-row", "device", "state", "status"), "the board's reply to the removal")
    tap(sim, uid=UID)
    st = sim.wait_for(lambda s: s["state"] == "running", what="the card paying again")
    assert st["relay_pulses"] == pulses + 1
    free(sim)


def test_a_price_table_pushed_in_the_console_is_charged_by_the_board(rig):
    from selenium.webdriver.common.by import By

    sim, b, web = rig["sim"], rig["browser"], rig["web"]
    login(b, web, "owner")
    b.get(f"{web.url}/console/prices?device={DEVICE}")
    assert dict(attrs(b, ".held-row", "device", "version"))[DEVICE] == "5"
    assert json.loads(b.find_element(By.ID, "prices-table").get_attribute("value")) == {
        "version": 5}
    fill_prices(b, {"version": 6, "rules": [{"percent": 20}]})  # +20 % all week
    go(b, b.find_element(By.ID, "prices-push"))
    on_page(b, lambda: (DEVICE, "6", "done") in attrs(
        b, ".history-row", "device", "version", "status"), "the board's reply to the prices")
    assert "prices v6 (was v5)" in b.find_element(
        By.CSS_SELECTOR, f'.history-row[data-device="{DEVICE}"]').text
    assert dict(attrs(b, ".held-row", "device", "version"))[DEVICE] == "6"
    progs = {p["name"]: p["price"] for p in sim.status()["firmware"]["programs"]}
    assert progs == {"quick": 300, "standard": 420, "heavy": 540}

    # coins pay the new price: 2.50 (the old one) is not enough for quick any more
    before = ledger(rig, "SELECT COALESCE(MAX(seq), 0) FROM records WHERE device = ?",
                    (DEVICE,))[0][0]
    sim.wait_for(lambda s: s["state"] in ("idle", "credit"), what="the machine free")
    sim.select_program("quick")
    sim.insert_coin(200)
    sim.insert_coin(50)
    sim.call("button", name="start")
    st = sim.wait_for(lambda s: "Insert 0.50" in s["display"], what="the shortfall")
    assert st["state"] == "credit"
    sim.insert_coin(50)
    sim.call("button", name="start")
    sim.wait_for(lambda s: s["state"] == "running", what="the vend running")
    free(sim)
    rows = wait(lambda: ledger(rig, "SELECT program, price FROM records WHERE device = ? "
                                    "AND type = 'vend_start' AND seq > ?", (DEVICE, before)),
                what="the vend in the ledger", timeout=60)
    assert rows == [("quick", 300)]
