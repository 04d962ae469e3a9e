"""The server's ingest (host_tools/server/ingest.py) on records sealed by the firmware's own
Journal under micropython: exactly once, verified, gaps, forks, replays, rollbacks, bad
tags, malformed batches and card fraud, on SQLite and on PostgreSQL."""

import threading

import pytest
from sync_env import SITE_KEY, coin_day, firmware_records

from host_tools.server import wire
from host_tools.server.ingest import Ingest
from host_tools.server.store import StoreError, open_store


@pytest.fixture
def ingest(store_url):
    store = open_store(store_url)
    yield Ingest(store, SITE_KEY)
    store.close()


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """101 genuine records of sim-0001: a boot and 100 steps of trade."""
    return firmware_records(tmp_path_factory.mktemp("j") / "journal",
                            [("boot", {})] + coin_day(100))


def batch(recs, last=None):
    return wire.build_batch(recs, last if last is not None else _seq(recs[-1]))


def _seq(raw):
    return int.from_bytes(raw[4:8], "big")


def stored(ingest, device="sim-0001"):
    return ingest.store.query(
        "SELECT seq, raw, verified, type, amount FROM records WHERE device = ? ORDER BY seq",
        (device,))


def kinds(out):
    return [k for k, _, _ in out.problems]


def test_batches_are_stored_once_verified_and_acknowledged(ingest, day):
    acks = []
    for i in range(0, len(day), 16):
        out = ingest.batch("sim-0001", batch(day[i : i + 16], last=len(day)))
        assert out.problems == []
        acks.append(out.ack)
    assert acks[-1] == len(day) and acks == sorted(acks)
    rows = stored(ingest)
    assert [r[0] for r in rows] == list(range(1, len(day) + 1))
    assert [bytes(r[1]) for r in rows] == day  # the sealed bytes, as the board stored them
    assert all(r[2] == 1 for r in rows)
    assert rows[0][3] == "boot" and rows[1][3] == "coin" and rows[1][4] == 100
    assert ingest.high("sim-0001") == len(day)


def test_duplicate_deliveries_change_nothing(ingest, day):
    ingest.batch("sim-0001", batch(day[:40]))
    out = ingest.batch("sim-0001", batch(day[:40]))  # the same batch again
    assert out.stored == 0 and out.duplicates == 40 and out.ack == 40 and out.problems == []
    out = ingest.batch("sim-0001", batch(day[30:60]))  # overlapping resend after a lost ack
    assert out.stored == 20 and out.duplicates == 10 and out.ack == 60
    out = ingest.batch("sim-0001", batch(list(reversed(day[55:70]))))  # out of order
    assert out.ack == 70 and out.stored == 10
    assert [r[0] for r in stored(ingest)] == list(range(1, 71))
    dup = ingest.store.query("SELECT duplicates FROM devices WHERE device = 'sim-0001'")
    assert dup[0][0] == 40 + 10 + 5


def test_records_beyond_a_gap_wait_for_the_records_before_them(ingest, day):
    # batches overtaking each other (two ingest processes) or a lost batch
    ingest.batch("sim-0001", batch(day[:10]))
    out = ingest.batch("sim-0001", batch(day[14:20]))
    assert out.ack == 10 and out.stored == 0 and out.parked == 6 and out.problems == []
    out = ingest.batch("sim-0001", batch(day[10:14]))  # the missing batch arrives
    assert out.ack == 20 and out.stored == 10 and out.problems == []
    assert [r[0] for r in stored(ingest)] == list(range(1, 21))
    assert ingest.store.query("SELECT count(*) FROM pending") == [(0,)]
    # the board's resend of what was parked is a duplicate, nothing more
    out = ingest.batch("sim-0001", batch(day[14:20]))
    assert out.duplicates == 6 and out.ack == 20


def test_a_gap_too_wide_to_park_is_reported(ingest, day, monkeypatch):
    from host_tools.server import ingest as ingest_mod

    monkeypatch.setattr(ingest_mod, "MAX_AHEAD", 5)
    ingest.batch("sim-0001", batch(day[:10]))
    out = ingest.batch("sim-0001", batch(day[20:30]))
    assert out.ack == 10 and kinds(out) == ["gap"] and out.problems[0][1] == 11
    assert "11..20 missing" in out.problems[0][2]
    out = ingest.batch("sim-0001", batch(day[10:30]))
    assert out.ack == 30 and out.stored == 20


def test_a_fork_is_kept_as_evidence_and_changes_nothing(ingest, day, tmp_path):
    ingest.batch("sim-0001", batch(day[:30]))
    # the same board's journal written again from scratch (flash wiped, or forged history)
    other = firmware_records(tmp_path / "again", [("boot", {})] + coin_day(40, first=7))
    out = ingest.batch("sim-0001", batch(other[:30]))
    assert out.stored == 0 and set(kinds(out)) == {"fork"}
    assert len(out.problems) == 30
    assert [bytes(r[1]) for r in stored(ingest)] == day[:30]  # the first copy stands
    ev = ingest.store.query("SELECT evidence FROM problems WHERE kind = 'fork' AND seq = 5")
    assert bytes(ev[0][0]) == other[4]
    # and the board's real journal carries on
    assert ingest.batch("sim-0001", batch(day[30:50])).ack == 50


class Clock:
    def __init__(self):
        self.t = 1_780_000_000.0

    def __call__(self):
        return self.t


def _rollbacks(ingest):
    return ingest.store.query("SELECT seq, count, state FROM problems WHERE kind = 'rollback'")


@pytest.mark.parametrize("covered_fast", [True, False], ids=["short path", "full path"])
def test_a_board_reporting_fewer_records_is_a_rollback(ingest, day, covered_fast):
    # the board keeps saying it has 30 records while the ledger holds 50, and brings
    # nothing new: a restored board stuck resending its old records (it refuses the acks
    # for 50). Not at the first such batch (that is what a stale delivery looks like too),
    # but once it has gone on for ROLLBACK_AFTER_S
    from host_tools.server.ingest import ROLLBACK_AFTER_S

    clock = Clock()
    ingest = Ingest(ingest.store, SITE_KEY, clock=clock, covered_fast=covered_fast)
    ingest.batch("sim-0001", batch(day[:50]))
    out = ingest.batch("sim-0001", wire.build_batch(day[20:30], 30))
    assert out.problems == [] and out.stale and out.ack == 50
    clock.t += ROLLBACK_AFTER_S / 2
    out = ingest.batch("sim-0001", wire.build_batch(day[20:24], 30))  # its halved resend
    assert out.problems == [] and out.stale
    clock.t += ROLLBACK_AFTER_S / 2
    out = ingest.batch("sim-0001", wire.build_batch(day[20:22], 30))
    assert kinds(out) == ["rollback"] and not out.stale
    assert out.problems[0][1] == 30 and "for 300 s it has sent only records" in \
        out.problems[0][2]
    assert out.ack == 50 and out.stored == 0
    assert _rollbacks(ingest) == [(30, 1, "open")]
    assert [r[0] for r in stored(ingest)] == list(range(1, 51))


def test_a_stale_delivery_is_counted_not_a_rollback(ingest, day):
    # a broker restarted from its saved queue delivers again batches the server already
    # took, after newer ones (docs/fleet.md, "The broker restarts")
    clock = Clock()
    ingest = Ingest(ingest.store, SITE_KEY, clock=clock)
    first, second = batch(day[:16], last=16), batch(day[16:40], last=40)
    assert ingest.batch("sim-0001", first).ack == 16
    assert ingest.batch("sim-0001", second).ack == 40
    out = ingest.batch("sim-0001", first)  # the stale copy: "my newest record is 16"
    assert (out.problems, out.stale, out.ack, out.stored, out.duplicates) == \
        ([], True, 40, 0, 16)
    assert ingest.stale == 1
    # the board's next batch says it has more than the ledger held: it was never behind
    clock.t += 3600
    out = ingest.batch("sim-0001", batch(day[40:50]))
    assert out.problems == [] and not out.stale and out.ack == 50
    clock.t += 3600
    out = ingest.batch("sim-0001", second)  # and another stale copy, an hour later
    assert out.problems == [] and out.stale and out.ack == 50
    assert _rollbacks(ingest) == []
    assert [bytes(r[1]) for r in stored(ingest)] == day[:50]  # each record once
    dup = ingest.store.query("SELECT duplicates FROM devices WHERE device = 'sim-0001'")
    assert dup[0][0] == 16 + 24


def test_a_board_behind_that_brings_new_records_starts_the_wait_again(ingest, day):
    # while the ledger grows (the board's newer batches, in another ingest process) the
    # old copies that keep coming are stale: the wait for a rollback starts again
    from host_tools.server.ingest import ROLLBACK_AFTER_S

    clock = Clock()
    ingest = Ingest(ingest.store, SITE_KEY, clock=clock)
    ingest.batch("sim-0001", batch(day[:50]))
    for n in range(50, 90, 10):
        assert ingest.batch("sim-0001", batch(day[:8], last=8)).stale
        clock.t += ROLLBACK_AFTER_S * 0.75
        ingest.batch("sim-0001", batch(day[n:n + 10], last=n + 10))
    out = ingest.batch("sim-0001", batch(day[:8], last=8))
    assert out.problems == [] and out.stale and out.ack == 90


def test_a_restored_board_is_a_rollback_at_its_first_new_record(ingest, day):
    # the board's flash went back to an image of 30 records; it booted and journaled its
    # boot as record 31, which the ledger holds with other content
    from host_tools.fleet.seal import BoardJournal

    j = BoardJournal(SITE_KEY, "sim-0001")
    for _ in range(50):
        j.append("coin", amount=100)
    ingest.batch("sim-0001", batch(j.records[:50]))
    j.records, j.prev_tag = j.records[:30], j.records[29][-16:]
    j.append("boot", reason="power on")
    out = ingest.batch("sim-0001", batch(j.records[24:31], last=31))
    assert sorted(kinds(out)) == ["fork", "rollback"]
    assert [p[1] for p in out.problems if p[0] == "fork"] == [31]
    assert "sent 1 record(s) the ledger holds with other content" in \
        [p for p in out.problems if p[0] == "rollback"][0][2]
    assert out.ack == 50 and out.stored == 0 and not out.stale
    # a fork in a batch that does not report fewer records is a fork, not a rollback
    other = BoardJournal(SITE_KEY, "sim-0001")
    other.append("boot")
    out = ingest.batch("sim-0001", batch(other.records, last=60))
    assert kinds(out) == ["fork"]


def test_a_resend_the_ledger_holds_takes_the_short_path(ingest, day, store_url):
    # the resend storm (docs/fleet.md): a batch sent again after an ack timeout is answered
    # from one read, with the same outcome as the full path would give
    ingest.batch("sim-0001", batch(day[:40]))
    out = ingest.batch("sim-0001", batch(day[16:32], last=40))
    assert (out.ack, out.stored, out.duplicates, out.problems) == (40, 0, 16, [])
    assert ingest.covered == 1
    full = Ingest(ingest.store, SITE_KEY, covered_fast=False)
    again = full.batch("sim-0001", batch(day[16:32], last=40))
    assert (again.ack, again.stored, again.duplicates) == (out.ack, out.stored, out.duplicates)
    assert full.covered == 0
    row = ingest.store.query("SELECT batches, duplicates FROM devices "
                             "WHERE device = 'sim-0001'")[0]
    assert tuple(row) == (3, 32)
    # a resend reaching past the ledger's high-water mark goes the full way and stores
    out = ingest.batch("sim-0001", batch(day[32:48]))
    assert (out.ack, out.stored, out.duplicates) == (48, 8, 8) and ingest.covered == 1


def test_one_altered_record_in_a_resend_is_still_a_fork(ingest, day):
    ingest.batch("sim-0001", batch(day[:20]))
    forked = list(day[:8])
    forked[5] = bytearray(forked[5])
    forked[5][20] ^= 1
    out = ingest.batch("sim-0001", batch([bytes(r) for r in forked], last=20))
    assert kinds(out) == ["fork"] and out.problems[0][1] == 6 and ingest.covered == 0
    assert [bytes(r[1]) for r in stored(ingest)] == day[:20]


def test_an_altered_record_is_flagged_and_not_counted(ingest, day):
    bad = bytearray(day[5])
    bad[40] ^= 0x01  # one bit of the encrypted body
    recs = day[:5] + [bytes(bad)] + day[6:12]
    out = ingest.batch("sim-0001", batch(recs))
    assert kinds(out) == ["bad_tag"] and out.problems[0][1] == 6
    assert out.ack == 12  # the chain goes on from the stored tag: record 7 verifies
    rows = stored(ingest)
    assert [r[2] for r in rows] == [1] * 5 + [0] + [1] * 6


def test_records_of_another_board_do_not_verify(ingest, day):
    out = ingest.batch("dev-2", batch(day[:3]))
    assert kinds(out) == ["bad_tag"] * 3


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\x01", "shorter than its header"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x01", "format version 2"),
        (b"\x01\x02\x00\x00\x00\x00\x00\x02" + bytes(128), "says 2 records but carries 128"),
    ],
)
def test_malformed_batches_are_reported_and_lose_nothing(ingest, day, payload, why):
    ingest.batch("sim-0001", batch(day[:5]))
    out = ingest.batch("sim-0001", payload)
    assert kinds(out) == ["malformed"] and why in out.problems[0][2]
    assert out.ack == 5
    assert len(stored(ingest)) == 5


def test_card_fraud_is_flagged(ingest, tmp_path):
    uid = "04a1b2c3d4e5f6"
    t = 1_780_000_000

    def debit(counter, before, amount, after=None):
        return ("card_debit", {"amount": amount, "source": uid, "card_counter": counter,
                               "balance_before": before,
                               "balance_after": before - amount if after is None else after,
                               "state": "credit", "credit": amount, "t": t + counter})

    steps = [
        ("boot", {}),
        debit(1, 1000, 250),  # 750 left
        debit(2, 750, 250),  # 500 left
        debit(3, 750, 250),  # balance went back up: a restored dump
        debit(2, 500, 100),  # counter 2 spent again (and 500 is not what counter 1 left)
        debit(5, 300, 100, after=250),  # 300 - 100 is not 250
    ]
    recs = firmware_records(tmp_path / "j", steps)
    out = ingest.batch("sim-0001", batch(recs))
    assert out.ack == 6
    got = sorted((k, s) for k, s, _ in out.problems)
    assert got == [("card_arith", 6), ("card_balance_mismatch", 5), ("card_balance_rise", 4),
                   ("card_counter_reuse", 5)]
    shadow = ingest.store.query("SELECT counter, balance FROM cards WHERE uid = ?", (uid,))
    assert shadow == [(5, 250)]


def test_top_ups_keep_the_shadow_balance_honest(ingest, tmp_path):
    uid = "04a1b2c3"

    def write(rtype, counter, before, after, amount):
        return (rtype, {"amount": amount, "source": uid, "card_counter": counter,
                        "balance_before": before, "balance_after": after, "state": "idle",
                        "credit": 0, "t": 1_780_000_000 + counter})

    recs = firmware_records(tmp_path / "j", [
        ("boot", {}),
        write("card_debit", 1, 1000, 750, 250),
        write("card_topup", 2, 750, 1750, 1000),  # the operator's top-up, journaled
        write("card_debit", 3, 1750, 1500, 250),
    ])
    out = ingest.batch("sim-0001", batch(recs))
    assert out.problems == [] and out.ack == 4
    assert ingest.store.query("SELECT counter, balance FROM cards") == [(3, 1500)]


def test_two_ingest_processes_share_one_database(store_url, day):
    # Shared subscriptions give each batch to one of several ingest processes; resends land
    # anywhere. Hammer one board's records from four connections at once.
    stores = [open_store(store_url) for _ in range(4)]
    errors = []

    def work(i):
        ing = Ingest(stores[i], SITE_KEY)
        try:
            for start in range(0, len(day), 7):
                lo = max(0, start - 3 * i)
                ing.batch("sim-0001", batch(day[lo : start + 7], last=len(day)))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = stores[0].query("SELECT seq, verified FROM records WHERE device = 'sim-0001' "
                           "ORDER BY seq")
    assert rows == [(s, 1) for s in range(1, len(day) + 1)]
    for s in stores:
        s.close()


def test_store_urls_say_what_is_wrong(tmp_path):
    with pytest.raises(StoreError, match="sqlite:///relative.db"):
        open_store("sqlite:/x.db")
    with pytest.raises(StoreError, match="cannot connect"):
        open_store("postgresql://nobody@127.0.0.1:1/none")


def test_ack_messages_round_trip_and_refuse_forgery():
    key = wire.ack_key(SITE_KEY, "sim-0001")
    msg = wire.build_ack(key, "sim-0001", 1234)
    assert wire.parse_ack(key, "sim-0001", msg) == 1234
    with pytest.raises(wire.WireError, match="does not verify"):
        wire.parse_ack(key, "sim-0002", msg)  # another board's ack
    forged = bytearray(msg)
    forged[7] ^= 1
    with pytest.raises(wire.WireError, match="does not verify"):
        wire.parse_ack(key, "sim-0001", bytes(forged))


# ---- problems: open until what they concern is settled (docs/sync.md, "Problems")
def problems(ingest):
    key = ingest.store.problem_id
    return {(k, s): (st, lost, upto, pid) for pid, k, s, st, lost, upto in ingest.store.query(
        f"SELECT {key}, kind, seq, state, data_lost, upto FROM problems")}


def test_a_malformed_batch_resolves_once_the_ledger_holds_its_records(ingest, day):
    # the case: a frame mixed up on the way; the board sends the records again
    ingest.batch("sim-0001", batch(day[:5], last=8))
    out = ingest.batch("sim-0001", b"\x00" + bytes(20))
    assert kinds(out) == ["malformed"]
    assert problems(ingest)[("malformed", 0)][:3] == ("open", None, 8)  # loss not yet known
    out = ingest.batch("sim-0001", batch(day[5:7], last=8))
    assert out.resolved == 0 and problems(ingest)[("malformed", 0)][0] == "open"
    out = ingest.batch("sim-0001", batch(day[7:8], last=8))
    assert out.resolved == 1
    assert problems(ingest)[("malformed", 0)][:2] == ("resolved", "no")
    # the same problem again later is open again
    ingest.batch("sim-0001", b"\x00")
    assert problems(ingest)[("malformed", 0)][:3] == ("open", None, 9)


def test_a_gap_resolves_when_its_records_arrive(ingest, day, monkeypatch):
    from host_tools.server import ingest as ingest_mod

    monkeypatch.setattr(ingest_mod, "MAX_AHEAD", 5)
    ingest.batch("sim-0001", batch(day[:10]))
    ingest.batch("sim-0001", batch(day[20:30]))
    assert problems(ingest)[("gap", 11)][:3] == ("open", None, 20)
    ingest.batch("sim-0001", batch(day[10:15]))
    assert problems(ingest)[("gap", 11)][0] == "open"  # 16..20 still missing
    out = ingest.batch("sim-0001", batch(day[15:30]))
    assert out.resolved == 1 and problems(ingest)[("gap", 11)][:2] == ("resolved", "no")


def test_evidence_stays_open_until_an_operator_resolves_it(ingest, day):
    ingest.batch("sim-0001", batch(day[:5]))
    bad = bytearray(day[5])
    bad[50] ^= 1
    ingest.batch("sim-0001", batch([bytes(bad)]))
    ingest.batch("sim-0001", batch(day[:5] + [day[5]]))  # a fork of 6, then more records
    ingest.batch("sim-0001", batch(day[6:40]))
    p = problems(ingest)
    assert p[("bad_tag", 6)][:3] == ("open", "yes", None)  # its money is not counted
    assert p[("fork", 6)][:3] == ("open", "no", None)  # the first copy is kept
    with ingest.store.transaction() as tx:
        was = tx.resolve_problem(p[("fork", 6)][3], "no", "operator: flash replaced")
        assert tx.resolve_problem(10**9, "no", "x") is None
    assert was["kind"] == "fork" and was["state"] == "open"
    assert problems(ingest)[("fork", 6)][:2] == ("resolved", "no")
    assert problems(ingest)[("bad_tag", 6)][0] == "open"


OLD_PROBLEMS = (
    "CREATE TABLE problems (device TEXT NOT NULL, seq BIGINT NOT NULL, kind TEXT NOT NULL, "
    "detail TEXT, evidence {blob}, first_at {real}, last_at {real}, count BIGINT NOT NULL "
    "DEFAULT 1, UNIQUE (device, kind, seq))"
)


def test_a_ledger_made_before_problems_had_a_state_gets_one(store_url):
    old = "INSERT INTO problems (device, seq, kind, detail) VALUES " \
          "('sim-0001', 0, 'malformed', 'batch format version 0')"
    if store_url.startswith("sqlite"):
        import sqlite3

        c = sqlite3.connect(store_url[len("sqlite:///"):])
        c.execute(OLD_PROBLEMS.format(blob="BLOB", real="REAL"))
        c.execute(old)
        c.commit()
        c.close()
    else:
        import psycopg

        with psycopg.connect(store_url, autocommit=True) as c:
            c.execute(OLD_PROBLEMS.format(blob="BYTEA", real="DOUBLE PRECISION"))
            c.execute(old)
    store = open_store(store_url)
    try:
        key = store.problem_id
        assert store.query(f"SELECT {key}, state, data_lost, upto FROM problems") == [
            (1, "open", None, None)]
        ing = Ingest(store, SITE_KEY)
        ing.batch("sim-0001", b"\x00")  # counted again on the migrated row
        assert store.query("SELECT count, state FROM problems") == [(2, "open")]
    finally:
        store.close()
