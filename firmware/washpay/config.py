# The operator's settings for one machine: read from /config.json on the board's flash,
# checked field by field against defaults that are safe to run with. Secrets (keys) live in
# a separate file, /secrets.json, so that a config can be shown or copied without them.
import json

SECRETS_PATH = "/secrets.json"
CONFIG_PATH = "/config.json"

DEFAULTS = {
    "device_id": "",  # empty: derived from the chip's MAC address
    "site": "default",
    "currency": "EUR",
    "decimals": 2,  # minor units per major unit, as 10**decimals
    "programs": [
        {"name": "quick", "price": 250, "minutes": 30},
        {"name": "standard", "price": 350, "minutes": 45},
        {"name": "heavy", "price": 450, "minutes": 60},
    ],
    "max_credit": 2000,
    "coins": {
        "table": {"1": 50, "2": 100, "4": 200},  # pulses -> value in minor units
        "pulse_ms": 50,
        "gap_ms": 50,
        "end_ms": 200,
        "tolerance_pct": 30,
    },
    "start_confirm_ms": 5000,  # the washer must report busy within this after a start
    "start_retries": 1,
    # after a cycle, the door must open within this or the laundry is journaled as not
    # collected against the payer (not_collected); 0 = not watched
    "collect_ms": 600000,
    "risk": {},  # offline risk control: RISK_DEFAULTS below; {} = defaults
    "watchdog_ms": 8000,
    "wifi": "",  # SSID; its password lives in /secrets.json ("wifi_password")
    "broker": "",  # MQTT broker: mqtt://host[:port] or mqtts://host[:port]
    "sync": {},  # uplink tuning (docs/sync.md: keepalive, backoff, batches); {} = defaults
    "ota": {},  # over-the-air updates: OTA_DEFAULTS below; {} = defaults
    "card": {},  # card payments: CARD_DEFAULTS below; {} = defaults
    # the price table: time-of-day rules and card tiers over the programs' base prices
    # (docs/pricing.md); {} = the base prices, always
    "pricing": {},
    # journal size in records, and the free levels that warn and that keep a reserve for
    # money already taken (docs/journal-format.md, "Capacity")
    "journal": {"capacity": 6200, "warn": 620, "reserve": 62},
}

# the "sync" object's fields and their ranges (defaults in washpay/net/__init__.py)
SYNC_LIMITS = {
    "keepalive_s": (2, 600),
    "connect_timeout_ms": (500, 120000),
    "backoff_min_ms": (50, 60000),
    "backoff_max_ms": (100, 3600000),
    "stable_ms": (0, 3600000),
    "batch": (1, 32),
    "max_batch": (1, 32),
    "window": (1, 4),
    "ack_timeout_ms": (500, 600000),
}

# the "card" object's fields: (default, lowest, highest)
CARD_DEFAULTS = {
    "poll_ms": (150, 50, 2000),  # how often the reader looks for a card
    "repeat_ms": (5000, 0, 600000),  # the same card again this soon after paying: no charge
    "retap_ms": (30000, 1000, 600000),  # a torn card payment waits this long for the card
    "low_balance": (500, 0, 10000000),  # below this after paying, the display says so
}

# the "ota" object's fields (docs/ota.md, "Healthy"): (default, lowest, highest)
OTA_DEFAULTS = {
    "healthy_s": (60, 1, 3600),  # a new version's main loop runs this long before it is healthy
    "trial_s": (300, 10, 86400),  # not healthy this long after a trial boot: the loader goes back
}

# the "risk" object's fields: (default, lowest, highest)
RISK_DEFAULTS = {
    # this many coins rejected within reject_window_ms (a probe, a jammed or tampered
    # acceptor) inhibit the acceptor for coin_lockout_ms and journal a fault; 0 = off
    "reject_burst": (5, 0, 100),
    "reject_window_ms": (60000, 1000, 3600000),
    "coin_lockout_ms": (300000, 1000, 86400000),
    # the coin line active this long is stuck (no pulse is): inhibit and a fault; pulses
    # counted once the inhibit line has been asserted for inhibit_grace_ms: a fault
    "stuck_ms": (1000, 200, 60000),
    "inhibit_grace_ms": (500, 100, 10000),
    # this many failed card payments (card_fraud: bad MAC, rollback, foreign site) from one
    # card within fail_window_ms lock that card out for card_lockout_ms; 0 = off
    "fail_limit": (5, 0, 100),
    "fail_window_ms": (600000, 1000, 86400000),
    "card_lockout_ms": (600000, 1000, 86400000),
    # at most this many payments by one card within velocity_window_ms; 0 = no limit
    "velocity": (0, 0, 1000),
    "velocity_window_ms": (3600000, 1000, 86400000),
}


class ConfigError(ValueError):
    pass


def shown(value):
    """`value` as an error message shows it: short, and never by a repr of a list or an
    object (one nested a thousand deep exhausts the interpreter's stack): text and numbers
    cut to 20 characters, anything else by its type."""
    if isinstance(value, str):
        return repr(value[:20]) + ("..." if len(value) > 20 else "")
    if value is True or value is False:  # as JSON spells them
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        r = repr(value)
        return r if len(r) <= 20 else r[:20] + "..."
    return "null" if value is None else "a " + type(value).__name__


def _int(value, where, lo, hi):
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError("%s must be an integer from %d to %d, not %s"
                          % (where, lo, hi, shown(value)))
    return value


def _str(value, where, maxlen=32):
    if not isinstance(value, str) or len(value) > maxlen:
        raise ConfigError("%s must be text of at most %d characters" % (where, maxlen))
    return value


def _span(p, where, what, least):
    """A timed program's step or cap, in seconds: `what`_minutes or `what`_seconds, one of
    them. A record carries the time left in 16 bits of seconds: 18 h at most."""
    mins, secs = p.get(what + "_minutes"), p.get(what + "_seconds")
    if (mins is None) == (secs is None):
        raise ConfigError("%s: a timed program needs %s_minutes or %s_seconds (one of them)"
                          % (where, what, what))
    if secs is None:
        return _int(mins, "%s.%s_minutes" % (where, what), -(-least // 60), 1092) * 60
    return _int(secs, "%s.%s_seconds" % (where, what), least, 65535)


def validate(raw):
    """Return a complete config from `raw` (a dict) or raise ConfigError saying what is wrong."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a JSON object")
    unknown = [k for k in raw if k not in DEFAULTS]
    if unknown:
        raise ConfigError("unknown config key %s" % shown(unknown[0]))
    cfg = {}
    for key, default in DEFAULTS.items():
        cfg[key] = raw.get(key, default)
    _str(cfg["device_id"], "device_id")
    _str(cfg["site"], "site")
    cur = _str(cfg["currency"], "currency", 3)
    if len(cur) != 3 or not cur.isalpha():
        raise ConfigError("currency must be a 3-letter ISO 4217 code, not %s" % shown(cur))
    _int(cfg["decimals"], "decimals", 0, 3)
    progs = cfg["programs"]
    if not isinstance(progs, list) or not 1 <= len(progs) <= 8:
        raise ConfigError("programs must be a list of 1 to 8 programs")
    names = []
    for i, p in enumerate(progs):
        where = "programs[%d]" % i
        if not isinstance(p, dict):
            raise ConfigError(where + " must be an object")
        name = _str(p.get("name"), where + ".name", 10)
        if not name or name in names:
            raise ConfigError(where + ".name must be unique and not empty")
        names.append(name)
        _int(p.get("price"), where + ".price", 1, 1000000)
        _int(p.get("minutes", 0), where + ".minutes", 0, 600)
        mode = p.get("mode", "cycle")
        if mode == "timed":  # a dryer selling time: price per step (docs/pricing.md)
            step = _span(p, where, "step", 1)
            _span(p, where, "max", step)
        elif mode != "cycle":
            raise ConfigError(where + ".mode must be cycle or timed, not %s" % shown(mode))
    _int(cfg["max_credit"], "max_credit", 1, 10000000)
    if cfg["max_credit"] < max(p["price"] for p in progs):
        raise ConfigError("max_credit must cover the dearest program")
    coins = cfg["coins"]
    if not isinstance(coins, dict):
        raise ConfigError("coins must be an object")
    merged = dict(DEFAULTS["coins"])
    merged.update(coins)
    table = merged["table"]
    if not isinstance(table, dict) or not table:
        raise ConfigError("coins.table must map pulse counts to coin values")
    parsed = {}
    for k, v in table.items():
        try:
            if not isinstance(k, str):  # MicroPython's JSON reads {1: ...} and {null: ...}
                raise ValueError
            n = int(k)
        except ValueError:
            raise ConfigError("coins.table key %s is not a pulse count" % shown(k))
        parsed[_int(n, "coins.table key", 1, 50)] = _int(v, "coins.table[%s]" % k[:8], 1, 1000000)
    merged["table"] = parsed
    _int(merged["pulse_ms"], "coins.pulse_ms", 5, 500)
    _int(merged["gap_ms"], "coins.gap_ms", 5, 500)
    _int(merged["end_ms"], "coins.end_ms", 50, 2000)
    _int(merged["tolerance_pct"], "coins.tolerance_pct", 0, 45)
    cfg["coins"] = merged
    _int(cfg["start_confirm_ms"], "start_confirm_ms", 200, 120000)
    _int(cfg["start_retries"], "start_retries", 0, 3)
    _int(cfg["collect_ms"], "collect_ms", 0, 86400000)
    _int(cfg["watchdog_ms"], "watchdog_ms", 1000, 60000)
    _str(cfg["wifi"], "wifi")  # 802.11 SSIDs are at most 32 bytes
    broker = _str(cfg["broker"], "broker", 128)
    scheme, _, host = broker.partition("://")
    if broker and (scheme not in ("mqtt", "mqtts") or not host):
        raise ConfigError("broker must be an mqtt:// or mqtts:// URL, not %s" % shown(broker))
    sync = cfg["sync"]
    if not isinstance(sync, dict):
        raise ConfigError("sync must be an object")
    for k, v in sync.items():
        if k not in SYNC_LIMITS:
            raise ConfigError("unknown sync setting %s" % shown(k))
        _int(v, "sync." + k, SYNC_LIMITS[k][0], SYNC_LIMITS[k][1])
    journal = cfg["journal"]
    if not isinstance(journal, dict):
        raise ConfigError("journal must be an object")
    jmerged = dict(DEFAULTS["journal"])
    for k, v in journal.items():
        if k not in jmerged:
            raise ConfigError("unknown journal setting %s" % shown(k))
        jmerged[k] = v
    _int(jmerged["capacity"], "journal.capacity", 100, 100000)
    _int(jmerged["reserve"], "journal.reserve", 8, jmerged["capacity"] - 1)
    _int(jmerged["warn"], "journal.warn", jmerged["reserve"], jmerged["capacity"])
    cfg["journal"] = jmerged
    card = cfg["card"]
    if not isinstance(card, dict):
        raise ConfigError("card must be an object")
    merged = {k: v[0] for k, v in CARD_DEFAULTS.items()}
    for k, v in card.items():
        if k not in CARD_DEFAULTS:
            raise ConfigError("unknown card setting %s" % shown(k))
        merged[k] = _int(v, "card." + k, CARD_DEFAULTS[k][1], CARD_DEFAULTS[k][2])
    cfg["card"] = merged
    risk = cfg["risk"]
    if not isinstance(risk, dict):
        raise ConfigError("risk must be an object")
    merged = {k: v[0] for k, v in RISK_DEFAULTS.items()}
    for k, v in risk.items():
        if k not in RISK_DEFAULTS:
            raise ConfigError("unknown risk setting %s" % shown(k))
        merged[k] = _int(v, "risk." + k, RISK_DEFAULTS[k][1], RISK_DEFAULTS[k][2])
    cfg["risk"] = merged
    ota = cfg["ota"]
    if not isinstance(ota, dict):
        raise ConfigError("ota must be an object")
    merged = {k: v[0] for k, v in OTA_DEFAULTS.items()}
    for k, v in ota.items():
        if k not in OTA_DEFAULTS:
            raise ConfigError("unknown ota setting %s" % shown(k))
        merged[k] = _int(v, "ota." + k, OTA_DEFAULTS[k][1], OTA_DEFAULTS[k][2])
    cfg["ota"] = merged
    if cfg["pricing"] != {}:  # {}: base prices, and pricing.py's RAM is not spent
        from washpay.vend.pricing import PriceTable, PricingError

        try:
            PriceTable(progs, cfg["pricing"])
        except PricingError as e:
            raise ConfigError(str(e))
        except Exception as e:  # noqa: BLE001 - pricing.py's bug must not stop the boot
            raise ConfigError("pricing is malformed (%s)" % type(e).__name__)
    return cfg


def load(path=CONFIG_PATH):
    """(config, error): the validated config, or the defaults and why the file was refused.

    A missing file is a fresh board: defaults, no error. A broken file is an error the
    operator must see: the app keeps the machine out of order rather than guess prices.
    Never raises: whatever the file holds, the board comes up and says what is wrong.
    """
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError:
        return validate({}), None
    except ValueError as e:
        return validate({}), "config.json is not valid JSON: %s" % e
    except MemoryError:  # too big, or nested too deep, for this board's heap
        return validate({}), "config.json is too big to read"
    try:
        return validate(raw), None
    except ConfigError as e:
        why = str(e)
    except Exception as e:  # noqa: BLE001 - whatever the file holds, the board comes up
        why = "config.json refused (%s)" % type(e).__name__
    cfg = validate({})
    # out of order, but still itself: the device id names its MQTT user and its journal
    # at the server (it keeps syncing), and what the operator's tools expect to find
    d = raw.get("device_id") if isinstance(raw, dict) else None
    if isinstance(d, str) and 0 < len(d) <= 32:
        cfg["device_id"] = d
    return cfg, why


def load_secrets(path=SECRETS_PATH):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
