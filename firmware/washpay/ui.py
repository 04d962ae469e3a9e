# What the customer reads on the 16x2 display. Texts are short on purpose: 16 columns.
from micropython import const

_COLS = const(16)


def money(amount, decimals=2):
    if decimals == 0:
        return str(amount)
    unit = 10**decimals
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    return "%s%d.%0*d" % (sign, amount // unit, decimals, amount % unit)


class Screen:
    """Keeps the two lines; a missing or failing display must never stop a payment."""

    def __init__(self, lcd, decimals=2):
        self.lcd = lcd
        self.decimals = decimals
        self.lines = ("", "")
        self.errors = 0

    def money(self, amount):
        return money(amount, self.decimals)

    def show(self, line1, line2=""):
        line1 = line1[:_COLS]
        line2 = line2[:_COLS]
        self.lines = (line1, line2)
        if self.lcd is None:
            return
        try:
            self.lcd.show(line1, line2)
        except OSError:
            self.errors += 1

    def text(self):
        return "\n".join(line.rstrip() for line in self.lines).rstrip("\n")
