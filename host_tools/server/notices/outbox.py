"""The notices outbox: every notice is a row first, sent after, so a notice survives a
restart, an unreachable receiver and a crash mid-delivery (docs/alerts.md, "Delivery").

    pending --2xx--> sent
    pending --error--> pending again after a backoff: backoff_s x 2^(attempts-1), at most
                       backoff_max_s, with "equal jitter" (half of it fixed, half random, so
                       a fleet's notices after an outage do not all come back at once)
    pending --max_attempts errors, or a refusal retrying cannot fix--> dead (a dead letter)
    dead --an operator retries it--> pending (attempts from 0)

A notice is enqueued in the transaction that raised its alert: both or neither. `key` is
UNIQUE: what makes one notice per alert and destination, or one low-balance SMS per card
write, however often the engine looks. Delivery claims a row with a conditional UPDATE
(a lease), so several server processes on one database never send a notice twice at once.
"""

import json
import random
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS notices (
    id {serial},
    key TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL,
    destination TEXT NOT NULL,
    body TEXT NOT NULL,
    alert_id BIGINT,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_at {real} NOT NULL,
    last_error TEXT,
    created {real} NOT NULL,
    sent_at {real},
    died_at {real}
);
CREATE INDEX IF NOT EXISTS notices_due ON notices (state, next_at);
CREATE TABLE IF NOT EXISTS notice_attempts (
    notice BIGINT NOT NULL,
    at {real} NOT NULL,
    ok INTEGER NOT NULL,
    error TEXT
)
"""

PENDING, SENT, DEAD = "pending", "sent", "dead"
WEBHOOK, SMS = "webhook", "sms"
LEASE_S = 60.0  # a claimed notice is someone's for this long (longer than any POST)
COLUMNS = ("id", "key", "channel", "destination", "body", "alert_id", "state", "attempts",
           "next_at", "last_error", "created", "sent_at", "died_at")


class NoticeError(ValueError):
    """A retry that cannot be done; the message says why."""


def create_tables(store):
    real = "REAL" if store.dialect == "sqlite" else "DOUBLE PRECISION"
    serial = "INTEGER PRIMARY KEY" if store.dialect == "sqlite" else "BIGSERIAL PRIMARY KEY"
    with store.transaction() as tx:
        for stmt in SCHEMA.format(real=real, serial=serial).split(";"):
            if stmt.strip():
                tx.execute(stmt)


def enqueue(tx, key, channel, destination, body, alert_id=None, now=None):
    """Add a notice unless one with `key` exists. True if added."""
    now = time.time() if now is None else now
    cur = tx.execute(
        "INSERT INTO notices (key, channel, destination, body, alert_id, state, next_at, "
        "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
        (key, channel, destination, json.dumps(body, sort_keys=True), alert_id, PENDING,
         now, now))
    return cur.rowcount == 1


def backoff(attempts, base_s, max_s, rng=random.random):
    """The wait after the `attempts`-th failure: exponential, capped, equal jitter."""
    d = min(max_s, base_s * 2 ** (attempts - 1))
    return d / 2 + rng() * d / 2


def due(store, now, limit=20):
    return [r[0] for r in store.query(
        "SELECT id FROM notices WHERE state = ? AND next_at <= ? ORDER BY next_at, id "
        "LIMIT ?", (PENDING, now, limit))]


def claim(store, nid, now):
    """The notice's row if this process may send it now (it holds the lease), else None."""
    with store.transaction() as tx:
        cur = tx.execute("UPDATE notices SET next_at = ? WHERE id = ? AND state = ? AND "
                         "next_at <= ?", (now + LEASE_S, nid, PENDING, now))
        if cur.rowcount != 1:
            return None
        return get(tx, nid)


def delivered(store, nid, now):
    with store.transaction() as tx:
        tx.execute("UPDATE notices SET state = ?, attempts = attempts + 1, sent_at = ?, "
                   "last_error = NULL WHERE id = ?", (SENT, now, nid))
        tx.execute("INSERT INTO notice_attempts (notice, at, ok) VALUES (?, ?, 1)",
                   (nid, now))


def failed(store, nid, error, now, delivery, permanent=False, rng=random.random):
    """Count a failed attempt: pending again after a backoff, or dead. The new state."""
    with store.transaction() as tx:
        attempts = tx.one("SELECT attempts FROM notices WHERE id = ?", (nid,))[0] + 1
        tx.execute("INSERT INTO notice_attempts (notice, at, ok, error) VALUES (?, ?, 0, ?)",
                   (nid, now, error))
        if permanent or attempts >= delivery["max_attempts"]:
            tx.execute("UPDATE notices SET state = ?, attempts = ?, last_error = ?, "
                       "died_at = ? WHERE id = ?", (DEAD, attempts, error, now, nid))
            return DEAD
        wait = backoff(attempts, delivery["backoff_s"], delivery["backoff_max_s"], rng)
        tx.execute("UPDATE notices SET attempts = ?, last_error = ?, next_at = ? WHERE id = ?",
                   (attempts, error, now + wait, nid))
        return PENDING


def retry(store, nid, now=None):
    """Put a dead letter back in the queue (attempts from 0): its row. NoticeError if it is
    not dead (a pending notice is being tried already; a sent one arrived)."""
    now = time.time() if now is None else now
    with store.transaction() as tx:
        row = get(tx, nid)
        if row is None:
            raise NoticeError(f"no notice {nid}")
        if row["state"] != DEAD:
            raise NoticeError(f"notice {nid} is {row['state']}, not a dead letter: only dead "
                              "letters are retried")
        tx.execute("UPDATE notices SET state = ?, attempts = 0, next_at = ?, died_at = NULL "
                   "WHERE id = ?", (PENDING, now, nid))
        return get(tx, nid)


def get(tx, nid):
    row = tx.one(f"SELECT {', '.join(COLUMNS)} FROM notices WHERE id = ?", (nid,))
    return _row(row) if row else None


def listing(store, state=None, limit=200):
    sql = f"SELECT {', '.join(COLUMNS)} FROM notices"
    args = ()
    if state:
        if state not in (PENDING, SENT, DEAD):
            raise NoticeError(f"state {state!r}: pending, sent or dead")
        sql += " WHERE state = ?"
        args = (state,)
    return [_row(r) for r in store.query(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))]


def attempts(store, nid):
    """[(at, ok, error)] of a notice's delivery attempts, oldest first."""
    return [(at, bool(ok), err) for at, ok, err in store.query(
        "SELECT at, ok, error FROM notice_attempts WHERE notice = ? ORDER BY at", (nid,))]


def _row(r):
    d = dict(zip(COLUMNS, r, strict=True))
    d["body"] = json.loads(d["body"])
    return d
