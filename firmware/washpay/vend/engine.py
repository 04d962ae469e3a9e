# The vend engine: idle -> credit -> starting -> running -> done, for one machine.
#
# Money rule: a payment counts only once its journal record is durable, and the relay is
# never driven for a vend that is not in the journal. Every record carries the credit, the
# state and the paid time left after it, so after a power cut the last record says where
# we were (vend/boot.py).
import asyncio
import time

from micropython import const

from washpay import use
from washpay.journal import _SOURCE_OF, JournalError
from washpay.journal import records as R
from washpay.vend.prices import is_timed, price_table

_POLL_MS = const(50)
# coin line anomalies (vend/watch.py): rare, so loaded for each and dropped after
_WATCH = ("washpay.vend.watch",)


class VendEngine:
    def __init__(self, cfg, journal, washer, acceptor, screen, clock=time.time):
        self.cfg = cfg
        self.journal = journal
        self.washer = washer
        self.acceptor = acceptor
        self.screen = screen
        self.clock = clock
        self.programs = cfg["programs"]
        self.prices = price_table(self.programs, cfg.get("pricing"))
        self.program = self.programs[0]
        self.state = R.IDLE
        self.credit = 0
        self.vend_price = 0  # price of the vend in progress
        # a timed program (vend/timed.py): seconds bought and not yet started, and the
        # ticks_ms at which the paid time of the one running runs out (None: none runs)
        self.bought_s = 0
        self.ends_ms = None
        self.fault = None  # why the machine is out of order, if it is
        self.faults = 0
        self.last_fault = None
        self._notice_id = 0
        self.noise = 0
        self.starts_failed = 0
        self.busy = False  # a vend task is running; buttons and coins wait
        # last measured firmware latencies (µs): decoded coin -> credit durable and shown,
        # START pressed -> relay driven (journal append included); for make bench
        self.timings = {"coin_to_credit_us": None, "start_to_relay_us": None}
        self._t_start = 0
        # Payments whose collection may not have completed when the power went (a card
        # write not yet read back): record type -> handler(last record). At boot the
        # handler settles it (cancel_vend) instead of the price becoming credit: a start
        # needs the money collected, and a card may not have been charged.
        self.unconfirmed = {}
        self.vend_source = None  # (source kind, id) of who paid the vend in progress
        self.laundry = None  # None, "waiting", "collected" or "not collected" (after a cycle)
        self._rejects = []  # ticks_ms of the recent rejected coin trains (risk.reject_burst)
        self.coin_lockout = False  # too many rejects: the acceptor is inhibited for a while
        self.coin_stuck = False  # the coin line is stuck active: inhibited until it is idle
        # noise on the coin line: None while it is quiet, else the trains rejected during
        # the storm so far (vend_watch.coin_storm); inhibited until it is quiet
        self.coin_storm = None

    # ---- prices (washpay/vend/pricing.py, docs/pricing.md)
    def price_of(self, program=None, tier=None):
        """What `program` (the selected one by default) costs now, for a card `tier`
        (None: coins, tokens, an untiered card)."""
        p = program or self.program
        return self.prices.price(p["name"], self.clock(), tier)

    def set_prices(self, raw):
        """A new price table (already validated through config.validate) takes effect."""
        self.prices = price_table(self.programs, raw)
        self.cfg["pricing"] = raw
        if self.state in (R.IDLE, R.CREDIT, R.DONE):
            self.show()

    # ---- journal
    def _record(self, rtype, **fields):
        fields["credit"] = self.credit
        fields["state"] = self.state
        fields["t"] = int(self.clock())
        if "left_s" not in fields:
            fields["left_s"] = self.left_s()
        try:
            return self.journal.append(rtype, **fields)
        except JournalError as e:
            # Nothing may happen that the journal does not hold: stop taking money. The
            # reserve makes this unreachable for coins in flight and vends already paid.
            self.fault = str(e)
            self.state = R.OUT_OF_ORDER
            self.acceptor.inhibit(True)
            self.screen.show("Out of order", "sync required")
            raise

    def left_s(self):
        """Paid time left (seconds, rounded up) of a timed vend bought or running, else 0."""
        if self.ends_ms is not None:
            return (max(0, time.ticks_diff(self.ends_ms, time.ticks_ms())) + 999) // 1000
        return self.bought_s if self.state == R.STARTING else 0

    # ---- boot recovery
    async def recover(self, boot_reason="power on"):
        """Boot recovery from the journal's last record (vend/boot.py: run once, so its
        code is not kept in RAM with the engine's)."""
        from washpay import forget
        from washpay.vend import boot as vend_boot

        await vend_boot.recover(self, boot_reason)
        forget("washpay.vend.boot")

    def program_named(self, name):
        for p in self.programs:
            if p["name"] == name:
                return p
        return None

    # ---- display and coin inhibit
    def show(self, line1=None, line2=None):
        m = self.screen.money
        if line1 is not None:
            self.screen.show(line1, line2 or "")
            return
        p = self.program
        price = self.price_of(p)
        timed = self._timed() if is_timed(p) else None  # a dryer: time on the display
        if self.state == R.OUT_OF_ORDER:
            self.screen.show("Out of order", (self.fault or "")[:16])
        elif self.state == R.RUNNING and self.ends_ms is not None:
            self.screen.show("Running " + p["name"], self._timed().time_left(self))
        elif self.state == R.RUNNING:
            self.screen.show("Running", p["name"])
        elif self.state == R.STARTING:
            self.screen.show("Starting...", p["name"])
        elif self.laundry == "not collected" and not self.credit:
            self.screen.show("Laundry waiting", "please collect")
        elif self.credit >= price:
            self.screen.show("Credit " + m(self.credit), timed.start_line(self, price)
                             if timed else "%s  START" % p["name"])
        elif self.credit:
            self.screen.show("Credit " + m(self.credit),
                             "%s +%s" % (p["name"], m(price - self.credit)))
        elif self.coin_lockout or self.coin_stuck or self.coin_storm is not None:
            self.screen.show("Coins blocked", "%s %s" % (p["name"], m(price)))
        elif not self.journal.accepts_payments:
            self.screen.show("Journal full", "sync required")
        elif self.journal.level != "ok":
            self.screen.show("Insert coins", "sync required")
        else:
            self.screen.show("Insert coins", "%s %s" % (
                p["name"], timed.per_step(p, m(price)) if timed else m(price)))

    def notice(self, line1, line2, ms):
        """Show a message for `ms`, then the normal screen, without holding up the caller:
        the coin sampler calls into the engine and must be back within a few ms."""
        self.show(line1, line2)
        self._notice_id += 1
        asyncio.create_task(self._restore_screen(self._notice_id, ms))

    async def _restore_screen(self, notice_id, ms):
        await asyncio.sleep_ms(ms)
        if notice_id == self._notice_id:
            self.show()

    def update_inhibit(self):
        refuse = (
            self.state in (R.STARTING, R.OUT_OF_ORDER)
            or self.state == R.RUNNING and not self._room_s()
            or self.coin_lockout
            or self.coin_stuck
            or self.coin_storm is not None
            or self.credit >= self.cfg["max_credit"]
            or not self.journal.accepts_payments  # the reserve is for money already taken
        )
        self.acceptor.inhibit(refuse)

    def out_of_order(self, why):
        self.fault = why
        self.state = R.OUT_OF_ORDER
        self._record(R.FAULT, reason=why)
        self.update_inhibit()
        self.show()

    # ---- coins
    async def on_coin(self, result):
        try:
            await self._on_coin(result)
        except JournalError:
            pass  # out of order now: _record said so on the display and in status

    async def _on_coin(self, result):
        kind = result[0]
        if kind == "coin":
            t0 = time.ticks_us()
            value, pulses = result[1], result[2]
            self.credit += value
            if self.state in (R.IDLE, R.DONE):
                self.state = R.CREDIT
            # durable before the customer sees the credit
            self._record(R.COIN, amount=value, pulses=pulses, program=self.program["name"])
            if self.ends_ms is not None:  # a timed program runs: the coin buys more time
                self._extend()
            self.update_inhibit()
            self.show()
            self.timings["coin_to_credit_us"] = time.ticks_diff(time.ticks_us(), t0)
        elif kind == "reject" and self.coin_storm is not None:
            # a train rejected during a storm: the first is journaled (a coin in flight when
            # the storm began would be in it); the others are noise the storm's fault record
            # stands for. Every one of a storm comes here: no module is loaded for them
            self.coin_storm += 1
            if self.coin_storm == 1:
                self._record(R.COIN_REJECTED, reason=result[1], pulses=result[2])
            else:
                self.noise += 1
        elif kind == "reject":
            self.faults += 1
            self.last_fault = result[1]
            self._record(R.COIN_REJECTED, reason=result[1], pulses=result[2])
            if not use(_WATCH, "reject_burst", self):
                self.notice("Coin not taken", "ask staff", 1500)
        elif kind == "stuck":  # the driver saw the line active far longer than any pulse
            use(_WATCH, "coin_fault", self, "coin line stuck active")
        elif kind == "released":
            use(_WATCH, "coin_fault", self, "coin line released", False)
        elif kind in ("storm", "calm"):
            use(_WATCH, "coin_storm", self, result)
        elif kind == "inhibited":  # the acceptor ignores its inhibit line, or is tampered
            use(_WATCH, "coin_fault", self, "pulses while inhibited", None)
        else:  # line noise: no coin, nothing to record per glitch
            self.noise += result[1] if len(result) > 1 else 1

    # ---- buttons
    async def on_button(self, name):
        try:
            await self._on_button(name)
        except JournalError:
            pass

    async def _on_button(self, name):
        if self.busy or self.state in (R.STARTING, R.RUNNING, R.OUT_OF_ORDER):
            return
        if name == "select":
            i = self.programs.index(self.program)
            self.program = self.programs[(i + 1) % len(self.programs)]
            self.show()
        elif name == "start":
            self._t_start = time.ticks_us()
            await self.start()

    async def start(self):
        """START pressed: vend the selected program from the machine's credit."""
        p = self.program
        price = self.price_of(p)
        if self.credit < price:
            self.show("Insert " + self.screen.money(price - self.credit), "for " + p["name"])
            return False
        why = self.refuse_reason()
        if why:
            self.show(why, "then press START")
            return False
        secs = None
        if is_timed(p):  # as much time as the credit buys, in whole steps, up to the cap
            secs, price = self._timed().buy(p, price, self.credit)
        self.busy = True
        try:
            self.credit -= price
            self.commit_vend(R.VEND_START, price, seconds=secs, amount=price)
            return await self.drive()
        finally:
            self.busy = False

    # ---- the path every payment source takes (coins above; cards, tokens, remote start)
    def refuse_reason(self):
        """Why a vend cannot start now (a short text for the display), or None."""
        if self.busy or self.state in (R.STARTING, R.RUNNING):
            return "Machine busy"
        if self.state == R.OUT_OF_ORDER:
            return "Out of order"
        if not self.washer.door_closed():
            return "Close the door"
        return None

    def commit_vend(self, rtype, price, program=None, tier=None, seconds=None, from_credit=0,
                    **fields):
        """Make the payment durable: one record in state STARTING, before the relay moves.

        The caller has already taken `price` from wherever it came from (machine credit,
        a card, a token), except `from_credit`: the part of it the machine's credit pays
        (a card pays the rest: docs/pricing.md), taken here in the same record. From this
        record on, boot recovery either confirms the vend or returns `price` as machine
        credit.

        A timed program buys `seconds`, or by default what `price` buys at the step price
        now for `tier` (at least one step: the price was taken at that step price a moment
        ago); money above the cost of that time (a token worth more than the cap) becomes
        machine credit in the same record.
        """
        if program is not None:
            self.program = program
        p = self.program
        self.credit -= from_credit
        if is_timed(p):
            price = self._timed().commit(self, price, tier, seconds)
        self.state = R.STARTING
        self.vend_price = price
        src = fields.get("source")  # the payer's kind, by the record that paid (journal's)
        self.vend_source = (_SOURCE_OF.get(rtype, 0), src) if src is not None else None
        self.laundry = None
        self.acceptor.inhibit(True)
        seq = self._record(rtype, program=p["name"], price=price, **fields)
        self.timings["start_to_relay_us"] = time.ticks_diff(time.ticks_us(), self._t_start)
        self.show()
        return seq

    def cancel_vend(self, rtype=None, credit_back=0, **fields):
        """The committed vend will not run and its price was not collected (a card write
        that never landed), or is settled later by its payment source (a card write not
        confirmed): back to idle/credit, with one record saying why (none if rtype is None:
        the commit itself failed). Nothing becomes credit but `credit_back`, the machine
        credit the vend had taken (commit_vend's from_credit). The caller updates the coin
        inhibit and the display (boot recovery must not release the inhibit early)."""
        price = self.vend_price
        self.credit += credit_back
        self.state = R.CREDIT if self.credit else R.IDLE
        self.vend_price = 0
        if rtype is None:
            return None
        fields.setdefault("price", price)
        return self._record(rtype, program=self.program["name"], **fields)

    def add_credit(self, rtype, amount, **fields):
        """Money collected earlier becomes machine credit now (an unresolved card payment
        that turned out to have landed): one record, then the customer presses START."""
        self.credit += amount
        if self.state in (R.IDLE, R.DONE):
            self.state = R.CREDIT
        seq = self._record(rtype, amount=amount, program=self.program["name"], **fields)
        self.update_inhibit()
        return seq

    async def drive(self):
        """Start the washer for the committed vend; on no confirmation the price is credit,
        or refunded by the server if paid online (start_failed)."""
        p = self.program
        price = self.vend_price
        for attempt in range(1 + self.cfg["start_retries"]):
            await self.washer.start(price)
            if await self._await_busy(self.cfg["start_confirm_ms"]):
                if is_timed(p):  # the paid time runs from the confirmed start
                    self.ends_ms = time.ticks_add(time.ticks_ms(), self.bought_s * 1000)
                self.state = R.RUNNING
                self._record(R.VEND_RUNNING, program=p["name"], price=price, attempt=attempt + 1)
                self.show()
                asyncio.create_task(self._watch_cycle())
                return True
        self.washer.stop()
        if self.start_failed(price, "washer did not confirm start", self.vend_source):
            self.notice("Not started", "refund to phone", 2000)
        else:
            self.notice("Start failed", "credit kept " + self.screen.money(self.credit), 2000)
        self.update_inhibit()
        return False

    def start_failed(self, price, reason, src):
        """The washer did not start the committed vend (`src`: who paid it). Paid online
        (a QR token, a remote start): not credited; the record names the payer so that the
        server refunds it (docs/pricing.md). Else the price is machine credit again.
        True if it is left to the server to refund."""
        self.bought_s = 0
        self.starts_failed += 1
        fields = {}
        online = src is not None and src[0] in (R.SOURCE_TOKEN, R.SOURCE_COMMAND)
        if online:
            fields["source_kind"], fields["source"] = src
        else:
            self.credit += price
        self.state = R.CREDIT if self.credit else R.IDLE
        self._record(R.START_FAILED, program=self.program["name"], amount=price,
                     reason=reason, **fields)
        return online

    async def _await_busy(self, window_ms):
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < window_ms:
            if self.washer.busy():
                return True
            await asyncio.sleep_ms(_POLL_MS)
        return False

    async def _watch_cycle(self):
        p = self.program
        if self.ends_ms is not None:
            await self._timed().watch(self)
            return self._cycle_over(p)
        t0 = time.ticks_ms()
        limit_ms = p.get("minutes", 0) * 60000
        while self.washer.busy():
            if self.washer.mode == "power" and limit_ms and (
                time.ticks_diff(time.ticks_ms(), t0) >= limit_ms
            ):
                break  # a power-gated machine gets exactly the paid time
            await asyncio.sleep_ms(4 * _POLL_MS)
        self._cycle_over(p)

    def _cycle_over(self, p):
        self.washer.stop()
        self.ends_ms = None
        self.bought_s = 0
        self.state = R.CREDIT if self.credit else R.IDLE
        self._record(R.VEND_DONE, program=p["name"], price=self.vend_price)
        self.update_inhibit()
        self.notice("Done", "thank you", 2000)
        if self.cfg.get("collect_ms"):
            asyncio.create_task(self._watch_collect(p["name"], self.vend_source))

    async def _watch_collect(self, program, source):
        # Laundry left in the machine: the door not opened within collect_ms of the cycle's
        # end is journaled against the payer, and the display says so until it opens.
        self.laundry = "waiting"
        t0 = time.ticks_ms()
        while self.washer.door_closed():
            if self.laundry not in ("waiting", "not collected"):
                return  # a new vend started: that one is watched now
            if self.laundry == "waiting" and time.ticks_diff(
                    time.ticks_ms(), t0) >= self.cfg["collect_ms"]:
                self.laundry = "not collected"
                fields = {}
                if source is not None:
                    fields["source_kind"], fields["source"] = source
                try:
                    self._record(R.NOT_COLLECTED, program=program, **fields)
                except JournalError:
                    return
                self.show()
            await asyncio.sleep_ms(4 * _POLL_MS)
        if self.laundry in ("waiting", "not collected"):
            self.laundry = "collected"
            self.show()

    # ---- timed programs (dryers): vend/timed.py, loaded by a board that sells time
    @staticmethod
    def _timed():
        from washpay.vend import timed as vend_timed

        return vend_timed

    def _room_s(self):
        return self._timed().room_s(self) if self.ends_ms is not None else 0

    def _extend(self):
        self._timed().extend(self)

    # ---- status for the console, the simulator and (later) the network
    def status(self):
        j = self.journal
        return {
            "state": self.state,
            "credit": self.credit,
            "program": self.program["name"],
            "programs": [{"name": p["name"], "price": self.price_of(p)} for p in self.programs],
            "prices_version": self.prices.version,
            "fault": self.fault,
            "faults": self.faults,
            "last_fault": self.last_fault,
            "starts_failed": self.starts_failed,
            "laundry": self.laundry,
            "left_s": self.left_s(),
            "coin_lockout": self.coin_lockout,
            "coin_stuck": self.coin_stuck,
            "coin_storm": self.coin_storm,
            "coin_noise": self.noise,
            "timings": self.timings,
            "inhibit": self.acceptor.inhibited,
            "journal": dict(j.status(), last_type=(j.last() or {}).get("type")),
            "lines": list(self.screen.lines),
        }
