"""The per-day revenue rollup (host_tools/server/rollup.py) equals the records, whatever
the deliveries: genuine records sealed by the firmware's Journal under micropython (coins,
card debits some of which a later card_cancel or "payment had not landed" voids, QR tokens,
phone and operator remote starts, refunds, starts, a board without a trusted clock, an
altered record), delivered by the real Ingest in random batches with redeliveries, batches
ahead of a gap, resends the ledger already holds whole, and the same records through
`washpay server import`. After every delivery the rollup is compared with the SQL
recomputation and with a count made here in Python from the stored records; at the end
with the totals of what the boards journaled. The backfill of a ledger made before the
rollup gives the same table. On SQLite and PostgreSQL."""

import json
import random
from collections import defaultdict

import pytest
from sync_env import SITE_KEY, firmware_records

from host_tools.server import rollup, wire
from host_tools.server.importer import import_records
from host_tools.server.ingest import Ingest
from host_tools.server.store import open_store

T0 = 1_790_000_000  # 2026-09-21
DEVICES = ("laundry-1", "laundry-2")
NOT_LANDED = "payment had not landed"


def _cmd(rng):
    return f"{rng.getrandbits(64):016x}"


def journal_steps(rng, device, n=90):
    """[(type, fields)] of one board's trade over about four days, and {command id: args}
    of the commands behind its remote starts."""
    steps, commands = [("boot", {"t": T0})], {}
    t, counter, balance, debits = T0, 0, 5000, []
    uid = "04" + device[-1] * 6
    while len(steps) < n:
        t += rng.randrange(600, 9000)
        when = 100 + len(steps) if rng.random() < 0.06 else t  # the clock not set yet
        roll = rng.random()
        if roll < 0.3:
            steps.append(("coin", {"amount": rng.choice((50, 100, 200)), "t": when}))
        elif roll < 0.5:
            counter += 1
            price = rng.choice((250, 350))
            steps.append(("card_debit", {"amount": price, "price": price, "source": uid,
                                         "card_counter": counter, "balance_before": balance,
                                         "balance_after": balance - price, "t": when}))
            debits.append((counter, balance, price))
            balance -= price
        elif roll < 0.58 and debits:
            # the newest card write never reached the card: void it (now or a bit later)
            c, before, price = debits.pop()
            void = rng.choice(("card_cancel", "card_settled"))
            f = {"source": uid, "card_counter": c, "balance_before": before,
                 "balance_after": before - price, "t": when}
            if void == "card_cancel":
                steps.append(("card_cancel", dict(f, reason="card left")))
            else:
                steps.append(("card_settled", dict(f, amount=0, reason=NOT_LANDED)))
            if c == counter:
                balance = before
        elif roll < 0.62:  # a card_settled that voids nothing: the payment had landed
            steps.append(("card_settled", {"source": uid, "card_counter": counter,
                                           "amount": 250, "reason": "payment landed",
                                           "t": when}))
        elif roll < 0.7:
            steps.append(("token_redeem", {"amount": 250, "source": _cmd(rng), "t": when}))
        elif roll < 0.82:
            cid = _cmd(rng)
            operator = rng.random() < 0.5
            # a phone payment's args that say "operator" in their values are no operator's
            commands[cid] = ({"program": "quick", "amount": 0, "operator": "attendant",
                              "reason": "the \"operator\" saw a jam"} if operator else
                             {"program": "operator", "amount": 350, "payment": "p-" + cid[:6],
                              "note": 'paid by phone, no "operator": here'})
            steps.append(("remote_start", {"amount": 350, "source": cid, "t": when}))
        elif roll < 0.9:
            steps.append(("vend_running", {"price": 250, "t": when}))
        elif roll < 0.95:
            steps.append(("refund", {"amount": rng.choice((100, 250)), "t": when}))
        else:
            steps.append(("coin_rejected", {"pulses": 3, "t": when}))
    return steps, commands


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    """{device: (sealed records, commands, steps)}: made once, delivered on both DBs."""
    rng = random.Random(16)
    out = {}
    for device in DEVICES:
        steps, commands = journal_steps(rng, device)
        recs = firmware_records(tmp_path_factory.mktemp(device), steps, device=device)
        assert len(recs) == len(steps)
        out[device] = (recs, commands, steps)
    return out


def python_count(store):
    """The rollup as this test reads the records, without rollup.py's SQL:
    {(utc_day, device, kind, currency): (count, amount)}."""
    args = {cid: json.loads(a) for cid, a in store.query("SELECT id, args FROM commands")}
    rows = store.query("SELECT device, seq, type, t, clock_ok, currency, amount, verified, "
                       "source, source_kind, card_counter, reason FROM records")
    voids = [r for r in rows if r[7] == 1 and r[9] in ("", "card") and (
        r[2] == "card_cancel" or (r[2] == "card_settled" and r[6] == 0
                                  and r[11] == NOT_LANDED))]
    kinds = {"coin": "cash", "card_debit": "card", "token_redeem": "qr", "refund": "refund",
             "vend_running": "start"}
    out = defaultdict(lambda: [0, 0])
    for dev, seq, rtype, t, clock_ok, cur, amount, ok, src, _sk, counter, _why in rows:
        if ok != 1:
            continue
        if rtype == "remote_start":
            kind = "operator" if "operator" in args.get(src, {}) else "app"
        elif rtype in kinds:
            kind = kinds[rtype]
        else:
            continue
        if rtype == "card_debit" and any(
                v[0] == dev and v[8] == src and v[10] == counter and v[1] > seq
                for v in voids):
            continue
        day = t // 86400 if clock_ok == 1 and t and t > 0 else -1
        c = out[(day, dev, kind, cur or "")]
        c[0] += 1
        c[1] += amount or 0
    return {k: tuple(v) for k, v in out.items()}


def check(store):
    kept = rollup.stored(store)
    assert kept == rollup.recompute(store)
    assert kept == python_count(store)
    return kept


def deliver(store, boards, rng):
    """Every board's records in random batches: redeliveries, batches ahead of a gap, whole
    resends, one altered copy of a record; the rollup checked after each. The sealed
    records the ledger has not stored verified are returned (the altered one's seq)."""
    ingest = Ingest(store, SITE_KEY)
    altered = {}
    with store.transaction() as tx:
        for device, (_recs, commands, _s) in boards.items():
            for cid, args in commands.items():  # sent before the boards journaled them
                tx.execute("INSERT INTO commands (id, device, kind, args, created, status) "
                           "VALUES (?, ?, 'start', ?, ?, 'started')",
                           (cid, device, json.dumps(args), T0))
    sent = {d: [] for d in boards}
    for device, (recs, _c, _s) in boards.items():
        i = 0
        while i < len(recs):
            n = rng.randrange(1, 12)
            batch = recs[i:i + n]
            if rng.random() < 0.2 and i + n < len(recs):  # the next batch overtakes this one
                ahead = recs[i + n:i + n + rng.randrange(1, 6)]
                ingest.batch(device, wire.build_batch(ahead, len(recs)))
                check(store)
            first = int.from_bytes(batch[0][4:8], "big")
            if not altered.get(device) and i > 20 and first == ingest.high(device) + 1:
                bad = bytearray(batch[0])
                bad[50] ^= 8  # damaged on the way: stored as evidence, never counted
                out = ingest.batch(device, wire.build_batch([bytes(bad)] + batch[1:],
                                                            len(recs)))
                assert ("bad_tag", first) in [p[:2] for p in out.problems]
                altered[device] = first
                check(store)
            ingest.batch(device, wire.build_batch(batch, len(recs)))
            sent[device].append(batch)
            check(store)
            if rng.random() < 0.3:  # a lost ack: an earlier batch again, whole or in part
                again = rng.choice(sent[device])
                ingest.batch(device, wire.build_batch(again[: rng.randrange(1, len(again) + 1)],
                                                      len(recs)))
                check(store)
            i += n
    return altered


def journaled_totals(boards, altered):
    """{kind: (count, amount)} of what the boards journaled, from the steps themselves."""
    out = defaultdict(lambda: [0, 0])
    for device, (_recs, commands, steps) in boards.items():
        voided = set()  # one card per board: its counters whose write a record voids
        for seq, (rtype, f) in enumerate(steps, 1):
            if seq != altered.get(device) and (rtype == "card_cancel" or (
                    rtype == "card_settled" and f["amount"] == 0
                    and f["reason"] == NOT_LANDED)):
                voided.add(f["card_counter"])
        for seq, (rtype, f) in enumerate(steps, 1):
            if seq == altered.get(device):
                continue
            if rtype == "card_debit" and f["card_counter"] not in voided:
                kind = "card"
            elif rtype == "remote_start":
                kind = "operator" if "operator" in commands[f["source"]] else "app"
            else:
                kind = {"coin": "cash", "token_redeem": "qr", "refund": "refund",
                        "vend_running": "start"}.get(rtype)
            if kind:
                out[kind][0] += 1
                out[kind][1] += f.get("amount") or 0
    return {k: tuple(v) for k, v in out.items()}


def run(url, boards, tmp_path):
    rng = random.Random(7)
    store = open_store(url)
    try:
        altered = deliver(store, boards, rng)
        kept = check(store)
        totals = defaultdict(lambda: [0, 0])
        for (_day, _d, kind, _c), (n, amount) in kept.items():
            totals[kind][0] += n
            totals[kind][1] += amount
        expected = journaled_totals(boards, altered)
        assert {k: tuple(v) for k, v in totals.items()} == expected
        # what the test relies on is there: each kind, and a day of no trusted clock
        assert {"cash", "card", "qr", "app", "operator", "refund", "start"} <= set(expected)
        assert any(day == rollup.NO_CLOCK for day, *_ in kept)
        # the same records imported again from a pull (washpay server import): nothing new
        for device, (recs, _c, _s) in boards.items():
            t = import_records(store, SITE_KEY, device, recs)
            assert t["stored"] == 0
        assert check(store) == kept
        # a ledger made before the rollup: the table is built when the ledger is opened
        with store.transaction() as tx:
            tx.execute("DROP TABLE revenue_days")
    finally:
        store.close()
    store = open_store(url)
    try:
        assert check(store) == kept
    finally:
        store.close()


def test_rollup_equals_the_records_on_sqlite(boards, tmp_path):
    run(f"sqlite:///{tmp_path / 'ledger.db'}", boards, tmp_path)


def test_rollup_equals_the_records_on_postgresql(boards, tmp_path):
    from sync_env import postgres_cluster

    with postgres_cluster() as url:
        run(url, boards, tmp_path)
