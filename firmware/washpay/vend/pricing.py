# Prices: what a program costs now, for this customer. Pure logic (no machine, no journal),
# so it runs under CPython for property tests as well as on the board. The table's parser
# is price_parser.py, loaded only while a table is made.
#
# One price table format, pushed by provisioning inside config.json ("pricing"), versioned
# in the journal: docs/pricing.md is its definition (fields, defaults, how a price is made).

from washpay import use


class PricingError(ValueError):
    pass


_PARSER = ("washpay.vend.price_parser",)


class PriceTable:
    def __init__(self, programs, raw=None):
        # checked and parsed by price_parser.py, loaded for this only (washpay.use)
        use(_PARSER, "parse", self, programs, raw)

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
