# The price table's parser and checks (docs/pricing.md): run when a table is made (at boot,
# and when the server pushes one) and dropped after (washpay.use), so that the table a board
# prices with does not keep its parser's code in the heap. pricing.py is the table.
from washpay.vend.pricing import PricingError

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def shown(value):
    # config.py's, loaded only for an error message
    from washpay.config import shown

    return shown(value)


def _minutes(hhmm, where):
    try:
        h, m = hhmm.split(":")
        h = int(h)
        m = int(m)
    except (AttributeError, ValueError):
        raise PricingError("%s must be HH:MM, not %s" % (where, shown(hhmm)))
    if not (0 <= h <= 24 and 0 <= m < 60) or (h == 24 and m):
        raise PricingError("%s must be between 00:00 and 24:00, not %s" % (where, shown(hhmm)))
    return h * 60 + m


def _days(spec, where):
    if not isinstance(spec, str):
        raise PricingError("%s must be text such as mon-fri,sun, not %s" % (where, shown(spec)))
    out = 0
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            if a not in _DAYS or b not in _DAYS:
                raise PricingError("%s: unknown day in %s" % (where, shown(part)))
            i, j = _DAYS.index(a), _DAYS.index(b)
            k = i
            while True:
                out |= 1 << k
                if k == j:
                    break
                k = (k + 1) % 7
        elif part in _DAYS:
            out |= 1 << _DAYS.index(part)
        else:
            raise PricingError("%s: unknown day %s (use mon..sun)" % (where, shown(part)))
    return out


def _percent(value, where):
    if not isinstance(value, int) or isinstance(value, bool) or not -100 <= value <= 100:
        raise PricingError("%s must be an integer percentage from -100 to 100" % where)
    return value


def parse(table, programs, raw):
    """Fill `table` (a PriceTable) from `raw`, the config's "pricing" object, or raise
    PricingError saying what is wrong."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise PricingError("pricing must be an object")
    table.version = raw.get("version", 0)
    if not isinstance(table.version, int) or table.version < 0:
        raise PricingError("pricing.version must be a non-negative integer")
    # the programs (cycle or timed) were validated by config.py with the rest of config
    table.programs = {p["name"]: p for p in programs}
    base_max = max(p["price"] for p in programs)
    table.max_price = raw.get("max_price", base_max * 2)
    if not isinstance(table.max_price, int) or table.max_price < base_max:
        raise PricingError("pricing.max_price must be at least the dearest base price")
    table.offset_min = raw.get("utc_offset_min", 0)
    if not isinstance(table.offset_min, int) or not -840 <= table.offset_min <= 840:
        raise PricingError("pricing.utc_offset_min must be minutes from -840 to 840")
    table.rules = []
    rules = raw.get("rules", ())
    if not isinstance(rules, (list, tuple)):
        raise PricingError("pricing.rules must be a list")
    for i, r in enumerate(rules):
        where = "pricing.rules[%d]" % i
        if not isinstance(r, dict):
            raise PricingError(where + " must be an object")
        start = _minutes(r.get("from", "00:00"), where + ".from")
        end = _minutes(r.get("to", "24:00"), where + ".to")
        if start == end:
            raise PricingError(where + ": from and to are equal (an empty window)")
        table.rules.append(
            (_days(r.get("days", "mon-sun"), where + ".days"), start, end,
             _percent(r.get("percent", 0), where + ".percent"))
        )
    table.tiers = {}
    tiers = raw.get("tiers")
    if tiers is None:
        tiers = {}
    if not isinstance(tiers, dict):
        raise PricingError("pricing.tiers must be an object")
    for name, t in tiers.items():
        if not isinstance(name, str):  # MicroPython's JSON reads {1: ...} too
            raise PricingError("pricing.tiers: a tier's name is text, not %s" % shown(name))
        where = "pricing.tiers.%s" % name[:10]
        if not isinstance(t, dict):
            raise PricingError(where + " must be an object")
        allowed = t.get("programs")
        if allowed is not None:
            if not isinstance(allowed, list):
                raise PricingError(where + ".programs must be a list of program names")
            for prog in allowed:
                if not isinstance(prog, str) or prog not in table.programs:
                    raise PricingError("%s: no program %s" % (where, shown(prog)))
        over = t.get("overdraft", 0)
        if not isinstance(over, int) or over < 0:
            raise PricingError(where + ".overdraft must be a non-negative amount")
        low = t.get("min_balance", 0)
        if not isinstance(low, int) or low < 0:
            raise PricingError(where + ".min_balance must be a non-negative amount")
        table.tiers[name] = (_percent(t.get("percent", 0), where + ".percent"), allowed,
                            low, over)
