"""CH-926-style coin acceptor: samples the hardware pulse counter and drives the inhibit line.

The board hands over a pulse counter that counts pulse starts in hardware (machine.Counter
or esp32.PCNT, anything with .value()), the pulse input pin and the inhibit output pin. The
sampling task reads (time, count, level) every `sample_ms` and feeds a PulseTrainDecoder;
every result it returns is awaited through `on_result` before sampling goes on, so that the
caller can make the coin durable before it is shown as credit. The counter keeps counting
while the caller is busy, so no pulse start is lost. No payment logic here.
"""

import asyncio
import time

from micropython import const

# A rising edge between reading the counter and the pin would pair a new level with an old
# count; reading the counter on both sides of the pin and retrying makes the three agree.
_READ_TRIES = const(4)
# The running clock given to the decoder is rebased before it leaves the small-int range
# (2**30 on a 32-bit port), so that sampling never allocates.
_REBASE_MS = const(1 << 28)
_SAMPLES_MASK = const(0x3FFFFFFF)
_LONG_PAUSE_MS = const(1 << 20)
# Noise on the line (a motor, a relay, a bad ground): more rises a second than any acceptor
# sends (a train of 50 ms pulses and gaps is 10 a second, the fastest CH-926 setting not
# twice that) and faster than the decoder can tell glitches from pulses. Judged over windows
# of _NOISE_WINDOW_MS; over when no edge came for _QUIET_MS, so that a storm with short
# pauses stays one storm.
_NOISE_HZ = const(100)
_NOISE_WINDOW_MS = const(250)
_QUIET_MS = const(1000)


class CoinAcceptor:
    def __init__(self, counter, pulse_pin, inhibit_pin, decoder, active_low=True,
                 inhibit_active_high=True, sample_ms=5, stuck_ms=0, inhibit_grace_ms=0):
        self.counter = counter
        self.pulse_pin = pulse_pin
        self.inhibit_pin = inhibit_pin
        self.decoder = decoder
        self._active = 0 if active_low else 1
        self._inhibit_on = 1 if inhibit_active_high else 0
        self.sample_ms = sample_ms
        self.samples = 0  # samples taken (wraps): a watchdog can see the task is alive
        self._task = None
        self.count = 0  # last sample, for status
        self.level = 0
        # anomalies, reported to on_result beside the decoder's results (0 ms: not watched):
        #   ("stuck", ms)      the line has been active for stuck_ms: no coin pulse is that long
        #   ("released", 0)    a stuck line went idle again
        #   ("inhibited", n)   n pulses counted while the inhibit line had been asserted for
        #                      inhibit_grace_ms (a coin already in flight may finish): once
        #                      per inhibit period
        #   ("storm", n, ms)   n rises in ms: noise, far more than any coin train; once per storm
        #   ("calm", 0)        no edge for _QUIET_MS after a storm
        self.stuck_ms = stuck_ms
        self.inhibit_grace_ms = inhibit_grace_ms
        self.stuck = False
        self._active_t = None
        self._inhibit_t = 0
        self._inhibit_flagged = False
        self._seen_count = 0
        self.noisy = False
        self._win_t = time.ticks_ms()  # the noise window: its start, count, last edge
        self._win_c = counter.value()
        self._win_inh = 0  # pulses while inhibited in this window, and in the one before
        self._inh_held = 0
        self._edge_t = 0
        # The decoder's clock runs from construction, across any pause of the task: time that
        # passed must never look shorter than it was.
        self._now = 0
        self._ticks = time.ticks_ms()
        # Refuse coins until the owner says otherwise: nobody is decoding them yet.
        self.inhibit(True)

    def inhibit(self, on):
        """Assert (True: the acceptor refuses coins) or release the inhibit line."""
        if on and not getattr(self, "_inhibited", False):
            self._inhibit_t = time.ticks_ms()
        if not on:
            self._inhibit_flagged = False
        self._inhibited = bool(on)
        self.inhibit_pin.value(self._inhibit_on if on else 1 - self._inhibit_on)

    @property
    def inhibited(self):
        return self._inhibited

    def sample(self):
        """Read one consistent pair into `count` and `level` (1 while a pulse is on)."""
        c = self.counter.value()
        level = 0
        for _ in range(_READ_TRIES):
            level = self.pulse_pin.value()
            c2 = self.counter.value()
            if c2 == c:
                break
            c = c2
        self.count = c
        self.level = 1 if level == self._active else 0

    async def run(self, on_result):
        """The sampling task: runs until cancelled (deinit)."""
        self._task = asyncio.current_task()
        decoder = self.decoder
        while True:
            t = time.ticks_ms()
            dt = time.ticks_diff(t, self._ticks)
            self._ticks = t
            if dt < 0:
                # ticks wrapped during a pause of days: say "long" so that any edges in it
                # are reported as unverifiable rather than squeezed into a short interval
                dt = _LONG_PAUSE_MS
            self._now += dt
            if self._now >= _REBASE_MS:
                decoder.rebase(self._now)
                self._now = 0
            self.sample()
            self.samples = (self.samples + 1) & _SAMPLES_MASK
            res = decoder.feed(self._now, self.count, self.level)
            if res is not None:
                await on_result(res)
            await self._anomalies(t, on_result)
            await asyncio.sleep_ms(self.sample_ms)

    async def _anomalies(self, t, on_result):
        n = self.count - self._seen_count
        self._seen_count = self.count
        if n and self.inhibit_grace_ms and self._inhibited and not self._inhibit_flagged and \
                time.ticks_diff(t, self._inhibit_t) >= self.inhibit_grace_ms:
            self._win_inh += n
        w = time.ticks_diff(t, self._win_t)
        if w >= _NOISE_WINDOW_MS:
            await self._noise(t, w, on_result)
        if not self.stuck_ms:
            return
        if not self.level:
            self._active_t = None
            if self.stuck:
                self.stuck = False
                await on_result(("released", 0))
        elif self._active_t is None:
            self._active_t = t
        elif not self.stuck and time.ticks_diff(t, self._active_t) >= self.stuck_ms:
            self.stuck = True
            await on_result(("stuck", self.stuck_ms))

    async def _noise(self, t, w, on_result):
        # One window ends: a storm starts or ends, or pulses while inhibited are reported.
        # Those wait one more window: a storm that began at the end of this one is seen in
        # the next, and explains them (one fault per storm, not two).
        n = self.count - self._win_c
        inh = self._win_inh
        held = self._inh_held
        self._win_t = t
        self._win_c = self.count
        self._win_inh = 0
        self._inh_held = 0
        if n:
            self._edge_t = t
        if self.noisy:
            if not n and not self.level and time.ticks_diff(t, self._edge_t) >= _QUIET_MS:
                self.noisy = False
                await on_result(("calm", 0))
        elif n * 1000 > _NOISE_HZ * w:
            self.noisy = True
            await on_result(("storm", n, w))
        elif held:
            self._inhibit_flagged = True
            await on_result(("inhibited", held + inh))
        else:
            self._inh_held = inh

    def deinit(self):
        """Stop sampling and refuse coins: nobody would decode them."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.inhibit(True)
