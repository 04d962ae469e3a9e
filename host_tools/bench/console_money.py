"""The console's money pages on a big ledger: response time p50/p99 of the revenue page and
the transactions page (first page, a deep page, filtered pages) served over HTTP by the web
app, with 1,000,000 ledger records on SQLite and on PostgreSQL (a throwaway cluster when
the machine has one).

    python -m host_tools.bench.console_money [--records N] [--requests N] [--sqlite-only]

The ledger is filled with bulk inserts of realistic rows (fill()): 40 boards over a year,
each sale a payment (coins one record per coin, card debits with balances and counters, QR
tokens, remote starts: a phone payment's, or one in ten an operator's free start from the
console, each with its command) and the washer's vend_running record, card top-ups,
refunds, and the boards' other records (boots, door, faults) in between; seq and time rise
per board. A bulk load goes around Tx.insert_records, so the revenue rollup is then built
from the records as for a ledger made before it (rollup.rebuild: timed, "backfill").
"""

import argparse
import http.client
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from host_tools.server import rollup
from host_tools.server.store import RECORD_COLUMNS, open_store

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
DEVICES = 40
YEAR = 365 * 86400
END = 1_796_000_000  # a fixed "now" (December 2026): the figures do not drift by date
PROGRAMS = (("quick", 250), ("standard", 350), ("heavy", 500))
COLS = ("device", "seq", "raw", "verified", *RECORD_COLUMNS, "received_at")


def _rows(n, seed=7):
    """n ledger rows as tuples in COLS order."""
    rng = random.Random(seed)
    raw = bytes(range(64))  # a sealed record is about this size
    per = n // DEVICES
    cards = [f"04{rng.getrandbits(48):012x}" for _ in range(5000)]
    counters = dict.fromkeys(cards, 0)
    balances = dict.fromkeys(cards, 5000)
    for d in range(DEVICES):
        device = f"laundry-{d + 1:03d}"
        seq = 0
        while seq < per:
            # the board's records spread evenly over the year, a little jitter per sale
            t = END - YEAR + YEAR * seq / per + rng.uniform(0, 60)
            prog, price = PROGRAMS[rng.randrange(3)]
            kind = rng.random()
            out = []
            if kind < 0.45:
                paid = 0
                while paid < price and len(out) < 5:
                    coin = rng.choice((50, 100, 200))
                    paid += coin
                    out.append(("coin", coin, None, None, None))
            elif kind < 0.75:
                uid = rng.choice(cards)
                counters[uid] += 1
                before = balances[uid]
                if before < price:
                    balances[uid] += 2000
                    out.append(("card_topup", 2000, uid, before, before + 2000))
                    counters[uid] += 1
                    before += 2000
                balances[uid] = before - price
                out.append(("card_debit", price, uid, before, before - price))
            elif kind < 0.85:
                out.append(("token_redeem", price, "tok", None, None))
            elif kind < 0.93:
                out.append(("remote_start", price, "cmd", None, None))
            else:
                out.append((rng.choice(("boot", "door", "coin_rejected", "fault")), None,
                            None, None, None))
            if out[0][1] is not None:
                out.append(("vend_running", None, None, None, None))
                if rng.random() < 0.01:
                    out.append(("refund", price, None, None, None))
            for rtype, amount, src, bb, ba in out:
                if seq >= per:
                    break
                seq += 1
                source_kind = {"card_debit": "card", "card_topup": "card",
                               "token_redeem": "token", "remote_start": "command"}.get(rtype, "")
                source = src if rtype.startswith("card") else (
                    f"{src}{d:03d}{seq:07d}" if src else None)  # unique: a command id
                fields = {"type": rtype, "t": int(t), "clock_ok": 1, "boot": 1,
                          "amount": amount, "credit": None, "price": price if amount else None,
                          "currency": "EUR", "program": prog, "source_kind": source_kind,
                          "source": source, "card_counter": counters.get(src),
                          "balance_before": bb, "balance_after": ba, "reason": None,
                          "recovered": 0, "state": "running" if rtype == "vend_running" else
                          "credit"}
                yield (device, seq, raw, 1, *[fields[c] for c in RECORD_COLUMNS], t + 5)


def fill(store, n):
    """Bulk-insert n realistic ledger records, the devices and the cards' shadow rows."""
    rows = _rows(n)
    if store.dialect == "postgresql":
        with store.conn.cursor() as cur, cur.copy(
                f"COPY records ({', '.join(COLS)}) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        store.conn.commit()
    else:
        sql = (f"INSERT INTO records ({', '.join(COLS)}) "
               f"VALUES ({', '.join('?' for _ in COLS)})")
        with store.transaction() as tx:
            batch = []
            for r in rows:
                batch.append(r)
                if len(batch) == 20000:
                    tx.cur.executemany(sql, batch)
                    batch = []
            tx.cur.executemany(sql, batch)
    with store.transaction() as tx:
        tx.execute("INSERT INTO devices (device, high_seq, reported_seq, first_seen, "
                   "last_seen, online) SELECT device, max(seq), max(seq), min(received_at), "
                   "max(received_at), 1 FROM records GROUP BY device")
        tx.execute("INSERT INTO cards (uid, counter, balance, device, seq, updated) "
                   "SELECT source, max(card_counter), min(balance_after), min(device), "
                   "max(seq), max(received_at) FROM records WHERE type = 'card_debit' "
                   "GROUP BY source")
        starts = tx.all("SELECT source, device, amount, t FROM records "
                        "WHERE type = 'remote_start'")
        tx.cur.executemany(tx.q(
            "INSERT INTO commands (id, device, kind, args, created, status) "
            "VALUES (?, ?, 'start', ?, ?, 'started')"),
            [(cid, dev, json.dumps(
                {"program": "quick", "amount": 0, "operator": "attendant",
                 "reason": "coin jam"} if i % 10 == 0 else
                {"program": "quick", "amount": amount, "payment": f"p-{i}"}), t)
             for i, (cid, dev, amount, t) in enumerate(starts)])
    if store.dialect == "postgresql":
        with store.conn.cursor() as cur:
            cur.execute("ANALYZE")
        store.conn.commit()
    else:
        store.conn.execute("ANALYZE")


def backfill(store):
    """Build the revenue rollup from the records (what opening a ledger made before it
    does); seconds."""
    t0 = time.perf_counter()
    with store.transaction() as tx:
        rollup.rebuild(tx)
    return time.perf_counter() - t0


def _get(port, path, cookie):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        t0 = time.perf_counter()
        conn.request("GET", path, headers={"Cookie": f"washpay_console={cookie}"})
        resp = conn.getresponse()
        body = resp.read()
        ms = (time.perf_counter() - t0) * 1000
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
    return ms, body


def _deep_cursor(store, fraction):
    """The cursor of the record `fraction` of the way down the newest-first list."""
    n = store.query("SELECT count(*) FROM records")[0][0]
    row = store.query("SELECT t, seq, device FROM records ORDER BY t DESC, device DESC, "
                      f"seq DESC LIMIT 1 OFFSET {int(n * fraction)}")[0]
    return f"{row[0]}~{row[1]}~{row[2]}"


def measure(url, n, requests):
    """[(page, p50 ms, p99 ms)] for the ledger at `url` filled with n records."""
    from host_tools.server.web import Web

    store = open_store(url)
    t0 = time.perf_counter()
    fill(store, n)
    fill_s = time.perf_counter() - t0
    backfill_s = backfill(store)
    deep = _deep_cursor(store, 0.9)
    card = store.query("SELECT uid FROM cards ORDER BY uid LIMIT 1")[0][0]
    store.close()
    web = Web({"machines": {}}, url, bytes(32), lambda *a, **k: 0,
              log=lambda m: None).start("127.0.0.1", 0)
    try:
        web.console.accounts.add("bench", "viewer", "bench password")
        cookie, _csrf = web.console.accounts.open_session("bench", "127.0.0.1")
        port = web.httpd.server_port
        end_day = time.strftime("%Y-%m-%d", time.gmtime(END))
        month_ago = time.strftime("%Y-%m-%d", time.gmtime(END - 30 * 86400))
        year_ago = time.strftime("%Y-%m-%d", time.gmtime(END - 364 * 86400))
        pages = [
            ("revenue, 30 days per day", f"/console/revenue?from={month_ago}&to={end_day}"),
            ("revenue, a year per month",
             f"/console/revenue?from={year_ago}&to={end_day}&period=month"),
            ("revenue, a year, one device",
             f"/console/revenue?from={year_ago}&to={end_day}&period=week"
             "&device=laundry-007"),
            ("transactions, first page", "/console/transactions"),
            ("transactions, deep page (90 % down)", f"/console/transactions?after={deep}"),
            ("transactions, one device", "/console/transactions?device=laundry-007"),
            ("transactions, refunds only", "/console/transactions?type=refunds"),
            ("transactions, one card", f"/console/transactions?card={card}"),
            ("transactions, one device, a past month",
             f"/console/transactions?device=laundry-007&from={year_ago}&to={month_ago}"),
        ]
        out = []
        for name, path in pages:
            _get(port, path, cookie)  # warm: the first request opens caches
            times = sorted(_get(port, path, cookie)[0] for _ in range(requests))
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
            out.append((name, statistics.median(times), p99))
    finally:
        web.stop()
    return fill_s, backfill_s, out


def bench(n=1_000_000, requests=30, postgres=True):
    """Rows for host_tools.bench's table: (name, value, unit)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fill_s, backfill_s, res = measure(f"sqlite:///{tmp}/ledger.db", n, requests)
        rows.append((f"SQLite: fill {n:,} records (bulk insert, indexes)", round(fill_s, 1),
                     "s"))
        rows.append(("SQLite: revenue rollup backfill from the records", round(backfill_s, 1),
                     "s"))
        rows += _rows_of("SQLite", res)
    if postgres:
        if str(TESTS) not in sys.path:
            sys.path.insert(0, str(TESTS))
        try:
            import sync_env as env

            with env.postgres_cluster() as url:
                fill_s, backfill_s, res = measure(url, n, requests)
            rows.append((f"PostgreSQL: fill {n:,} records (COPY, indexes)", round(fill_s, 1),
                         "s"))
            rows.append(("PostgreSQL: revenue rollup backfill from the records",
                         round(backfill_s, 1), "s"))
            rows += _rows_of("PostgreSQL", res)
        except Exception as e:  # noqa: BLE001 - pytest.skip when PostgreSQL is missing
            rows.append((f"PostgreSQL: not measured ({type(e).__name__}: {e})", "-", ""))
    return rows


def _rows_of(db, res):
    out = []
    for name, p50, p99 in res:
        out.append((f"{db}: {name}, p50", round(p50, 1), "ms"))
        out.append((f"{db}: {name}, p99", round(p99, 1), "ms"))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--sqlite-only", action="store_true")
    a = ap.parse_args(argv)
    from host_tools.bench import _table

    _table(f"Console money pages over HTTP, {a.records:,} ledger records "
           f"({a.requests} requests each)",
           bench(a.records, a.requests, not a.sqlite_only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
