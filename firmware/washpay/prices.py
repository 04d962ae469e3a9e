# The engine's price source: the programs' base prices, or washpay/pricing.py's PriceTable
# when config.json has a price table (docs/pricing.md). Kept apart from both so that a board
# without a table spends neither pricing.py's RAM nor the vend engine's compile peak on it.


class BasePrices:
    """The programs' base prices, always: a board without a price table does not spend the
    RAM of washpay/pricing.py (about 10 KB on the unix port). PriceTable's interface."""

    version = 0

    def __init__(self, programs):
        self.programs = {p["name"]: p for p in programs}

    def price(self, program, unix_time, tier=None):
        return self.programs[program]["price"]

    def allowed(self, program, tier=None):
        return None

    def floor_balance(self, tier):
        return 0

    def min_balance(self, tier):
        return 0


def price_table(programs, raw):
    if not raw:
        return BasePrices(programs)
    from washpay.pricing import PriceTable

    return PriceTable(programs, raw)
