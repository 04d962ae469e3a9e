# Timed programs (docs/pricing.md): a dryer, or any machine switched by its supply, sells
# time in steps. The relay is held for the paid time; coins inserted while it runs buy
# more steps, up to the program's cap (max_minutes) at a time. Functions of the vend engine,
# loaded only on a board that sells time, so that a washer's firmware does not compile them.
#
# The paid time lives in the engine as ends_ms (ticks_ms) and in every record as left_s
# (seconds left after the event), so that boot recovery needs only the last record.
import asyncio
import time

from washpay.journal import records as R
from washpay.vend.prices import cost_of, max_s, seconds_for, step_s

_TICK_MS = 250  # how often the running vend looks at its clock, the credit and the display


def clock(seconds):
    """Paid time for the display: m:ss."""
    return "%d:%02d" % (seconds // 60, seconds % 60)


def time_left(e):
    """Second line while it runs: the paid time left, and credit waiting for room."""
    left = clock(e.left_s())
    return left + " left" if not e.credit else "%s cr %s" % (left, e.screen.money(e.credit))


def start_line(e, step_price):
    """Second line with credit for a step or more: the time START buys."""
    p = e.program
    return "%s %s START" % (p["name"], clock(seconds_for(p, step_price, e.credit)))


def per_step(p, price_text):
    """The price of a step for the idle screen: 1.00/10m, or 0.50/90s."""
    step = step_s(p)
    return "%s/%s" % (price_text, "%dm" % (step // 60) if step % 60 == 0 else "%ds" % step)


def buy(p, step_price, credit):
    """(seconds, cost): what START sells from `credit`: whole steps, up to the cap."""
    secs = seconds_for(p, step_price, credit)
    return secs, cost_of(p, step_price, secs)


def commit(e, price, tier, seconds):
    """The time a committed payment of `price` buys (engine.commit_vend): `seconds`, or
    what the price buys at the step price now for `tier`, at least one step; money above
    its cost becomes machine credit. Returns the vend's price."""
    p = e.program
    if seconds is None:
        step = e.price_of(p, tier)
        seconds = seconds_for(p, step, price) or step_s(p)
        cost = min(price, cost_of(p, step, seconds))
        e.credit += price - cost
        price = cost
    e.bought_s = seconds
    return price


def room_s(e):
    """Seconds more that may be bought now for the timed vend running, in whole steps
    (0: no step fits under the cap)."""
    p = e.program
    step = step_s(p)
    return max(0, max_s(p) - e.left_s()) // step * step


def extend(e):
    """Turn the machine's credit into more paid time for the timed vend running: whole
    steps at the price of the moment, within the program's cap; one record."""
    p = e.program
    step = e.price_of(p)
    if step <= 0:
        return False  # a free program runs at its cap already
    span = step_s(p)
    steps = min(e.credit // step, e._room_s() // span)
    if steps <= 0:
        return False
    cost = steps * step
    e.credit -= cost
    e.vend_price += cost
    e.ends_ms = time.ticks_add(e.ends_ms, steps * span * 1000)
    e._record(R.VEND_EXTEND, program=p["name"], amount=cost, price=e.vend_price)
    e.update_inhibit()
    e.show()
    return True


async def watch(e):
    """Hold the relay until the paid time runs out; the caller ends the vend. The machine's
    own busy signal does not end it: a customer who opens the door to check the laundry
    keeps the time bought (and the supply, so that the machine's start button works)."""
    shown = None
    while True:
        left_ms = time.ticks_diff(e.ends_ms, time.ticks_ms())
        if left_ms <= 0:
            return
        if e.credit and e.state == R.RUNNING:  # coins that found no room before
            extend(e)
        e.update_inhibit()
        left = e.left_s()
        if left != shown and e.state == R.RUNNING:  # the display counts down m:ss
            shown = left
            e.show()
        await asyncio.sleep_ms(min(left_ms, _TICK_MS))


async def resume(e, last):
    """Boot recovery of a timed vend that was running at the power cut. The cut dropped
    the relay; the time left is the last record's, less the time since it was written
    when the clock can tell (a clock that went back, e.g. an RTC reset, counts nothing
    as elapsed: the customer keeps the doubt). The clock has whole seconds, so the time
    since the record may read up to a second long: one second more goes to the customer,
    never more than the record had. Nothing left: the vend is over."""
    left = last.get("left_s", 0)
    written = last.get("t", 0)
    now = int(e.clock())
    if now >= written:
        left = max(0, min(left, written + left - now + 1))
    e.ends_ms = time.ticks_add(time.ticks_ms(), left * 1000)
    if not left:
        return  # the engine's watch ends it at once, with its record and display
    await e.washer.start(e.vend_price)  # a power-switched machine: its supply again
    e._record(R.VEND_RUNNING, program=e.program["name"], price=e.vend_price, recovered=True)

