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
