"""Price table: boundaries (midnight, weekday edges, tiers) and properties, under CPython and
the same cases replayed under the real micropython."""

import json
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import micropython_i386, run_micropython

sys.path.insert(0, str(Path(__file__).parent / "shims"))
sys.path.insert(0, str(Path(__file__).parent.parent / "firmware"))

from washpay.vend import prices as P  # noqa: E402
from washpay.vend.pricing import PriceTable, PricingError  # noqa: E402


def seconds_for(tab, program, amount, when, tier=None):
    """What `amount` buys on a timed program of `tab` at `when`: the engine's arithmetic
    (prices.py) at the table's step price."""
    return P.seconds_for(tab.programs[program], tab.price(program, when, tier), amount)


def cost_of(tab, program, seconds, when, tier=None):
    return P.cost_of(tab.programs[program], tab.price(program, when, tier), seconds)

PROGRAMS = [
    {"name": "quick", "price": 250, "minutes": 30},
    {"name": "standard", "price": 350, "minutes": 45},
    {"name": "dry", "mode": "timed", "price": 100, "step_minutes": 10, "max_minutes": 60},
]
TABLE = {
    "version": 3,
    "max_price": 600,
    "utc_offset_min": 60,
    "rules": [
        {"days": "mon-fri", "from": "22:00", "to": "06:00", "percent": -20},
        {"days": "sat,sun", "from": "00:00", "to": "24:00", "percent": 10},
    ],
    "tiers": {
        "staff": {"percent": -50},
        "student": {"percent": -10, "programs": ["quick", "dry"], "overdraft": 300},
    },
}
# 2026-11-23 is a Monday; the site is UTC+1
MON_0000_LOCAL = 1795388400  # 2026-11-23 00:00 local = 2026-11-22 23:00 UTC


def t(day, hh, mm):
    return MON_0000_LOCAL + day * 86400 + hh * 3600 + mm * 60


CASES = [
    # (program, unix time, tier, expected price)
    ("quick", t(0, 12, 0), None, 250),  # Monday noon: base
    ("quick", t(0, 21, 59), None, 250),  # one minute before the night window
    ("quick", t(0, 22, 0), None, 200),  # night window starts (-20 %)
    ("quick", t(1, 5, 59), None, 200),  # still Monday's night window on Tuesday morning
    ("quick", t(1, 6, 0), None, 250),  # window ends
    ("quick", t(4, 23, 0), None, 200),  # Friday night: the rule of the day it starts on
    ("quick", t(5, 0, 30), None, 200),  # Saturday 00:30: Friday's night window wins (first)
    ("quick", t(5, 6, 0), None, 275),  # Saturday: +10 %
    ("quick", t(6, 23, 59), None, 275),  # Sunday 23:59
    ("quick", t(7, 0, 0), None, 250),  # Monday 00:00 again: Sunday night has no night rule
    ("standard", t(0, 12, 0), "staff", 175),
    ("standard", t(5, 12, 0), "staff", 210),  # +10 - 50 = 60 %
    ("quick", t(0, 12, 0), "student", 225),
    ("dry", t(0, 12, 0), None, 100),
]


@pytest.fixture(scope="module")
def table():
    return PriceTable(PROGRAMS, TABLE)


@pytest.mark.parametrize("program,when,tier,expected", CASES)
def test_boundaries_cpython(table, program, when, tier, expected):
    assert table.price(program, when, tier) == expected


def test_boundaries_micropython():
    code = f"""
from washpay.vend.pricing import PriceTable
import json
tab = PriceTable(json.loads({json.dumps(json.dumps(PROGRAMS))}),
                 json.loads({json.dumps(json.dumps(TABLE))}))
for prog, when, tier, _ in json.loads({json.dumps(json.dumps(CASES))}):
    print(tab.price(prog, when, tier))
from washpay.vend.prices import cost_of, seconds_for
step = tab.price("dry", {t(0, 12, 0)})
print(seconds_for(tab.programs["dry"], step, 250), cost_of(tab.programs["dry"], step, 25 * 60))
print(tab.allowed("standard", "student"), tab.allowed("quick", "student"))
print(tab.floor_balance("student"), tab.floor_balance(None))
"""
    out = run_micropython(code)[1].split()
    assert [int(x) for x in out[: len(CASES)]] == [c[3] for c in CASES]
    assert out[len(CASES):] == ["1200", "300", "Not", "for", "this", "card", "None", "-300", "0"]


def test_timed_minutes_and_cost(table):
    noon = t(0, 12, 0)
    assert seconds_for(table, "dry", 99, noon) == 0
    assert seconds_for(table, "dry", 100, noon) == 600
    assert seconds_for(table, "dry", 10_000, noon) == 3600  # capped at max_minutes
    assert cost_of(table, "dry", 1, noon) == 100  # whole steps
    assert cost_of(table, "dry", 20 * 60, noon) == 200
    assert cost_of(table, "dry", 20 * 60 + 1, noon) == 300
    # at night (-20 %) the same money buys more time; a tier discount too
    assert seconds_for(table, "dry", 160, t(0, 23, 0)) == 1200
    assert seconds_for(table, "dry", 180, noon, "student") == 1200


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"rules": [{"from": "25:00"}]}, "between 00:00 and 24:00"),
        ({"rules": [{"from": "10:00", "to": "10:00"}]}, "empty window"),
        ({"rules": [{"days": "fun"}]}, "unknown day"),
        ({"rules": [{"percent": 150}]}, "percentage"),
        ({"max_price": 100}, "max_price"),
        ({"tiers": {"x": {"programs": ["nope"]}}}, "no program"),
        ({"tiers": {"x": {"overdraft": -1}}}, "overdraft"),
        ({"utc_offset_min": 5000}, "utc_offset_min"),
    ],
)
def test_bad_tables_are_refused_with_a_reason(raw, message):
    with pytest.raises(PricingError, match=message):
        PriceTable(PROGRAMS, raw)


rules = st.lists(
    st.fixed_dictionaries(
        {
            "days": st.sampled_from(["mon-sun", "mon-fri", "sat,sun", "fri-mon", "wed"]),
            "from": st.sampled_from(["00:00", "06:00", "12:30", "22:00", "23:59"]),
            "to": st.sampled_from(["24:00", "06:00", "13:00", "00:30", "08:00"]),
            "percent": st.integers(-100, 100),
        }
    ),
    max_size=5,
).map(lambda rs: [r for r in rs if r["from"] != r["to"]])
tiers = st.dictionaries(
    st.sampled_from(["a", "b"]),
    st.fixed_dictionaries({"percent": st.integers(-100, 100)}),
    max_size=2,
)


@settings(max_examples=300, deadline=None)
@given(rules, tiers, st.integers(0, 2**32), st.sampled_from([None, "a", "b"]),
       st.integers(-840, 840))
def test_price_never_negative_nor_above_max(rs, ts, when, tier, offset):
    tab = PriceTable(PROGRAMS, {"rules": rs, "tiers": ts, "max_price": 700,
                                "utc_offset_min": offset})
    for prog in ("quick", "standard", "dry"):
        p = tab.price(prog, when, tier)
        assert 0 <= p <= 700


@settings(max_examples=300, deadline=None)
@given(rules, st.integers(0, 2**32), st.integers(0, 5000), st.integers(0, 5000))
def test_timed_time_monotonic_in_money(rs, when, a, b):
    tab = PriceTable(PROGRAMS, {"rules": rs})
    lo, hi = min(a, b), max(a, b)
    assert seconds_for(tab, "dry", lo, when) <= seconds_for(tab, "dry", hi, when)
    # and paying the cost of the time bought never costs more than the money given
    secs = seconds_for(tab, "dry", hi, when)
    assert 0 <= secs <= 3600 and secs % 600 == 0
    assert cost_of(tab, "dry", secs, when) <= hi or tab.price("dry", when) == 0


@settings(max_examples=300, deadline=None)
@given(rules, st.integers(0, 2**32), st.integers(0, 7200), st.integers(0, 7200),
       st.sampled_from([None, "staff", "student"]))
def test_timed_cost_monotonic_in_time_and_bounded(rs, when, a, b, tier):
    tab = PriceTable(PROGRAMS, dict(TABLE, rules=rs))
    lo, hi = min(a, b), max(a, b)
    c_lo, c_hi = cost_of(tab, "dry", lo, when, tier), cost_of(tab, "dry", hi, when, tier)
    assert 0 <= c_lo <= c_hi
    # never above the table's maximum per step, and what the cost buys covers the time
    step = tab.price("dry", when, tier)
    assert 0 <= step <= TABLE["max_price"]
    if step and hi <= 3600:
        assert seconds_for(tab, "dry", c_hi, when, tier) >= hi


# ---- wrong JSON types (issue 18): always the pricing error, never TypeError/AttributeError
WRONG_TYPES = [
    ({"rules": 0}, "pricing.rules must be a list"),
    ({"rules": "mon"}, "pricing.rules must be a list"),
    ({"rules": {"days": "mon"}}, "pricing.rules must be a list"),
    ({"tiers": 7}, "pricing.tiers must be an object"),
    ({"tiers": [1]}, "pricing.tiers must be an object"),
    ({"tiers": "staff"}, "pricing.tiers must be an object"),
    ({"rules": [{"days": 5}]}, r"rules\[0\].days must be text"),
    ({"rules": [{"days": ["mon"]}]}, r"rules\[0\].days must be text"),
    ({"rules": [{"from": 5}]}, r"rules\[0\].from must be HH:MM"),
    ({"rules": [{"to": {"h": 1}}]}, r"rules\[0\].to must be HH:MM, not a dict"),
    ({"tiers": {"x": {"programs": 5}}}, "tiers.x.programs must be a list"),
    ({"tiers": {"x": {"programs": "quick"}}}, "tiers.x.programs must be a list"),
    ({"tiers": {"x": {"programs": {"quick": 1}}}}, "tiers.x.programs must be a list"),
    ({"tiers": {"x": {"programs": [["quick"]]}}}, "tiers.x: no program a list"),
    ({"tiers": {"x": {"programs": [{}]}}}, "tiers.x: no program a dict"),
]


@pytest.mark.parametrize("raw,message", WRONG_TYPES)
def test_wrong_json_types_are_the_pricing_error_cpython(raw, message):
    with pytest.raises(PricingError, match=message):
        PriceTable(PROGRAMS, raw)


def test_wrong_json_types_are_the_pricing_error_micropython():
    # the issue's examples are hex of what MicroPython's (lenient) JSON reader takes
    issue = ["7b2272756c6573223022227d", "7b222231227469657273223722227b22227d7d"]
    deep = '{"rules": [{"from": ' + "[" * 1300 + "1" + "]" * 1300 + "}]}"
    code = f"""
import json
from binascii import unhexlify
from washpay.vend.pricing import PriceTable, PricingError
progs = json.loads({json.dumps(json.dumps(PROGRAMS))})
raws = [json.loads(unhexlify(h)) for h in {issue!r}]
raws += [json.loads(s) for s in json.loads({json.dumps(json.dumps([
    json.dumps(r) for r, _ in WRONG_TYPES]))})]
raws.append(json.loads({deep!r}))
for raw in raws:
    try:
        PriceTable(progs, raw)
        print("RESULT accepted")
    except PricingError as e:
        print("RESULT", str(e))
    except Exception as e:
        print("RESULT crash", type(e).__name__)
"""
    for interpreter in [None] + [x for x in (micropython_i386(),) if x]:
        rc, stdout, _ = run_micropython(code, interpreter=interpreter)
        got = [x[7:] for x in stdout.splitlines() if x.startswith("RESULT ")]
        assert got[:2] == ["pricing.rules must be a list", "pricing.tiers must be an object"]
        for (raw, message), line in zip(WRONG_TYPES, got[2:-1], strict=True):
            assert re.search(message, line), (raw, line)
        assert got[-1] == "pricing.rules[0].from must be HH:MM, not a list"
        assert len(got) == len(WRONG_TYPES) + 3


def test_keys_that_are_not_text_are_refused_micropython():
    # MicroPython's JSON reads {14: "days"} and {null: 1}: found by `make fuzz` on the
    # 32-bit interpreter (TypeError: 'int' object isn't subscriptable)
    texts = ['{"tiers": {"t0": {"percent": -58}, 14: "days"}}', '{"tiers": {null: {}}}']
    code = f"""
import json
from washpay.vend.pricing import PriceTable, PricingError
progs = json.loads({json.dumps(json.dumps(PROGRAMS))})
for text in {texts!r}:
    try:
        PriceTable(progs, json.loads(text))
        print("RESULT accepted")
    except PricingError as e:
        print("RESULT", str(e))
    except Exception as e:
        print("RESULT crash", type(e).__name__)
"""
    for interpreter in [None] + [x for x in (micropython_i386(),) if x]:
        out = run_micropython(code, interpreter=interpreter)[1]
        assert [x[7:] for x in out.splitlines() if x.startswith("RESULT ")] == [
            "pricing.tiers: a tier's name is text, not 14",
            "pricing.tiers: a tier's name is text, not null"]
