"""Refunds an operator gives from the console (docs/alerts.md, "Refunds from the console").

- A **phone payment** (a row of the payments table) is refunded through its own refund
  path (docs/phone-payment.md): it moves to `refunding`, and the payment flow's settler
  asks the provider, retrying until the provider has refunded it (`refunded`). Always the
  whole payment: that is what the provider's refund of a checkout is.
- Anything else (coins, a card, a QR token) was paid at the machine: the money goes back
  by hand (from the till, or onto the card at the counter), and the console records it as
  a **manual refund** in the ledger database (table console_refunds), naming the board and
  the journal record it refunds when there is one.

Either way: a reason is required, an attendant may refund up to the console's
`attendant_refund_limit` (minor units, default 500), an owner any amount, a payment or a
journal record is refunded at most once, and the refund is audited and raised as a
"refund" alert (which notifies whoever the alerts config says).
"""

import time

from host_tools.server.alerts import rules
from host_tools.server.alerts.engine import raise_and_notify
from host_tools.server.web import db as D

SCHEMA = """
CREATE TABLE IF NOT EXISTS console_refunds (
    id {serial},
    kind TEXT NOT NULL,
    payment TEXT UNIQUE,
    device TEXT NOT NULL,
    seq BIGINT,
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    reason TEXT NOT NULL,
    operator TEXT NOT NULL,
    role TEXT NOT NULL,
    at {real} NOT NULL,
    UNIQUE (device, seq)
)
"""
PHONE, MANUAL = "phone", "manual"
DEFAULT_LIMIT = 500
REFUNDABLE = (D.RUNNING, D.CREDIT_KEPT, D.USED)  # settled payments the customer paid for
# journal records that took money at the machine (docs/journal-format.md)
PAID_RECORDS = ("coin", "card_debit", "token_redeem", "vend_start")


class RefundRefused(Exception):
    """A refund that is not given; the message says why, for the operator."""


def limit_of(console_cfg):
    v = (console_cfg or {}).get("attendant_refund_limit", DEFAULT_LIMIT)
    return int(v)


def check_limit(role, amount, limit):
    if role != "owner" and amount > limit:
        raise RefundRefused(f"Over your limit: an attendant refunds at most {limit} minor "
                            f"units ({amount} asked). Ask an owner.")


def _reason(text):
    text = (text or "").strip()
    if len(text) < 3:
        raise RefundRefused("Say why (a reason of at least 3 characters): it goes in the "
                            "audit log.")
    return text[:500]


def refund_payment(db, alerts_cfg, pid, reason, operator, role, limit, now=None):
    """Refund phone payment `pid` through the payment flow. Its row."""
    now = time.time() if now is None else now
    reason = _reason(reason)
    row = db.get(pid)
    if row is None:
        raise RefundRefused(f"No phone payment {pid}.")
    if row["state"] in (D.REFUNDING, D.REFUNDED):
        raise RefundRefused(f"Payment {pid} is {row['state']} already.")
    if row["state"] not in REFUNDABLE:
        raise RefundRefused(f"Payment {pid} is {row['state']}: not settled yet. If the "
                            "machine does not start, the payment flow refunds it by itself.")
    check_limit(role, row["amount"], limit)
    with db.tx() as tx:
        tx.execute("INSERT INTO console_refunds (kind, payment, device, seq, amount, "
                   "currency, reason, operator, role, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (payment) DO NOTHING",
                   (PHONE, pid, row["device"], None, row["amount"], row["currency"], reason,
                    operator, role, now))
    if not db.move(pid, REFUNDABLE, D.REFUNDING, "operator_refund",
                   {"operator": operator, "reason": reason}, now=now,
                   detail=f"refunded by {operator}: {reason}"):
        raise RefundRefused(f"Payment {pid} changed meanwhile: reload and look again.")
    return db.get(pid)


def refund_manual(db, alerts_cfg, device, seq, amount, currency, reason, operator, role,
                  limit, now=None):
    """Record a refund given by hand for `device` (journal record `seq`, or None). Its id."""
    now = time.time() if now is None else now
    reason = _reason(reason)
    if not isinstance(amount, int) or amount < 1:
        raise RefundRefused("The amount: minor units, at least 1 (250 = 2.50).")
    if not device:
        raise RefundRefused("Name the machine the customer paid at.")
    with db.tx() as tx:
        if seq is not None:
            rec = tx.one("SELECT type, amount, price, currency FROM records WHERE device = ? "
                         "AND seq = ? AND verified = 1", (device, seq))
            if rec is None:
                raise RefundRefused(f"No verified record {seq} of {device} in the ledger.")
            if rec[0] not in PAID_RECORDS:
                raise RefundRefused(f"Record {seq} of {device} is a {rec[0]}: no payment to "
                                    "refund.")
            paid = rec[1] if rec[0] != "vend_start" else rec[2]
            if paid is not None and amount > paid:
                raise RefundRefused(f"Record {seq} paid {paid}: refund at most that.")
            currency = rec[3] or currency
            done = tx.one("SELECT operator, at FROM console_refunds WHERE device = ? AND "
                          "seq = ?", (device, seq))
            if done:
                raise RefundRefused(f"Record {seq} of {device} was refunded by {done[0]} "
                                    f"already.")
        check_limit(role, amount, limit)
        tx.execute("INSERT INTO console_refunds (kind, payment, device, seq, amount, "
                   "currency, reason, operator, role, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (MANUAL, None, device, seq, amount, currency, reason, operator, role, now))
        rid = tx.one("SELECT max(id) FROM console_refunds WHERE device = ? AND operator = ? "
                     "AND at = ?", (device, operator, now))[0]
        from host_tools.money import money

        raise_and_notify(tx, alerts_cfg, rules.Alert(
            "refund", device, f"manual:{rid}", "info",
            f"{money(amount, currency)} refunded by hand by {operator}: {reason}",
            {"refund": rid, "seq": seq, "amount": amount}), now)
    return rid


def listing(db, limit=100):
    cols = ("id", "kind", "payment", "device", "seq", "amount", "currency", "reason",
            "operator", "role", "at")
    return [dict(zip(cols, r, strict=True)) for r in db.query(
        f"SELECT {', '.join(cols)} FROM console_refunds ORDER BY at DESC, id DESC LIMIT ?",
        (limit,))]


def refundable_payments(db, limit=50):
    marks = ", ".join("?" for _ in REFUNDABLE)
    cols = ("id", "device", "program", "amount", "currency", "state", "created")
    return [dict(zip(cols, r, strict=True)) for r in db.query(
        f"SELECT {', '.join(cols)} FROM payments WHERE state IN ({marks}) "
        f"ORDER BY created DESC LIMIT ?", (*REFUNDABLE, limit))]
