"""The money in the ledger for the console's revenue and transactions pages (docs/console.md,
"Revenue and transactions"): one portable SQL per question, on SQLite and PostgreSQL.

- **Revenue**: verified payment records (coins, card payments, QR tokens, phone starts: the
  kinds of `washpay server report`) by UTC day of the board's trusted clock, device, type
  and currency, read from the per-day rollup ingest keeps (host_tools/server/rollup.py:
  a year of a fleet is some 100,000 cells, not 700,000 records); weeks (ISO, Monday first)
  and months are rolled up from the days here. A card debit a later record of its board
  voided (store.VOIDS_WRITE) is no revenue. A console remote start (an operator's free
  start) is no revenue either: counted apart, with the machine's price as its value.
  Refunds and starts beside them: reconciliation.
- **Transactions**: the verified money records (payments, card top-ups, refunds), newest
  first by (t, device, seq), filtered by device, type, date range and card, paged by keyset
  (the page's last row is the cursor): page 1000 costs what page 1 does. Each filter has
  its index in the ledger's schema (store.py: records_time, records_type_time,
  records_device_time, records_source_time), so a page reads about one page of rows.

`db` is anything with `query(sql, args)` and `?` placeholders: a Store or the console's
LockedStore.
"""

import datetime
from collections import defaultdict

from host_tools.server import rollup
from host_tools.server.store import VOIDS_WRITE

DAY = 86400
# what the console calls each kind of payment (rollup.py's cash/card/qr/app), in the order
# the pages show them, and a console remote start (free: no payment)
KIND_LABELS = {"cash": "coins", "card": "cards", "qr": "QR tokens", "app": "phone"}
PAYMENT_KINDS = rollup.PAYMENT_KINDS
OPERATOR_LABEL = "operator starts (free)"
# the transactions page's types: the payments, and the other money moves
TX_KINDS = {"coins": ("coin",), "cards": ("card_debit",), "qr": ("token_redeem",),
            "phone": ("remote_start",), "topups": ("card_topup",), "refunds": ("refund",)}
TX_TYPES = tuple(t for ts in TX_KINDS.values() for t in ts)
TX_LABELS = {"coin": "coins", "card_debit": "card", "token_redeem": "QR token",
             "remote_start": "phone", "card_topup": "card top-up", "refund": "refund"}
TX_OPERATOR_LABEL = "operator start (free)"  # a remote_start an operator's command caused
PERIODS = ("day", "week", "month")
PAGE_MAX = 500
# a range longer than this is refused: a chart of more days than this is no longer read
RANGE_MAX_DAYS = 3 * 366

VOIDED = "(r.type = 'card_debit' AND " + VOIDS_WRITE + ")"


class QueryError(ValueError):
    """A filter the console cannot use; the message says what to give instead."""


# ---- dates
def parse_day(text, what):
    """'YYYY-MM-DD' (UTC) -> the unix time of its midnight."""
    try:
        d = datetime.date.fromisoformat(str(text).strip())
    except ValueError:
        raise QueryError(f"{what} {text!r}: give a date as YYYY-MM-DD") from None
    return int(datetime.datetime(d.year, d.month, d.day,
                                 tzinfo=datetime.timezone.utc).timestamp())


def day_text(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d")


def date_range(start_text, end_text, now, default_days=30):
    """(start, end) unix times, end exclusive, from the form's dates (the end day is
    included); empty fields: the `default_days` up to today (UTC)."""
    today = int(now) // DAY * DAY
    end = parse_day(end_text, "to") + DAY if end_text else today + DAY
    start = parse_day(start_text, "from") if start_text else end - default_days * DAY
    if start >= end:
        raise QueryError("the range is empty: 'from' must be on or before 'to'")
    if end - start > RANGE_MAX_DAYS * DAY:
        raise QueryError(f"a range of at most {RANGE_MAX_DAYS} days: narrow 'from' or 'to'")
    return start, end


def period_of(day_number, period):
    """The label of the period (day, ISO week, month) holding UTC day `day_number`."""
    d = datetime.date(1970, 1, 1) + datetime.timedelta(days=day_number)
    if period == "day":
        return d.isoformat()
    if period == "week":
        y, w, _ = d.isocalendar()
        return f"{y}-W{w:02d}"
    return d.strftime("%Y-%m")


def period_key(period, first_day, end_day):
    """(SQL over the rollup's utc_day giving each day's period number, its args, and
    number -> label) for the days first_day <= d < end_day: the sums per week or month are
    made by the database. ISO weeks start on Mondays; day 0 (1970-01-01) was a Thursday."""
    if period == "day":
        return "utc_day", (), lambda n: period_of(n, "day")
    if period == "week":
        return "(utc_day + 3) / 7", (), lambda n: period_of(n * 7 - 3, "week")
    epoch = datetime.date(1970, 1, 1)
    firsts = [n for n in range(first_day + 1, end_day)
              if (epoch + datetime.timedelta(days=n)).day == 1]  # each new month's first day
    labels = [period_of(n, "month") for n in [first_day, *firsts]]
    if not firsts:
        return "0", (), lambda n: labels[n]
    sql = ("CASE " + " ".join(f"WHEN utc_day < ? THEN {i}" for i in range(len(firsts)))
           + f" ELSE {len(firsts)} END")
    return sql, tuple(firsts), lambda n: labels[n]


def periods_between(start, end, period):
    """Every period label from `start` to `end` (unix times), in order, none left out: a
    day without revenue is a bar of height 0, not a missing one."""
    out = []
    for n in range(start // DAY, (end - 1) // DAY + 1):
        p = period_of(n, period)
        if not out or out[-1] != p:
            out.append(p)
    return out


# ---- revenue
def revenue(db, start, end, period="day", device=None):
    """Revenue in [start, end) by `period`, read from the per-day rollup (rollup.py): a
    dict with

    periods  [label, ...] every period of the range
    rows     [{"period", "device", "kind", "currency", "count", "amount"}] (kind: cash,
             card, qr, app), sorted
    by_period {(label, currency): {kind: amount}}; by_device {(device, currency): amount};
    by_kind {(kind, currency): [count, amount]}; totals {currency: amount}
    operator {"rows": [{"period", "device", "currency", "count", "amount"}],
             "by_currency": {currency: [count, amount]}, "by_period": {(label, currency):
             [count, amount]}}: console remote starts, free (amount: the machine's price,
             no money taken), in no figure above
    refunds  {(label, currency): [count, amount]}; starts {label: count} (vend_running)
    """
    if period not in PERIODS:
        raise QueryError(f"period {period!r}: one of {', '.join(PERIODS)}")
    cells = defaultdict(lambda: [0, 0])
    comps = defaultdict(lambda: [0, 0])
    refunds = defaultdict(lambda: [0, 0])
    starts = defaultdict(int)
    first, last = start // DAY, -(-end // DAY)
    sql, key_args, label_of = period_key(period, first, last)
    for key, dev, kind, currency, n, amount in rollup.read(db, first, last, device,
                                                           key=(sql, key_args)):
        label = label_of(key)
        if kind == "start":
            starts[label] += n
            continue
        if kind == "refund":
            c = refunds[(label, currency)]
        elif kind == rollup.OPERATOR:
            c = comps[(label, dev, currency)]
        else:
            c = cells[(label, dev, kind, currency)]
        c[0] += n
        c[1] += amount
    rows = [{"period": p, "device": d, "kind": k, "currency": c, "count": v[0],
             "amount": v[1]}
            for (p, d, k, c), v in sorted(cells.items(), key=lambda kv: (
                kv[0][0], kv[0][1], PAYMENT_KINDS.index(kv[0][2]), kv[0][3]))]
    by_period = defaultdict(lambda: dict.fromkeys(PAYMENT_KINDS, 0))
    by_device = defaultdict(int)
    by_kind = defaultdict(lambda: [0, 0])
    totals = defaultdict(int)
    for r in rows:
        by_period[(r["period"], r["currency"])][r["kind"]] += r["amount"]
        by_device[(r["device"], r["currency"])] += r["amount"]
        k = by_kind[(r["kind"], r["currency"])]
        k[0] += r["count"]
        k[1] += r["amount"]
        totals[r["currency"]] += r["amount"]
    op_rows = [{"period": p, "device": d, "currency": c, "count": v[0], "amount": v[1]}
               for (p, d, c), v in sorted(comps.items())]
    op_currency = defaultdict(lambda: [0, 0])
    op_period = defaultdict(lambda: [0, 0])
    for r in op_rows:
        for acc in (op_currency[r["currency"]], op_period[(r["period"], r["currency"])]):
            acc[0] += r["count"]
            acc[1] += r["amount"]
    return {"start": start, "end": end, "period": period, "device": device,
            "periods": periods_between(start, end, period), "rows": rows,
            "by_period": dict(by_period), "by_device": dict(by_device),
            "by_kind": dict(by_kind), "totals": dict(totals), "refunds": dict(refunds),
            "starts": dict(starts),
            "operator": {"rows": op_rows, "by_currency": dict(op_currency),
                         "by_period": dict(op_period)}}


def reconciliation(rev):
    """Per period and currency: payments (count, amount), machine starts, operator starts
    (count and value: starts without a payment, each explained by an operator's command in
    the console), refunds (count, amount), and what stays (payments - refunds). Starts are
    counted per period across currencies (a start has no currency)."""
    out = []
    ops = rev["operator"]["by_period"]
    currencies = sorted(set(rev["totals"]) | {c for _p, c in rev["refunds"]}
                        | {c for _p, c in ops})
    payments = defaultdict(lambda: [0, 0])
    for r in rev["rows"]:
        pay = payments[(r["period"], r["currency"])]
        pay[0] += r["count"]
        pay[1] += r["amount"]
    for p in rev["periods"]:
        for c in currencies:
            paid = payments.get((p, c), [0, 0])
            ref = rev["refunds"].get((p, c), [0, 0])
            op = ops.get((p, c), [0, 0])
            starts = rev["starts"].get(p, 0)
            if paid[0] or ref[0] or op[0] or starts:
                out.append({"period": p, "currency": c, "payments": paid[0],
                            "paid": paid[1], "starts": starts, "operator_starts": op[0],
                            "operator_value": op[1], "refunds": ref[0],
                            "refunded": ref[1], "net": paid[1] - ref[1]})
    return out


# ---- transactions
def encode_cursor(row):
    return f"{row['t']}~{row['seq']}~{row['device']}"


def decode_cursor(text):
    try:
        t, seq, device = str(text).split("~", 2)
        return int(t), device, int(seq)
    except ValueError:
        raise QueryError("that page link is broken: start again from the first page") from None


def transactions(db, device=None, kind=None, start=None, end=None, card=None, after=None,
                 limit=50):
    """One page of money records, newest first: {"rows": [...], "next": cursor or None}.

    kind: a key of TX_KINDS (None: all); start/end: unix times, end exclusive; card: a
    card UID (hex); after: the cursor of the previous page's last row."""
    if kind is not None and kind not in TX_KINDS:
        raise QueryError(f"type {kind!r}: one of {', '.join(TX_KINDS)}")
    if not 1 <= int(limit) <= PAGE_MAX:
        raise QueryError(f"page size 1 to {PAGE_MAX}")
    types = TX_KINDS[kind] if kind else TX_TYPES
    where = ["r.verified = 1", "r.t IS NOT NULL"]
    args = []
    if len(types) == 1:
        where.append("r.type = ?")
    else:
        where.append(f"r.type IN ({', '.join('?' for _ in types)})")
    args += types
    if device:
        where.append("r.device = ?")
        args.append(device)
    if card:
        where.append("r.source = ?")
        args.append(card_uid(card))
    if start is not None:
        where.append("r.t >= ?")
        args.append(int(start))
    if end is not None:
        where.append("r.t < ?")
        args.append(int(end))
    if after:
        t, dev, seq = decode_cursor(after)
        if device:  # the device is fixed: (t, seq) walks records_device_time in order
            where.append("(r.t, r.seq) < (?, ?)")
            args += [t, seq]
        else:
            where.append("(r.t, r.device, r.seq) < (?, ?, ?)")
            args += [t, dev, seq]
    order = "r.t DESC, r.seq DESC" if device else "r.t DESC, r.device DESC, r.seq DESC"
    sql = ("SELECT r.device, r.seq, r.type, r.t, r.amount, r.currency, r.program, "
           "r.source_kind, r.source, r.balance_before, r.balance_after, r.reason, "
           f"r.clock_ok, CASE WHEN {VOIDED} THEN 1 ELSE 0 END FROM records r "
           f"WHERE {' AND '.join(where)} ORDER BY {order} LIMIT {int(limit) + 1}")
    rows = [{"device": d, "seq": s, "type": ty, "label": TX_LABELS.get(ty, ty), "t": t,
             "amount": a, "currency": c, "program": p, "source_kind": sk, "source": src,
             "balance_before": bb, "balance_after": ba, "reason": why, "clock_ok": bool(ok),
             "voided": bool(v), "operator": False}
            for d, s, ty, t, a, c, p, sk, src, bb, ba, why, ok, v in db.query(sql, args)]
    # asked apart for the page's few remote starts: in the select list, PostgreSQL may
    # hash the whole commands table for every page
    ops = rollup.operator_starts(db, [(r["device"], r["seq"]) for r in rows
                                      if r["type"] == "remote_start"])
    for r in rows:
        if (r["device"], r["seq"]) in ops:
            r["operator"], r["label"] = True, TX_OPERATOR_LABEL
    nxt = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return {"rows": rows[:limit], "next": nxt}


def all_transactions(db, batch=2000, **filters):
    """Every money record the filters match, newest first, read a page at a time (the CSV
    export: memory stays one page whatever the range)."""
    after = None
    while True:
        page = transactions(db, after=after, limit=min(batch, PAGE_MAX), **filters)
        yield from page["rows"]
        if not page["next"]:
            return
        after = page["next"]


def card_uid(text):
    """A card UID as the ledger keeps it: lower-case hex, 1 to 10 bytes."""
    uid = str(text).strip().lower().replace(":", "").replace(" ", "")
    try:
        raw = bytes.fromhex(uid)
    except ValueError:
        raw = b""
    if not 1 <= len(raw) <= 10:
        raise QueryError(f"card {text!r}: a UID in hex, 1 to 10 bytes (e.g. 04a1b2c3)")
    return uid


def devices(db):
    """Every device the ledger knows, in order."""
    return [r[0] for r in db.query("SELECT device FROM devices ORDER BY device")]
