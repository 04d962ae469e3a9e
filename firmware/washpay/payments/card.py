# The card payment source as the board keeps it between taps: the reader's polling task,
# the payment in flight, the risk counters and the status. What a tap does (read and verify
# the wallet, the blacklist, the balance, the debit and the start, torn writes, risk
# control) is card_tap.py's, loaded for each tap and dropped after it (washpay.use): a board
# sees a card a few dozen times a day, and its code is ~3 KiB of heap even in place.
import asyncio
import sys
import time

from micropython import const

from washpay import forget, use
from washpay.drivers.mfrc522 import CardError
from washpay.journal import JournalError
from washpay.journal import records as R
from washpay.payments.card_state import PendingPayments, SeenCounters, WalletError

_NOTICE_MS = const(3000)
_FAULT_RETRY_MS = const(5000)
# a tap's code: the payment's (card_tap.py), the card commands' (drivers/mifare.py) and
# the wallet's (wallet.py)
_TAP = ("washpay.payments.card_tap", "washpay.drivers.mifare", "washpay.payments.wallet")


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
            e = self.engine
            try:
                self.journal.append(R.FAULT, credit=e.credit, state=e.state,
                                    reason=self.blacklist.error[:27])
            except JournalError as err:
                self.fault = str(err)
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
                use(_TAP[1:], "select", r)
        except CardError:
            pass
        r.halt()

    async def step(self):
        """One look for a card; a tap is handled to the end (including the start)."""
        w = self.waiting
        if w is not None and time.ticks_diff(time.ticks_ms(), w["deadline"]) >= 0:
            use(_TAP, "give_up", self, w)
        r = self.reader
        ex0 = r.exchanges
        if not r.poll():
            return
        t0 = time.ticks_us()
        self._ex0 = ex0
        try:
            await self._tap(t0)
        except (CardError, WalletError) as e:
            self.counts["read_errors"] += 1
            self.last = {"result": "read failed: %s" % e}
            if self.waiting is None:
                self.say("Card not read", "tap again")
        finally:
            r.halt()
            self.counts["taps"] += 1  # counted once handled: status shows whole taps

    async def _tap(self, t0):
        # the tap's code for this tap only: SELECT, the payment, through the washer's start
        # (washpay.use)
        from washpay.payments import card_tap

        try:
            await card_tap.tap(self, t0)
        finally:
            for m in _TAP:
                forget(m)

    def recover_unconfirmed(self, last):
        """Boot recovery found a card_debit in STARTING (card_tap.py says what follows)."""
        use(_TAP, "recover_unconfirmed", self, last)

    def restore_risk(self, now=None):
        """The risk counters from the journal, once at boot (card_tap.py's restore_risk)."""
        return use(_TAP, "restore_risk", self, now)

    def say(self, line1, line2, hold=False):
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
