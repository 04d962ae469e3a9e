# What the vend engine watches on the coin line besides coins (config "risk"): bursts of
# rejected coins and coin acceptor anomalies. Functions of the engine, loaded for the rare
# event and dropped after (washpay.use): a board whose coins are all good never holds them.
import asyncio
import time

from washpay.journal import records as R


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
    # the lockout's timer keeps this module's code until it ends; a use before then loads
    # a copy of its own (washpay.use)
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
    its end is in the status; the trains rejected during it are counted by the engine."""
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
