"""The alerts engine: runs the rules (rules.py) over the ledger, raises and closes alerts
(book.py), and puts the notices for each new alert, and each customer's low-balance SMS,
in the outbox (host_tools/server/notices/outbox.py) in the same transaction.

    engine = Engine(store, cfg)        # cfg: alerts.config.parse(...)
    engine.evaluate()                  # [ids of the alerts it raised]

The server process runs it on a thread of its own (service.py), woken after each ingested
batch and every check_every_s; it never runs inside ingest's transaction.
"""

import time

from host_tools.money import money
from host_tools.server.alerts import book, rules
from host_tools.server.notices import outbox, phones

SMS_MAX = 300  # characters of an alert's SMS text (two segments of a long message at most)


def create_tables(store):
    book.create_tables(store)
    outbox.create_tables(store)
    phones.create_tables(store)


class Engine:
    def __init__(self, store, cfg, clock=time.time):
        self.store = store
        self.cfg = cfg
        self.clock = clock
        create_tables(store)

    def evaluate(self, now=None):
        now = self.clock() if now is None else now
        raised = []
        with self.store.transaction() as tx:
            if self.store.dialect == "postgresql":
                # several server processes on one database: one look at a time, so a record
                # is counted once (SQLite's BEGIN IMMEDIATE serialises already)
                tx.execute("SELECT pg_advisory_xact_lock(727461)")
            for rule in (rules.offline, rules.journal_full):
                raised += self._conditions(tx, rule.__name__, rule(tx, self.cfg, now), now)
            # only the boards with records the engine has not looked at: an idle fleet of
            # thousands costs one query
            for device, pos in tx.all(
                    "SELECT d.device, coalesce(c.pos, 0) FROM devices d LEFT JOIN "
                    "alert_cursors c ON c.name = 'records:' || d.device "
                    "WHERE d.high_seq > coalesce(c.pos, 0) ORDER BY d.device"):
                name = f"records:{device}"
                seen = int(pos)
                found, high = rules.records(tx, self.cfg, device, seen)
                for _seq, alert, low in found:
                    if alert:
                        raised += self._raise(tx, alert, now)
                    if low:
                        self._low_balance(tx, device, low, now)
                if high != seen:
                    book.set_cursor(tx, name, high)
            seen = int(book.cursor(tx, "problems"))
            for pid, alert in rules.card_problems(tx, seen, self.store.problem_id):
                raised += self._raise(tx, alert, now)
                seen = pid
            book.set_cursor(tx, "problems", seen)
            seen = book.cursor(tx, "payments")
            for at, alert in rules.phone_refunds(tx, seen):
                raised += self._raise(tx, alert, now)
                seen = at
            book.set_cursor(tx, "payments", seen)
        return raised

    def _conditions(self, tx, rule, want, now):
        """Raise what holds and is not live; close what is live and holds no more."""
        live = book.live(tx, rule)
        raised = []
        for key, alert in want.items():
            if key in live:
                tx.execute("UPDATE alerts SET message = ?, severity = ?, last_at = ? "
                           "WHERE id = ?", (alert.message, alert.severity, now, live[key]))
            else:
                raised += self._raise(tx, alert, now)
        for key, aid in live.items():
            if key not in want:
                book.close(tx, aid, now)
        return raised

    def _raise(self, tx, alert, now):
        return raise_and_notify(tx, self.cfg, alert, now)

    def _low_balance(self, tx, device, low, now):
        lb = self.cfg.get("low_balance")
        if not lb:
            return
        linked = phones.phone_of(tx, low["uid"])
        if linked is None:
            return
        number, threshold = linked
        threshold = threshold or lb["threshold"]
        before, after = low["before"], low["after"]
        if before is None or after is None or not after < threshold <= before:
            return  # only the payment that takes the balance below: one SMS, not one a wash
        text = lb["text"].format(card=low["uid"], balance=money(after, low["currency"]))
        outbox.enqueue(tx, f"low_balance:{low['uid']}:{low['counter']}", outbox.SMS, number,
                       {"type": "low_balance", "card": low["uid"], "balance": after,
                        "currency": low["currency"], "threshold": threshold,
                        "device": device, "seq": low["seq"], "text": text}, now=now)


def raise_and_notify(tx, cfg, alert, now=None):
    """Raise `alert` in transaction `tx`; if it is new, enqueue a notice for each
    destination whose rules take it. [its id] if new, else []."""
    now = time.time() if now is None else now
    aid, new = book.raise_alert(tx, alert.rule, alert.device, alert.subject, alert.severity,
                                alert.message, alert.detail, now)
    if not new:
        return []
    body = {"type": "alert", "alert": {
        "id": aid, "rule": alert.rule, "device": alert.device, "subject": alert.subject,
        "severity": alert.severity, "message": alert.message, "at": now}}
    for hook in cfg["webhooks"]:
        if alert.rule in hook["rules"]:
            outbox.enqueue(tx, f"alert:{aid}:webhook:{hook['url']}", outbox.WEBHOOK,
                           hook["url"], body, alert_id=aid, now=now)
    text = f"washpay {alert.severity}: {alert.device or 'server'}: {alert.message}"
    for sms in cfg["sms"]:
        if alert.rule in sms["rules"]:
            outbox.enqueue(tx, f"alert:{aid}:sms:{sms['to']}", outbox.SMS, sms["to"],
                           {**body, "text": text[:SMS_MAX]}, alert_id=aid, now=now)
    return [aid]
