"""`washpay server report` on a ledger filled by the real ingest from firmware records."""

import io

import pytest
from sync_env import SITE_KEY, coin_day, firmware_records

from host_tools.server import report, wire
from host_tools.server.ingest import Ingest
from host_tools.server.store import open_store


@pytest.fixture
def ledger_db(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/l.db")
    ing = Ingest(store, SITE_KEY)
    day = firmware_records(tmp_path / "a", [("boot", {})] + coin_day(100))
    ing.batch("sim-0001", wire.build_batch(day[:60], 130))  # the board has 130
    ing.batch("sim-0001", wire.build_batch(day[70:80], 130))  # ahead of a gap: waits
    bad = bytearray(day[60])
    bad[50] ^= 4
    other = firmware_records(tmp_path / "b", [
        ("boot", {"t": 100}),  # a board whose clock was never set
        ("coin", {"amount": 200, "credit": 200, "state": "credit", "t": 100}),
        ("card_debit", {"amount": 250, "source": "04a1b2c3", "card_counter": 4,
                        "balance_before": 1000, "balance_after": 750, "t": 1_780_000_100}),
        ("refund", {"amount": 50, "t": 1_780_000_200}),
        ("coin_rejected", {"pulses": 3, "t": 1_780_000_300}),
    ], device="sim-0002")
    ing.batch("sim-0002", wire.build_batch(other, 5))
    ing.batch("sim-0001", wire.build_batch([bytes(bad)], 130))  # an altered record
    yield store
    store.close()


def test_revenue_backlog_and_faults(ledger_db):
    rep = report.build(ledger_db)
    rev = {(r["device"], r["day"], r["type"]): (r["count"], r["amount"]) for r in rep["revenue"]}
    # coin_day: three coins of 1.00 in every four steps. Records 2..60 are steps 0..58;
    # record 61 (step 59, a coin) was altered: stored as evidence, not counted
    coins = sum(1 for i in range(59) if i % 4 != 3)
    assert rev[("sim-0001", "2026-05-28", "cash")] == (coins, 100 * coins)
    assert rev[("sim-0002", "clock not set", "cash")] == (1, 200)
    assert rev[("sim-0002", "2026-05-28", "card")] == (1, 250)
    assert rep["refunds"][0]["device"] == "sim-0002" and rep["refunds"][0]["amount"] == 50
    devs = {d["device"]: d for d in rep["devices"]}
    assert devs["sim-0001"]["stored"] == 61 and devs["sim-0001"]["board_newest"] == 130
    assert devs["sim-0001"]["backlog"] == 69
    assert devs["sim-0001"]["waiting"] == 10 and devs["sim-0001"]["missing"] == "62..70"
    assert devs["sim-0002"]["backlog"] == 0
    assert {"device": "sim-0002", "type": "coin_rejected", "count": 1} in rep["faults"]
    kinds = {(p["device"], p["kind"]) for p in rep["problems"]}
    assert ("sim-0001", "bad_tag") in kinds
    out = io.StringIO()
    report.format_text(rep, out)
    text = out.getvalue()
    assert "Revenue per device" in text and "62..70 (10)" in text and "bad_tag" in text
    # amounts in euros with the currency; each count named for what it counts
    lines = text.splitlines()
    cash = next(x for x in lines if "sim-0001" in x and "2026-05-28" in x and "cash" in x)
    assert f"{coins} coins" in cash and f"{coins}.00 EUR" in cash
    card = next(x for x in lines if "sim-0002" in x and " card " in x)
    assert "1 card payment " in card and "2.50 EUR" in card
    refund = next(x for x in lines[lines.index("Refunds"):] if "sim-0002" in x)
    assert "1 refund " in refund and "0.50 EUR" in refund


def test_coins_and_a_card_paying_one_cycle_are_counted_once(tmp_path):
    """docs/pricing.md, "Credit and a card": 1.00 of coins, then a card pays the 1.50 the
    credit does not cover (card_debit amount 150, price 250, credit after 0). The ledger
    counts 1.00 cash and 1.50 card, 2.50 for the cycle; the card's shadow balance follows
    the card and its arithmetic checks."""
    store = open_store(f"sqlite:///{tmp_path}/l.db")
    recs = firmware_records(tmp_path / "j", [
        ("boot", {"t": 1_780_000_000}),
        ("coin", {"amount": 100, "credit": 100, "state": "credit", "t": 1_780_000_010}),
        ("card_debit", {"amount": 150, "price": 250, "credit": 0, "state": "starting",
                        "source": "04a1b2c3", "card_counter": 3, "balance_before": 1000,
                        "balance_after": 850, "program": "quick", "t": 1_780_000_020}),
        ("vend_running", {"price": 250, "state": "running", "program": "quick",
                          "t": 1_780_000_021}),
    ])
    out = Ingest(store, SITE_KEY).batch("sim-0001", wire.build_batch(recs, len(recs)))
    assert out.problems == []
    rep = report.build(store)
    rev = {r["type"]: (r["count"], r["amount"]) for r in rep["revenue"]}
    assert rev == {"cash": (1, 100), "card": (1, 150)}
    assert store.query("SELECT balance FROM cards WHERE uid = ?", ("04a1b2c3",)) == [(850,)]
    store.close()


@pytest.mark.parametrize("void", [
    ("card_cancel", {"reason": "card left before the write"}),
    ("card_unresolved", {"reason": "card gone during the write"}),
])
def test_a_card_payment_that_never_reached_the_card_is_no_revenue_and_no_reuse(tmp_path,
                                                                                 void):
    """The card left before its write (card_cancel), or its write was unresolved and its
    next tap found it had not landed (card_settled 0 "payment had not landed"); then the
    card paid at the same counter. The ledger counts one payment of 2.50, the card's shadow
    follows the card, and no "copied or restored card" is reported."""
    store = open_store(f"sqlite:///{tmp_path}/l.db")
    c = {"source": "04a1b2c3", "card_counter": 1, "balance_before": 1000,
         "balance_after": 750, "price": 250, "amount": 250, "program": "quick"}
    t = 1_780_000_000
    steps = [("boot", {"t": t}), ("card_debit", dict(c, state="starting", t=t + 10)),
             (void[0], dict(c, t=t + 11, **void[1]))]
    if void[0] == "card_unresolved":
        steps.append(("card_settled", dict(c, amount=0, reason="payment had not landed",
                                           t=t + 12)))
    steps += [("card_debit", dict(c, state="starting", t=t + 20)),
              ("vend_running", {"price": 250, "state": "running", "t": t + 21})]
    recs = firmware_records(tmp_path / "j", steps)
    ing = Ingest(store, SITE_KEY)
    # in two batches: the shadow is read back between the void and the new debit
    out = ing.batch("sim-0001", wire.build_batch(recs[:-2], len(recs)))
    assert store.query("SELECT counter, balance FROM cards") == [(0, 1000)]
    out2 = ing.batch("sim-0001", wire.build_batch(recs[-2:], len(recs)))
    assert out.problems == [] and out2.problems == []
    rev = {r["type"]: (r["count"], r["amount"]) for r in report.build(store)["revenue"]}
    assert rev == {"card": (1, 250)}
    assert store.query("SELECT counter, balance FROM cards") == [(1, 750)]
    store.close()


def test_a_top_up_between_two_debits_is_no_balance_rise(tmp_path):
    """A card_topup journaled by the board (washpay card topup) is a card write the server
    follows: the debit after it starts from the topped-up balance, no card_balance_rise."""
    store = open_store(f"sqlite:///{tmp_path}/l.db")
    card = {"source": "04a1b2c3", "program": "quick", "t": 1_780_000_010}
    recs = firmware_records(tmp_path / "j", [
        ("boot", {"t": 1_780_000_000}),
        ("card_debit", dict(card, amount=250, price=250, card_counter=1, balance_before=1000,
                            balance_after=750)),
        ("card_topup", dict(card, amount=500, card_counter=2, balance_before=750,
                            balance_after=1250)),
        ("card_debit", dict(card, amount=250, price=250, card_counter=3, balance_before=1250,
                            balance_after=1000)),
    ])
    out = Ingest(store, SITE_KEY).batch("sim-0001", wire.build_batch(recs, len(recs)))
    assert out.problems == []
    assert store.query("SELECT counter, balance FROM cards") == [(3, 1000)]
    store.close()


def test_a_top_up_that_does_not_continue_from_the_card_is_reported(tmp_path):
    """The server followed only card_debit records (the board journaled card_topup with
    source kind 0): a top-up from a balance the card did not have went unnoticed."""
    store = open_store(f"sqlite:///{tmp_path}/l.db")
    card = {"source": "04a1b2c3", "program": "quick", "t": 1_780_000_010}
    recs = firmware_records(tmp_path / "j", [
        ("boot", {"t": 1_780_000_000}),
        ("card_topup", dict(card, amount=500, card_counter=1, balance_before=0,
                            balance_after=500)),
        ("card_debit", dict(card, amount=250, price=250, card_counter=2, balance_before=900,
                            balance_after=650)),
    ])
    out = Ingest(store, SITE_KEY).batch("sim-0001", wire.build_batch(recs, len(recs)))
    assert [p[0] for p in out.problems] == ["card_balance_rise"]
    store.close()


def test_problems_say_their_state_and_whether_data_was_lost(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/p.db")
    try:
        ing = Ingest(store, SITE_KEY)
        day = firmware_records(tmp_path / "a", [("boot", {})] + coin_day(10))
        ing.batch("sim-0001", wire.build_batch(day[:4], 11))
        ing.batch("sim-0001", b"\x00" * 8)  # malformed: a frame mixed up on the way
        bad = bytearray(day[4])
        bad[50] ^= 4
        ing.batch("sim-0001", wire.build_batch([bytes(bad)], 11))  # an altered record
        rep = report.build(store)
        assert {(p["kind"], p["data_lost"]) for p in rep["problems"]} == {
            ("malformed", "not yet known"), ("bad_tag", "yes")}
        ing.batch("sim-0001", wire.build_batch(day[5:], 11))  # the board sends the rest
        rep = report.build(store)
        # the malformed batch lost nothing: it leaves the open problems
        assert [(p["kind"], p["data_lost"]) for p in rep["problems"]] == [("bad_tag", "yes")]
        assert [(p["kind"], p["data_lost"], p["records"]) for p in rep["resolved"]] == [
            ("malformed", "no", 1)]
        out = io.StringIO()
        report.format_text(rep, out)
        text = out.getvalue()
        opened = text.split("Problems found by the server")[1].split("Problems resolved")[0]
        assert "bad_tag" in opened and "malformed" not in opened
        assert "malformed" in text.split("Problems resolved")[1]
    finally:
        store.close()
