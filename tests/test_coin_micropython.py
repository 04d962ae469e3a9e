"""The coin decoder and the CoinAcceptor driver under the real MicroPython interpreter.

Traces come from the hardware model in test_coin_decoder.py; the decoder must give exactly
the results it gives under CPython, allocate nothing per sample, and the driver must sample
a (fake, virtual-time) counter and pin, await each result, and drive the inhibit line.
"""

import random

import pytest
from conftest import run_micropython
from test_coin_decoder import TABLE, Line, PulseTrainDecoder, decode, random_trace, train

# (seed, coins, glitches, burst, stall rate): clean, noisy, bursty and stalling boards
TRACES = [
    (1, [1, 2, 4], 0, False, 0.0),
    (2, [6, 3], 25, False, 0.0),
    (3, [4, 4, 1], 30, True, 0.0),
    (4, [2, 5, 1, 3], 15, False, 0.03),
    (5, [6, 6], 40, False, 0.1),
]


def _expected(samples):
    dec, out = decode(samples)
    lines = [repr(item) for item in out]
    return lines + [f"status {dec.coins} {dec.rejected} {dec.noise} {dec.glitches}"]


def test_decoder_gives_the_same_results_as_cpython(tmp_path):
    paths, want = [], []
    for seed, coins, n_glitches, burst, stall_rate in TRACES:
        _, samples = random_trace(random.Random(seed), coins, n_glitches, burst,
                                  stall_rate=stall_rate)
        path = tmp_path / f"trace{seed}.txt"
        path.write_text("".join(f"{t} {c} {lv}\n" for t, c, lv in samples))
        paths.append(str(path))
        want += [f"trace {seed}", *_expected(samples)]
    kinds = {line.split("'")[1] for line in want if line.startswith("((")}
    assert kinds == {"coin", "reject", "noise"}  # the traces exercise every result
    code = f"""
from washpay.payments.coin import PulseTrainDecoder
for seed, path in zip({[t[0] for t in TRACES]!r}, {paths!r}):
    print('trace', seed)
    d = PulseTrainDecoder({TABLE!r})
    with open(path) as f:
        for line in f:
            t, c, lv = line.split()
            r = d.feed(int(t), int(c), int(lv))
            if r is not None:
                print(repr((r, d.first_ms, d.last_ms)))
    print('status', d.coins, d.rejected, d.noise, d.glitches)
"""
    _, out, _ = run_micropython(code)
    assert out.splitlines() == want


def test_feed_allocates_nothing():
    # A 4-pulse coin with glitches inside pulses, in gaps and next to edges. Every sample
    # before the one that ends the train is fed with the heap locked (an allocation raises
    # MemoryError); the result itself may allocate.
    glitches = [(349.5, 351.0), (369.5, 370.5), (402.0, 402.5), (419.0, 421.0), (522.1, 523.0)]
    line = Line(train(300.5, 4) + glitches)
    samples = [(t, *line.sample(t)) for t in range(0, 1200, 5)]
    dec = PulseTrainDecoder(TABLE)
    ends = [i for i, s in enumerate(samples) if dec.feed(*s) is not None]
    assert len(ends) == 1 and dec.coins == 1 and dec.glitches == 5
    locked = [x for s in samples[: ends[0]] for x in s]
    rest = [x for s in samples[ends[0]:] for x in s]
    code = f"""
import array, micropython
from washpay.payments.coin import PulseTrainDecoder
d = PulseTrainDecoder({TABLE!r})
a = array.array('i', {locked!r})
n = len(a)
i = 0
micropython.heap_lock()
while i < n:
    d.feed(a[i], a[i + 1], a[i + 2])
    i += 3
d.rebase(7)
d.rebase(-7)
micropython.heap_unlock()
b = {rest!r}
print(d.feed(b[0], b[1], b[2]), d.glitches)
"""
    _, out, _ = run_micropython(code)
    assert out.strip() == "('coin', 100, 4) 5"


DRIVER = """
import asyncio
import washpay.drivers.coin_acceptor as ca
from washpay.drivers.coin_acceptor import CoinAcceptor
from washpay.payments.coin import PulseTrainDecoder

TOGGLES = {toggles!r}
ACTIVE_LOW = {active_low!r}
INHIBIT_HIGH = {inhibit_high!r}


class Clock:
    # ticks_ms as on the ESP32 (wraps at 2**30), starting just before the wrap; each read
    # is one sample and advances virtual time 5 ms, so the run does not depend on the host
    PERIOD = 1 << 30

    def __init__(self, start):
        self.now = start

    def ticks_ms(self):
        self.now += 5
        return self.now & (self.PERIOD - 1)

    def ticks_diff(self, a, b):
        half = self.PERIOD >> 1
        return ((a - b + half) & (self.PERIOD - 1)) - half


clock = Clock(Clock.PERIOD - 400)
ca.time = clock
T0 = clock.now


def toggles_until():
    t = clock.now - T0
    n = 0
    for x in TOGGLES:
        if x <= t:
            n += 1
    return n


class Counter:
    def value(self):
        return (toggles_until() + 1) // 2


class PulsePin:
    def value(self):
        active = toggles_until() % 2
        return 1 - active if ACTIVE_LOW else active


class OutPin:
    def __init__(self):
        self.v = None

    def value(self, v):
        self.v = v


inhibit_pin = OutPin()
acc = CoinAcceptor(Counter(), PulsePin(), inhibit_pin, PulseTrainDecoder({table!r}),
                   active_low=ACTIVE_LOW, inhibit_active_high=INHIBIT_HIGH, sample_ms=1)
print('inhibit at start', acc.inhibited, inhibit_pin.v)
acc._now = {start_now!r}  # white box: start near the driver's clock rebase
results = []


async def on_result(r):
    before = acc.samples
    await asyncio.sleep_ms(10)  # e.g. a journal write: sampling must wait for it
    results.append((r, acc.samples - before))


async def main():
    task = asyncio.create_task(acc.run(on_result))
    while len(results) < 2 and clock.now - T0 < 3000:
        await asyncio.sleep_ms(2)
    acc.inhibit(False)
    print('released', acc.inhibited, inhibit_pin.v)
    acc.deinit()
    await asyncio.sleep_ms(5)
    print('results', results)
    print('stopped', task.done(), acc.inhibited, inhibit_pin.v, acc.samples > 100)
    print('clock', acc._now < {start_now!r} or {start_now!r} == 0)


asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("active_low", "inhibit_high", "start_now"),
    [(True, True, 0), (False, False, 0), (True, True, (1 << 28) - 600)],
)
def test_acceptor_samples_decodes_and_awaits_results(active_low, inhibit_high, start_now):
    # a 2-pulse coin with a dropout inside pulse 1, then a 1-pulse coin; the ticks wrap
    # during the first coin
    intervals = train(300.5, 2) + [(319.2, 320.9)] + train(800.5, 1)
    toggles = sorted(x for iv in intervals for x in iv)
    code = DRIVER.format(toggles=toggles, active_low=active_low, inhibit_high=inhibit_high,
                         table=TABLE, start_now=start_now)
    _, out, _ = run_micropython(code, timeout=30)
    on, off = (1, 0) if inhibit_high else (0, 1)
    assert out.splitlines() == [
        f"inhibit at start True {on}",
        f"released False {off}",
        "results [(('coin', 20, 2), 0), (('coin', 10, 1), 0)]",
        f"stopped True True {on} True",
        "clock True",
    ]


def test_sample_pairs_level_and_count_from_the_same_instant():
    # The pulse starts while the pin is being read: the first counter read is from before
    # it, the pin from after. The driver must not report "active" with the old count.
    code = """
from washpay.drivers.coin_acceptor import CoinAcceptor


class Line:
    edges = 0
    reads = 0


class Counter:
    def value(self):
        return Line.edges


class PulsePin:
    def value(self):
        Line.reads += 1
        if Line.reads == 1:
            Line.edges += 1  # the edge lands between the counter and pin reads
        return 0  # active low: the pulse is on


class OutPin:
    def value(self, v):
        pass


acc = CoinAcceptor(Counter(), PulsePin(), OutPin(), None)
acc.sample()
print(acc.count, acc.level)
"""
    _, out, _ = run_micropython(code)
    assert out.split() == ["1", "1"]


STORM = """
import asyncio
import washpay.drivers.coin_acceptor as ca
from washpay.drivers.coin_acceptor import CoinAcceptor
from washpay.payments.coin import PulseTrainDecoder


class Clock:
    # virtual ms: each ticks_ms read is one sample, 5 ms on
    def __init__(self):
        self.now = 0

    def ticks_ms(self):
        self.now += 5
        return self.now

    def ticks_diff(self, a, b):
        return a - b


clock = Clock()
ca.time = clock
S, E = {start}, {end}  # noise at 1 kHz: glitch k of 0.5 ms starts at S + k + 0.2 ms


class Counter:
    def value(self):
        t = clock.now
        return 0 if t < S else min(t - S, E - S)


class PulsePin:
    def value(self):
        return 1  # idle (active low): a sample at a whole ms falls between two glitches


class OutPin:
    def value(self, v):
        pass


acc = CoinAcceptor(Counter(), PulsePin(), OutPin(), PulseTrainDecoder({table!r}),
                   sample_ms=1, stuck_ms=1000, inhibit_grace_ms=100)
results = []


async def on_result(r):
    results.append((clock.now, r))


async def main():
    if {release}:
        acc.inhibit(False)
    asyncio.create_task(acc.run(on_result))
    while clock.now < E + 3000:
        await asyncio.sleep_ms(2)
    acc.deinit()
    for t, r in results:
        print(t, r[0], r[1])


asyncio.run(main())
"""


@pytest.mark.parametrize("release", [True, False])
def test_a_storm_on_the_line_is_reported_once_and_its_end_too(release):
    # 2 s of 1 kHz noise: the driver reports the storm within a noise window, the decoder
    # the one train it could not classify, and the driver the calm a second after the last
    # edge. Inhibited all along (release False), the noise is no "pulses while inhibited".
    code = STORM.format(start=1000, end=3000, table=TABLE, release=release)
    _, out, _ = run_micropython(code, timeout=60)
    rows = [line.split(" ", 2) for line in out.splitlines()]
    assert [r[1] for r in rows] == ["storm", "reject", "calm"], out
    (t_storm, _, rises), (t_reject, _, why), (t_calm, _, zero) = rows
    assert 1000 < int(t_storm) <= 1000 + 2 * 250 and int(rises) > 25
    assert why.startswith("unverifiable: ") and 3000 < int(t_reject) < int(t_calm)
    assert 3000 + 1000 <= int(t_calm) <= 3000 + 1000 + 2 * 250 and zero == "0"
