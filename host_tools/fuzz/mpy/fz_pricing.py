# Price tables (pricing.py PriceTable): valid tables must be taken and price within
# [0, max_price]; near misses (a value of any type anywhere, a key more or less, the JSON
# text mutated) must be taken or refused with PricingError and a short message; anything
# else (TypeError, AttributeError, RuntimeError from a repr) is a finding.
import json

from fzlib import below, chance, mutate, pick, rnd, tweak
from washpay.vend.pricing import PriceTable, PricingError

STATS = {"valid": 0, "tweaked": 0, "text": 0, "not_json": 0, "refused": 0}
PROGRAMS = [{"name": "quick", "price": 250, "minutes": 30},
            {"name": "standard", "price": 350, "minutes": 45},
            {"name": "dry", "mode": "timed", "price": 100, "step_minutes": 10,
             "max_minutes": 60}]
NAMES = [p["name"] for p in PROGRAMS]
KEYS = ("version", "max_price", "utc_offset_min", "rules", "tiers", "days", "from", "to",
        "percent", "programs", "overdraft", "min_balance")
DAYS = ("mon", "sun", "mon-fri", "fri-mon", "sat,sun", "tue,thu-sat")


def _hhmm():
    return f"{below(24):02d}:{below(60):02d}" if chance(8) else pick(
        ("00:00", "06:00", "22:00", "24:00", "12:30"))


def valid():
    t = {"version": below(100)}
    if chance(2):
        t["max_price"] = 350 + below(5000)
    if chance(2):
        t["utc_offset_min"] = below(1681) - 840
    rules = []
    for _ in range(below(4)):
        r = {"days": pick(DAYS), "from": _hhmm(), "to": _hhmm(), "percent": below(201) - 100}
        if r["from"] != r["to"] and not (r["from"] in ("00:00", "24:00")
                                          and r["to"] in ("00:00", "24:00")):
            rules.append(r)
    if rules or chance(2):
        t["rules"] = rules
    tiers = {}
    for i in range(below(3)):
        tiers["t" + str(i)] = {"percent": below(201) - 100, "overdraft": below(1000),
                               "min_balance": below(1000)}
        if chance(2):
            tiers["t" + str(i)]["programs"] = [pick(NAMES) for _ in range(1 + below(2))]
    if tiers or chance(2):
        t["tiers"] = tiers
    return t


def _check(found, raw, text, must_take):
    """`text`: the input as given, or None: json.dumps(raw) when there is a finding."""
    try:
        tab = PriceTable(PROGRAMS, raw)
    except PricingError as e:
        STATS["refused"] += 1
        if must_take:
            found.add("valid refused", text or _text(raw), str(e))
        elif len(str(e)) > 160:
            found.add("long message", text or _text(raw), str(e)[:100])
        return
    except Exception as e:  # noqa: BLE001
        found.add("crash " + type(e).__name__, text or _text(raw), repr(e)[:100])
        return
    try:
        when = rnd(32)
        for p in NAMES:
            for tier in (None, "t0", "t1", "nosuch"):
                price = tab.price(p, when, tier)
                if not 0 <= price <= tab.max_price:
                    found.add("price out of range", text or _text(raw), price)
    except Exception as e:  # noqa: BLE001
        found.add("taken, then " + type(e).__name__, text or _text(raw), repr(e)[:100])


def _text(raw):
    try:
        return json.dumps(raw)
    except RuntimeError:  # nested deeper than json.dumps goes: shown by its shape
        return "(nested deeper than json.dumps goes)"


def run(req, count, found):
    for _ in range(count):
        mode = below(8)
        raw = valid()
        if mode < 2:
            STATS["valid"] += 1
            _check(found, raw, None, True)
        elif mode < 6:
            STATS["tweaked"] += 1
            for _ in range(1 + below(3)):
                tweak(raw, KEYS)
            _check(found, raw, None, False)
        else:
            STATS["text"] += 1
            text = mutate(json.dumps(raw).encode())
            try:
                raw = json.loads(text)
            except ValueError:
                STATS["not_json"] += 1
                continue
            _check(found, raw, text, False)
    return count
