"""The ledger database: SQLite by default (one file, nothing to set up), PostgreSQL by URL
for a fleet with several ingest processes.

    store = open_store("ledger.db")                      # or sqlite:///path/ledger.db
    store = open_store("postgresql://user@host/dbname")  # psycopg 3
    with store.transaction() as tx:
        dev = tx.lock_device("laundry-7")   # serialises ingest of one board's batches
        ...

The revenue rollup (rollup.py: revenue per UTC day, device, kind and currency) counts what
Tx.insert_records stored in the transaction that stored it, before the commit, and is built
from the records when a ledger made before it is opened.

Exactly once lives in the schema: UNIQUE(device, seq) on records. Ingest of one board's
batches is serialised by a row lock on its device row (PostgreSQL) or by SQLite's single
writer (BEGIN IMMEDIATE), so two ingest processes can never both take the same record.
"""

import contextlib
import sqlite3
import time
from pathlib import Path

# (Boards before December 2026 journaled card_* records other than card_debit with source
# kind 0: their type says the source is a card UID, so queries take kind 0 too.)
# A board's later record that says its card write (card_debit, card_topup) at the same card
# and counter never reached the card (docs/sync.md): a cancel, or an unresolved payment its
# next tap found not landed. A card wallet has one copy per counter: the next write at that
# counter is the card's, not a reuse; a voided debit is no revenue.
VOIDS_WRITE = (
    "EXISTS (SELECT 1 FROM records v WHERE v.source_kind IN ('', 'card') "
    "AND v.device = r.device AND v.source = r.source AND v.card_counter = r.card_counter "
    "AND v.seq > r.seq "
    "AND v.verified = 1 AND (v.type = 'card_cancel' OR (v.type = 'card_settled' "
    "AND v.amount = 0 AND v.reason = 'payment had not landed')))"
)

RECORD_COLUMNS = (
    "type", "t", "clock_ok", "boot", "amount", "credit", "price", "currency", "program",
    "source_kind", "source", "card_counter", "balance_before", "balance_after", "reason",
    "recovered", "state",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY,
    high_seq BIGINT NOT NULL DEFAULT 0,
    last_tag {blob},
    reported_seq BIGINT NOT NULL DEFAULT 0,
    first_seen {real},
    last_seen {real},
    online INTEGER,
    state_at {real},
    batches BIGINT NOT NULL DEFAULT 0,
    duplicates BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS records (
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    raw {blob} NOT NULL,
    verified INTEGER NOT NULL,
    type TEXT,
    t BIGINT,
    clock_ok INTEGER,
    boot BIGINT,
    amount BIGINT,
    credit BIGINT,
    price BIGINT,
    currency TEXT,
    program TEXT,
    source_kind TEXT,
    source TEXT,
    card_counter BIGINT,
    balance_before BIGINT,
    balance_after BIGINT,
    reason TEXT,
    recovered INTEGER,
    state TEXT,
    received_at {real},
    UNIQUE (device, seq)
);
CREATE INDEX IF NOT EXISTS records_card ON records (source_kind, source, card_counter);
-- the console's revenue and transactions pages (web/console/ledger_queries.py): a page
-- newest first by (t, device, seq) under each filter reads about one page of rows. A
-- ledger made before gets them when it is next opened (once: minutes for millions of rows)
CREATE INDEX IF NOT EXISTS records_time ON records (t, device, seq);
-- records_type_time also covers the revenue sums (no table row read per payment): the
-- columns after seq are payload
CREATE INDEX IF NOT EXISTS records_type_time ON records (type, t, device, seq, currency,
    amount, clock_ok, verified, source, card_counter);
CREATE INDEX IF NOT EXISTS records_device_time ON records (device, t, seq);
CREATE INDEX IF NOT EXISTS records_source_time ON records (source, t, device, seq);
CREATE TABLE IF NOT EXISTS problems (
    id {serial},
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT,
    evidence {blob},
    first_at {real},
    last_at {real},
    count BIGINT NOT NULL DEFAULT 1,
    state TEXT NOT NULL DEFAULT 'open',
    upto BIGINT,
    data_lost TEXT,
    resolved_at {real},
    resolution TEXT,
    UNIQUE (device, kind, seq)
);
CREATE TABLE IF NOT EXISTS pending (
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    raw {blob} NOT NULL,
    received_at {real},
    UNIQUE (device, seq)
);
CREATE TABLE IF NOT EXISTS cards (
    uid TEXT PRIMARY KEY,
    counter BIGINT NOT NULL,
    balance BIGINT NOT NULL,
    device TEXT,
    seq BIGINT,
    updated {real}
);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    args TEXT,
    body {blob},
    created {real},
    expires {real},
    status TEXT NOT NULL,
    result TEXT,
    done_at {real}
);
"""


# columns added to the problems table after its first release: a ledger made before gets
# them when it is opened (a problem then is open, whether data was lost not yet known)
PROBLEM_STATE_COLUMNS = (
    ("state", "TEXT NOT NULL DEFAULT 'open'"),
    ("upto", "BIGINT"),
    ("data_lost", "TEXT"),
    ("resolved_at", "{real}"),
    ("resolution", "TEXT"),
)
# Whether a problem's kind lost data, as far as the server knows when it finds it (None:
# not yet known), and whether it resolves by itself once the ledger holds every record up
# to its `upto` (docs/sync.md, "Problems").
PROBLEM_LOSS = {"bad_tag": "yes", "fork": "no", "card_arith": "no",
                "card_counter_reuse": "no", "card_balance_rise": "no",
                "card_balance_mismatch": "no",
                "ota_message": "no"}  # an update message the server could not act on


class StoreError(Exception):
    """The database cannot be opened or used; the message says what to do."""


class Tx:
    """One transaction; every ingest step goes through these methods."""

    def __init__(self, store, cur):
        self.store = store
        self.cur = cur
        self.q = store.q
        self.rollup = None  # rollup.Pending: what insert_records stored, counted at commit

    def finish(self):
        """Before the commit: the revenue rollup counts what this transaction stored."""
        if self.rollup is not None:
            self.rollup.flush(self)

    def execute(self, sql, args=()):
        self.cur.execute(self.q(sql), args)
        return self.cur

    def one(self, sql, args=()):
        return self.execute(sql, args).fetchone()

    def all(self, sql, args=()):
        return self.execute(sql, args).fetchall()

    # ---- devices
    def lock_device(self, device, now=None):
        """The device's row as a dict, created if new, locked until the transaction ends."""
        now = time.time() if now is None else now
        self.execute(
            "INSERT INTO devices (device, first_seen, last_seen) VALUES (?, ?, ?) "
            "ON CONFLICT (device) DO NOTHING",
            (device, now, now),
        )
        row = self.one(
            "SELECT high_seq, last_tag, reported_seq, batches, duplicates FROM devices "
            "WHERE device = ?" + self.store.for_update,
            (device,),
        )
        return {
            "high_seq": row[0],
            "last_tag": bytes(row[1]) if row[1] is not None else None,
            "reported_seq": row[2],
            "batches": row[3],
            "duplicates": row[4],
        }

    def update_device(self, device, **cols):
        names = ", ".join(f"{k} = ?" for k in cols)
        self.execute(f"UPDATE devices SET {names} WHERE device = ?", (*cols.values(), device))

    # ---- records
    def record_raw(self, device, seq):
        row = self.one("SELECT raw FROM records WHERE device = ? AND seq = ?", (device, seq))
        return bytes(row[0]) if row else None

    def insert_records(self, rows):
        """rows: (device, seq, raw, verified, fields dict, received_at). The per-day revenue
        rollup (rollup.py) counts them in the same transaction, before it commits."""
        if self.rollup is None:
            from host_tools.server import rollup

            self.rollup = rollup.Pending()
        self.rollup.stored(self, rows)
        cols = ", ".join(RECORD_COLUMNS)
        marks = ", ".join("?" for _ in RECORD_COLUMNS)
        sql = self.q(
            f"INSERT INTO records (device, seq, raw, verified, {cols}, received_at) "
            f"VALUES (?, ?, ?, ?, {marks}, ?)"
        )
        self.cur.executemany(
            sql,
            [
                (dev, seq, raw, int(ok), *[_col(fields, c) for c in RECORD_COLUMNS], at)
                for dev, seq, raw, ok, fields, at in rows
            ],
        )

    # ---- records that arrived ahead of a gap (another ingest process has the batch before)
    def park(self, device, seq, raw, now):
        self.execute(
            "INSERT INTO pending (device, seq, raw, received_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (device, seq) DO NOTHING",
            (device, seq, raw, now),
        )

    def unpark(self, device, seq):
        """The parked record `seq` of `device` (removed from the parking), or None."""
        row = self.one("SELECT raw FROM pending WHERE device = ? AND seq = ?", (device, seq))
        if row is None:
            return None
        self.execute("DELETE FROM pending WHERE device = ? AND seq <= ?", (device, seq))
        return bytes(row[0])

    def card_debit_at(self, uid, counter):
        """The card writes (debits, top-ups) at this counter that reached the card, as far
        as the boards' journals say (not voided)."""
        return self.all(
            "SELECT device, seq, raw, balance_before, balance_after FROM records r "
            "WHERE source_kind IN ('', 'card') AND source = ? AND card_counter = ? "
            "AND type IN ('card_debit', 'card_topup') AND verified = 1 AND NOT " + VOIDS_WRITE,
            (uid, counter),
        )

    # ---- problems
    def problem(self, device, seq, kind, detail, evidence=None, now=None, upto=None):
        """Record (or count again, and reopen) a problem. `upto`: the sequence number up
        to which the ledger must hold every record for the problem to resolve by itself
        (None: only an operator resolves it)."""
        now = time.time() if now is None else now
        self.execute(
            "INSERT INTO problems (device, seq, kind, detail, evidence, first_at, last_at, "
            "state, upto, data_lost) VALUES (?, ?, ?, ?, ?, ?, ?, 'open', ?, ?) "
            "ON CONFLICT (device, kind, seq) DO UPDATE SET "
            "count = problems.count + 1, last_at = excluded.last_at, "
            "detail = excluded.detail, state = 'open', upto = excluded.upto, "
            "data_lost = excluded.data_lost, resolved_at = NULL, resolution = NULL",
            (device, seq, kind, detail, evidence, now, now, upto, PROBLEM_LOSS.get(kind)),
        )

    def resolve_caught_up(self, device, high, now=None):
        """Resolve the device's open problems whose records the ledger now holds, every one
        up to `high`: nothing of them was lost. Returns how many."""
        now = time.time() if now is None else now
        return self.execute(
            "UPDATE problems SET state = 'resolved', data_lost = 'no', resolved_at = ?, "
            "resolution = ? WHERE device = ? AND state = 'open' AND upto IS NOT NULL "
            "AND upto <= ?",
            (now, f"the ledger holds every record up to {high}", device, high),
        ).rowcount

    def resolve_problem(self, pid, data_lost, note, now=None):
        """An operator's resolution of problem `pid`: the row as it was, or None."""
        now = time.time() if now is None else now
        key = self.store.problem_id
        row = self.one(
            f"SELECT {key}, device, kind, seq, state, data_lost FROM problems "
            f"WHERE {key} = ?", (pid,))
        if row is None:
            return None
        self.execute(
            f"UPDATE problems SET state = 'resolved', data_lost = ?, resolved_at = ?, "
            f"resolution = ? WHERE {key} = ?", (data_lost, now, note, pid))
        return {"id": row[0], "device": row[1], "kind": row[2], "seq": row[3],
                "state": row[4], "data_lost": row[5]}

    # ---- cards
    def card(self, uid):
        row = self.one("SELECT counter, balance, device FROM cards WHERE uid = ?", (uid,))
        return None if row is None else {"counter": row[0], "balance": row[1],
                                         "device": row[2]}

    def put_card(self, uid, counter, balance, device, seq, now=None):
        now = time.time() if now is None else now
        self.execute(
            "INSERT INTO cards (uid, counter, balance, device, seq, updated) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (uid) DO UPDATE SET "
            "counter = excluded.counter, balance = excluded.balance, device = excluded.device, "
            "seq = excluded.seq, updated = excluded.updated",
            (uid, counter, balance, device, seq, now),
        )


def _migrate_rollup(tx, existed):
    """The per-day revenue rollup's table, backfilled from the records when it is new
    (rollup.migrate): a one-off wait of seconds per million records."""
    from host_tools.server import rollup

    rollup.migrate(tx, existed)


def _col(fields, name):
    v = fields.get(name)
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, str) and "\0" in v:
        return v.replace("\0", "\ufffd")  # PostgreSQL text holds no NUL
    return v


class Store:
    dialect = "?"
    for_update = ""
    problem_id = "id"  # the problems table's row id

    def q(self, sql):
        return sql

    @contextlib.contextmanager
    def transaction(self):
        raise NotImplementedError

    def query(self, sql, args=()):
        with self.transaction() as tx:
            return tx.all(sql, args)

    def close(self):
        self.conn.close()


class SQLiteStore(Store):
    dialect = "sqlite"
    problem_id = "rowid"  # a ledger made before problems had an id has its rowid

    def __init__(self, path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                        check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the ledger {self.path}: {e}") from None
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(SCHEMA.format(blob="BLOB", real="REAL",
                                                  serial="INTEGER PRIMARY KEY"))
        except sqlite3.DatabaseError as e:  # e.g. "file is not a database": nothing written
            self.conn.close()
            raise StoreError(f"{self.path} is not a washpay ledger ({e}): name the ledger "
                             "file with --db (or $WASHPAY_DB)") from None
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(problems)")}
        for name, decl in PROBLEM_STATE_COLUMNS:
            if name not in have:
                self.conn.execute(f"ALTER TABLE problems ADD COLUMN {name} "
                                  + decl.format(real="REAL"))
        if not self._has_rollup():  # a ledger made before the revenue rollup
            with self.transaction() as tx:  # checked again under the write lock
                _migrate_rollup(tx, self._has_rollup())

    def _has_rollup(self):
        return bool(self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                      "AND name = 'revenue_days'").fetchone())

    def __repr__(self):
        return f"sqlite:{self.path}"

    @contextlib.contextmanager
    def transaction(self):
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes
        try:
            tx = Tx(self, cur)
            yield tx
            tx.finish()
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        else:
            cur.execute("COMMIT")
        finally:
            cur.close()


class PostgresStore(Store):
    dialect = "postgresql"
    for_update = " FOR UPDATE"

    def __init__(self, url):
        try:
            import psycopg
        except ImportError:
            raise StoreError("PostgreSQL needs psycopg: pip install 'psycopg[binary]'") from None
        self.url = url
        try:
            self.conn = psycopg.connect(url, autocommit=False)
        except psycopg.Error as e:
            raise StoreError(f"cannot connect to {_redact(url)}: {e}") from None
        with self.conn.cursor() as cur:
            # several ingest processes may start at once: one creates the schema
            cur.execute("SELECT pg_advisory_xact_lock(727460)")
            cur.execute(SCHEMA.format(blob="BYTEA", real="DOUBLE PRECISION",
                                      serial="BIGSERIAL PRIMARY KEY"))
            cur.execute("ALTER TABLE problems ADD COLUMN IF NOT EXISTS id BIGSERIAL")
            for name, decl in PROBLEM_STATE_COLUMNS:
                cur.execute(f"ALTER TABLE problems ADD COLUMN IF NOT EXISTS {name} "
                            + decl.format(real="DOUBLE PRECISION"))
            cur.execute("SELECT to_regclass('revenue_days') IS NOT NULL")
            _migrate_rollup(Tx(self, cur), cur.fetchone()[0])
        self.conn.commit()

    def __repr__(self):
        return _redact(self.url)

    def q(self, sql):
        return sql.replace("?", "%s")

    @contextlib.contextmanager
    def transaction(self):
        cur = self.conn.cursor()
        try:
            tx = Tx(self, cur)
            yield tx
            tx.finish()
        except BaseException:
            self.conn.rollback()
            raise
        else:
            self.conn.commit()
        finally:
            cur.close()


def _redact(url):
    if "@" in url and ":" in url.split("@")[0].split("//")[-1]:
        head, tail = url.split("@", 1)
        return head.rsplit(":", 1)[0] + ":***@" + tail
    return url


def open_store(url):
    """A Store for `url`: postgresql://..., sqlite:///path, or a plain file path."""
    url = str(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    if url.startswith("sqlite:///"):  # sqlite:///relative.db, sqlite:////abs/path.db
        url = url[len("sqlite:///"):]
    elif url.startswith("sqlite:"):
        raise StoreError(f"{url}: write sqlite:///relative.db or sqlite:////absolute.db")
    return SQLiteStore(url or "ledger.db")
