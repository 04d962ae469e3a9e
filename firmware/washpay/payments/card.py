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
#
# Offline risk control (config "risk", docs/pricing.md for the balance rules): failed
# payments lock a card out, a card paying too often is refused, a card short of money is
# refused. Every decision is journaled, and the journal is also what the counters are
# rebuilt from after a reset (restore_risk): pulling the plug does not end a lockout.
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
# Records read back at boot to rebuild the risk counters: two segments. A paid cycle writes
# three or four records, so 62 reach back over the default windows (10 min, 1 h) on a busy
# machine; pushing a lockout out of reach takes 62 journaled events within the lockout, each
# of them evidence for the server; and reading them costs about what boot recovery reads.
_RISK_SCAN = const(62)
_ONE_COPY = "MAC failure (one copy)"  # card_fraud that is no failed payment: the card pays
_LOCKOUT = "lockout:"  # the start of the card_refused reason that begins a lockout
# card_refused reasons of a card short of money (the tier's rules first); never a failure
_MIN_BALANCE = "min balance "
_OVERDRAFT = "overdraft limit "
_LOW_BALANCE = "low balance"


def _low_balance(text):
    """A balance that is too low, in 16 columns: "Low balance 1.20", "Balance -12.50"."""
    return ("Low balance " if len(text) < 5 else "Balance ") + text


class CardPayment:
    def __init__(self, reader, keys, engine, journal, blacklist, cfg, pending_path="/card_pending",
                 seen_path="/card_seen", tiers=None):
        self.reader = reader
        self.keys = keys
        self.engine = engine
        self.journal = journal
        self.blacklist = blacklist
        self.tiers = tiers  # tierlist.TierList: the server's tier overrides, or None
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
        # of recent payments, of the last balance refusal journaled, and the end of a lockout
        self.risk = engine.cfg.get("risk") or {}
        self._fails = {}
        self._pays = {}
        self._shorts = {}
        self._locked = {}
        self.restored = None  # what restore_risk() found, for status

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
            self._journal(R.CARD_FRAUD, uid, reason=_ONE_COPY,
                          card_counter=counter, balance_before=balance)
        seen = self.seen.get(uid)
        if counter < seen:
            self._refuse(uid, R.CARD_FRAUD, "counter rollback %d<%d" % (counter, seen),
                         "Card refused", "see staff", card_counter=counter)
            return
        listed = self.blacklist.lookup(uid)
        if listed is not None:
            text = self.blacklist.describe(listed)
            # the journal keeps the reason (25 bytes); the server has the list's dates
            self._refuse(uid, R.CARD_REFUSED, "blacklist: " + text.split(" ", 1)[0],
                         "Card blocked", text)
            return
        self.seen.note(uid, counter)
        # the card's tier (the server's override for its UID, else its header, under the
        # MAC) may restrict programs, discount the price, ask for a higher balance or allow
        # an overdraft (docs/pricing.md); a tier the table does not have gives no rule
        tier = self.tiers.lookup(uid) if self.tiers is not None else None
        if tier is None:
            tier = W.parse_header(head)[2] or None
        if e.prices.allowed(program["name"], tier):  # a reason too long for 16 columns
            self._refuse(uid, R.CARD_REFUSED, "tier %s: not %s" % (tier, program["name"]),
                         "Not for card", "choose another")
            return
        price = e.price_of(program, tier)
        # the machine's credit pays first, the card the rest (docs/pricing.md): the coins
        # already in are never paid a second time by the card
        used = min(e.credit, price)
        pay = price - used
        why = self._short_of(balance, pay, tier)
        if why:
            self._refuse_balance(uid, why, balance, counter, price, pay, program["name"])
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
        after = balance - pay
        W.pack_copy(self._new, mac, target, head, after, counter + 1, seq & 0xFF)
        try:
            # tier: a timed program buys one step at the card's price (docs/pricing.md);
            # amount: what the card pays, price - amount: what the credit pays
            got = e.commit_vend(R.CARD_DEBIT, price, program=program, tier=tier, amount=pay,
                                from_credit=used, source=uid, balance_before=balance,
                                balance_after=after, card_counter=counter + 1)
        except JournalError as err:
            e.cancel_vend(None, credit_back=used)
            e.update_inhibit()
            self._say("Cards not taken", "sync required")
            self.fault = str(err)
            return
        w = {"uid": uid, "counter": counter + 1, "tag": seq & 0xFF, "before": balance,
             "after": after, "price": price, "pay": pay, "used": used, "seq": got,
             "target": target,
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
                     "result": "paid %d" % w["pay"]}
        self.timings["card_to_relay_us"] = time.ticks_diff(time.ticks_us(), t0)
        self.timings["exchanges"] = r.exchanges - self._ex0
        ok = await e.drive()
        self.seen.save()
        if ok:
            m = e.screen.money
            low = w["after"] < self.low_balance
            if w["used"]:  # card + credit, and the card's balance (16 columns)
                e.notice("Paid %s+%s" % (m(w["pay"]), m(w["used"])),
                         _low_balance(m(w["after"])) if low else "balance " + m(w["after"]),
                         _NOTICE_MS)
            elif low:
                e.notice("Low balance", "left " + m(w["after"]), _NOTICE_MS)
            else:
                e.notice("Paid " + m(w["pay"]), "balance " + m(w["after"]), _NOTICE_MS)

    # ---- torn payments
    def _cancel(self, w, why):
        self.waiting = None
        self.counts["cancelled"] += 1
        e = self.engine
        e.cancel_vend(R.CARD_CANCEL, credit_back=w["used"], amount=w["pay"],
                      source=w["uid"], reason=why, balance_before=w["before"],
                      balance_after=w["after"], card_counter=w["counter"])
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
        self.pending.put(w["uid"], w["counter"], w["tag"], w["before"], w["after"], w["pay"],
                         w["seq"])
        self._unresolved(w, "card gone during the write", "unresolved: settled at next tap",
                         "tap card to check")

    def _unresolved(self, w, reason, result, hint):
        """No vend for a card payment whose write was not confirmed: one card_unresolved
        record, nothing charged as machine credit."""
        self.counts["unresolved"] += 1
        e = self.engine
        e.cancel_vend(R.CARD_UNRESOLVED, credit_back=w["used"], amount=w["pay"],
                      source=w["uid"], balance_before=w["before"], balance_after=w["after"],
                      card_counter=w["counter"], reason=reason)
        e.update_inhibit()
        self.last = {"uid": w["uid"].hex(), "result": result}
        self._say("Not started", hint)

    def recover_unconfirmed(self, last):
        """Boot recovery found a card_debit in STARTING: the card write was never confirmed
        (or was, and the relay never moved). Keep it for the card's next tap; the machine
        credit it had taken (price - amount) is credit again, the card's part is not."""
        uid = last["source"]
        pay = last["amount"]
        self.pending.put(uid, last["card_counter"], last["seq"] & 0xFF, last["balance_before"],
                         last["balance_after"], pay, last["seq"])
        self.counts["unresolved"] += 1
        self.engine.cancel_vend(R.CARD_UNRESOLVED, credit_back=last["price"] - pay,
                                amount=pay, source=uid,
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

    # ---- the balance
    def _short_of(self, balance, price, tier):
        """Why `balance` does not pay `price` on a card of `tier`, or None. The tier's rules
        come first (docs/pricing.md): the reason names the one that refused."""
        prices = self.engine.prices
        m = self.engine.screen.money
        least = prices.min_balance(tier)
        if least and balance < least:  # none set: a card in its overdraft pays on (floor)
            return _MIN_BALANCE + m(least)
        # an overdraft tier may go below zero, down to its limit; the next top-up settles it
        floor = prices.floor_balance(tier)
        if balance - price >= floor:
            return None
        return (_OVERDRAFT + m(floor)) if floor < 0 else _LOW_BALANCE

    def _refuse_balance(self, uid, why, balance, counter, price, pay, name):
        """Too little money: said at every tap; journaled (card_refused, the rule in the
        reason) at most once per card per fail_window_ms, so that an empty card tapped ten
        times writes one record. Never a failed payment: no lockout comes of it."""
        self.counts["refused"] += 1
        self.last = {"uid": uid.hex(), "balance": balance, "counter": counter,
                     "result": "low balance", "reason": why}
        if not self._recent(self._shorts, uid, self.risk.get("fail_window_ms", 0)):
            if self._journal(R.CARD_REFUSED, uid, reason=why, balance_before=balance,
                             price=price, amount=pay, card_counter=counter,
                             program=name) is not None:
                self._note(self._shorts, uid)
        m = self.engine.screen.money
        if why.startswith(_MIN_BALANCE):  # 4.99 covers a 3.00 cycle: say what is missing
            line2 = "min %s to pay" % why[len(_MIN_BALANCE):]
        elif pay < price:  # the credit pays part: what the card would have to pay
            line2 = "%s +%s" % (name, m(pay))
        else:
            line2 = "%s costs %s" % (name, m(price))
        self._say(_low_balance(m(balance)), line2)

    # ---- risk control: per-card counts over a sliding window, in RAM, rebuilt at boot
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
        self._journal(R.CARD_REFUSED, uid, reason="%s %d fails in %ds" % (
            _LOCKOUT, limit, window // 1000))
        return True

    def restore_risk(self, now=None):
        """Rebuild the risk counters from the journal after a reset (a power cut, the
        watchdog, a pulled plug), so that a reset neither ends a lockout nor clears a card's
        failures, payments or balance refusal: call it once at boot, after boot recovery
        (app.py), before the first tap. It writes nothing: the journal already holds each
        event with its wall time `t` and the card's UID as source. `now`: the wall clock
        (time.time(); tests pass one).

        Reads back from the newest record until one is older than the longest window
        (fail_window_ms, card_lockout_ms, velocity_window_ms) or _RISK_SCAN records. An age
        is never taken as older than it is, so nothing expires early:
        - age = reference - t, in whole seconds less one (the clock's resolution), 0 if
          negative; each age becomes a ticks_ms in the past;
        - the reference is the clock now, or the newest record's time if that is later:
          the clock went back (an ESP32 that lost power starts again in 2000), and the
          board is at least as late as its last record; the time it was off is not known
          and counts as none;
        - a record written before the clock was set (clock_ok False) still counts: as
          recent as the record after it, or by its own `t` while the clock is unset now
          too and no record after it had a set clock (one unset clock, which a soft or
          watchdog reset keeps running)."""
        risk = self.risk
        failing = risk.get("fail_limit", 0)
        velocity = risk.get("velocity", 0)
        fail_ms = risk.get("fail_window_ms", 0)  # also the balance refusals' quiet time
        lock_ms = risk.get("card_lockout_ms", 0) if failing else 0
        pay_ms = risk.get("velocity_window_ms", 0) if velocity else 0
        horizon = max(fail_ms, lock_ms, pay_ms)
        t0 = time.ticks_ms()
        if now is None:
            now = time.time()
        now = int(now)  # a float on the unix port
        unset = not self.journal.trusts(now)  # untrusted times compare with now's
        found = {"records": 0, "fails": 0, "pays": 0, "locked": 0, "ms": 0}
        cleared = []  # cards whose newest lockout is behind us: it cleared older failures
        undone = []  # (uid, counter) of card payments cancelled or unresolved: not paid
        ref = None  # the reference: now, or the newest record's time if later
        newer = now  # the time taken for the record after the one at hand
        from washpay import forget
        from washpay.journal.recent import recent

        records = recent(self.journal, _RISK_SCAN)
        forget("washpay.journal.recent")  # boot only: the function is held while it runs
        try:
            for r in records:
                found["records"] += 1
                if r["clock_ok"]:
                    t = r["t"]
                    unset = False
                else:
                    t = r["t"] if unset else newer
                if ref is None:
                    ref = max(now, t)
                newer = t
                age = max(0, ref - t - 1) * 1000
                if age > horizon:
                    break
                rtype = r["type"]
                uid = r["source"]
                if rtype == R.CARD_FRAUD:
                    if failing and age < fail_ms and r["reason"] != _ONE_COPY and \
                            uid not in cleared:
                        found["fails"] += self._past(self._fails, uid, t0, age, failing)
                elif rtype == R.CARD_REFUSED:
                    why = r["reason"]
                    if why.startswith(_LOCKOUT):
                        if uid not in cleared:
                            cleared.append(uid)
                            if age < lock_ms and (uid in self._locked or
                                                  len(self._locked) < _RISK_CARDS):
                                self._locked[uid] = time.ticks_add(t0, lock_ms - age)
                                found["locked"] += 1
                    elif why.startswith(_MIN_BALANCE) or why.startswith(_OVERDRAFT) or \
                            why.startswith(_LOW_BALANCE):
                        if age < fail_ms:
                            self._past(self._shorts, uid, t0, age, 1)
                elif rtype in (R.CARD_CANCEL, R.CARD_UNRESOLVED):
                    undone.append((uid, r["card_counter"]))
                elif rtype == R.CARD_DEBIT:
                    if velocity and age < pay_ms and (uid, r["card_counter"]) not in undone:
                        found["pays"] += self._past(self._pays, uid, t0, age, velocity)
        finally:
            records.close()
        found["ms"] = time.ticks_diff(time.ticks_ms(), t0)
        self.restored = found
        return found

    def _past(self, table, uid, t0, age, most):
        """Note an event `age` ms before t0 for `uid`, found reading the journal newest
        first: at most `most` per card (more change no decision) and _RISK_CARDS cards (the
        most recent). 1 if it was noted."""
        times = table.get(uid)
        if times is None:
            if len(table) >= _RISK_CARDS:
                return 0
            times = table[uid] = []
        if len(times) >= most:
            return 0
        times.insert(0, time.ticks_add(t0, -age))  # oldest first, as _note leaves them
        return 1

    def _refuse(self, uid, rtype, reason, line1, line2, **fields):
        self.counts["refused"] += 1
        self.last = {"uid": uid.hex(), "result": reason}
        now = time.ticks_ms()
        # a failure that counts toward the lockout is journaled even when it repeats the last
        # refusal: restore_risk() counts failures from the journal (fail_limit of them per
        # card and lockout at most, so the journal cannot be flooded this way)
        fails = rtype == R.CARD_FRAUD and self.risk.get("fail_limit", 0)
        q = self._quiet
        if fails or q is None or q[0] != uid or q[1] != reason or \
                time.ticks_diff(now, q[2]) >= self.repeat_ms:
            self._journal(rtype, uid, reason=reason, **fields)
            self._quiet = (uid, reason, now)
        if fails and self._failed(uid):  # journaled after the failure itself
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
            "restored": self.restored,
        }
