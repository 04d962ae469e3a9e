# The card payment source: watches the MFRC522 for a card, reads and verifies its wallet
# (docs/wallet-format.md), checks the blacklist and the balance, and pays for the selected
# program in the order the money rule needs:
#
#   read + verify -> blacklist -> balance covers the price -> journal card_debit (durable,
#   state STARTING) -> write the new copy -> read it back, compare -> start the machine
#
# A card that leaves during the write is resolved with the journal, never by guessing:
#   the WRITE command got no ACK        -> the data never left: card_cancel, no start
#   the data went out, nothing confirmed -> "Tap card again": on the same card's return, the
#                                           new copy is there (start) or the old one still is
#                                           (write the same copy again, then start)
#   the card does not come back in time, -> card_unresolved, no start; /card_pending keeps it
#   or the power goes                       and the card's next tap settles it: new copy there
#                                           -> the price becomes machine credit
# so a card is never charged twice for one vend and no vend starts unpaid.
import asyncio
import sys
import time

from micropython import const

from washpay.drivers.mfrc522 import AuthFailed, CardError, CardRefused, Collision, NoCard
from washpay.journal import JournalError
from washpay.journal import records as R
from washpay.payments import wallet as W
from washpay.payments.card_state import PendingPayments, SeenCounters

_READ_TRIES = const(2)  # a read-back hit by noise (CRC error) is tried once more
_NOTICE_MS = const(3000)
_FAULT_RETRY_MS = const(5000)
_RISK_CARDS = const(16)  # cards whose failures / payments are remembered (RAM: bounded)


class CardPayment:
    def __init__(self, reader, keys, engine, journal, blacklist, cfg, pending_path="/card_pending",
                 seen_path="/card_seen"):
        self.reader = reader
        self.keys = keys
        self.engine = engine
        self.journal = journal
        self.blacklist = blacklist
        self.poll_ms = cfg["poll_ms"]
        self.repeat_ms = cfg["repeat_ms"]
        self.retap_ms = cfg["retap_ms"]
        self.low_balance = cfg["low_balance"]
        self.pending = PendingPayments(pending_path)
        self.seen = SeenCounters(seen_path)
        self._head = bytearray(16)
        self._copies = (bytearray(16), bytearray(16))
        self._new = bytearray(16)
        self._check = bytearray(16)
        self.waiting = None  # a torn payment waiting for its card (dict), engine in STARTING
        self._recent_uid = None  # the card that paid last, and when: not charged again
        self._recent_ms = 0
        self._quiet = None  # (uid, reason, ms) of the last refusal journaled: no repeats
        self._ex0 = 0
        self.fault = None
        self.counts = {"taps": 0, "paid": 0, "refused": 0, "torn": 0, "cancelled": 0,
                       "unresolved": 0, "settled": 0, "read_errors": 0}
        self.last = None  # what the last tap found, for status
        # card detected -> relay command (µs) and RF exchanges of the last paid tap
        self.timings = {"card_to_relay_us": None, "exchanges": None}
        engine.unconfirmed[R.CARD_DEBIT] = self.recover_unconfirmed
        # offline risk control (config "risk"): uid -> ticks_ms of recent failed payments,
        # of recent payments, and the end of a lockout
        self.risk = engine.cfg.get("risk") or {}
        self._fails = {}
        self._pays = {}
        self._locked = {}

    # ---- the polling task
    async def run(self):
        if self.blacklist.error:
            self._journal(R.FAULT, None, reason=self.blacklist.error[:27])
        self.quiet_present_card()
        while True:
            try:
                await self.step()
            except CardError as e:  # the reader itself: try again in a while
                self.fault = str(e)
                print("washpay: card reader:", e)
                await asyncio.sleep_ms(_FAULT_RETRY_MS)
                try:
                    self.reader.init()
                    self.fault = None
                except CardError:
                    pass
            except Exception as e:  # a bug must not end card payments for good
                sys.print_exception(e)
                await asyncio.sleep_ms(_FAULT_RETRY_MS)
            await asyncio.sleep_ms(self.poll_ms)

    def quiet_present_card(self):
        """A card already on the reader at start-up (left there after `washpay card
        topup`, or through a reset) is not a tap: halt it. A halted card does not answer the
        REQA polls until it has left the field and comes back."""
        r = self.reader
        try:
            if r.poll(True):
                r.select()
        except CardError:
            pass
        r.halt()

    async def step(self):
        """One look for a card; a tap is handled to the end (including the start)."""
        w = self.waiting
        if w is not None and time.ticks_diff(time.ticks_ms(), w["deadline"]) >= 0:
            self._give_up(w)
        r = self.reader
        ex0 = r.exchanges
        if not r.poll():
            return
        t0 = time.ticks_us()
        self._ex0 = ex0
        try:
            try:
                sak = r.select()
            except Collision:
                self._say("One card only", "please")
                return
            if not sak & 0x08 or sak & 0x10:
                self._say("Card type not", "accepted")
                return
            await self.on_tap(bytes(r.uid[: r.uid_len]), t0)
        except (CardError, W.WalletError) as e:
            self.counts["read_errors"] += 1
            self.last = {"result": "read failed: %s" % e}
            if self.waiting is None:
                self._say("Card not read", "tap again")
        finally:
            r.halt()
            self.counts["taps"] += 1  # counted once handled: status shows whole taps

    # ---- a tap
    async def on_tap(self, uid, t0):
        w = self.waiting
        if w is not None:
            if uid != w["uid"]:
                self._say("Tap the card", "you paid with", hold=True)
                return
            await self._finish_waiting(w, t0)
            return
        if uid == self._recent_uid and time.ticks_diff(time.ticks_ms(), self._recent_ms) < \
                self.repeat_ms:
            return  # the same card again right after paying: it is not charged twice
        until = self._locked.get(uid)
        if until is not None:
            if time.ticks_diff(until, time.ticks_ms()) > 0:
                self._refuse(uid, R.CARD_REFUSED, "locked out", "Card locked", "try later")
                return
            del self._locked[uid]
        slot = self.pending.find(uid)
        if slot >= 0 and not self._settle(uid, slot):
            return
        settled = slot >= 0  # a bad copy on it may be our own torn write
        e = self.engine
        why = e.refuse_reason()
        if why:
            self._say(why, "")
            return
        if not self.journal.accepts_payments:
            self._say("Cards not taken", "sync required")
            return
        program = e.program
        if e.credit >= e.price_of(program):
            self._say("Credit covers it", "press START")
            return
        try:
            mac, a, b = self._read_wallet(uid)
        except AuthFailed:
            self._foreign_or_blank(uid)
            return
        head = self._head
        i = W.current(a, b)
        if i < 0:
            self._refuse(uid, R.CARD_FRAUD, "MAC failure", "Card invalid", "see staff")
            return
        cur = a if i == 0 else b
        balance, counter, _ = cur
        if (b if i == 0 else a) is None and not settled:
            # one copy fails its MAC: a write torn elsewhere, or an edit; the server knows
            self._journal(R.CARD_FRAUD, uid, reason="MAC failure (one copy)",
                          card_counter=counter, balance_before=balance)
        seen = self.seen.get(uid)
        if counter < seen:
            self._refuse(uid, R.CARD_FRAUD, "counter rollback %d<%d" % (counter, seen),
                         "Card refused", "see staff", card_counter=counter)
            return
        listed = self.blacklist.lookup(uid)
        if listed is not None:
            text = self.blacklist.describe(listed)
            self._refuse(uid, R.CARD_REFUSED, "blacklist: " + text, "Card blocked", text)
            return
        self.seen.note(uid, counter)
        # the card's tier (its header, under the MAC) may restrict programs, discount the
        # price, ask for a higher balance or allow an overdraft (docs/pricing.md)
        tier = W.parse_header(head)[2] or None
        if e.prices.allowed(program["name"], tier):  # a reason too long for 16 columns
            self._refuse(uid, R.CARD_REFUSED, "tier %s: not %s" % (tier, program["name"]),
                         "Not for card", "choose another")
            return
        price = e.price_of(program, tier)
        m = self.engine.screen.money
        # an overdraft tier may go below zero, down to its limit; the next top-up settles it
        if balance - price < e.prices.floor_balance(tier) or \
                balance < e.prices.min_balance(tier):
            self.last = {"uid": uid.hex(), "balance": balance, "counter": counter,
                         "result": "low balance"}
            self._say("Low balance " + m(balance), "%s costs %s" % (program["name"], m(price)))
            return
        if counter >= W.COUNTER_MAX:
            self._say("Card worn out", "reissue card")
            return
        limit = self.risk.get("velocity", 0)
        if limit and self._recent(self._pays, uid, self.risk["velocity_window_ms"]) >= limit:
            self._refuse(uid, R.CARD_REFUSED, "velocity: %d in %ds" % (
                limit, self.risk["velocity_window_ms"] // 1000), "Too many uses", "try later")
            return
        # -- the payment
        target = W.COPY_B if i == 0 else W.COPY_A
        seq = self.journal.last_seq + 1  # the card_debit record's number: the writer tag
        after = balance - price
        W.pack_copy(self._new, mac, target, head, after, counter + 1, seq & 0xFF)
        try:
            got = e.commit_vend(R.CARD_DEBIT, price, program=program, amount=price, source=uid,
                                balance_before=balance, balance_after=after,
                                card_counter=counter + 1)
        except JournalError as err:
            e.cancel_vend(None)
            e.update_inhibit()
            self._say("Cards not taken", "sync required")
            self.fault = str(err)
            return
        w = {"uid": uid, "counter": counter + 1, "tag": seq & 0xFF, "before": balance,
             "after": after, "price": price, "seq": got, "target": target,
             "new": bytes(self._new), "deadline": 0}
        if got != seq:  # the journal numbered it otherwise: the tag would not match it
            self._cancel(w, "journal sequence moved")
            return
        await self._write_and_start(w, t0)

    def _read_wallet(self, uid):
        """Authenticate with key B and read blocks 4..6. Returns (MAC key, copy 5, copy 6),
        each copy (balance, counter, tag) or None if it does not verify."""
        r = self.reader
        r.auth(W.TRAILER_BLOCK, self.keys.key_b(uid), True)
        head = self._head
        r.read_block(W.HEADER_BLOCK, head)
        r.read_block(W.COPY_A, self._copies[0])
        r.read_block(W.COPY_B, self._copies[1])
        _, site, _ = W.parse_header(head)
        if site != self.keys.site_id:
            raise W.WalletError("card of another site")
        mac = self.keys.mac_key(uid)
        return (mac, W.check_copy(mac, W.COPY_A, head, self._copies[0]),
                W.check_copy(mac, W.COPY_B, head, self._copies[1]))

    async def _write_and_start(self, w, t0):
        r = self.reader
        try:
            r.write_block(w["target"], w["new"])
        except NoCard:  # the WRITE was not acknowledged: its data never left the reader
            self._cancel(w, "card left before the write")
            return
        except CardRefused:  # NAK: the card did not write
            self._cancel(w, "card refused the write")
            return
        except CardError:
            self._wait_for_card(w)  # the data went out; whether it landed is unknown
            return
        for _ in range(_READ_TRIES):
            try:
                r.read_block(w["target"], self._check)
            except NoCard:
                break
            except CardError:
                continue
            if self._check == w["new"]:
                await self._start(w, t0)
                return
            break
        self._wait_for_card(w)

    async def _start(self, w, t0):
        self.waiting = None
        e = self.engine
        r = self.reader
        r.halt()
        self.seen.note(w["uid"], w["counter"])
        self._recent_uid = w["uid"]
        self._recent_ms = time.ticks_ms()
        self._note(self._pays, w["uid"])
        self.counts["paid"] += 1
        self.last = {"uid": w["uid"].hex(), "balance": w["after"], "counter": w["counter"],
                     "result": "paid %d" % w["price"]}
        self.timings["card_to_relay_us"] = time.ticks_diff(time.ticks_us(), t0)
        self.timings["exchanges"] = r.exchanges - self._ex0
        ok = await e.drive()
        self.seen.save()
        if ok:
            m = e.screen.money
            if w["after"] < self.low_balance:
                e.notice("Low balance", "left " + m(w["after"]), _NOTICE_MS)
            else:
                e.notice("Paid " + m(w["price"]), "balance " + m(w["after"]), _NOTICE_MS)

    # ---- torn payments
    def _cancel(self, w, why):
        self.waiting = None
        self.counts["cancelled"] += 1
        e = self.engine
        e.cancel_vend(R.CARD_CANCEL, amount=w["price"], source=w["uid"], reason=why,
                      balance_before=w["before"], balance_after=w["after"],
                      card_counter=w["counter"])
        e.update_inhibit()
        self.last = {"uid": w["uid"].hex(), "result": "not charged: " + why}
        self._say("Not charged", "tap card again")

    def _wait_for_card(self, w):
        w["deadline"] = time.ticks_add(time.ticks_ms(), self.retap_ms)
        if self.waiting is None:
            self.counts["torn"] += 1
        self.waiting = w
        self.last = {"uid": w["uid"].hex(), "result": "torn write: waiting for the card"}
        self.engine.show("Tap card again", "to finish paying")

    async def _finish_waiting(self, w, t0):
        mac, a, b = self._read_wallet(w["uid"])
        outcome = W.settle(a, b, w["counter"], w["after"], w["tag"])
        if outcome == W.LANDED:
            await self._start(w, t0)
            return
        i = W.current(a, b)
        cur = None if i < 0 else (a if i == 0 else b)
        if (outcome == W.NOT_LANDED and cur is not None and cur[0] == w["before"]
                and cur[1] == w["counter"] - 1):
            await self._write_and_start(w, t0)  # the same copy again: one debit, not two
            return
        self.waiting = None
        if outcome == W.NOT_LANDED:  # the card moved on without our copy: never charged
            self._cancel(w, "card changed meanwhile")
            return
        # paid elsewhere since, more than once: the card cannot tell; the server settles
        self._unresolved(w, "card moved on: server", "unresolved: the server settles",
                         "ask staff")

    def _give_up(self, w):
        """The card did not come back: no vend; its next tap settles the payment."""
        self.waiting = None
        self.pending.put(w["uid"], w["counter"], w["tag"], w["before"], w["after"], w["price"],
                         w["seq"])
        self._unresolved(w, "card gone during the write", "unresolved: settled at next tap",
                         "tap card to check")

    def _unresolved(self, w, reason, result, hint):
        """No vend for a card payment whose write was not confirmed: one card_unresolved
        record, nothing charged as machine credit."""
        self.counts["unresolved"] += 1
        e = self.engine
        e.cancel_vend(R.CARD_UNRESOLVED, amount=w["price"], source=w["uid"],
                      balance_before=w["before"], balance_after=w["after"],
                      card_counter=w["counter"], reason=reason)
        e.update_inhibit()
        self.last = {"uid": w["uid"].hex(), "result": result}
        self._say("Not started", hint)

    def recover_unconfirmed(self, last):
        """Boot recovery found a card_debit in STARTING: the card write was never confirmed
        (or was, and the relay never moved). Keep it for the card's next tap; no credit."""
        uid = last["source"]
        self.pending.put(uid, last["card_counter"], last["seq"] & 0xFF, last["balance_before"],
                         last["balance_after"], last["price"], last["seq"])
        self.counts["unresolved"] += 1
        self.engine.cancel_vend(R.CARD_UNRESOLVED, amount=last["price"], source=uid,
                                balance_before=last["balance_before"],
                                balance_after=last["balance_after"],
                                card_counter=last["card_counter"],
                                reason="power lost during payment", recovered=True)

    def _settle(self, uid, slot):
        """The card of an unresolved payment is back. True: go on with this tap as a
        payment; False: the tap is used up (the price became credit)."""
        counter, tag, before, after, price, _ = self.pending.get(slot)
        mac, a, b = self._read_wallet(uid)
        outcome = W.settle(a, b, counter, after, tag)
        # forget it first: a power cut after this loses the settlement (the journal's
        # card_unresolved stays for the server), it can never repeat it
        self.pending.drop(slot)
        self.counts["settled"] += 1
        e = self.engine
        fields = {"source": uid, "balance_before": before, "balance_after": after,
                  "card_counter": counter}
        if outcome == W.LANDED:
            e.add_credit(R.CARD_SETTLED, price, reason="payment had landed", **fields)
            self.seen.note(uid, counter)
            self.last = {"uid": uid.hex(), "result": "settled: credit %d" % price}
            self._say("Paid earlier", "press START")
            return False
        why = "payment had not landed" if outcome == W.NOT_LANDED else "card moved on: server"
        self._journal(R.CARD_SETTLED, uid, reason=why, amount=0, balance_before=before,
                      balance_after=after, card_counter=counter)
        return True

    # ---- cards that are not ours
    def _foreign_or_blank(self, uid):
        """Key B did not open the wallet (the card fell back to idle): ask it with the public
        read key, then the transport key, what it is."""
        r = self.reader
        try:
            r.activate(True)
            r.auth(W.TRAILER_BLOCK, W.key_a(uid))
            r.read_block(W.HEADER_BLOCK, self._head)
            _, site, _ = W.parse_header(self._head)
        except AuthFailed:
            try:
                r.activate(True)
                r.auth(W.TRAILER_BLOCK, W.TRANSPORT_KEY)
                self._say("Card not issued", "ask staff")
            except CardError:
                self._say("Card unknown", "")
            return
        except W.WalletError:
            self._say("Card unknown", "")
            return
        if site != self.keys.site_id:
            self._refuse(uid, R.CARD_FRAUD, "foreign site " + site.hex(), "Card of another",
                         "site: not taken")
        else:
            self._refuse(uid, R.CARD_FRAUD, "key B refused", "Card refused", "see staff")

    # ---- journal, display, status
    def _journal(self, rtype, uid, **fields):
        e = self.engine
        if uid is not None:
            fields["source"] = uid
        try:
            return self.journal.append(rtype, credit=e.credit, state=e.state, **fields)
        except JournalError as err:
            self.fault = str(err)
            return None

    # ---- risk control: per-card counts over a sliding window, in RAM (a reset forgets them)
    def _recent(self, table, uid, window_ms):
        """How many events `table` holds for `uid` within the last window_ms."""
        now = time.ticks_ms()
        times = [t for t in table.get(uid, ()) if time.ticks_diff(now, t) < window_ms]
        if times:
            table[uid] = times
        else:
            table.pop(uid, None)
        return len(times)

    def _note(self, table, uid):
        if uid not in table and len(table) >= _RISK_CARDS:
            table.pop(next(iter(table)))  # the board forgets a card rather than the heap
        table.setdefault(uid, []).append(time.ticks_ms())

    def _failed(self, uid):
        """One failed payment by `uid`; the fail_limit-th in the window locks it out."""
        limit = self.risk.get("fail_limit", 0)
        if not limit:
            return False
        window = self.risk["fail_window_ms"]
        self._recent(self._fails, uid, window)
        self._note(self._fails, uid)
        if len(self._fails[uid]) < limit:
            return False
        del self._fails[uid]
        if len(self._locked) >= _RISK_CARDS:
            self._locked.pop(next(iter(self._locked)))
        self._locked[uid] = time.ticks_add(time.ticks_ms(), self.risk["card_lockout_ms"])
        self._journal(R.CARD_REFUSED, uid, reason="lockout: %d fails in %ds" % (
            limit, window // 1000))
        return True

    def _refuse(self, uid, rtype, reason, line1, line2, **fields):
        self.counts["refused"] += 1
        self.last = {"uid": uid.hex(), "result": reason}
        now = time.ticks_ms()
        q = self._quiet
        if q is None or q[0] != uid or q[1] != reason or \
                time.ticks_diff(now, q[2]) >= self.repeat_ms:
            self._journal(rtype, uid, reason=reason, **fields)
            self._quiet = (uid, reason, now)
        if rtype == R.CARD_FRAUD and self._failed(uid):  # journaled after the failure itself
            line1, line2 = "Card locked", "try later"
        self._say(line1, line2)

    def _say(self, line1, line2, hold=False):
        if hold:
            self.engine.show(line1, line2)
        else:
            self.engine.notice(line1, line2, _NOTICE_MS)

    def status(self):
        w = self.waiting
        return {
            "counts": self.counts,
            "waiting": w["uid"].hex() if w else None,
            "pending": len(self.pending),
            "last": self.last,
            "timings": self.timings,
            "exchanges": self.reader.exchanges,
            "blacklist": self.blacklist.status(),
            "fault": self.fault,
            "locked": [u.hex() for u in self._locked],
        }
