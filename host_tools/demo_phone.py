"""`washpay demo --phone`: pay by phone on this computer (docs/phone-payment.md).

Starts, in a temporary directory: Mosquitto on loopback, the ledger server with the
customer's pages (`--http`, the sandbox payment provider), and one simulated board online.
Prints the machine page's URL and its sticker; open it in a browser, pay in the sandbox,
and watch the simulated board start. `--auto` plays the customer itself (scan, pay, wait
for the wash) and exits. Ctrl-C stops everything; nothing is left running.
"""

import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from host_tools import broker as B

DEVICE = "demo-0001"


def _say(msg):
    print(msg, flush=True)


def run(http="127.0.0.1:8080", auto=False, state=None, keep=False, wait=None):
    from host_tools.server.service import Server, ServiceError
    from host_tools.server.web import Web, WebError, load_config, parse_http
    from host_tools.server.web import db as D
    from host_tools.server.web.sticker import sticker
    from host_tools.sim.client import SimBoard

    try:
        host, port = parse_http(http)
    except WebError as e:
        print(f"washpay demo --phone: {e}", file=sys.stderr)
        return 2
    tmp = Path(state) if state else Path(tempfile.mkdtemp(prefix="washpay-phone-"))
    site_key = os.urandom(32)
    broker = sim = srv = web = None
    try:
        B.init(tmp / "broker", site_key, [DEVICE])
        broker = B.Broker(tmp / "broker").start()
        url = broker.url()
        st = tmp / "board"
        (st / "provision").mkdir(parents=True, exist_ok=True)
        (st / "provision" / "config.json").write_text(json.dumps(
            {"device_id": DEVICE, "broker": url,
             "sync": {"keepalive_s": 5, "backoff_min_ms": 200, "backoff_max_ms": 1000}}))
        (st / "site.key").write_text(site_key.hex() + "\n")
        (st / "site.key").chmod(0o600)
        srv = Server(f"sqlite:///{tmp / 'ledger.db'}", site_key, url,
                     log=lambda m: None).start()
        cfg = load_config(None)
        cfg["machines"] = {DEVICE: {"name": "Demo washer",
                                    "config": str(st / "provision" / "config.json")}}
        web = Web(cfg, f"sqlite:///{tmp / 'ledger.db'}", site_key, srv.send_command,
                  log=_say).start(host, port)
        _say(f"Broker {url}, ledger {tmp / 'ledger.db'}")
        sim = SimBoard(st, device_id=DEVICE, log=tmp / "sim.log").start()
        sim.wait_for(lambda s: ((s.get("firmware") or {}).get("sync") or {}).get("link")
                     == "up", timeout=30, what="the board online")
        _say(f"Simulated board {DEVICE} online")
        page = f"{web.url}/m/{DEVICE}"
        sticker(DEVICE, web.url)
        _say(f"\nOpen the machine page (the sticker's URL): {page}")
        _say("Pay in the sandbox; the simulated board starts. `washpay sim ctl --state "
             f"{st} washer idle` makes the washer ignore the start, `door open` makes the "
             "board refuse it (refunded).")
        if auto:
            return _customer(web, sim, page, D)
        _say("Ctrl-C stops the demo.")
        t_end = time.monotonic() + wait if wait else None
        while t_end is None or time.monotonic() < t_end:
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    except (B.BrokerError, ServiceError, WebError) as e:
        print(f"washpay demo --phone: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        for stop in (sim and sim.stop, web and web.stop, srv and srv.stop,
                     broker and broker.stop):
            if stop:
                try:
                    stop()
                except Exception:  # noqa: BLE001, S110 - stopping everything anyway
                    pass
        if keep or state:
            _say(f"state kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _customer(web, sim, page, D):
    """The customer's part, as a browser would do it (plain HTTP, the sandbox's forms)."""
    import http.cookiejar
    import re

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    html = opener.open(page).read().decode()
    token = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    _say("Customer scans the sticker: machine free, 'quick' 2.50 EUR")
    body = f"program=quick&csrf={token}".encode()
    r = opener.open(urllib.request.Request(f"{web.url}/m/{DEVICE}/pay", data=body))
    checkout = r.geturl()
    _say(f"  checkout (sandbox): {checkout}")
    before = sim.status()["relay_pulses"]  # before the payment: the board may start at once
    r = opener.open(urllib.request.Request(checkout, data=f"action=pay&csrf={token}"
                                           .encode()))
    pay_url = r.geturl()
    _say(f"  paid; payment page: {pay_url}")
    seen = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        s = json.loads(opener.open(pay_url + "/status").read())
        if s["state"] != seen:
            seen = s["state"]
            _say(f"  page: {s['label']}: {s['text']}")
        if s["final"]:
            break
        time.sleep(0.2)
    # the board answers "started" once the vend is journaled; the relay pulse the simulated
    # washer counts may be reported a moment later
    ok = False
    deadline = time.monotonic() + 15
    while seen == D.RUNNING and not ok and time.monotonic() < deadline:
        ok = sim.status()["relay_pulses"] == before + 1
        time.sleep(0 if ok else 0.1)
    _say("The washer started." if ok else "The washer did not start.")
    return 0 if ok else 1
