# Boot recovery of the vend engine: where the last journal record says the machine was.
# Every record carries the credit, vend state and paid time left after it (vend/engine.py's money
# rule), so the last one is enough:
#   idle/credit  -> that credit is still the customer's
#   starting     -> the washer was maybe started: if it reports busy, it runs; if not, the
#                   price goes back to credit (start_failed, "power lost during start"),
#                   unless its payment source settles it (a card write not confirmed) or it
#                   was paid online (a QR token, a remote start): the server refunds that
#   running      -> if it still reports busy it runs, else the cycle is over; a timed program
#                   (a dryer selling time) runs on for the paid time the record had left,
#                   less the time since it was written when the clock allows
# Run once at boot; a module of its own so that its code is not kept with the engine's.
import asyncio
import time

from washpay.journal import _SOURCE_OF
from washpay.journal import records as R
from washpay.vend.prices import is_timed


async def recover(e, boot_reason):
    last = e.journal.last()
    if last is not None:
        e.credit = last.get("credit", 0)
        e.program = e.program_named(last.get("program")) or e.program
        state = last.get("state", R.IDLE)
        e.vend_price = last.get("price", 0)
        e.bought_s = last.get("left_s", 0)
        if state == R.STARTING:
            await asyncio.sleep_ms(e.cfg["start_confirm_ms"] // 4)
            if e.washer.busy():
                if is_timed(e.program):  # the paid time runs from now
                    e.ends_ms = time.ticks_add(time.ticks_ms(), e.bought_s * 1000)
                e.state = R.RUNNING
                e._record(R.VEND_RUNNING, program=e.program["name"], price=e.vend_price,
                          recovered=True)
            elif last.get("type") in e.unconfirmed:
                e.unconfirmed[last["type"]](last)
            else:  # credit again, or refunded by the server if paid online (vend/engine.py)
                src = last.get("source")
                e.start_failed(e.vend_price, "power lost before the washer confirmed",
                               (_SOURCE_OF.get(last.get("type"), 0), src) if src else None)
        elif state == R.RUNNING:
            e.state = R.RUNNING
            if is_timed(e.program):
                await e._timed().resume(e, last)
        else:
            e.state = R.CREDIT if e.credit else R.IDLE
    if e.prices.version:  # which price table this boot sells at, for the server
        boot_reason = "%s; prices v%d" % (boot_reason, e.prices.version)
    e._record(R.BOOT, reason=boot_reason, program=e.program["name"])
    if e.state == R.RUNNING:
        asyncio.create_task(e._watch_cycle())
        if e.credit and e.ends_ms is not None:  # a coin was not yet turned into time
            e._extend()
    e.show()  # the app releases the coin inhibit once the sampler is warm
