# config.json (config.py validate, and load on the file itself): valid configs must be
# taken; near misses (a value of any type anywhere, nested hundreds deep, a key more or
# less, the JSON text mutated) must be taken or refused with ConfigError and a short message
# naming the field; load() must never raise, whatever the file holds.
import json

from fzlib import below, chance, mutate, name, pick, tweak
from washpay import config

STATS = {"valid": 0, "tweaked": 0, "text": 0, "not_json": 0, "refused": 0, "files": 0}
KEYS = tuple(config.DEFAULTS) + ("table", "pulse_ms", "capacity", "reserve", "warn", "batch",
                                 "poll_ms", "reject_burst", "name", "price", "mode",
                                 "step_minutes", "max_minutes", "rules", "tiers")


def valid():
    c = {}
    if chance(2):
        c["device_id"] = name(20)
    if chance(2):
        c["currency"] = pick(("EUR", "USD", "CHF", "JPY"))
    if chance(2):
        c["decimals"] = below(4)
    progs = []
    for i in range(1 + below(4)):
        p = {"name": "p" + str(i) + name(7), "price": 1 + below(2000)}
        if chance(4):
            p.update({"mode": "timed", "step_minutes": 1 + below(30), "max_minutes": 60})
        progs.append(p)
    c["programs"] = progs
    c["max_credit"] = 2000 + below(100000)
    if chance(2):
        c["coins"] = {"table": {str(1 + below(50)): 1 + below(500)}, "end_ms": 50 + below(1950)}
    if chance(2):
        c["sync"] = {"keepalive_s": 2 + below(599), "batch": 1 + below(32)}
    if chance(2):
        c["journal"] = {"capacity": 1000, "warn": 100 + below(900), "reserve": 8 + below(92)}
    if chance(2):
        c["risk"] = {"reject_burst": below(101), "velocity": below(1001)}
    if chance(2):
        c["broker"] = pick(("", "mqtt://h", "mqtts://broker.example:8883"))
    if chance(3):
        c["pricing"] = {"version": below(9), "tiers": {"staff": {"percent": -50}}}
    return c


def _text(raw):
    try:
        return json.dumps(raw)
    except RuntimeError:
        return "(nested deeper than json.dumps goes)"


def _check(found, raw, text, must_take):
    try:
        config.validate(raw)
        if not must_take:
            return
    except config.ConfigError as e:
        STATS["refused"] += 1
        if must_take:
            found.add("valid refused", text or _text(raw), str(e))
        elif len(str(e)) > 160:
            found.add("long message", text or _text(raw), str(e)[:100])
    except Exception as e:  # noqa: BLE001
        found.add("crash " + type(e).__name__, text or _text(raw), repr(e)[:100])


def run(req, count, found):
    path = req["dir"] + "/config.json"
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
            if chance(16):  # the file as the board reads it at boot: load() never raises
                STATS["files"] += 1
                with open(path, "wb") as f:
                    f.write(text)
                try:
                    cfg, err = config.load(path)
                    if err is not None and len(err) > 160:
                        found.add("long message", text, err[:100])
                except Exception as e:  # noqa: BLE001
                    found.add("load raised " + type(e).__name__, text, repr(e)[:100])
                continue
            try:
                raw = json.loads(text)
            except ValueError:
                STATS["not_json"] += 1
                continue
            _check(found, raw, text, False)
    return count
