"""The alerts engine (host_tools/server/alerts/) over a ledger that ingest filled with
records sealed by the firmware's own Journal under micropython, on SQLite and PostgreSQL:
each rule raises, a live alert counts again instead of repeating, acknowledgement (who,
when) ends an event alert's deduplication, a condition alert closes when it clears, and a
new alert puts its notices in the outbox in the same transaction."""

import json

import pytest
from sync_env import SITE_KEY, firmware_records

from host_tools.server import wire
from host_tools.server.alerts import book
from host_tools.server.alerts.config import AlertConfigError, parse
from host_tools.server.alerts.engine import Engine
from host_tools.server.ingest import Ingest
from host_tools.server.notices import outbox
from host_tools.server.store import open_store

UID = "04a1b2c3"
T0 = 1_780_000_000
HOOK = {"url": "http://127.0.0.1:9/hook", "secret": "s" * 20}


@pytest.fixture
def ledger(store_url):
    store = open_store(store_url)
    yield store
    store.close()


def ingest_all(store, recs, device="sim-0001", clock=None):
    ing = Ingest(store, SITE_KEY, clock=clock) if clock else Ingest(store, SITE_KEY)
    last = int.from_bytes(recs[-1][4:8], "big")
    return ing.batch(device, wire.build_batch(recs, last))


def alerts(store, **kw):
    with store.transaction() as tx:
        return book.listing(tx, **kw)


def rules_of(rows):
    return sorted((a["rule"], a["subject"], a["count"]) for a in rows)


def trade_steps():
    rej = [("coin_rejected", {"t": T0 + i, "state": "idle"}) for i in range(5)]
    return [
        ("boot", {}),
        ("start_failed", {"program": "quick", "amount": 250, "price": 250, "credit": 250,
                          "reason": "no confirm", "state": "credit", "t": T0}),
        *rej,
        ("fault", {"reason": "coin rejects: 5 in 120s", "t": T0 + 6}),
        ("card_fraud", {"source": UID, "reason": "MAC failure", "t": T0 + 7}),
        ("card_refused", {"source": UID, "reason": "lockout: 3 fails in 60s", "t": T0 + 8}),
        ("card_refused", {"source": UID, "reason": "low balance", "t": T0 + 9}),
        ("refund", {"amount": 150, "reason": "coin return", "t": T0 + 10}),
        ("fault", {"reason": "door sensor stuck", "t": T0 + 11}),
    ]


def test_the_boards_records_raise_each_alert_once(ledger, tmp_path):
    recs = firmware_records(tmp_path / "j", trade_steps())
    assert ingest_all(ledger, recs).ack == len(recs)
    eng = Engine(ledger, parse({"webhooks": [HOOK]}))
    raised = eng.evaluate()
    rows = alerts(ledger)
    # the server-side burst and the board's own "coin rejects" fault are one live alert
    assert rules_of(rows) == [("card_fraud", UID, 1), ("card_lockout", UID, 1),
                              ("coin_rejects", "", 2), ("refund", "", 1),
                              ("start_failed", "", 1)]
    assert sorted(raised) == sorted(a["id"] for a in rows)
    assert all(a["device"] == "sim-0001" and a["state"] == "open" for a in rows)
    assert next(a for a in rows if a["rule"] == "refund")["message"] == \
        "the board refunded 1.50 EUR: coin return"
    # one webhook notice per new alert, in the outbox
    notes = outbox.listing(ledger)
    assert sorted(n["alert_id"] for n in notes) == sorted(raised)
    assert {n["channel"] for n in notes} == {"webhook"}
    # looked at again: the cursor says nothing is new
    assert eng.evaluate() == []
    assert rules_of(alerts(ledger)) == rules_of(rows)
    assert len(outbox.listing(ledger)) == len(notes)


def test_a_live_alert_counts_again_and_acknowledging_ends_it(ledger, tmp_path):
    fail = ("start_failed", {"program": "quick", "amount": 250, "price": 250, "credit": 250,
                             "reason": "no confirm", "state": "credit", "t": T0})
    j = tmp_path / "j"
    recs = firmware_records(j, [("boot", {}), fail])
    ingest_all(ledger, recs)
    eng = Engine(ledger, parse({}))
    (first,) = eng.evaluate()
    more = firmware_records(j, [fail], after=2)
    ingest_all(ledger, more)
    assert eng.evaluate() == []  # the same live alert, counted again
    (a,) = alerts(ledger)
    assert (a["id"], a["count"]) == (first, 2)
    with ledger.transaction() as tx:
        acked = book.acknowledge(tx, first, "ann", "washer door fixed", now=T0 + 100)
    assert (acked["acked_by"], acked["acked_at"], acked["state"]) == \
        ("ann", T0 + 100, "acknowledged")
    with ledger.transaction() as tx, pytest.raises(book.AlertError, match="by ann already"):
        book.acknowledge(tx, first, "bob")
    with ledger.transaction() as tx, pytest.raises(book.AlertError, match="no alert 999"):
        book.acknowledge(tx, 999, "bob")
    ingest_all(ledger, firmware_records(j, [fail], after=3))
    (second,) = eng.evaluate()  # after the acknowledgement a failure is news again
    assert second != first
    assert [a["id"] for a in alerts(ledger, state="open")] == [second]


def test_a_machine_offline_too_long_is_an_alert_until_it_is_back(ledger):
    now = [T0]
    ing = Ingest(ledger, SITE_KEY, clock=lambda: now[0])
    ing.state("sim-0002", b"online")
    ing.state("sim-0001", b"offline")  # its last will, from the broker
    eng = Engine(ledger, parse({"offline_after_min": 10}))
    now[0] = T0 + 9 * 60
    assert eng.evaluate(now[0]) == []
    now[0] = T0 + 11 * 60
    (aid,) = eng.evaluate(now[0])
    (a,) = alerts(ledger)
    assert (a["rule"], a["device"], a["message"]) == ("offline", "sim-0001",
                                                      "offline for 11 min")
    with ledger.transaction() as tx:
        book.acknowledge(tx, aid, "ann")
    # still offline, seen: no new alert while the condition lasts
    assert eng.evaluate(T0 + 30 * 60) == []
    assert alerts(ledger, state="live")[0]["message"] == "offline for 30 min"
    now[0] = T0 + 31 * 60
    ing.state("sim-0001", b"online")
    assert eng.evaluate(now[0]) == []
    assert alerts(ledger, state="live") == []
    a = alerts(ledger)[0]
    assert (a["state"], a["acked_by"]) == ("closed", "ann")
    now[0] = T0 + 40 * 60
    ing.state("sim-0001", b"offline")
    assert len(eng.evaluate(T0 + 55 * 60)) == 1  # offline again: a new alert


def test_a_journal_filling_is_an_alert(ledger):
    eng = Engine(ledger, parse({"journal_backlog": 100}))
    with ledger.transaction() as tx:
        tx.lock_device("sim-0001")
        tx.update_device("sim-0001", reported_seq=150, high_seq=20)  # 130 wait on the board
        tx.lock_device("sim-0002")
        tx.execute(
            "INSERT INTO commands (id, device, kind, created, status, result, done_at) "
            "VALUES ('c1', 'sim-0002', 'status', 1, 'done', ?, 2)",
            (json.dumps({"result": "done", "status": {"journal": {
                "level": "full", "free": 3, "message": "journal full: sync required"}}}),))
    eng.evaluate()
    got = {a["device"]: (a["severity"], a["message"]) for a in alerts(ledger)}
    assert got == {"sim-0001": ("warning", "130 records not uploaded: the journal is filling"),
                   "sim-0002": ("critical", "journal full: sync required")}
    with ledger.transaction() as tx:
        tx.update_device("sim-0001", high_seq=150)  # uploaded
    eng.evaluate()
    assert [a["device"] for a in alerts(ledger, state="live")] == ["sim-0002"]


def test_the_servers_card_fraud_findings_and_an_ota_rollback_are_alerts(ledger, tmp_path):
    def debit(counter, before, amount):
        return ("card_debit", {"amount": amount, "source": UID, "card_counter": counter,
                               "balance_before": before, "balance_after": before - amount,
                               "state": "credit", "credit": amount, "t": T0 + counter})

    recs = firmware_records(tmp_path / "j", [("boot", {}), debit(1, 1000, 250),
                                             debit(1, 1000, 250)])  # counter spent twice
    out = ingest_all(ledger, recs)
    assert [k for k, _, _ in out.problems] == ["card_counter_reuse"]
    # no firmware journals a release rollback yet: the record kind it is to have, as a
    # verified ledger row, is what the rule matches
    with ledger.transaction() as tx:
        tx.lock_device("sim-0002")
        tx.execute("INSERT INTO records (device, seq, raw, verified, type, reason, t) "
                   "VALUES ('sim-0002', 1, ?, 1, 'ota_rollback', 'v1.4 failed boot', 5)",
                   (b"x",))
        tx.update_device("sim-0002", high_seq=1)
    Engine(ledger, parse({})).evaluate()
    got = {(a["rule"], a["device"], a["subject"]) for a in alerts(ledger)}
    assert got == {("card_fraud", "sim-0001", UID), ("release_rollback", "sim-0002", "")}


def test_a_refunded_phone_payment_is_an_alert(ledger):
    from host_tools.server.web import db as D

    pdb = D.PaymentDB(ledger)
    pdb.create("p1", "sim-0001", "quick", 250, "EUR", "sandbox", now=T0)
    Engine(ledger, parse({})).evaluate()
    assert alerts(ledger) == []
    assert pdb.move("p1", D.CREATED, D.REFUNDED, "refund", settled_at=T0 + 5,
                    detail="the machine refused: machine busy")
    Engine(ledger, parse({})).evaluate()
    (a,) = alerts(ledger)
    assert (a["rule"], a["subject"]) == ("refund", "p1")
    assert a["message"] == "phone payment refunded: 2.50 EUR (the machine refused: machine busy)"


@pytest.mark.parametrize("doc, why", [
    ([], "alerts must be a JSON object"),
    ({"offline_after": 5}, "unknown key 'offline_after'"),
    ({"offline_after_min": 0}, "offline_after_min must be a number from 1"),
    ({"coin_rejects": {"burst": 1}}, "coin_rejects.burst must be a whole number from 2"),
    ({"webhooks": [{"url": "ftp://x", "secret": "s" * 20}]}, "must be an http"),
    ({"webhooks": [{"url": "http://x", "secret": "short"}]}, "at least 16 characters"),
    ({"webhooks": [{**HOOK, "rules": ["offlin"]}]}, "unknown rule 'offlin'"),
    ({"sms": [{"to": "+4915112345678"}]}, "SMS notices need alerts.sms_gateway"),
    ({"sms_gateway": {"url": "http://gw", "token": "t"}, "sms": [{"to": "0151 123"}]},
     "an international number"),
    ({"sms_gateway": {"url": "http://gw", "token": "t"},
      "low_balance": {"text": "{name} is low"}}, "only {card} and {balance}"),
    ({"delivery": {"max_attempts": 0}}, "delivery.max_attempts must be a whole number"),
])
def test_a_config_that_cannot_be_used_says_what_to_fix(doc, why):
    with pytest.raises(AlertConfigError, match=__import__("re").escape(why)):
        parse(doc)


def test_the_defaults_need_no_config():
    cfg = parse(None)
    assert cfg["offline_after_min"] == 10 and cfg["webhooks"] == [] and not cfg["low_balance"]


def test_two_server_processes_count_each_record_once(store_url, tmp_path):
    """Two engines on their own connections look at once (as two `server run` processes
    sharing a PostgreSQL ledger do): each failed start is counted once, one notice each."""
    import threading

    fail = ("start_failed", {"program": "quick", "amount": 250, "price": 250, "credit": 250,
                             "reason": "no confirm", "state": "credit", "t": T0})
    j = tmp_path / "j"
    stores = [open_store(store_url) for _ in range(3)]
    try:
        cfg = parse({"webhooks": [HOOK]})
        engines = [Engine(s, cfg) for s in stores[:2]]
        after = 0
        for round_ in range(4):
            recs = firmware_records(j, ([("boot", {})] if round_ == 0 else []) + [fail] * 3,
                                    after=after)
            after += len(recs)
            ingest_all(stores[2], recs)
            go = threading.Barrier(2)
            errors = []

            def look(e, go=go, errors=errors):
                try:
                    go.wait(10)
                    e.evaluate()
                except Exception as x:  # noqa: BLE001 - reported below
                    errors.append(x)

            ts = [threading.Thread(target=look, args=(e,)) for e in engines]
            for t in ts:
                t.start()
            for t in ts:
                t.join(60)
            assert errors == []
        (a,) = alerts(stores[2])
        assert a["count"] == 12  # 4 rounds x 3 failed starts, each once
        assert len(outbox.listing(stores[2])) == 1
    finally:
        for s in stores:
            s.close()
