"""Pay by phone in a real browser: Debian's headless chromium driven by Selenium, the
customer's pages served by the web app in the ledger server's process, the sandbox
provider's signed webhooks over HTTP (every one delivered three times, out of order), the
real Mosquitto and the whole firmware on the simulated board under micropython.

Screenshots of the customer's pages go to $WASHPAY_SCREENSHOTS (default build/phone-screens
in the repository); the test prints where. Skipped, saying why, without chromium and
chromedriver (scripts/system-packages.sh installs them) or without Mosquitto."""

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sync_env import SITE_KEY, command_rig
from web_env import headless_chromium, wait_until

from host_tools.server.web import Web
from host_tools.server.web import db as D
from host_tools.server.web.providers import sign

pytestmark = pytest.mark.device

ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("WASHPAY_SCREENSHOTS") or ROOT / "build" / "phone-screens")
DEVICE = "sim-0001"


def _browser():
    return headless_chromium(412, 915, phone=True)  # the pages are read on a phone


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    browser = _browser()
    tmp = tmp_path_factory.mktemp("phone")
    try:
        with command_rig(tmp, {"start_confirm_ms": 1200, "start_retries": 1}) as r:
            cfg = {"machines": {DEVICE: {"name": "Washer 1 (ground floor)",
                                         "config": str(r["state"] / "provision" /
                                                       "config.json")}},
                   "confirm_s": 15,
                   "sandbox": {"secret": "sandbox-test-secret", "duplicates": 2,
                               "reorder": True}}
            web = Web(cfg, f"sqlite:///{r['db']}", SITE_KEY, r["server"].send_command,
                      log=lambda m: None).start("127.0.0.1", 0)
            SHOTS.mkdir(parents=True, exist_ok=True)
            print(f"\nscreenshots of the customer's pages: {SHOTS}")
            try:
                yield {**r, "web": web, "browser": browser}
            finally:
                web.stop()
    finally:
        browser.quit()


def shot(b, name):
    b.save_screenshot(str(SHOTS / f"{name}.png"))


wait = wait_until


def page_state(b):
    from selenium.webdriver.common.by import By

    return b.find_element(By.ID, "pay-state").get_attribute("data-state")


def buy(rig, program, name):
    """Scan, choose `program`, pay in the sandbox: the payment page's id."""
    from selenium.webdriver.common.by import By

    b, web = rig["browser"], rig["web"]
    b.get(f"{web.url}/m/{DEVICE}")
    wait(lambda: b.find_elements(By.ID, f"pay-{program}"), what="the pay button")
    shot(b, f"{name}-1-machine")
    b.find_element(By.ID, f"pay-{program}").click()
    wait(lambda: b.find_elements(By.ID, "sandbox-pay"), what="the sandbox checkout")
    shot(b, f"{name}-2-checkout")
    b.find_element(By.ID, "sandbox-pay").click()
    wait(lambda: "/p/" in b.current_url, what="the payment page")
    return b.current_url.rsplit("/", 1)[1]


def idle(sim):
    sim.wait_for(lambda s: s["state"] in ("idle", "credit"), timeout=30,
                 what="the machine free")
    # and the ledger knows it (the journal's last record uploaded)
    sim.wait_for(lambda s: ((s.get("firmware") or {}).get("sync") or {}).get("acked")
                 == (s.get("journal") or {}).get("last_seq"), timeout=30,
                 what="the journal uploaded")


def remote_starts(rig):
    return rig["server"].store.query(
        "SELECT COUNT(*) FROM records WHERE device = ? AND type = 'remote_start'",
        (DEVICE,))[0][0]


def test_pay_and_the_machine_starts_once(rig):
    sim, b, web = rig["sim"], rig["browser"], rig["web"]
    idle(sim)
    before = sim.status()["relay_pulses"]
    pid = buy(rig, "quick", "paid")
    wait(lambda: page_state(b) == D.RUNNING, what="the page saying started")
    shot(b, "paid-3-started")
    assert sim.status()["relay_pulses"] == before + 1
    # three deliveries of each of two events (reordered): one start command, one start
    row = web.db.get(pid)
    assert row["amount"] == 250 and row["state"] == D.RUNNING
    assert web.db.query("SELECT COUNT(*) FROM commands WHERE kind = 'start'")[0][0] == 1
    assert remote_starts(rig) == 1
    kinds = [e["kind"] for e in web.db.events(pid)]
    assert kinds.count("checkout.completed") == 1 and kinds.count("payment.pending") == 1
    assert kinds.count("command") == 1


def test_washer_never_confirms_is_refunded_not_credited(rig):
    """Issue 15: charged, and the machine did not start, ends in a refund: the board keeps
    no credit of it (the next customer washes for nothing else) and the page says so."""
    sim, b, web = rig["sim"], rig["browser"], rig["web"]
    idle(sim)
    credit = sim.status()["credit"]
    sim.call("washer", state="idle")  # the washer ignores the relay
    try:
        before = sim.status()["relay_pulses"]
        pid = buy(rig, "standard", "noconfirm")
        wait(lambda: page_state(b) == D.REFUNDED, what="the page saying refunded")
        shot(b, "noconfirm-3-not-started-refunded")
        assert "Not started: refunded" in b.page_source
        st = sim.status()
        assert st["credit"] == credit and st["relay_pulses"] == before + 2
        row = web.db.get(pid)
        assert row["refund_ref"] in web.provider.refunds and row["start_seq"] is not None
        assert web.provider.refunds[row["refund_ref"]]["amount"] == 350
    finally:
        sim.call("washer", state="auto")


def test_refused_start_is_refunded_and_shown(rig):
    sim, b, web = rig["sim"], rig["browser"], rig["web"]
    idle(sim)
    sim.call("door", state="open")  # the board refuses: "close the door"
    try:
        before = sim.status()["relay_pulses"]
        pid = buy(rig, "heavy", "refused")
        wait(lambda: page_state(b) == D.REFUNDED, what="the page saying refunded")
        shot(b, "refused-3-refunded")
        assert "refunded" in b.page_source and "close the door" in b.page_source
        assert sim.status()["relay_pulses"] == before
        row = web.db.get(pid)
        assert row["refund_ref"] in web.provider.refunds and "close the door" in row["detail"]
    finally:
        sim.call("door", state="closed")


def test_no_answer_is_refunded_and_the_late_command_starts_nothing(rig):
    """The board drops off between checkout and payment: no answer within the window →
    refunded; when it comes back, its persistent session brings it the command, which has
    expired (its validity is the window): refused, nothing starts."""
    from selenium.webdriver.common.by import By

    sim, b, web = rig["sim"], rig["browser"], rig["web"]
    idle(sim)
    web.payments.confirm_s = 3  # a short window for the test (the rig's is 15 s)
    before = sim.status()["relay_pulses"]
    try:
        b.get(f"{web.url}/m/{DEVICE}")
        b.find_element(By.ID, "pay-quick").click()
        wait(lambda: b.find_elements(By.ID, "sandbox-pay"), what="the sandbox checkout")
        sim.call("net", state="down")
        sim.wait_for(lambda s: ((s.get("firmware") or {}).get("sync") or {}).get("link")
                     != "up", timeout=20, what="the board's link down")
        b.find_element(By.ID, "sandbox-pay").click()
        wait(lambda: "/p/" in b.current_url, what="the payment page")
        pid = b.current_url.rsplit("/", 1)[1]
        wait(lambda: page_state(b) == D.REFUNDED, what="the page saying refunded")
        shot(b, "noanswer-3-refunded")
        assert "did not answer" in b.page_source
    finally:
        web.payments.confirm_s = 15
        sim.call("net", state="up")
    idle(sim)
    row = web.db.get(pid)
    # the board's session kept the command: it gets it now, and refuses it as expired
    late = wait(lambda: [r for r in web.db.query(
        "SELECT status, result FROM commands WHERE id = ?", (row["command_id"],))
        if r[0] != "sent"], timeout=30, what="the board's answer to the late command")
    assert late[0][0] == "refused" and json.loads(late[0][1])["reason"] == "expired"
    assert sim.status()["relay_pulses"] == before
    assert row["state"] == D.REFUNDED and row["refund_ref"] in web.provider.refunds


def test_forged_webhook_starts_nothing(rig):
    from selenium.webdriver.common.by import By

    sim, b, web = rig["sim"], rig["browser"], rig["web"]
    idle(sim)
    b.get(f"{web.url}/m/{DEVICE}")
    b.find_element(By.ID, "pay-quick").click()
    wait(lambda: b.find_elements(By.ID, "sandbox-pay"), what="the sandbox checkout")
    ref = b.current_url.rsplit("/", 1)[1]
    pid = web.provider.session(ref)["payment"]
    commands = web.db.query("SELECT COUNT(*) FROM commands")[0][0]
    ev = {"id": "evt_forged", "type": "checkout.completed",
          "data": {"session": ref, "payment": pid, "amount": 250, "charge": "x"}}
    body = json.dumps(ev).encode()
    for secret, t in (("guessed-secret", time.time()), ("sandbox-test-secret",
                                                         time.time() - 3600)):
        req = urllib.request.Request(f"{web.url}/webhook/sandbox", data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Sandbox-Signature": sign(secret, body, t)})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 400
    time.sleep(0.5)  # the settler runs every 0.2 s: it has nothing to do
    assert web.db.get(pid)["state"] == D.CREATED
    assert web.db.query("SELECT COUNT(*) FROM commands")[0][0] == commands


def test_unknown_device_is_404(rig):
    b, web = rig["browser"], rig["web"]
    b.get(f"{web.url}/m/no-such-washer")
    assert "No such machine" in b.page_source
    shot(b, "unknown-404")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{web.url}/m/no-such-washer", timeout=10)
    assert e.value.code == 404


def test_offline_board_token_bought_shown_scanned(rig):
    from selenium.webdriver.common.by import By

    sim, b, web = rig["sim"], rig["browser"], rig["web"]
    idle(sim)
    sim.call("net", state="down")
    try:
        # the broker publishes the board's last will when the link dies
        wait(lambda: web.machines.state(DEVICE)["state"] == "offline", timeout=30,
             what="the server seeing the board offline")
        b.get(f"{web.url}/m/{DEVICE}")
        assert not b.find_elements(By.ID, "pay-quick")  # no remote start for an offline board
        shot(b, "offline-1-machine")
        b.find_element(By.ID, "token-quick").click()
        wait(lambda: b.find_elements(By.ID, "sandbox-pay"), what="the sandbox checkout")
        b.find_element(By.ID, "sandbox-pay").click()
        wait(lambda: b.find_elements(By.ID, "token-qr"), what="the QR code on the phone")
        shot(b, "offline-2-qr-code")
        text = b.find_element(By.ID, "token-text").text
        before = sim.status()["relay_pulses"]
        sim.call("qr", text=text)  # held to the machine's scanner
        sim.wait_for(lambda s: s["relay_pulses"] == before + 1, timeout=20,
                     what="the relay for the token")
    finally:
        sim.call("net", state="up")
    wait(lambda: page_state(b) == D.USED, timeout=60, what="the page saying the code was used")
    shot(b, "offline-3-used")
    assert not b.find_elements(By.ID, "token-qr")
