# Prices: what a program costs now, for this customer. Pure logic (no machine, no journal),
# so it runs under CPython for property tests as well as on the board.
#
# One price table format, pushed by provisioning inside config.json ("pricing"), versioned
# in the journal: docs/pricing.md is its definition (fields, defaults, how a price is made).

from washpay.config import shown

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class PricingError(ValueError):
    pass


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


class PriceTable:
    def __init__(self, programs, raw=None):
        raw = raw or {}
        if not isinstance(raw, dict):
            raise PricingError("pricing must be an object")
        self.version = raw.get("version", 0)
        if not isinstance(self.version, int) or self.version < 0:
            raise PricingError("pricing.version must be a non-negative integer")
        # the programs (cycle or timed) were validated by config.py with the rest of config
        self.programs = {p["name"]: p for p in programs}
        base_max = max(p["price"] for p in programs)
        self.max_price = raw.get("max_price", base_max * 2)
        if not isinstance(self.max_price, int) or self.max_price < base_max:
            raise PricingError("pricing.max_price must be at least the dearest base price")
        self.offset_min = raw.get("utc_offset_min", 0)
        if not isinstance(self.offset_min, int) or not -840 <= self.offset_min <= 840:
            raise PricingError("pricing.utc_offset_min must be minutes from -840 to 840")
        self.rules = []
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
            self.rules.append(
                (_days(r.get("days", "mon-sun"), where + ".days"), start, end,
                 _percent(r.get("percent", 0), where + ".percent"))
            )
        self.tiers = {}
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
                    if not isinstance(prog, str) or prog not in self.programs:
                        raise PricingError("%s: no program %s" % (where, shown(prog)))
            over = t.get("overdraft", 0)
            if not isinstance(over, int) or over < 0:
                raise PricingError(where + ".overdraft must be a non-negative amount")
            low = t.get("min_balance", 0)
            if not isinstance(low, int) or low < 0:
                raise PricingError(where + ".min_balance must be a non-negative amount")
            self.tiers[name] = (_percent(t.get("percent", 0), where + ".percent"), allowed,
                                low, over)

    # ---- time
    def local(self, unix_time):
        """(weekday 0=Mon, minute of day) at the site, for a UTC unix time."""
        t = int(unix_time) + self.offset_min * 60
        days = t // 86400
        # 1970-01-01 was a Thursday (weekday 3)
        return (days + 3) % 7, (t % 86400) // 60

    def rule_percent(self, unix_time):
        wd, minute = self.local(unix_time)
        yesterday = (wd + 6) % 7
        for days, start, end, pct in self.rules:
            if start < end:
                if days & (1 << wd) and start <= minute < end:
                    return pct
            elif (days & (1 << wd) and minute >= start) or (
                days & (1 << yesterday) and minute < end
            ):
                return pct  # a window over midnight belongs to the day it starts on
        return 0

    # ---- prices
    def tier(self, name):
        return self.tiers.get(name) if name else None

    def allowed(self, program, tier=None):
        """None if `tier` may buy `program`, else a short reason for the display."""
        t = self.tier(tier)
        if t and t[1] is not None and program not in t[1]:
            return "Not for this card"
        return None

    def _apply(self, base, unix_time, tier):
        pct = 100 + self.rule_percent(unix_time)
        t = self.tier(tier)
        if t:
            pct += t[0]
        pct = max(pct, 0)
        price = (base * pct + 50) // 100
        return min(max(price, 0), self.max_price)

    def price(self, program, unix_time, tier=None):
        """What one cycle (or one step of a timed program) costs now."""
        return self._apply(self.programs[program]["price"], unix_time, tier)

    def floor_balance(self, tier):
        """The lowest balance a card of `tier` may reach: -overdraft (0 without one)."""
        t = self.tier(tier)
        return -t[3] if t else 0

    def min_balance(self, tier):
        t = self.tier(tier)
        return t[2] if t else 0
