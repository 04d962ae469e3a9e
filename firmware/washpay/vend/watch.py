# What the vend engine watches besides payments (config "risk", "collect_ms"): bursts of
# rejected coins, coin acceptor anomalies, and laundry left in the machine after a cycle.
# Functions of the engine, kept out of vend/engine.py so that compiling it fits a capped heap.
import asyncio
import time

from washpay.journal import JournalError
from washpay.journal import records as R

_POLL_MS = 50


def reject_burst(e):
    """Count one rejected train; the burst-th within the window locks coins out: True."""
    risk = e.cfg.get("risk") or {}
    burst = risk.get("reject_burst", 0)
    if not burst:
        return False
    now = time.ticks_ms()
    window = risk["reject_window_ms"]
    e._rejects = [t for t in e._rejects if time.ticks_diff(now, t) < window]
    e._rejects.append(now)
    if len(e._rejects) < burst:
        return False
    e._rejects = []
    e.coin_lockout = True
    e.update_inhibit()
    e._record(R.FAULT, reason="coin rejects: %d in %ds" % (burst, window // 1000))
    e.notice("Coins blocked", "use card or ask", 3000)
    asyncio.create_task(end_coin_lockout(e, risk["coin_lockout_ms"]))
    return True


async def end_coin_lockout(e, ms):
    await asyncio.sleep_ms(ms)
    e.coin_lockout = False
    e.update_inhibit()
    e.show()


def coin_fault(e, why, block=True):
    """A coin acceptor anomaly: journaled for the server; `block` True inhibits the
    acceptor until False clears it (None: no change)."""
    e.faults += 1
    e.last_fault = why
    if block is not None:
        e.coin_stuck = block
        e.update_inhibit()
    e._record(R.FAULT, reason=why)
    if block:
        e.notice("Coins blocked", "ask staff", 3000)
    else:
        e.show()


def coin_storm(e, result):
    """Noise on the coin line began (("storm", rises, ms): the fault is journaled, coins are
    refused) or ended (("calm", 0): coins are taken again). One fault record per storm:
    its end is in the status, and the storm's trains are the next function's."""
    if result[0] == "calm":
        e.coin_storm = None
        e.update_inhibit()
        e.show()
        return
    e.coin_storm = 0
    e.update_inhibit()
    e.faults += 1
    e.last_fault = "coin line noise: %d edges in %d ms" % (result[1], result[2])
    e._record(R.FAULT, reason=e.last_fault)
    e.notice("Coins blocked", "ask staff", 3000)


def storm_reject(e, result):
    """A train the decoder rejected during a storm. The first is journaled: it is the one
    a coin in flight when the storm began would be in. The others are noise the fault
    record already stands for: counted, not journaled, no reject burst."""
    e.coin_storm += 1
    if e.coin_storm == 1:
        e._record(R.COIN_REJECTED, reason=result[1], pulses=result[2])
    else:
        e.noise += 1


async def watch_collect(e, program, source):
    """Laundry left in the machine: the door not opened within collect_ms of the cycle's
    end is journaled against the payer, and the display says so until it opens."""
    e.laundry = "waiting"
    t0 = time.ticks_ms()
    while e.washer.door_closed():
        if e.laundry not in ("waiting", "not collected"):
            return  # a new vend started: that one is watched now
        if e.laundry == "waiting" and time.ticks_diff(time.ticks_ms(), t0) >= \
                e.cfg["collect_ms"]:
            e.laundry = "not collected"
            fields = {}
            if source is not None:
                fields["source_kind"], fields["source"] = source
            try:
                e._record(R.NOT_COLLECTED, program=program, **fields)
            except JournalError:
                return
            e.show()
        await asyncio.sleep_ms(4 * _POLL_MS)
    if e.laundry in ("waiting", "not collected"):
        e.laundry = "collected"
        e.show()
