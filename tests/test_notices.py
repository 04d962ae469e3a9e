"""Notices (host_tools/server/notices/) against real HTTP servers on loopback, on SQLite and
PostgreSQL: a webhook's signature checks by the documented method (docs/alerts.md), a
failing receiver sees retries with exponential backoff, a receiver that keeps failing
makes a dead letter that an operator retries, the SMS gateway gets {to, text} with its
bearer token, a card linked to a phone gets one SMS when its balance falls below the
threshold, and delivery never holds up ingest."""

import hashlib
import hmac
import json
import threading
import time

import pytest
from alerts_env import Receiver, receiver  # noqa: F401 - fixture
from sync_env import SITE_KEY, firmware_records

from host_tools.server import wire
from host_tools.server.alerts import rules
from host_tools.server.alerts.config import parse
from host_tools.server.alerts.engine import Engine, raise_and_notify
from host_tools.server.alerts.service import AlertService
from host_tools.server.ingest import Ingest
from host_tools.server.notices import outbox, phones, signature
from host_tools.server.notices.courier import Courier
from host_tools.server.store import open_store

SECRET = "whsec-0123456789abcdef"
TOKEN = "gw-token-42"
UID = "04a1b2c3"


@pytest.fixture
def ledger(store_url):
    store = open_store(store_url)
    yield store
    store.close()


def config(rx=None, gw=None, **more):
    doc = {"delivery": {"max_attempts": 5, "backoff_s": 0.2, "backoff_max_s": 5,
                        "timeout_s": 5}, **more}
    if rx:
        doc["webhooks"] = [{"url": rx.url + "/hook", "secret": SECRET}]
    if gw:
        doc["sms_gateway"] = {"url": gw.url, "token": TOKEN, "from": "Washpay"}
    return parse(doc)


def one_alert(store, cfg, rule="start_failed", device="sim-0001"):
    Engine(store, cfg)  # the tables
    with store.transaction() as tx:
        (aid,) = raise_and_notify(tx, cfg, rules.Alert(rule, device, "", "warning",
                                                        "washer did not start"))
    return aid


def deliver_until(courier, store, pred, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        courier.run_once()
        rows = outbox.listing(store)
        if pred(rows):
            return rows
        time.sleep(0.02)
    raise AssertionError(f"notices never got there: {rows}")


def receiver_check(headers, body, secret=SECRET, now=None):
    """What a receiver does, as docs/alerts.md says, written here from the page (not with
    the server's code): t and v1 from the header, HMAC-SHA256(secret, "<t>." + body),
    constant-time compare, at most 300 s old."""
    parts = dict(p.split("=", 1) for p in headers["X-Washpay-Signature"].split(","))
    t = int(parts["t"])
    want = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    now = time.time() if now is None else now
    return hmac.compare_digest(want, parts["v1"]) and abs(now - t) <= 300


def test_a_webhook_is_signed_and_retried_with_backoff(ledger):
    rx = Receiver(fail=3)
    try:
        cfg = config(rx)
        aid = one_alert(ledger, cfg)
        rows = deliver_until(Courier(ledger, cfg), ledger, lambda r: r[0]["state"] == "sent")
    finally:
        rx.close()
    (n,) = rows
    assert (n["attempts"], n["alert_id"], n["last_error"]) == (4, aid, None)
    assert len(rx.got) == 4
    at, path, headers, body = rx.got[-1]
    assert path == "/hook" and headers["Content-Type"] == "application/json"
    assert receiver_check(headers, body)
    assert not receiver_check(headers, body.replace(b"sim-0001", b"sim-0002"))
    assert not receiver_check(headers, body, secret="another-secret-000")
    doc = json.loads(body)
    assert doc["notice"] == n["id"] and doc["type"] == "alert"
    assert (doc["alert"]["id"], doc["alert"]["rule"], doc["alert"]["device"]) == \
        (aid, "start_failed", "sim-0001")
    # the waits between attempts: 0.2 s x 2^(n-1) with equal jitter, so each is between
    # half of it and all of it (plus the courier's polling)
    gaps = [b[0] - a[0] for a, b in zip(rx.got, rx.got[1:], strict=False)]
    for i, gap in enumerate(gaps):
        d = 0.2 * 2 ** i
        assert d / 2 - 0.01 <= gap <= d + 0.5, (i, gaps)
    tries = outbox.attempts(ledger, n["id"])
    assert [ok for _, ok, _ in tries] == [False, False, False, True]
    assert tries[0][2] == f"webhook {rx.url}/hook answered HTTP 500"


def test_the_backoff_doubles_up_to_its_cap_with_jitter():
    assert [outbox.backoff(n, 1, 10, rng=lambda: 1.0) for n in range(1, 7)] == \
        [1, 2, 4, 8, 10, 10]
    assert [outbox.backoff(n, 1, 10, rng=lambda: 0.0) for n in range(1, 5)] == \
        [0.5, 1, 2, 4]


def test_a_receiver_that_keeps_failing_makes_a_dead_letter_to_retry(ledger):
    rx = Receiver(fail=10**6)
    try:
        cfg = config(rx)
        cfg["delivery"]["max_attempts"] = 3
        one_alert(ledger, cfg)
        courier = Courier(ledger, cfg)
        (n,) = deliver_until(courier, ledger, lambda r: r[0]["state"] == "dead")
        assert n["attempts"] == 3 and len(rx.got) == 3
        assert n["last_error"].endswith("answered HTTP 500")
        assert [d["id"] for d in outbox.listing(ledger, state="dead")] == [n["id"]]
        for _ in range(3):  # dead: not tried again by itself
            courier.run_once()
        assert len(rx.got) == 3
        with pytest.raises(outbox.NoticeError, match="no notice"):
            outbox.retry(ledger, n["id"] + 1000)
        assert outbox.retry(ledger, n["id"])["state"] == "pending"
        with pytest.raises(outbox.NoticeError, match="only dead letters are retried"):
            outbox.retry(ledger, n["id"])
        rx.fail = 0  # the receiver is fixed
        (n,) = deliver_until(courier, ledger, lambda r: r[0]["state"] == "sent")
        assert len(rx.got) == 4 and outbox.listing(ledger, state="dead") == []
    finally:
        rx.close()


def test_a_refused_request_is_a_dead_letter_at_once(ledger):
    rx = Receiver(fail=1, fail_status=404)
    try:
        cfg = config(rx)
        one_alert(ledger, cfg)
        (n,) = deliver_until(Courier(ledger, cfg), ledger, lambda r: r[0]["state"] == "dead")
    finally:
        rx.close()
    assert n["attempts"] == 1 and n["last_error"].endswith("answered HTTP 404")


def test_an_unreachable_receiver_is_retried(ledger):
    rx = Receiver()
    url = rx.url
    rx.close()  # nobody listens there now
    cfg = parse({"webhooks": [{"url": url + "/hook", "secret": SECRET}],
                 "delivery": {"max_attempts": 2, "backoff_s": 0.05, "backoff_max_s": 1}})
    one_alert(ledger, cfg)
    (n,) = deliver_until(Courier(ledger, cfg), ledger, lambda r: r[0]["state"] == "dead")
    assert n["attempts"] == 2 and n["last_error"].startswith(f"no answer from {url}/hook")


def test_alerts_go_to_the_sms_gateway_with_its_token(ledger):
    gw = Receiver(token=TOKEN)
    try:
        cfg = config(gw=gw, sms=[{"to": "+49 151 1234 5678", "rules": ["offline"]}])
        one_alert(ledger, cfg, rule="start_failed")  # not an SMS rule: nothing
        one_alert(ledger, cfg, rule="offline", device="sim-0002")
        (n,) = deliver_until(Courier(ledger, cfg), ledger,
                             lambda r: r and r[0]["state"] == "sent")
        (_, path, headers, body) = gw.got[0]
        assert path == "/messages"
        assert headers["Authorization"] == f"Bearer {TOKEN}"
        assert headers["Idempotency-Key"] == f"washpay-notice-{n['id']}"
        assert json.loads(body) == {"to": "+4915112345678", "from": "Washpay",
                                    "text": "washpay warning: sim-0002: washer did not start"}
        # a wrong token is refused by the gateway: retrying cannot help, a dead letter
        cfg["sms_gateway"]["token"] = "wrong"
        one_alert(ledger, cfg, rule="offline", device="sim-0003")
        rows = deliver_until(Courier(ledger, cfg), ledger,
                             lambda r: r[0]["state"] == "dead")
        assert rows[0]["last_error"] == "the SMS gateway answered HTTP 401"
    finally:
        gw.close()


def test_a_linked_card_falling_below_its_threshold_gets_one_sms(ledger, tmp_path):
    gw = Receiver(token=TOKEN)
    try:
        cfg = config(gw=gw, low_balance={"threshold": 500})
        eng = Engine(ledger, cfg)
        phones.link(ledger, UID.upper(), "+4915112345678", who="ann")
        phones.link(ledger, "04d5e6f7", "+4915100000000", threshold=100)

        def write(rtype, counter, before, after, uid=UID):
            return (rtype, {"amount": abs(before - after), "source": uid,
                            "card_counter": counter, "balance_before": before,
                            "balance_after": after, "state": "idle", "credit": 0,
                            "t": 1_780_000_000 + counter})

        j = tmp_path / "j"
        recs = firmware_records(j, [
            ("boot", {}),
            write("card_debit", 1, 800, 550),  # above 5.00: nothing
            write("card_debit", 2, 550, 300),  # below: the SMS
            write("card_debit", 3, 300, 50),  # still below: no second one
            write("card_debit", 1, 800, 550, uid="04d5e6f7"),  # its threshold is 1.00
        ])
        Ingest(ledger, SITE_KEY).batch("sim-0001", wire.build_batch(recs, len(recs)))
        eng.evaluate()
        courier = Courier(ledger, cfg)
        deliver_until(courier, ledger, lambda r: [n["state"] for n in r] == ["sent"])
        assert [json.loads(b) for *_, b in gw.got] == [{
            "to": "+4915112345678", "from": "Washpay",
            "text": f"Your laundry card {UID} has 3.00 EUR left. Top it up before your next "
                    "wash."}]
        # topped up above it, then below again: news again
        more = firmware_records(j, [write("card_topup", 4, 50, 1050),
                                    write("card_debit", 5, 1050, 800),
                                    write("card_debit", 6, 800, 450)], after=len(recs))
        Ingest(ledger, SITE_KEY).batch("sim-0001", wire.build_batch(more, len(recs) + 3))
        eng.evaluate()
        eng.evaluate()  # looking twice sends nothing twice
        deliver_until(courier, ledger, lambda r: [n["state"] for n in r] == ["sent", "sent"])
        assert json.loads(gw.got[-1][3])["text"].startswith(f"Your laundry card {UID} has "
                                                           "4.50 EUR left.")
    finally:
        gw.close()


def test_phone_links_refuse_what_cannot_be_texted(ledger):
    Engine(ledger, parse({}))
    with pytest.raises(phones.PhoneError, match="an international number"):
        phones.link(ledger, UID, "0151 1234")
    with pytest.raises(phones.PhoneError, match="the UID in hex"):
        phones.link(ledger, "card-7", "+4915112345678")
    with pytest.raises(phones.PhoneError, match="at least 1"):
        phones.link(ledger, UID, "+4915112345678", threshold=0)
    with pytest.raises(phones.PhoneError, match="is not linked"):
        phones.unlink(ledger, UID)
    assert phones.listing(ledger) == []


def test_signature_verification_refuses_replays_and_alterations():
    body = b'{"notice": 1}'
    h = signature.sign(SECRET, body, t=1_000_000)
    assert signature.verify(h, body, SECRET, now=1_000_100) == 1_000_000
    with pytest.raises(signature.SignatureError, match="outside 300 s"):
        signature.verify(h, body, SECRET, now=1_000_400)
    with pytest.raises(signature.SignatureError, match="does not match"):
        signature.verify(h, body + b" ", SECRET, now=1_000_000)
    with pytest.raises(signature.SignatureError, match="without a timestamp"):
        signature.verify("v1=00", body, SECRET)
    with pytest.raises(signature.SignatureError, match="no X-Washpay-Signature"):
        signature.verify("", body, SECRET)
    # the documented method, by hand, agrees
    assert receiver_check({"X-Washpay-Signature": h}, body, now=1_000_000)


def test_a_slow_receiver_does_not_hold_up_ingest(store_url, tmp_path):
    """The courier is stuck in a POST the receiver does not answer; meanwhile a batch is
    ingested and the engine raises its alert (each on its own connection)."""
    rx = Receiver()
    rx.hold = threading.Event()
    svc = None
    store = open_store(store_url)
    try:
        cfg = config(rx)
        one_alert(store, cfg)
        svc = AlertService(store_url, cfg, log=lambda m: None, courier_every_s=0.05).start()
        deadline = time.monotonic() + 20
        while not rx.arrived and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rx.arrived == 1  # the courier's POST is in, unanswered
        recs = firmware_records(tmp_path / "j", [
            ("boot", {}), ("start_failed", {"program": "quick", "amount": 250, "price": 250,
                                            "credit": 250, "state": "credit"})],
            device="sim-0002")
        out = Ingest(store, SITE_KEY).batch("sim-0002", wire.build_batch(recs, 2))
        assert out.ack == 2
        svc.poke()
        while time.monotonic() < deadline and len(outbox.listing(store)) < 2:
            time.sleep(0.05)
        assert len(outbox.listing(store)) == 2  # the second alert's notice is queued
        assert rx.got == []  # and the first POST is still held
        rx.hold.set()
        while time.monotonic() < deadline and len(rx.got) < 2:
            time.sleep(0.05)
        assert sorted(json.loads(b)["alert"]["device"] for *_, b in rx.got) == \
            ["sim-0001", "sim-0002"]
    finally:
        rx.hold.set()
        if svc:
            svc.stop()
        store.close()
        rx.close()


def test_a_fleet_poking_after_every_batch_gets_one_look_per_gap(store_url, tmp_path):
    """A draining fleet pokes the engine after every batch; it looks at most once per
    min_gap_s (each look is a write transaction), and an alert raised by a batch in the
    middle of the pokes is still raised."""
    rx = Receiver()
    svc = None
    store = open_store(store_url)
    try:
        cfg = config(rx)
        svc = AlertService(store_url, cfg, log=lambda m: None, min_gap_s=0.5).start()
        recs = firmware_records(tmp_path / "j", [
            ("boot", {}), ("start_failed", {"program": "quick", "amount": 250, "price": 250,
                                            "credit": 250, "state": "credit"})],
            device="sim-0002")
        t0 = time.monotonic()
        for i in range(200):  # 200 batches' pokes over about a second
            if i == 100:
                Ingest(store, SITE_KEY).batch("sim-0002", wire.build_batch(recs, 2))
            svc.poke()
            time.sleep(0.005)
        spent = time.monotonic() - t0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not outbox.listing(store):
            time.sleep(0.05)
        assert len(outbox.listing(store)) == 1  # the start failure's notice
        # the first look at start, then one per gap at most (fewer on a slow host)
        assert 1 <= svc.evaluations <= 2 + spent / 0.5 + 1
    finally:
        if svc:
            svc.stop()
        store.close()
        rx.close()
