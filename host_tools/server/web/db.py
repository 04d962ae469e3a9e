"""The web application's own tables, created on the ledger's store (host_tools/server/
store.py) beside the ingest tables: payments and what happened to each (payment_events).

A payment's row is its state (docs/phone-payment.md); every step also appends an event, so
the ledger shows what happened, when, and who said so (the provider's webhook, the board's
reply, the board's journal, a refund). Webhook events are kept once per (provider, event
id): a duplicated delivery changes nothing.
"""

import json
import threading
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS payments (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    program TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'start',
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    provider TEXT NOT NULL,
    provider_ref TEXT,
    provider_charge TEXT,
    state TEXT NOT NULL,
    detail TEXT,
    command_id TEXT,
    start_seq BIGINT,
    refund_ref TEXT,
    token TEXT,
    token_id TEXT,
    token_expires {real},
    created {real} NOT NULL,
    paid_at {real},
    sent_at {real},
    started_at {real},
    settled_at {real},
    updated {real}
);
CREATE INDEX IF NOT EXISTS payments_state ON payments (state);
CREATE INDEX IF NOT EXISTS payments_ref ON payments (provider, provider_ref);
CREATE TABLE IF NOT EXISTS payment_events (
    payment TEXT,
    provider TEXT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT,
    at {real} NOT NULL,
    UNIQUE (provider, event_id)
);
"""

# states (docs/phone-payment.md): a payment is in exactly one
CREATED = "created"  # checkout open at the provider, not paid
PAID = "paid"  # verified webhook: the money is taken
SENT = "sent"  # the signed remote start went to the board
STARTED = "started"  # the board journaled remote_start and is starting the washer
RUNNING = "running"  # the washer confirmed: the wash runs (final)
# the washer did not confirm and the board kept it as credit (final; boards before
# December 2026: a newer one journals start_failed naming the payment, refunded)
CREDIT_KEPT = "credit_kept"
TOKEN = "token"  # the board was offline: an offline QR token was issued, not yet used
# the token was redeemed on the board (its journal says so) (final, unless its washer
# did not start: a start_failed naming it moves it to refunding)
USED = "used"
REFUNDING = "refunding"  # the board refused, never answered, or its washer did not start
REFUNDED = "refunded"  # the provider refunded (final)
CANCELLED = "cancelled"  # the checkout was abandoned or expired, nothing taken (final)
FINAL = (RUNNING, CREDIT_KEPT, USED, REFUNDED, CANCELLED)
OPEN = (PAID, SENT, STARTED, TOKEN, REFUNDING)  # what the settler moves on


class LockedStore:
    """A store shared by threads: one lock around the store's connection (the web
    server's request threads and the settler share it). `lock`: share another
    LockedStore's lock when both use the same store."""

    def __init__(self, store, lock=None):
        self.store = store
        self.lock = lock or threading.Lock()

    def query(self, sql, args=()):
        with self.lock:
            return self.store.query(sql, args)

    def tx(self):
        db = self

        class _T:
            def __enter__(self):
                db.lock.acquire()
                try:
                    self.cm = db.store.transaction()
                    return self.cm.__enter__()
                except BaseException:
                    db.lock.release()
                    raise

            def __exit__(self, *exc):
                try:
                    return self.cm.__exit__(*exc)
                finally:
                    db.lock.release()

        return _T()

    def create_tables(self, schema):
        """Run `schema` ({real}, {serial} filled in for the store's dialect)."""
        sqlite = self.store.dialect == "sqlite"
        sql = schema.format(real="REAL" if sqlite else "DOUBLE PRECISION",
                            serial="INTEGER PRIMARY KEY" if sqlite else "BIGSERIAL PRIMARY KEY")
        with self.tx() as tx:
            for stmt in sql.split(";"):
                if stmt.strip():
                    tx.execute(stmt)


class PaymentDB(LockedStore):
    """The payments tables on a store."""

    def __init__(self, store):
        super().__init__(store)
        self.create_tables(SCHEMA)

    # ---- payments
    COLUMNS = ("id", "device", "program", "kind", "amount", "currency", "provider",
               "provider_ref", "provider_charge", "state", "detail", "command_id",
               "start_seq", "refund_ref", "token", "token_id", "token_expires", "created",
               "paid_at", "sent_at", "started_at", "settled_at", "updated")

    def create(self, pid, device, program, amount, currency, provider, kind="start",
               now=None):
        now = time.time() if now is None else now
        with self.tx() as tx:
            tx.execute(
                "INSERT INTO payments (id, device, program, kind, amount, currency, provider, "
                "state, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (pid, device, program, kind, amount, currency, provider, CREATED, now, now))
            _event(tx, pid, provider, f"{pid}:created", "created",
                   {"device": device, "program": program, "amount": amount, "kind": kind},
                   now)

    def get(self, pid):
        rows = self.query(f"SELECT {', '.join(self.COLUMNS)} FROM payments WHERE id = ?",
                          (pid,))
        return dict(zip(self.COLUMNS, rows[0], strict=True)) if rows else None

    def by_ref(self, provider, ref):
        rows = self.query("SELECT id FROM payments WHERE provider = ? AND provider_ref = ?",
                          (provider, ref))
        return rows[0][0] if rows else None

    def open_ids(self):
        marks = ", ".join("?" for _ in OPEN)
        return [r[0] for r in self.query(
            f"SELECT id FROM payments WHERE state IN ({marks}) ORDER BY created", OPEN)]

    def set_ref(self, pid, ref):
        with self.tx() as tx:
            tx.execute("UPDATE payments SET provider_ref = ? WHERE id = ?", (ref, pid))

    def move(self, pid, frm, to, kind=None, info=None, event_id=None, now=None, **cols):
        """Move payment `pid` from one of the states `frm` to `to` (with columns `cols`),
        and journal the step as an event; False (nothing changed) if it was not in `frm`:
        whoever moves a payment first wins, a second delivery or thread does nothing."""
        now = time.time() if now is None else now
        frm = (frm,) if isinstance(frm, str) else tuple(frm)
        sets = ", ".join(f"{k} = ?" for k in ("state", "updated", *cols))
        marks = ", ".join("?" for _ in frm)
        with self.tx() as tx:
            cur = tx.execute(
                f"UPDATE payments SET {sets} WHERE id = ? AND state IN ({marks})",
                (to, now, *cols.values(), pid, *frm))
            if cur.rowcount != 1:
                return False
            prov = tx.one("SELECT provider FROM payments WHERE id = ?", (pid,))[0]
            _event(tx, pid, prov, event_id or f"{pid}:{to}:{now!r}", kind or to,
                   info, now)
        return True

    def webhook_event(self, provider, event_id, kind, pid, detail, now=None):
        """Keep a provider's webhook event once: False if it was seen before."""
        now = time.time() if now is None else now
        with self.tx() as tx:
            cur = tx.execute(
                "INSERT INTO payment_events (payment, provider, event_id, kind, detail, at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (provider, event_id) DO NOTHING",
                (pid, provider, event_id, kind, json.dumps(detail, default=str), now))
            return cur.rowcount == 1

    def note(self, pid, kind, detail=None, now=None):
        now = time.time() if now is None else now
        with self.tx() as tx:
            prov = tx.one("SELECT provider FROM payments WHERE id = ?", (pid,))[0]
            _event(tx, pid, prov, f"{pid}:{kind}:{now!r}", kind, detail, now)

    def events(self, pid):
        return [{"kind": k, "detail": json.loads(d) if d else None, "at": at}
                for k, d, at in self.query(
                    "SELECT kind, detail, at FROM payment_events WHERE payment = ? "
                    "ORDER BY at", (pid,))]


def _event(tx, pid, provider, event_id, kind, detail, now):
    tx.execute(
        "INSERT INTO payment_events (payment, provider, event_id, kind, detail, at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (provider, event_id) DO NOTHING",
        (pid, provider, event_id, kind, json.dumps(detail, default=str), now))
