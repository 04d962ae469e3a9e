"""The simulated coin line (boards/sim/simhw.py): what the pulse counter and the pin read is
the union of the acceptor's pulses and the noise on the line, edge for edge, at O(1) per
read however long the line has been busy. CPython here for the many random cases; the
device tests read the same model from the firmware under micropython."""

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "boards" / "sim"))
import simhw  # noqa: E402

CFG = {"pulses": {"50": 1, "100": 2, "200": 4}, "pulse_ms": 50, "gap_ms": 50}


def brute(intervals, t):
    """(rises, falls, active) of the union of `intervals` up to t, the slow obvious way."""
    merged = []
    for s, e in sorted(intervals):
        if s > t:
            break
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    rises = len(merged)
    falls = sum(1 for s, e in merged if e <= t)
    return rises, falls, bool(merged) and merged[-1][1] > t


@pytest.fixture
def clock(monkeypatch):
    now = [1_000_000_000]
    monkeypatch.setattr(simhw, "now_us", lambda: now[0])
    return now


@pytest.mark.parametrize("seed", range(20))
def test_counts_are_the_union_of_pulses_and_noise(clock, seed):
    rng = random.Random(seed)
    m = simhw.CoinAcceptorModel(CFG)
    t0 = clock[0]
    m.insert(200, count=3)
    m.storm(rng.choice((50, 400, 1000, 3000)), rng.uniform(0.1, 1.5))
    m.glitch(rng.randint(1, 30))
    # everything the model will put on the line, for the brute-force answer
    shadow = simhw.CoinAcceptorModel(CFG)
    shadow.pending = [list(iv) for iv in m.pending]
    shadow.noise = [simhw.Noise(n.t0, n.period, n.width, n.left, n.jitter) for n in m.noise]
    intervals = [tuple(iv) for iv in shadow.pending]
    for n in shadow.noise:
        while (g := n.take()) is not None:
            intervals.append(g)
    t = t0
    while t < t0 + 3_000_000:
        t += rng.randint(1, 7000)
        assert (m.starts(t), m.ends(t), m.active(t)) == brute(intervals, t)


def test_a_read_costs_what_started_since_the_last_one(clock):
    m = simhw.CoinAcceptorModel(CFG)
    m.glitch(100_000)  # an hour of phantom pulses: generated as time reaches them
    assert len(m.pending) == 0 and len(m.noise) == 1
    t = clock[0] + 20_000 + 37_000 * 50_000
    assert m.starts(t) == 50_001 and m.ends(t) == 50_000
    assert len(m.pending) == 0 and len(m.noise) == 1


def test_a_dropout_inside_a_pulse_is_one_more_edge(clock):
    m = simhw.CoinAcceptorModel(CFG)
    m.insert(100)  # two pulses
    m.glitch(1, inside=True)
    t = clock[0] + 2_000_000
    assert (m.starts(t), m.ends(t)) == (3, 3)


def test_noise_that_does_not_fit_its_period_is_refused(clock):
    m = simhw.CoinAcceptorModel(CFG)
    with pytest.raises(ValueError, match="does not fit"):
        m.storm(1000, 1, width_us=1000)


@pytest.mark.parametrize(("words", "says"), [
    (["--rate", "abc", "--seconds", "1"], "--rate takes a number, not 'abc'"),
    (["--rate", "1000"], "usage: washpay sim ctl glitch --rate <Hz> --seconds <s>"),
    (["--rate", "1000", "--seconds"], "usage: washpay sim ctl glitch --rate"),
    (["--rate", "1000", "--seconds", "1", "--loud"], "usage: washpay sim ctl glitch --rate"),
])
def test_bad_noise_words_say_what_to_type(words, says, tmp_path, capsys):
    from host_tools.cli import main

    # refused before any board is asked: there is none in tmp_path
    assert main(["sim", "ctl", "--state", str(tmp_path), "glitch", *words]) == 2
    err = capsys.readouterr().err
    assert err.startswith("washpay sim ctl: " + says) and "Traceback" not in err


@pytest.mark.parametrize(("msg", "says"), [
    ({"rate": 0, "seconds": 1}, "noise rate must be 1 to 20000 Hz, not 0"),
    ({"rate": 50_000, "seconds": 1}, "noise rate must be 1 to 20000 Hz"),
    ({"rate": 1000, "seconds": 0}, "noise lasts more than 0"),
    ({"rate": 1000, "seconds": 1, "width_us": 2000}, "a glitch of 2000 us does not fit"),
])
def test_the_board_refuses_noise_it_cannot_make(msg, says, clock):
    import json

    board = json.loads((Path(simhw.__file__).parent / "board.json").read_text())
    # the coin line and the washer only: no display, reader or scanner models
    bench = simhw.Bench({k: board[k] for k in ("coin", "washer", "sim")}
                        | {"pins": {"coin_pulse": 34, "coin_inhibit": 25}})
    reply = bench.handle({"op": "glitch", **msg})
    assert reply["error"].startswith(says)
    assert bench.acceptor.noise == []
