"""Paid -> started, or refunded: the life of one phone payment (docs/phone-payment.md).

    created --webhook paid--> paid --command published--> sent
    sent --board replies started (or its journal has the remote_start)--> started
    sent --board replies refused / invalid, or no answer in confirm_s--> refunding
    started --journal: vend_running--> running
    started --journal: start_failed naming the command (the washer did not start; the
              board did not credit it)--> refunding
    started --journal: start_failed naming no payer (a board before issue 15 kept the price
              as machine credit)--> credit_kept
    refunding --provider refunds--> refunded          (retried until the provider does)
    created --cancelled at the provider, or left open for checkout_ttl_s--> cancelled

A machine that is offline takes no money for a remote start; the customer may buy an
offline QR token instead (kind "token", host_tools/token.py's format, bound to the device
and program, valid token_ttl_s):

    paid --token issued--> token --journal: token_redeem of this token--> used
    token or used --journal: start_failed naming this token (not started)--> refunding
    token --expired, and the board has uploaded its journal since, without it--> refunding

Each move is one conditional UPDATE (PaymentDB.move): a duplicated or reordered webhook, a
second thread or a restarted server never moves a payment twice, so a payment sends at
most one start command and is refunded at most once. The remote start expires when the
confirmation window closes (its ttl is `confirm_s`): a board that gets it later refuses
it as expired, so a refunded payment cannot start a machine afterwards.
"""

import json
import secrets
import threading
import time

from host_tools import token as T
from host_tools.server import commands as C
from host_tools.server.web import db as D
from host_tools.server.web.providers import ProviderError

LABELS = {
    D.CREATED: ("Waiting for payment", "Finish the payment in the payment page."),
    D.PAID: ("Paid", "Payment received. Sending the start to the machine..."),
    D.SENT: ("Sent to the machine", "Waiting for the machine to answer..."),
    D.STARTED: ("Starting", "The machine took the payment and is starting the wash..."),
    D.RUNNING: ("Started", "Your wash is running. Thank you!"),
    D.CREDIT_KEPT: ("Credit kept on the machine",
                    "The washer did not start. The machine keeps your payment as credit: "
                    "check the door and press START on the machine."),
    D.TOKEN: ("Show this code to the machine",
              "The machine is offline. Hold this QR code to the machine's scanner to start "
              "your wash."),
    D.USED: ("Code used", "The machine took your code. Your wash is running. Thank you!"),
    D.REFUNDING: ("Refunding", "The machine could not start. Your money is being refunded..."),
    D.REFUNDED: ("Refunded", "The machine could not start. Your payment was refunded."),
    D.CANCELLED: ("Cancelled", "No payment was taken."),
}
# a payment the board took (its journal has the start) whose washer did not start
NOT_STARTED = {
    D.REFUNDING: ("Not started: refunding",
                  "The machine took the payment but the washer did not start. Your money is "
                  "being refunded..."),
    D.REFUNDED: ("Not started: refunded",
                 "The washer did not start. Your payment was refunded."),
}
# the board's journal: the washer did not start a vend paid online, and the board did not
# credit it (source kind token / command, source = its id: docs/journal-format.md)
_NOT_STARTED_SQL = ("SELECT seq FROM records WHERE device = ? AND type = 'start_failed' AND "
                    "source_kind = ? AND source = ? AND verified = 1")


class Refused(Exception):
    """A checkout that is not opened (machine offline, busy, unknown program, ...): the
    message says why, for the customer."""


class Payments:
    def __init__(self, db, machines, provider, send, site_key, confirm_s=30.0,
                 checkout_ttl_s=1800, token_ttl_s=3600, clock=time.time, log=None):
        """`send(device, cid_hex, kind, payload, args, expires)` publishes a command (the
        ledger server's Server.send_command)."""
        self.db = db
        self.machines = machines
        self.provider = provider
        self.send = send
        self.site_key = site_key
        self.confirm_s = confirm_s
        self.checkout_ttl_s = checkout_ttl_s
        self.token_ttl_s = token_ttl_s
        self.clock = clock
        self.log = log or (lambda m: None)
        self._stop = threading.Event()
        self._thread = None
        self._retry_at = {}  # payment -> when its refund may be tried again
        self.timings = []  # (webhook received, command published) monotonic, for the bench

    # ---- a customer buys
    def create(self, device, program, return_url, kind="start"):
        """(payment id, checkout URL) for `program` on `device` at the price it charges
        now; Refused if no money should be taken now. kind "start": a remote start, only
        for a machine online; "token": an offline QR token, only for a machine offline."""
        st = self.machines.state(device)
        if kind == "token":
            if st["state"] != "offline":
                raise Refused("This machine is online: pay for a remote start.")
        elif kind != "start":
            raise Refused("Unknown kind of payment.")
        elif st["state"] == "offline":
            raise Refused("This machine is offline: no payment can start it now.")
        if st["state"] == "out_of_order":
            raise Refused("This machine is out of order.")
        if st["state"] == "running":
            raise Refused("This machine is busy: pay when it is free.")
        prices = self.machines.prices(device)
        p = next((p for p in prices["programs"] if p["name"] == program), None)
        if p is None:
            raise Refused(f"No program {program!r} on this machine.")
        pid = secrets.token_urlsafe(18)
        amount = int(p["price"])
        self.db.create(pid, device, program, amount, prices["currency"], self.provider.name,
                       kind=kind, now=self.clock())
        desc = f"{self.machines.name(device)}: {program}"
        try:
            co = self.provider.checkout(pid, amount, prices["currency"], desc,
                                        return_url.replace("{id}", pid))
        except ProviderError as e:
            self.db.move(pid, D.CREATED, D.CANCELLED, info={"error": str(e)})
            raise Refused("The payment service is not available; try again shortly.") \
                from None
        self.db.set_ref(pid, co.ref)
        return pid, co.url

    # ---- the provider says
    def webhook(self, headers, body):
        """Handle one webhook delivery; WebhookError if not authentic (nothing changes)."""
        ev = self.provider.verify(headers, body)
        pid = self.db.by_ref(self.provider.name, ev.ref) if ev.ref else None
        first = self.db.webhook_event(self.provider.name, ev.id, ev.raw_type or ev.kind, pid,
                                      {"ref": ev.ref, "amount": ev.amount},
                                      now=self.clock())
        if not first or pid is None:
            return "duplicate" if not first else "unknown payment"
        if ev.kind == "paid":
            t0 = time.monotonic()
            row = self.db.get(pid)
            if ev.amount is not None and int(ev.amount) != row["amount"]:
                self.db.note(pid, "amount_mismatch", {"paid": ev.amount})
            if self.db.move(pid, (D.CREATED, D.CANCELLED), D.PAID, "paid",
                            {"event": ev.id}, now=self.clock(), paid_at=self.clock(),
                            provider_charge=ev.charge):
                self._send(pid)
                self.timings.append((t0, time.monotonic()))
            return "paid"
        if ev.kind == "cancelled":
            self.db.move(pid, D.CREATED, D.CANCELLED, "cancelled", {"event": ev.id})
            return "cancelled"
        return "noted"

    # ---- the board
    def _send(self, pid):
        row = self.db.get(pid)
        now = self.clock()
        if row["kind"] == "token":
            return self._issue(row, now)
        ttl = max(1, int(self.confirm_s))
        payload, cid = C.build(self.site_key, row["device"], "start", ttl_s=ttl,
                               issued=int(now), program=row["program"], amount=row["amount"])
        if not self.db.move(pid, D.PAID, D.SENT, "command", {"cmd": cid.hex()}, now=now,
                            command_id=cid.hex(), sent_at=now):
            return
        try:
            self.send(row["device"], cid.hex(), "start", payload,
                      {"program": row["program"], "amount": row["amount"], "payment": pid},
                      int(now) + ttl)
        except Exception as e:  # noqa: BLE001 - no answer then: refunded at the window's end
            self.db.note(pid, "send_error", {"error": str(e)})

    def _issue(self, row, now):
        text, tid = T.issue_token(self.site_key, row["device"], row["program"],
                                  self.token_ttl_s, amount=row["amount"], issued=int(now))
        self.db.move(row["id"], D.PAID, D.TOKEN, "token",
                     {"token_id": tid.hex(), "expires": int(now) + self.token_ttl_s},
                     token=text, token_id=tid.hex(), token_expires=int(now) + self.token_ttl_s)

    def _token(self, row, now):
        used = self.db.query(
            "SELECT seq FROM records WHERE device = ? AND type = 'token_redeem' AND "
            "source = ? AND verified = 1", (row["device"], row["token_id"]))
        if used:
            self.db.move(row["id"], D.TOKEN, D.USED, "token_redeem", {"seq": used[0][0]},
                         start_seq=used[0][0], settled_at=now)
            self._token_failed(row["id"])
            return
        if now <= row["token_expires"]:
            return
        # expired: refunded once the board has been heard from since, with everything it
        # journaled uploaded (a redemption before the expiry would be in the ledger by then)
        dev = self.db.query("SELECT last_seen, high_seq, reported_seq FROM devices "
                            "WHERE device = ?", (row["device"],))
        if dev and dev[0][0] and dev[0][0] > row["token_expires"] and dev[0][1] >= dev[0][2]:
            self.db.move(row["id"], D.TOKEN, D.REFUNDING, "token_expired",
                         detail="the code was not used before it expired")

    def _token_failed(self, pid):
        """A used token whose washer did not start (its start_failed may come in a later
        upload than the redemption): refunded."""
        row = self.db.get(pid)
        failed = self.db.query(_NOT_STARTED_SQL, (row["device"], "token", row["token_id"]))
        if failed:
            self.db.move(pid, D.USED, D.REFUNDING, "start_failed", {"seq": failed[0][0]},
                         settled_at=None, detail="the washer did not start")

    def step(self, pid):
        """Move one open payment on if what it waits for has happened."""
        row = self.db.get(pid)
        if row is None:
            return None
        st, now = row["state"], self.clock()
        if st == D.PAID:
            self._send(pid)
        elif st == D.SENT:
            self._sent(row, now)
        elif st == D.STARTED:
            self._started(row)
        elif st == D.TOKEN:
            self._token(row, now)
        elif st == D.REFUNDING:
            self._refund(row, now)
        return self.db.get(pid)["state"]

    def _start_record(self, row):
        rows = self.db.query(
            "SELECT seq FROM records WHERE device = ? AND type = 'remote_start' AND "
            "source = ? AND verified = 1", (row["device"], row["command_id"]))
        return rows[0][0] if rows else None

    def _sent(self, row, now):
        pid = row["id"]
        seq = self._start_record(row)
        res = self.db.query("SELECT status, result FROM commands WHERE id = ?",
                            (row["command_id"],))
        status, result = res[0] if res else ("sent", None)
        if seq is not None or status in ("started", "duplicate"):
            self.db.move(pid, D.SENT, D.STARTED, "start",
                         {"reply": status, "seq": seq}, started_at=now, start_seq=seq)
            return
        if status in ("refused", "invalid", "error"):
            try:
                reason = json.loads(result or "{}").get("reason") or status
            except ValueError:
                reason = status
            self.db.move(pid, D.SENT, D.REFUNDING, "start_refused",
                         {"reply": status, "reason": reason},
                         detail=f"the machine refused: {reason}")
        elif now > row["sent_at"] + self.confirm_s + 2:
            self.db.move(pid, D.SENT, D.REFUNDING, "no_answer",
                         {"waited_s": round(now - row["sent_at"], 1)},
                         detail="the machine did not answer")

    def _started(self, row):
        seq = row["start_seq"] or self._start_record(row)
        if seq is None:
            return
        nxt = self.db.query(
            "SELECT seq, type, amount, source_kind, source FROM records WHERE device = ? AND "
            "seq > ? AND "
            "verified = 1 AND type IN ('vend_running', 'start_failed') ORDER BY seq LIMIT 1",
            (row["device"], seq))
        if not nxt:
            if row["start_seq"] is None:
                self.db.move(row["id"], D.STARTED, D.STARTED, "journal", {"seq": seq},
                             start_seq=seq)
            return
        s, rtype, amount, kind, source = nxt[0]
        if rtype == "vend_running":
            self.db.move(row["id"], D.STARTED, D.RUNNING, "running", {"seq": s},
                         settled_at=self.clock(), start_seq=seq)
        elif (kind, source) == ("command", row["command_id"]):
            # not credited on the board: the customer may have walked away
            self.db.move(row["id"], D.STARTED, D.REFUNDING, "start_failed",
                         {"seq": s, "amount": amount}, start_seq=seq,
                         detail="the washer did not start")
        else:
            self.db.move(row["id"], D.STARTED, D.CREDIT_KEPT, "credit_kept",
                         {"seq": s, "credit": amount}, settled_at=self.clock(),
                         start_seq=seq,
                         detail="the washer did not confirm: kept as machine credit")

    def _refund(self, row, now):
        pid = row["id"]
        if self._retry_at.get(pid, 0) > now:
            return
        try:
            rid = self.provider.refund(row["provider_ref"], row["provider_charge"],
                                       row["amount"], pid)
        except ProviderError as e:
            self._retry_at[pid] = now + 5
            self.db.note(pid, "refund_error", {"error": str(e)})
            self.log(f"web: refund of {pid} failed: {e}; retrying")
            return
        self._retry_at.pop(pid, None)
        self.db.move(pid, D.REFUNDING, D.REFUNDED, "refund", {"refund": rid},
                     refund_ref=rid, settled_at=self.clock())

    def settle(self):
        for pid in self.db.open_ids():
            try:
                self.step(pid)
            except Exception as e:  # noqa: BLE001 - one payment must not stop the others
                self.log(f"web: payment {pid}: {type(e).__name__}: {e}")
        for (pid,) in self.db.query(
                "SELECT p.id FROM payments p JOIN records r ON r.device = p.device AND "
                "r.source = p.token_id WHERE p.state = ? AND r.type = 'start_failed' AND "
                "r.source_kind = 'token' AND r.verified = 1", (D.USED,)):
            self._token_failed(pid)
        cutoff = self.clock() - self.checkout_ttl_s
        for (pid,) in self.db.query(
                "SELECT id FROM payments WHERE state = ? AND created < ?", (D.CREATED, cutoff)):
            self.db.move(pid, D.CREATED, D.CANCELLED, "expired")

    # ---- the settler thread
    def start(self, every_s=0.2):
        def run():
            while not self._stop.wait(every_s):
                self.settle()

        self._thread = threading.Thread(target=run, name="washpay-web-settle", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    # ---- the customer's page
    def view(self, pid):
        row = self.db.get(pid)
        if row is None:
            return None
        label, text = LABELS[row["state"]]
        if row["start_seq"] is not None and row["state"] in NOT_STARTED:
            label, text = NOT_STARTED[row["state"]]  # the board took it; no wash
        elif row["detail"] and row["state"] in (D.REFUNDING, D.REFUNDED):
            text += f" ({row['detail'][0].upper()}{row['detail'][1:]}.)"
        return {"id": pid, "state": row["state"], "label": label, "text": text,
                "final": row["state"] in D.FINAL, "device": row["device"],
                "program": row["program"], "amount": row["amount"],
                "currency": row["currency"], "detail": row["detail"],
                "kind": row["kind"],
                "token": row["token"] if row["state"] == D.TOKEN else None,
                "token_expires": row["token_expires"],
                "steps": self.steps(row)}

    def steps(self, row):
        """The progress line: (step, done?) for paid, sent, started."""
        st = row["state"]
        if row["kind"] == "token":
            reached = {D.CREATED: -1, D.CANCELLED: -1, D.PAID: 0, D.TOKEN: 1, D.USED: 2,
                       D.REFUNDING: 1, D.REFUNDED: 1}[st]
            if st in NOT_STARTED and row["start_seq"] is not None:
                reached = 2
            names = ("Paid", "Code ready", "Code used at the machine")
            return [(n, i <= reached) for i, n in enumerate(names)]
        order = [D.PAID, D.SENT, D.STARTED, D.RUNNING]
        reached = {D.CREATED: -1, D.CANCELLED: -1, D.PAID: 0, D.SENT: 1, D.STARTED: 2,
                   D.RUNNING: 3, D.CREDIT_KEPT: 2,
                   D.REFUNDING: 0 if row["sent_at"] is None else 1,
                   D.REFUNDED: 0 if row["sent_at"] is None else 1}[st]
        if st in NOT_STARTED and row["start_seq"] is not None:
            reached = 2  # the machine accepted, the washer did not start
        names = {D.PAID: "Paid", D.SENT: "Sent to machine", D.STARTED: "Machine accepted",
                 D.RUNNING: "Washing"}
        return [(names[s], i <= reached) for i, s in enumerate(order)]
