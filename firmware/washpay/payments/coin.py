"""Coin pulse-train decoder: turns pulse-counter samples into coin values, never a wrong one.

A CH-926-style acceptor reports each coin as a train of N pulses (N set per coin type). The
hardware pulse counter counts every pulse start exactly, even while Python is busy; a task
samples (time, count, line level) every few ms. This module is pure logic: no `machine`,
runs under MicroPython and CPython. `feed()` allocates nothing except when it returns a
result (once per train).

Results (tuples, first item says which):
    (COIN, value, pulses)      a good coin: `value` from the coin table, in minor units
    (REJECT, reason, pulses)   a train that must not be credited; `reason` is for people,
                               `pulses` the real pulses identified (0 if none could be)
    (NOISE, glitches)          only glitches, no coin: nothing to credit or journal

What the decoder relies on (the hardware contract; min/max = nominal -/+ tolerance):
    C1  a pulse holds the line active for min_width..max_width ms; pulses of one coin are
        min_gap..max_gap ms apart; the next coin's train starts >= end_ms after the last
        pulse ended;
    C2  a glitch (phantom pulse, or a short dropout inside a pulse) inverts the line for
        less than glitch_ms, and the counter counts its rising edge like any other.

How: the counter's edge count is the truth about how many times the line rose. A sample is
*confirmed* when the line was seen at the same level, with no edge counted, over at least
glitch_ms: by C2 no glitch lasts that long, so the line's level there is real. Between two
consecutive confirmed samples (a *stretch*) the levels at both ends and the edge count say
what happened: 0->1 needs exactly one pulse start, anything else none. Edges beyond that are
glitches, provided the stretch is no longer than max_sample_gap_ms (checked against C1 at
construction: too short to hide a whole pulse or gap, so several edges in it can be at most
one real pulse). A stretch needing no surplus edges is exact however long it is (a stall
with a steady line loses nothing); a longer stretch with surplus edges makes the train
"unverifiable". Widths and gaps are measured between confirmed samples as [lo, hi] bounds
and a train is rejected only when a bound proves the contract broken, so sampling jitter
never rejects a good coin.

Rules, in the order they are applied to a train:
    - a stretch whose far end is active but which has no counted edge: counter and line
      disagree (wiring, polarity) -> reject;
    - surplus edges in a stretch longer than max_sample_gap_ms -> reject "unverifiable";
    - a train starting less than end_ms after start-up may have begun before -> reject;
    - a pulse shorter than min_width or longer than max_width (for certain) -> reject;
    - a gap shorter than min_gap -> reject. A gap surely longer than max_gap but surely
      shorter than end_ms breaks C1: a stretched train or a second coin inserted too soon,
      and no rule tells these apart; splitting would credit e.g. two 2-pulse coins for one
      stretched 4-pulse coin, so the whole run is rejected instead. A gap that may be either
      an inner gap or a train boundary (a long stall) -> reject "unverifiable";
    - end of train: line inactive for end_ms (for certain) after the last pulse;
    - a pulse count not in the coin table -> reject "unknown train: N pulses".
Under C1 and C2 a credited train therefore has its true pulse count; when they do not hold
the checks above reject rather than guess. Status counters: glitches, coins, rejected, noise.
"""

from micropython import const

COIN = "coin"
REJECT = "reject"
NOISE = "noise"

# why a train is rejected; the first reason found wins
_OK = const(0)
_NO_EDGE = const(1)
_UNCLASSIFIED = const(2)
_STARTUP = const(3)
_SHORT_PULSE = const(4)
_LONG_PULSE = const(5)
_SHORT_GAP = const(6)
_LONG_GAP = const(7)
_AMBIGUOUS_GAP = const(8)


class PulseTrainDecoder:
    """Decodes one acceptor's samples; see the module docstring for the rules.

    coin_table: {pulses: value}. pulse_ms, gap_ms, tolerance_pct: the acceptor's pulse
    width and gap (switch setting) and how far they may stray. end_ms: quiet time that ends
    a train. max_sample_gap_ms: longest stretch in which surplus edges are still classified
    as glitches. glitch_ms: longer than any glitch (C2); real glitches are us to a few ms.
    After a result, first_ms/last_ms give the train's first and last active sample time.
    """

    def __init__(self, coin_table, pulse_ms=50, gap_ms=50, end_ms=200, tolerance_pct=30,
                 max_sample_gap_ms=20, glitch_ms=4):
        self.coin_table = {int(n): int(v) for n, v in coin_table.items()}
        self.w_min = pulse_ms * (100 - tolerance_pct) // 100
        self.w_max = -(-pulse_ms * (100 + tolerance_pct) // 100)
        self.g_min = gap_ms * (100 - tolerance_pct) // 100
        self.g_max = -(-gap_ms * (100 + tolerance_pct) // 100)
        self.end_ms = end_ms
        self.max_sample_gap_ms = max_sample_gap_ms
        self.glitch_ms = glitch_ms
        # A surplus-edge stretch must be too short to hide a pulse or a gap even when
        # glitches touching its ends shorten them by glitch_ms each.
        if max_sample_gap_ms + 2 * glitch_ms > min(self.w_min, self.g_min):
            raise ValueError("max_sample_gap_ms + 2*glitch_ms must not exceed the shortest "
                             "pulse or gap (%d ms)" % min(self.w_min, self.g_min))
        if self.g_max >= end_ms:
            raise ValueError("end_ms must exceed the longest gap between pulses")
        self.glitches = 0  # glitch edges seen, all time
        self.coins = 0
        self.rejected = 0
        self.noise = 0
        self.first_ms = 0  # first and last active time of the train behind the last result
        self.last_ms = 0
        # Create every attribute now: adding one inside feed() would grow the instance dict.
        self._start(0, 0, 0)
        self._started = False

    # ---- sampling

    def feed(self, t, count, level):
        """One sample: time (ms, increasing), cumulative edge count, line level (1 = active).

        Returns None, or a result tuple when a train has ended.
        """
        level = 1 if level else 0
        if not self._started:
            self._start(t, count, level)
            return None
        res = None
        if count != self._pc or level != self._pl:
            # the line moved between the two samples: a new steady span may start here
            self._st = t
            self._sc = count
            self._sok = False
        elif not self._sok and t - self._st >= self.glitch_ms:
            self._sok = True
            res = self._stretch(self._st, self._sc, level)
        if self._sok:
            self._at = t
            self._ac = count
            self._al = level
            if (res is None and level == 0 and self._open and not self._in_pulse
                    and t - self._quiet >= self.end_ms):
                res = self._close()
        self._pc = count
        self._pl = level
        return res

    def rebase(self, dt):
        """Subtract `dt` from every stored time, so that the caller's clock can restart
        near 0 and stay a small int (no heap allocation) on a board that runs for months."""
        if not self._started:
            return
        self._st -= dt
        self._at -= dt
        self._quiet -= dt
        self._r_lo -= dt
        self._r_hi -= dt
        self._f_lo -= dt
        self._f_hi -= dt
        self._first -= dt
        self._last -= dt
        self.first_ms -= dt
        self.last_ms -= dt

    @property
    def idle(self):
        """True when no train is in progress (false for end_ms after start-up)."""
        return not self._open

    # ---- internals

    def _start(self, t, count, level):
        self._started = True
        self._st = self._at = t  # start of the current steady span; last confirmed sample
        self._pc = self._sc = self._ac = count
        self._pl = self._al = level
        self._sok = False
        self._r_lo = self._r_hi = self._f_lo = self._f_hi = self._first = self._last = t
        # Start-up is a train of its own: a coin whose train began before the first sample
        # would be short of pulses, so anything real before end_ms of quiet is rejected.
        self._open_train(t)
        self._boot = True
        if level:
            self._flag(_STARTUP, 0, 0)
            self._pulses = 1
            self._in_pulse = True

    def _open_train(self, t):
        self._open = True
        self._boot = False
        self._pulses = 0
        self._tg = 0  # glitch edges in this train
        self._why = _OK
        self._wa = 0
        self._wb = 0
        self._in_pulse = False
        self._has_fall = False
        self._quiet = t
        self._first = t
        self._last = t

    def _flag(self, why, a, b):
        if self._why == _OK:
            self._why = why
            self._wa = a
            self._wb = b

    def _stretch(self, tb, cb, lb):
        # From the last confirmed sample (anchor) to the first sample of a newly confirmed
        # steady span: decide which transitions and glitches happened in between.
        ta = self._at
        la = self._al
        edges = cb - self._ac
        rise = 1 if lb > la else 0
        res = None
        if edges < rise or (edges > rise and tb - ta > self.max_sample_gap_ms):
            if not self._open:
                self._open_train(ta)
            if edges < rise:
                self._flag(_NO_EDGE, 0, 0)
            else:
                self._flag(_UNCLASSIFIED, edges, tb - ta)
            self._pulses += rise
            if lb:
                self._in_pulse = True
                self._r_lo = ta
                self._r_hi = tb
            else:
                self._in_pulse = False
                self._quiet = tb
            return None
        surplus = edges - rise
        if surplus:
            self.glitches += surplus
            if not self._open:
                self._open_train(ta)
            self._tg += surplus
            if self._pulses == 0 and not self._boot and not self._in_pulse:
                self._quiet = tb  # a burst of noise is reported once, after it stops
        if rise:
            res = self._rise(ta, tb)
        elif la > lb:
            self._fall(ta, tb)
        return res

    def _rise(self, lo, hi):
        res = None
        if not self._open:
            self._open_train(lo)
        elif self._has_fall and self._why == _OK:
            g_lo = lo - self._f_hi
            g_hi = hi - self._f_lo
            if g_hi >= self.end_ms:
                if g_lo > self.g_max:
                    # by C1 only a train boundary is this long: report the train, start anew
                    res = self._close()
                    self._open_train(lo)
                else:
                    self._flag(_AMBIGUOUS_GAP, g_lo, g_hi)
            elif g_lo > self.g_max:
                self._flag(_LONG_GAP, g_lo, 0)
            elif g_hi < self.g_min:
                self._flag(_SHORT_GAP, g_hi, 0)
        if self._boot:
            self._flag(_STARTUP, 0, 0)
        self._pulses += 1
        if self._pulses == 1:
            self._first = hi
        self._in_pulse = True
        self._r_lo = lo
        self._r_hi = hi
        return res

    def _fall(self, lo, hi):
        if not self._in_pulse:
            return
        if self._why == _OK:
            w_hi = hi - self._r_lo
            w_lo = lo - self._r_hi
            if w_hi < self.w_min:
                self._flag(_SHORT_PULSE, w_hi, 0)
            elif w_lo > self.w_max:
                self._flag(_LONG_PULSE, w_lo, 0)
        self._in_pulse = False
        self._has_fall = True
        self._f_lo = lo
        self._f_hi = hi
        self._quiet = hi
        self._last = lo

    def _close(self):
        self._open = False
        self._boot = False
        self.first_ms = self._first
        self.last_ms = self._last
        n = self._pulses
        if self._why != _OK:
            self.rejected += 1
            return (REJECT, self._reason(), n)
        if n == 0:
            if self._tg == 0:
                return None
            self.noise += 1
            return (NOISE, self._tg)
        value = self.coin_table.get(n)
        if value is None:
            self.rejected += 1
            return (REJECT, "unknown train: %d pulses" % n, n)
        self.coins += 1
        return (COIN, value, n)

    def _reason(self):
        why = self._why
        a = self._wa
        if why == _NO_EDGE:
            return "unverifiable: line went active without a counted edge"
        if why == _UNCLASSIFIED:
            return "unverifiable: %d edges in %d ms could not be classified" % (a, self._wb)
        if why == _STARTUP:
            return "train may have begun before start-up"
        if why == _SHORT_PULSE:
            return "pulse too short: at most %d ms (min %d)" % (a, self.w_min)
        if why == _LONG_PULSE:
            return "pulse too long: at least %d ms (max %d)" % (a, self.w_max)
        if why == _SHORT_GAP:
            return "gap too short: at most %d ms (min %d)" % (a, self.g_min)
        if why == _LONG_GAP:
            return "gap between pulses too long: at least %d ms (max %d)" % (a, self.g_max)
        return "unverifiable: %d to %d ms between pulses: one train or two" % (a, self._wb)
