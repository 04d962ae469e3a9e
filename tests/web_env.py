"""What the pay-by-phone tests share: a Web app on a SQLite ledger with a fake command
sender (it records each command in the ledger's commands table, as Server.send_command
does), a clock the test moves, and helpers that play the board's part in the ledger."""

import json
import re
import time

from conftest import wait_until  # noqa: F401 - the browser tests take it from here

from host_tools.server.ingest import Ingest
from host_tools.server.web import Web

SITE_KEY = bytes(range(32))
DEVICE = "sim-0001"


class Clock:
    def __init__(self, t=None):
        self.t = time.time() if t is None else t

    def __call__(self):
        return self.t


class Sender:
    def __init__(self, store):
        self.store = store
        self.sent = []

    def __call__(self, device, cid, kind, body, args=None, expires=None):
        self.sent.append((device, cid, kind, body, args, expires))
        with self.store.transaction() as tx:
            tx.execute("INSERT INTO commands (id, device, kind, args, body, created, expires, "
                       "status) VALUES (?, ?, ?, ?, ?, ?, ?, 'sent')",
                       (cid, device, kind, json.dumps(args or {}), body, time.time(), expires))
        return 0


def make_web(tmp, config=None, provider=None, clock=None, store_url=None):
    cfg = {"machines": {DEVICE: {"name": "Washer 1"}}, "confirm_s": 20,
           "sandbox": {"secret": "s3cr3t-sandbox-key"}}
    cfg.update(config or {})
    from host_tools.server.store import open_store

    url = store_url or f"sqlite:///{tmp / 'ledger.db'}"
    side = open_store(url)
    sender = Sender(side)
    web = Web(cfg, url, SITE_KEY, sender, log=lambda m: None,
              provider=provider, clock=clock)
    web.side, web.sender = side, sender
    return web


def set_online(web, device=DEVICE, online=True):
    Ingest(web.side, SITE_KEY).state(device, b"online" if online else b"offline")


def add_record(web, device, rtype, state, program="quick", source=None, amount=None,
               t=None, reason=None, source_kind=""):
    with web.side.transaction() as tx:
        row = tx.one("SELECT COALESCE(MAX(seq), 0) FROM records WHERE device = ?", (device,))
        seq = row[0] + 1
        tx.execute("INSERT INTO records (device, seq, raw, verified, type, state, program, "
                   "source_kind, source, amount, t, clock_ok, reason, received_at) "
                   "VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
                   (device, seq, b"x", rtype, state, program, source_kind, source, amount,
                    int(t or time.time()), reason, time.time()))
    return seq


def reply(web, cid, result, **fields):
    with web.side.transaction() as tx:
        tx.execute("UPDATE commands SET status = ?, result = ?, done_at = ? WHERE id = ?",
                   (result, json.dumps({"cmd": cid, "result": result, **fields}),
                    time.time(), cid))


def csrf(html):
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def headless_chromium(width, height, phone=False):
    """Debian's chromium and chromedriver, headless, through Selenium, at a window of
    width x height (phone: a phone's screen, as the customer's pages are read); skips,
    saying what to install, where either is missing."""
    import shutil

    import pytest

    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip("no chromium/chromedriver: apt-get install chromium chromium-driver "
                    "(scripts/system-packages.sh)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={width},{height}", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    if phone:
        opts.add_experimental_option("mobileEmulation", {"deviceMetrics": {
            "width": width, "height": height, "pixelRatio": 2.0}})
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def leave(b, element, timeout=30.0):
    """Click what leaves the page (a link, a submit button) and wait until the next page
    has loaded. The old document is marked before the click and the wait is for a loaded
    document without the mark: no question about an element of a page being torn down
    (Chromium may answer those with an inspector error instead of "stale")."""
    from selenium.common.exceptions import WebDriverException

    b.execute_script("window.__washpayLeft = true;")
    element.click()

    def arrived():
        try:
            return b.execute_script(
                "return window.__washpayLeft !== true && document.readyState === 'complete';")
        except WebDriverException:  # the page is between documents: ask again
            return False
    wait_until(arrived, timeout, "the next page")
