"""The per-day revenue rollup: what `washpay server report` and the console's revenue page
read instead of summing every payment record of a range (docs/console-money.md, "The
per-day rollup").

    revenue_days (utc_day, device, kind, currency) -> count, amount

- `utc_day`: the UTC day number (unix time // 86400) of the board's trusted clock, the day
  the report and the revenue page have always used; NO_CLOCK (-1) for a record made before
  the board's clock was trusted (the report's "clock not set", never on the page);
- `kind`: what the record is to the business (KINDS): a payment (cash, card, qr, app), an
  operator start (a console remote start: a free start given by staff, counted at the
  machine's price but no money taken), a board's refund, a washer start (vend_running);
- `currency`: the record's ('' when it has none: a key column cannot be NULL).

It is kept in the transaction that stores the records: store.Tx.insert_records, which
every ingest path goes through (MQTT batches, `washpay server import`), notes what it
stores (Pending), and the transaction counts it just before it commits. So it is never
behind the records, and a redelivered batch, which stores nothing, adds nothing. A card
debit a later record voids (store.VOIDS_WRITE) leaves the rollup when that record is
stored. A ledger made before the rollup gets it when it is next opened (migrate()), from
the records, by the same SQL (ROLLUP_SQL) that keeps it: one definition of what counts.

Only verified records count; the rollup equals recompute() at any time (a test checks it
after random deliveries, tests/test_revenue_rollup.py).
"""

from host_tools.server.store import VOIDS_WRITE

DAY = 86400
NO_CLOCK = -1
# record type -> kind. A remote_start is "app" (a phone payment's start) unless the command
# that caused it came from an operator in the console: OPERATOR.
RECORD_KINDS = {"coin": "cash", "card_debit": "card", "token_redeem": "qr",
                "remote_start": "app", "refund": "refund", "vend_running": "start"}
PAYMENT_KINDS = ("cash", "card", "qr", "app")  # revenue, in the order pages show them
OPERATOR = "operator"
KINDS = (*PAYMENT_KINDS, OPERATOR, "refund", "start")
# a console remote start keeps its operator in the command's args (web/console/pages/
# actions.py: boards.send(..., operator=..., reason=...), json.dumps'ed by the server):
# `"operator":` is that key, whatever the JSON separators: a string value "operator" is
# followed by `,` or `}`, and inside a string the quotes are escaped (`\"operator\":`).
# A LIKE pattern goes as a parameter (psycopg reads % in SQL text as one).
OPERATOR_ARGS = '%"operator":%'
OPERATOR_COMMAND = ("EXISTS (SELECT 1 FROM commands c WHERE c.id = r.source AND "
                    "c.device = r.device AND c.kind = 'start' AND c.args LIKE ?)")

TABLE = """
CREATE TABLE IF NOT EXISTS revenue_days (
    utc_day BIGINT NOT NULL,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    currency TEXT NOT NULL,
    count BIGINT NOT NULL,
    amount BIGINT NOT NULL,
    PRIMARY KEY (utc_day, device, kind, currency)
){without_rowid};
CREATE INDEX IF NOT EXISTS revenue_days_device ON revenue_days (device, utc_day)
"""

# a record's utc_day (of the records r)
DAY_SQL = f"CASE WHEN r.clock_ok = 1 AND r.t > 0 THEN r.t / {DAY} ELSE {NO_CLOCK} END"
_KIND = ("CASE r.type " + " ".join(
    f"WHEN '{t}' THEN " + (f"CASE WHEN {OPERATOR_COMMAND} THEN '{OPERATOR}' ELSE '{k}' END"
                           if t == "remote_start" else f"'{k}'")
    for t, k in RECORD_KINDS.items()) + " END")
_TYPES = ", ".join(f"'{t}'" for t in RECORD_KINDS)
# (utc_day, device, kind, currency, count, amount) of the records that count, WHERE {where}
ROLLUP_SQL = (f"SELECT {DAY_SQL}, r.device, {_KIND}, coalesce(r.currency, ''), count(*), "
              f"coalesce(sum(r.amount), 0) FROM records r WHERE r.verified = 1 AND "
              f"r.type IN ({_TYPES}) AND NOT (r.type = 'card_debit' AND {VOIDS_WRITE}) "
              "AND {where} GROUP BY 1, 2, 3, 4")
# the card debits, counted until now, that a record just stored voids
_VOIDED_NOW = (f"SELECT {DAY_SQL}, r.device, {_KIND}, coalesce(r.currency, ''), count(*), "
               f"coalesce(sum(r.amount), 0) FROM records r WHERE r.type = 'card_debit' AND "
               f"{VOIDS_WRITE} AND {{where}} GROUP BY 1, 2, 3, 4")
_LIVE_DEBITS = ("SELECT r.seq FROM records r WHERE r.device = ? AND r.source = ? AND "
                "r.card_counter = ? AND r.type = 'card_debit' AND r.verified = 1 AND NOT "
                + VOIDS_WRITE)
_INSERT = "INSERT INTO revenue_days (utc_day, device, kind, currency, count, amount) "
_ADD = (" ON CONFLICT (utc_day, device, kind, currency) DO UPDATE "
        "SET count = revenue_days.count + excluded.count, "
        "amount = revenue_days.amount + excluded.amount")
_UPSERT = _INSERT + "VALUES (?, ?, ?, ?, ?, ?)" + _ADD
# the stored records counted in one statement (no round trip through Python): ingest's path
_COUNT_STORED = _INSERT + ROLLUP_SQL + _ADD
VOID_TYPES = ("card_cancel", "card_settled")  # records that may void a card write
_CHUNK = 500  # sequence numbers per IN (...)


def _chunks(device, seqs):
    """(WHERE over records r, its args) for the records `seqs` of `device`, a chunk at a
    time (the args start with the operator pattern: ROLLUP_SQL's kind asks for it). The
    range of seq makes the (device, seq) key the way in: with `seq IN (...)` alone, a
    PostgreSQL ledger without fresh statistics read every payment of the board through
    records_type_time (7 ms a batch at 7,500 records, growing with the ledger)."""
    seqs = sorted(seqs)
    for i in range(0, len(seqs), _CHUNK):
        part = seqs[i:i + _CHUNK]
        yield (f"r.device = ? AND r.seq >= ? AND r.seq <= ? AND "
               f"r.seq IN ({', '.join('?' for _ in part)})",
               (OPERATOR_ARGS, device, part[0], part[-1], *part))


class Pending:
    """What one transaction stored and the rollup does not count yet: counted in one go
    when the transaction commits (flush()), a query and an upsert per transaction rather
    than per record (ingest stores a batch a record at a time)."""

    def __init__(self):
        self.new = {}  # device -> {seq} stored, to count
        self.live = {}  # device -> {seq} counted card debits a stored record may void

    def stored(self, tx, rows):
        """Before `rows` (store.Tx.insert_records' rows) are stored: note the card debits
        counted now (not stored in this transaction) at the card and counter of each
        voiding record among them; and the rows that count."""
        for dev, seq, _raw, ok, fields, _at in rows:
            if not ok:
                continue
            rtype = fields.get("type")
            if rtype in VOID_TYPES and fields.get("source") is not None:
                mine = self.new.get(dev, ())
                for (s,) in tx.all(_LIVE_DEBITS, (dev, fields["source"],
                                                  fields.get("card_counter"))):
                    if s not in mine:
                        self.live.setdefault(dev, set()).add(s)
            elif rtype in RECORD_KINDS:
                self.new.setdefault(dev, set()).add(seq)

    def flush(self, tx):
        """Count the stored records in the rollup, and take out the card debits in `live`
        that a stored record voided. In the transaction that stored them, before it
        commits."""
        for dev, seqs in self.new.items():
            for where, args in _chunks(dev, seqs):
                tx.execute(_COUNT_STORED.format(where=where), args)
        delta = {}
        for dev, seqs in self.live.items():
            for where, args in _chunks(dev, seqs):
                for day, d, kind, cur, n, amount in tx.all(_VOIDED_NOW.format(where=where),
                                                           args):
                    _add(delta, (day, d, kind, cur), -n, -amount)
        self.new, self.live = {}, {}
        apply(tx, delta)


def _add(delta, key, n, amount):
    v = delta.setdefault(tuple(key), [0, 0])
    v[0] += int(n)
    v[1] += int(amount)


def apply(tx, delta):
    """Add {(utc_day, device, kind, currency): [count, amount]} to the rollup; a cell whose
    count falls to 0 (its debits all voided) is removed."""
    ups = [(*k, n, a) for k, (n, a) in sorted(delta.items()) if n or a]
    if not ups:
        return
    tx.cur.executemany(tx.q(_UPSERT), ups)
    for k, (n, _a) in delta.items():
        if n < 0:
            tx.execute("DELETE FROM revenue_days WHERE utc_day = ? AND device = ? AND "
                       "kind = ? AND currency = ? AND count <= 0", k)


def operator_starts(db, keys):
    """{(device, seq)} of the remote_start records among `keys` [(device, seq)] that an
    operator's console command caused (a page of transactions: a few index lookups)."""
    keys = sorted(set(keys))
    if not keys:
        return set()
    pairs = " OR ".join("(r.device = ? AND r.seq = ?)" for _ in keys)
    # the type is checked here, not in SQL: `type = 'remote_start'` there can make the
    # database walk every remote start through records_type_time instead of the keys
    return {(d, int(s)) for d, s, rtype in db.query(
        f"SELECT r.device, r.seq, r.type FROM records r WHERE ({pairs}) AND "
        f"{OPERATOR_COMMAND}", [*[v for k in keys for v in k], OPERATOR_ARGS])
        if rtype == "remote_start"}


def recompute(db):
    """{(utc_day, device, kind, currency): (count, amount)} summed from the records now."""
    return {(int(day), d, k, c): (int(n), int(a))
            for day, d, k, c, n, a in db.query(ROLLUP_SQL.format(where="1 = 1"),
                                               (OPERATOR_ARGS,))}


def stored(db):
    """The rollup as kept: the same shape as recompute()."""
    return {(int(day), d, k, c): (int(n), int(a)) for day, d, k, c, n, a in db.query(
        "SELECT utc_day, device, kind, currency, count, amount FROM revenue_days")}


def rebuild(tx):
    """Fill the rollup from the records (the one-time backfill of an existing ledger, and
    a repair after records were written around insert_records, e.g. a bulk load)."""
    tx.execute("DELETE FROM revenue_days")
    tx.execute(_INSERT + ROLLUP_SQL.format(where="1 = 1"), (OPERATOR_ARGS,))


def migrate(tx, existed):
    """Create the rollup's table; if it did not exist (`existed` False: a ledger made
    before it), backfill it from the records, in the same transaction."""
    # SQLite: the cells in key order (a range of days is read in one sweep, not looked
    # up row by row from the key's index: half the time of a year's page)
    ddl = TABLE.format(without_rowid=" WITHOUT ROWID" if tx.store.dialect == "sqlite" else "")
    for stmt in ddl.split(";"):
        if stmt.strip():
            tx.execute(stmt)
    if not existed:
        rebuild(tx)


def read(db, first_day, end_day, device=None, kinds=KINDS, key=("utc_day", ())):
    """[(key, device, kind, currency or None, count, amount)] of the UTC days
    first_day <= d < end_day (day numbers; NO_CLOCK is -1: never in a range from 1970).
    `key`: (SQL over utc_day, its args) that the cells are summed by in SQL (a week's or a
    month's number: a year of a fleet is a few thousand sums, not 100,000 cells); the
    default is the day itself."""
    sql, key_args = key
    where = "utc_day >= ? AND utc_day < ?"
    args = [*key_args, int(first_day), int(end_day)]
    if device:
        where += " AND device = ?"
        args.append(device)
    if tuple(kinds) != KINDS:
        where += f" AND kind IN ({', '.join('?' for _ in kinds)})"
        args += list(kinds)
    if sql == "utc_day":  # a cell per key already
        q = ("SELECT utc_day, device, kind, currency, count, amount FROM revenue_days "
             f"WHERE {where}")
    else:
        q = (f"SELECT {sql}, device, kind, currency, sum(count), sum(amount) FROM revenue_days "
             f"WHERE {where} GROUP BY 1, 2, 3, 4")
    return [(int(k), d, kind, c or None, int(n), int(a))
            for k, d, kind, c, n, a in db.query(q, args)]
