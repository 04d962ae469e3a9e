"""PulseTrainDecoder under CPython: a model of the acceptor, the PCNT and the sampling task,
and properties over it. The one that matters: a coin is credited with its true value or not
at all, whatever the glitches and stalls.

The model (also used by test_coin_micropython.py):
- the acceptor emits, per coin, N pulses of min..max width and gap (uniform within the
  tolerance), trains at least end_ms apart;
- glitches invert the line for 0.1-3 ms anywhere (a glitch inside a pulse is a dropout whose
  end is one more counted edge); the line is the pulses XOR the glitches;
- the counter counts every rising edge of the line at its exact time;
- the sampler reads (t, count, level) at integer ms, 4-6 ms apart, with random stalls.
"""

import bisect
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
for _path in (HERE / "shims", HERE.parent / "firmware"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from washpay.payments.coin import COIN, NOISE, REJECT, PulseTrainDecoder  # noqa: E402

# Every pulse count from 1 to 6 is a coin: a miscount by any amount would credit a wrong
# value instead of being caught by the table, so the properties below have teeth.
TABLE = {1: 10, 2: 20, 3: 50, 4: 100, 5: 200, 6: 500}
W_MIN, W_MAX = 35.0, 65.0  # 50 ms +-30 %
G_MIN, G_MAX = 35.0, 65.0
END_MS = 200
GLITCH_MS = 4  # the decoder's default; model glitches stay below it


@dataclass(frozen=True)
class Train:
    start: float  # first pulse starts
    end: float  # last pulse ends
    pulses: int
    value: int


class Line:
    """The pulse line and its counter: each interval boundary toggles the line."""

    def __init__(self, intervals):
        self.toggles = sorted(x for iv in intervals for x in iv)

    def sample(self, t):
        n = bisect.bisect_right(self.toggles, t)
        return (n + 1) // 2, n % 2  # rising edges so far (odd toggles), level


def coin_pulses(rng, coins, t0, between=(1.0, 300.0), width=(W_MIN, W_MAX), gap=(G_MIN, G_MAX)):
    """Pulse intervals for `coins` (pulse counts) from t0; returns (trains, intervals, t)."""
    trains, intervals = [], []
    t = t0
    for n in coins:
        start = t
        for i in range(n):
            w = rng.uniform(*width)
            intervals.append((t, t + w))
            t += w
            if i < n - 1:
                t += rng.uniform(*gap)
        trains.append(Train(start, t, n, TABLE[n]))
        t += END_MS + rng.uniform(*between)
    return trains, intervals, t


def glitch_intervals(rng, n, t_end, burst=False, spacing=None):
    """n glitches of 0.1-3 ms: uniform over the trace, in one 60 ms burst, or `spacing` apart."""
    out = []
    if spacing is not None:
        # from 1 ms: a glitch under the very first sample looks like a pulse in progress at
        # start-up and is reported as such (test_train_in_progress_at_start_up_is_rejected)
        x = rng.uniform(1, spacing)
        while x < t_end - 20:  # the last ones would still be unconfirmed when the trace ends
            out.append((x, x + rng.uniform(0.1, 3.0)))
            x += spacing + rng.uniform(0, 100)
        return out
    centre = rng.uniform(0, t_end)
    for _ in range(n):
        x = rng.uniform(centre - 30, centre + 30) if burst else rng.uniform(0, t_end)
        out.append((x, x + rng.uniform(0.1, 3.0)))
    return out


def sample_times(rng, t_end, stall_rate=0.0, stall_ms=(5, 300), steps=(4, 5, 5, 5, 6)):
    times, t = [], 0
    while t < t_end:
        times.append(t)
        t += rng.choice(steps)
        if stall_rate and rng.random() < stall_rate:
            t += rng.randint(*stall_ms)  # flash erase, TLS handshake...
    return times


def random_trace(rng, coins, n_glitches=0, burst=False, spacing=None, stall_rate=0.0,
                 steps=(4, 5, 5, 5, 6)):
    """(trains, samples) for a board that starts sampling at t=0."""
    trains, pulses, t = coin_pulses(rng, coins, END_MS + 50 + rng.uniform(0, 100))
    t_end = t + 100
    line = Line(pulses + glitch_intervals(rng, n_glitches, t_end, burst, spacing))
    times = sample_times(rng, t_end, stall_rate, steps=steps)
    return trains, [(t, *line.sample(t)) for t in times]


def decode(samples, table=TABLE, **kw):
    """Feed all samples; returns (decoder, [(result, first_ms, last_ms)])."""
    dec = PulseTrainDecoder(table, **kw)
    out = []
    for t, c, lv in samples:
        res = dec.feed(t, c, lv)
        if res is not None:
            out.append((res, dec.first_ms, dec.last_ms))
    return dec, out


def assert_never_wrong(trains, out, slack=GLITCH_MS):
    """Every credited coin lies within one true train, equals that train's coin, and no
    train is credited twice. Returns how many trains were credited."""
    credited = set()
    for res, first, last in out:
        if res[0] != COIN:
            continue
        hits = [i for i, tr in enumerate(trains) if tr.start - slack <= first <= tr.end + slack]
        assert len(hits) == 1, f"{res} at {first}..{last} is not inside one train: {trains}"
        tr = trains[hits[0]]
        assert last <= tr.end + slack, f"{res} at {first}..{last} runs past {tr}"
        assert (res[1], res[2]) == (tr.value, tr.pulses), f"{res} credited for {tr}"
        assert hits[0] not in credited, f"{tr} credited twice"
        credited.add(hits[0])
    return len(credited)


def coins_of(out):
    return [r for r, _, _ in out if r[0] != NOISE]


coin_lists = st.lists(st.sampled_from(sorted(TABLE)), min_size=1, max_size=4)
rngs = st.randoms(use_true_random=False)


# ---- properties


@settings(max_examples=300, deadline=None)
@given(coins=coin_lists, n_glitches=st.integers(0, 40), burst=st.booleans(),
       stall_rate=st.sampled_from([0.0, 0.005, 0.02, 0.1]), rng=rngs)
def test_never_credits_a_wrong_amount(coins, n_glitches, burst, stall_rate, rng):
    trains, samples = random_trace(rng, coins, n_glitches, burst, stall_rate=stall_rate)
    _, out = decode(samples)
    assert_never_wrong(trains, out)


@settings(max_examples=200, deadline=None)
@given(coins=coin_lists, rng=rngs)
def test_clean_line_credits_every_coin_exactly(coins, rng):
    trains, samples = random_trace(rng, coins)
    dec, out = decode(samples)
    assert [r for r, _, _ in out] == [(COIN, TABLE[n], n) for n in coins]
    assert (dec.coins, dec.rejected, dec.noise, dec.glitches) == (len(coins), 0, 0, 0)


@settings(max_examples=200, deadline=None)
@given(coins=coin_lists, spacing=st.integers(30, 200), rng=rngs,
       steps=st.sampled_from([(4, 5, 5, 5, 6), (1, 2, 3)]))
def test_isolated_glitches_cost_no_coin(coins, spacing, rng, steps):
    # glitches at least 30 ms apart, anywhere (inside pulses, next to edges), no stalls;
    # with 1-3 ms sampling a glitch spans several samples and must still not count
    trains, samples = random_trace(rng, coins, spacing=spacing, steps=steps)
    dec, out = decode(samples)
    assert coins_of(out) == [(COIN, TABLE[n], n) for n in coins]
    assert dec.glitches == samples[-1][1] - sum(coins)  # every other edge was a glitch


def test_never_wrong_across_settings():
    # A seeded sweep over acceptor settings, decoder limits, sampling steps up to
    # max_sample_gap_ms and beyond, glitches up to the decoder's glitch_ms, bursts, stalls.
    rng = random.Random(20261122)
    traces = credited = total = 0
    while traces < 3000:
        pulse = rng.choice((20, 50, 100))
        gap = rng.choice((20, 50, 100)) if rng.random() < 0.3 else pulse
        tol = rng.choice((0, 10, 30, 45))
        glitch = rng.choice((1, 2, 4, 6))
        limit = min(pulse, gap) * (100 - tol) // 100 - 2 * glitch
        if limit < 1:
            continue
        max_gap = rng.randint(max(1, limit // 2), limit)
        end = max(pulse, gap) * 2 + rng.choice((0, 50, 150))
        dec = PulseTrainDecoder(TABLE, pulse, gap, end, tol, max_gap, glitch)
        lo, hi = (100 - tol) / 100, (100 + tol) / 100
        coins = [rng.choice(list(TABLE)) for _ in range(rng.randint(1, 4))]
        trains, pulses, t = [], [], end + rng.uniform(0, 100)
        for n in coins:
            start = t
            for i in range(n):
                w = rng.uniform(pulse * lo, pulse * hi)
                pulses.append((t, t + w))
                t += w + (rng.uniform(gap * lo, gap * hi) if i < n - 1 else 0)
            trains.append(Train(start, t, n, TABLE[n]))
            t += end + rng.uniform(0, 300)
        t_end = t + end + 100
        burst = rng.random() < 0.3
        centre = rng.uniform(0, t_end)
        glitches = []
        for _ in range(rng.randint(0, 50)):
            x = rng.uniform(centre - 40, centre + 40) if burst else rng.uniform(0, t_end)
            glitches.append((x, x + rng.uniform(0.001, glitch * 0.99)))
        line = Line(pulses + glitches)
        step = rng.choice(((1, 3), (4, 6), (1, max_gap), (max_gap, max_gap), (1, 2 * max_gap)))
        stall_rate = rng.choice((0, 0, 0.01, 0.05))
        out, ts = [], 0
        while ts < t_end:
            res = dec.feed(ts, *line.sample(ts))
            if res is not None:
                out.append((res, dec.first_ms, dec.last_ms))
            ts += rng.randint(*step)
            if rng.random() < stall_rate:
                ts += rng.randint(1, 400)
        credited += assert_never_wrong(trains, out, slack=glitch)
        total += len(trains)
        traces += 1
    assert credited > total // 5  # the sweep exercises crediting, not only rejecting


# ---- examples

CLEAN = dict(width=(50, 50), gap=(50, 50))


def trace_of(intervals, t_end, step=5, stalls=(), t0=0):
    """Samples every `step` ms from t0; each stall (at, ms) skips sampling for ms."""
    line = Line(intervals)
    stalls = sorted(stalls)
    out, t = [], t0
    while t < t_end:
        out.append((t, *line.sample(t)))
        t += step
        while stalls and t >= stalls[0][0]:
            t += stalls.pop(0)[1]
    return out


def train(start, n, width=50, gap=50):
    return [(start + i * (width + gap), start + i * (width + gap) + width) for i in range(n)]


@pytest.mark.parametrize("n", sorted(TABLE))
def test_clean_train_for_each_coin(n):
    dec, out = decode(trace_of(train(300.5, n), 1200))
    assert [r for r, _, _ in out] == [(COIN, TABLE[n], n)]
    assert dec.coins == 1 and dec.idle


def test_glitch_noise_is_no_coin():
    # phantom pulses while idle: 0.2-2 ms, some of them caught by a sample
    blips = [(t, t + w) for t, w in ((310.5, 0.2), (330.0, 2.0), (700.2, 1.0), (705.0, 1.5))]
    dec, out = decode(trace_of(blips, 1500))
    assert [r for r, _, _ in out] == [(NOISE, 2), (NOISE, 2)]
    assert (dec.glitches, dec.coins, dec.rejected, dec.noise) == (4, 0, 0, 2)


def test_glitches_inside_pulses_and_gaps_do_not_count():
    pulses = train(300.5, 3)
    # a dropout inside pulse 2 caught by the sample at 420, a blip in gap 1 caught at 370,
    # and one between samples in pulse 3
    glitches = [(419.0, 421.0), (369.5, 370.5), (522.1, 522.9)]
    dec, out = decode(trace_of(pulses + glitches, 1200))
    assert [r for r, _, _ in out] == [(COIN, 50, 3)]
    assert dec.glitches == 3


def test_several_edges_in_one_sample_interval_are_at_most_one_pulse():
    pulses = train(302.5, 2)
    blips = [(300.5, 301.0), (301.5, 302.0), (401.0, 401.5)]  # just before each pulse start
    dec, out = decode(trace_of(pulses + blips, 1000))
    assert [r for r, _, _ in out] == [(COIN, 20, 2)]
    assert dec.glitches == 3


def test_unknown_pulse_count_is_rejected():
    dec, out = decode(trace_of(train(300.5, 3), 1200), table={1: 10, 2: 20, 4: 100})
    assert [r for r, _, _ in out] == [(REJECT, "unknown train: 3 pulses", 3)]
    assert dec.rejected == 1


def test_stall_hiding_pulses_is_rejected_not_miscounted():
    # the loop stalls from inside pulse 1 to inside pulse 3 of a 4-pulse coin: two pulse
    # starts happen unseen, and a 2-pulse coin must not be credited
    samples = trace_of(train(300.5, 4), 1400, stalls=[(325, 200)])
    dec, out = decode(samples)
    (res, _, _), = out
    assert res[0] == REJECT and res[1].startswith("unverifiable: 2 edges in 205 ms")
    assert dec.coins == 0 and dec.rejected == 1


def test_stall_over_a_steady_line_loses_nothing():
    # stalls over a pulse start (one edge, exactly explained), inside a pulse, and over the
    # quiet between coins: the counter proves nothing was missed
    pulses = train(300.5, 2) + train(800.5, 1)
    samples = trace_of(pulses, 1400, stalls=[(380, 40), (460, 30), (560, 200)])
    assert max(b[0] - a[0] for a, b in zip(samples, samples[1:], strict=False)) > 200
    dec, out = decode(samples)
    assert [r for r, _, _ in out] == [(COIN, 20, 2), (COIN, 10, 1)]


def test_gap_too_long_rejects_the_whole_train():
    # pulses 2 and 3 of a 4-pulse coin 120 ms apart: not two 2-pulse coins
    pulses = train(300.5, 2) + train(570.5, 2)
    dec, out = decode(trace_of(pulses, 1400))
    (res, _, _), = out
    assert res[0] == REJECT and res[2] == 4
    assert res[1].startswith("gap between pulses too long")


def test_gap_too_short_is_rejected():
    dec, out = decode(trace_of(train(300.5, 2, gap=20), 1000))
    assert [r[0][:1] + r[0][2:] for r in out] == [(REJECT, 2)]
    assert out[0][0][1].startswith("gap too short")


@pytest.mark.parametrize(("width", "why"), [(100, "pulse too long"), (20, "pulse too short")])
def test_pulse_width_out_of_range_is_rejected(width, why):
    dec, out = decode(trace_of(train(300.5, 2, width=width), 1200))
    (res, _, _), = out
    assert res[0] == REJECT and res[1].startswith(why) and res[2] == 2


@pytest.mark.parametrize("t0", [420, 460])
def test_train_in_progress_at_start_up_is_rejected(t0):
    # sampling starts during pulse 2 of a 4-pulse coin, or in the gap after it: the pulses
    # seen would make a smaller coin
    pulses = train(300.5, 4) + train(1200.5, 2)
    dec, out = decode(trace_of(pulses, 1800, t0=t0))
    assert [r[0] for r, _, _ in out] == [REJECT, COIN]
    assert out[0][0][1] == "train may have begun before start-up"
    assert out[1][0] == (COIN, 20, 2)


def test_line_active_without_a_counted_edge_is_rejected():
    # counter counting the wrong edge, or not wired: the line rises, the count does not
    samples = [(t, 0, 1 if 300 <= t < 350 else 0) for t in range(0, 800, 5)]
    _, out = decode(samples)
    (res, _, _), = out
    assert res[0] == REJECT and "without a counted edge" in res[1]


def test_second_coin_right_after_end_ms_is_its_own_train():
    pulses = train(300.5, 2) + train(300.5 + 150 + END_MS + 1, 1)
    _, out = decode(trace_of(pulses, 1400))
    assert [r for r, _, _ in out] == [(COIN, 20, 2), (COIN, 10, 1)]


def test_rebase_keeps_decoding():
    rng = random.Random(7)
    trains, samples = random_trace(rng, [4, 1, 6, 2], n_glitches=10)
    _, want = decode(samples)
    dec = PulseTrainDecoder(TABLE)
    got, shift = [], 0
    for i, (t, c, lv) in enumerate(samples):
        if i % 97 == 96:  # the driver's clock restarts near 0 now and then
            dec.rebase(t - shift - 3)
            shift = t - 3
        res = dec.feed(t - shift, c, lv)
        if res is not None:
            got.append(res)
    assert got == [r for r, _, _ in want]
    assert any(r[0] == COIN for r in got)


@pytest.mark.parametrize("kw", [dict(max_sample_gap_ms=30), dict(glitch_ms=10), dict(end_ms=60)])
def test_settings_that_cannot_be_decoded_safely_are_refused(kw):
    with pytest.raises(ValueError):
        PulseTrainDecoder(TABLE, **kw)
