"""Cards linked to a customer's phone number, for the low-balance SMS (docs/alerts.md,
"Low balance"). One phone per card; a threshold per card, else the config's.

`washpay server phone link|unlink|list` (or the console) keeps the table; the alerts
engine reads it when a card debit reaches the ledger.
"""

import time

from host_tools.server.alerts.config import AlertConfigError, phone

SCHEMA = """
CREATE TABLE IF NOT EXISTS card_phones (
    uid TEXT PRIMARY KEY,
    phone TEXT NOT NULL,
    threshold BIGINT,
    linked_by TEXT,
    linked_at {real}
)
"""


class PhoneError(ValueError):
    """A link that cannot be made; the message says what to give."""


def create_tables(store):
    real = "REAL" if store.dialect == "sqlite" else "DOUBLE PRECISION"
    with store.transaction() as tx:
        tx.execute(SCHEMA.format(real=real))


def card_uid(text):
    """A card UID as the ledger keeps it (lower-case hex, 4 to 10 bytes)."""
    t = str(text).strip().lower().replace(":", "")
    try:
        n = len(bytes.fromhex(t))
    except ValueError:
        n = 0
    if not 4 <= n <= 10:
        raise PhoneError(f"card {text!r}: the UID in hex, 4 to 10 bytes (e.g. 04a1b2c3)")
    return t


def link(store, uid, number, threshold=None, who=None, now=None):
    uid = card_uid(uid)
    try:
        number = phone(number)
    except AlertConfigError as e:
        raise PhoneError(str(e)) from None
    if threshold is not None and (not isinstance(threshold, int) or threshold < 1):
        raise PhoneError("threshold: a balance in minor units, at least 1 (500 = 5.00)")
    now = time.time() if now is None else now
    with store.transaction() as tx:
        tx.execute("INSERT INTO card_phones (uid, phone, threshold, linked_by, linked_at) "
                   "VALUES (?, ?, ?, ?, ?) ON CONFLICT (uid) DO UPDATE SET "
                   "phone = excluded.phone, threshold = excluded.threshold, "
                   "linked_by = excluded.linked_by, linked_at = excluded.linked_at",
                   (uid, number, threshold, who, now))
    return {"uid": uid, "phone": number, "threshold": threshold}


def unlink(store, uid):
    uid = card_uid(uid)
    with store.transaction() as tx:
        if tx.execute("DELETE FROM card_phones WHERE uid = ?", (uid,)).rowcount != 1:
            raise PhoneError(f"card {uid} is not linked to a phone")


def listing(store):
    return [{"uid": u, "phone": p, "threshold": t, "linked_by": b, "linked_at": at}
            for u, p, t, b, at in store.query(
                "SELECT uid, phone, threshold, linked_by, linked_at FROM card_phones "
                "ORDER BY uid")]


def phone_of(tx, uid):
    """(phone, threshold or None) of a linked card, else None."""
    row = tx.one("SELECT phone, threshold FROM card_phones WHERE uid = ?", (uid.lower(),))
    return (row[0], row[1]) if row else None
