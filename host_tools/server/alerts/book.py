"""The alerts tables on the ledger's store (SQLite or PostgreSQL), beside the ingest tables.

An alert is one row per thing that needs a person: raised by a rule, deduplicated while it
is live (the same rule, device and subject counts again on the live row instead of adding
one), acknowledged by someone (who, when, a note).

- An *event* alert (a start failure, a refund, card fraud, ...) is live until it is
  acknowledged: the next such event after the acknowledgement is a new alert.
- A *condition* alert (a machine offline, a journal nearly full) is live while the
  condition lasts, acknowledged or not (an operator who has seen "offline" is not told
  again every minute), and closes by itself when the condition clears.

`live_key` holds rule|device|subject while the row is live and NULL after: the UNIQUE
constraint is the deduplication, also between several server processes on one database.
"""

import json
import time

CONDITIONS = ("offline", "journal_full")  # alerts that close when their condition clears

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id {serial},
    rule TEXT NOT NULL,
    device TEXT NOT NULL,
    subject TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    detail TEXT,
    first_at {real} NOT NULL,
    last_at {real} NOT NULL,
    count BIGINT NOT NULL DEFAULT 1,
    state TEXT NOT NULL,
    acked_by TEXT,
    acked_at {real},
    ack_note TEXT,
    closed_at {real},
    live_key TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS alerts_state ON alerts (state, last_at);
CREATE TABLE IF NOT EXISTS alert_cursors (
    name TEXT PRIMARY KEY,
    pos {real} NOT NULL
)
"""

OPEN, ACKED, CLOSED = "open", "acknowledged", "closed"
COLUMNS = ("id", "rule", "device", "subject", "severity", "message", "detail", "first_at",
           "last_at", "count", "state", "acked_by", "acked_at", "ack_note", "closed_at")


class AlertError(ValueError):
    """An acknowledgement that cannot be done; the message says why."""


def create_tables(store):
    real = "REAL" if store.dialect == "sqlite" else "DOUBLE PRECISION"
    serial = "INTEGER PRIMARY KEY" if store.dialect == "sqlite" else "BIGSERIAL PRIMARY KEY"
    with store.transaction() as tx:
        for stmt in SCHEMA.format(real=real, serial=serial).split(";"):
            if stmt.strip():
                tx.execute(stmt)


def _key(rule, device, subject):
    return f"{rule}|{device}|{subject}"


def raise_alert(tx, rule, device, subject, severity, message, detail=None, now=None):
    """Raise an alert, or count it again on its live row. (id, True if new)."""
    now = time.time() if now is None else now
    key = _key(rule, device or "", subject or "")
    cur = tx.execute(
        "INSERT INTO alerts (rule, device, subject, severity, message, detail, first_at, "
        "last_at, state, live_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (live_key) DO NOTHING",
        (rule, device or "", subject or "", severity, message,
         json.dumps(detail, default=str) if detail is not None else None, now, now, OPEN, key))
    new = cur.rowcount == 1
    if not new:
        tx.execute("UPDATE alerts SET count = count + 1, last_at = ?, message = ? "
                   "WHERE live_key = ?", (now, message, key))
    aid = tx.one("SELECT id FROM alerts WHERE live_key = ?", (key,))[0]
    return aid, new


def live(tx, rule):
    """{(device, subject): id} of the rule's live alerts."""
    return {(d, s): i for i, d, s in tx.all(
        "SELECT id, device, subject FROM alerts WHERE rule = ? AND live_key IS NOT NULL",
        (rule,))}


def close(tx, aid, now=None):
    """A condition alert's condition cleared: it is no longer live."""
    now = time.time() if now is None else now
    tx.execute("UPDATE alerts SET state = ?, closed_at = ?, live_key = NULL WHERE id = ?",
               (CLOSED, now, aid))


def acknowledge(tx, aid, who, note=None, now=None):
    """`who` has seen alert `aid`: the row as it is now. AlertError if there is no such
    alert or it was acknowledged before (by whom, so the second person knows)."""
    now = time.time() if now is None else now
    row = get(tx, aid)
    if row is None:
        raise AlertError(f"no alert {aid}")
    if row["acked_by"]:
        raise AlertError(f"alert {aid} was acknowledged by {row['acked_by']} already")
    if not who:
        raise AlertError("an acknowledgement names who gives it")
    # an event alert stops being live: the next such event is news again
    keep_live = row["rule"] in CONDITIONS and row["state"] != CLOSED
    tx.execute(
        "UPDATE alerts SET acked_by = ?, acked_at = ?, ack_note = ?, "
        "state = CASE WHEN state = ? THEN ? ELSE state END" +
        ("" if keep_live else ", live_key = NULL") + " WHERE id = ?",
        (who, now, note, OPEN, ACKED, aid))
    return get(tx, aid)


def get(tx, aid):
    row = tx.one(f"SELECT {', '.join(COLUMNS)} FROM alerts WHERE id = ?", (aid,))
    return _row(row) if row else None


def listing(tx, state=None, rule=None, device=None, limit=200):
    """Newest first. state: "open" (not acknowledged, even if closed since),
    "acknowledged", "closed", "live" (open or its condition lasts), or None: all."""
    where, args = [], []
    if state == "open":
        where.append("acked_by IS NULL")
    elif state == "acknowledged":
        where.append("acked_by IS NOT NULL")
    elif state == "closed":
        where.append("state = 'closed'")
    elif state == "live":
        where.append("live_key IS NOT NULL")
    elif state is not None:
        raise AlertError(f"state {state!r}: open, acknowledged, closed or live")
    if rule:
        where.append("rule = ?")
        args.append(rule)
    if device:
        where.append("device = ?")
        args.append(device)
    sql = f"SELECT {', '.join(COLUMNS)} FROM alerts"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY last_at DESC, id DESC LIMIT ?"
    return [_row(r) for r in tx.all(sql, (*args, int(limit)))]


def _row(r):
    d = dict(zip(COLUMNS, r, strict=True))
    d["detail"] = json.loads(d["detail"]) if d["detail"] else None
    return d


# ---- where each rule's scan of the ledger got to (survives a restart: no alert twice)
def cursor(tx, name, default=0):
    row = tx.one("SELECT pos FROM alert_cursors WHERE name = ?", (name,))
    return row[0] if row else default


def set_cursor(tx, name, pos):
    tx.execute("INSERT INTO alert_cursors (name, pos) VALUES (?, ?) ON CONFLICT (name) "
               "DO UPDATE SET pos = excluded.pos", (name, pos))
