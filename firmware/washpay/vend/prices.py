# The engine's price source: the programs' base prices, or washpay/vend/pricing.py's PriceTable
# when config.json has a price table (docs/pricing.md). Kept apart from both so that a board
# without a table spends neither pricing.py's RAM nor the vend engine's compile peak on it.


class BasePrices:
    """The programs' base prices, always: a board without a price table does not spend the
    RAM of washpay/vend/pricing.py (about 10 KB on the unix port). PriceTable's interface."""

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


# ---- timed programs (dryers): a price per step of time (step_minutes or step_seconds), at
# most max_minutes (max_seconds) bought or held at a time; one definition of the arithmetic,
# whatever the price source; config.py has validated the fields


def is_timed(program):
    return program.get("mode") == "timed"


def step_s(program):
    return program.get("step_seconds") or program["step_minutes"] * 60


def max_s(program):
    return program.get("max_seconds") or program["max_minutes"] * 60


def seconds_for(program, step_price, amount):
    """Seconds that `amount` buys at `step_price` a step: whole steps, capped."""
    top = max_s(program)
    if step_price <= 0:
        return top
    return min(amount // step_price * step_s(program), top)


def cost_of(program, step_price, seconds):
    """What `seconds` (rounded up to whole steps) cost at `step_price` a step."""
    return -(-seconds // step_s(program)) * max(step_price, 0)


def price_table(programs, raw):
    if not raw:
        return BasePrices(programs)
    from washpay.vend.pricing import PriceTable

    return PriceTable(programs, raw)
