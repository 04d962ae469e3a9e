"""The app's side of over-the-air updates (docs/ota.md): the loader's news at boot (a
rollback to journal, a trial to confirm healthy, a staged download to resume), an offer
from the server, and the download task. Imported only when there is such news or an offer,
so a board that is not updating holds none of it; the download itself is washpay.ota's.
"""

import asyncio
import json
import sys
import time

from washpay import VERSION
from washpay.journal import JournalError
from washpay.journal import records as R


def log(*args):
    print("washpay:", *args)


def on_boot(app, L):
    p = L.state()
    note = p["note"]
    if note:
        try:  # the version first: the record keeps 25 bytes of reason
            app.journal.append(R.OTA_ROLLBACK, reason="%s %s" % (note["version"],
                                                               note["reason"]))
            L.clear_note()
        except JournalError as e:
            log("rollback not journaled:", e)
        report(app, {"id": None, "version": note["version"], "state": "rolled_back",
                     "reason": note["reason"]})
    if p["trial"]:
        asyncio.create_task(trial(app, L, p["version"]))
    elif p["stage"] and app.sync is not None:
        asyncio.create_task(update(app, p["stage"], False))


def report(app, msg):
    s = app.sync
    if s is not None:
        s.reply(json.dumps(msg).encode(), b"wp/" + s.device_id + b"/fws")


async def trial(app, L, version):
    # healthy: booted and recovered (we are here), the main loop alive for healthy_s, and
    # the sync link up at least once when the network is up
    t0 = time.ticks_ms()
    need = app.cfg["ota"]["healthy_s"] * 1000
    seen = app.acceptor.samples
    while True:
        await asyncio.sleep_ms(250)
        alive = app.acceptor.samples != seen and time.ticks_diff(time.ticks_ms(), t0) >= need
        s = app.sync
        net = s is None or s.disabled or not s.link.wlan.isconnected() or s.ready()
        if alive and net:
            break
    try:
        app.journal.append(R.OTA_DONE, reason=version)
    except JournalError as e:
        log("ota_done not journaled:", e)
    L.confirm()
    log("update", version, "healthy")
    report(app, {"id": None, "version": version, "state": "healthy"})


def offer(app, digest, sig, size, version):
    # command 9 (washpay/net/commands.py): record the offer, start the download
    from washpay.ota.update import offer as record

    why = record("", digest, sig, size, version)
    if why is None and (app.update is None or isinstance(app.update, dict)):
        import bootslot

        asyncio.create_task(update(app, bootslot.read()["stage"], True))
    return why


def idle(app):
    # an update switches only between customers: no vend, no credit, no card payment
    # waiting to be settled (token and remote redemptions are vends), no coin's pulse
    # train being counted (a reset would lose the coin: it is in the cash box already)
    e = app.engine
    return (e.state in (R.IDLE, R.DONE) and not e.credit and not e.busy
            and app.decoder.idle and (app.card is None or not len(app.card.pending)))


async def quiet(app):
    # the last look before the switch: the acceptor refuses coins from now on; a coin it
    # took already ends its pulse train within the inhibit grace and is decoded end_ms
    # after its last pulse. Idle then, with coins still refused (nothing released them
    # meanwhile), and no coin can be on its way when the board resets
    app.acceptor.inhibit(True)
    await asyncio.sleep_ms(app.cfg["risk"]["inhibit_grace_ms"] + app.decoder.end_ms)
    if app.acceptor.inhibited and idle(app):
        return True
    app.engine.update_inhibit()  # a customer came: coins as the engine has them
    return False


async def update(app, stage, fresh):
    from washpay.ota import update as U
    from washpay.ota.release import Refused, read_public_key

    checks = {"running": VERSION, "board_id": app.board.id, "journal_format": R.VERSION,
              "mpy": sys.implementation._mpy & 0xFF,
              "now": lambda: app.remote.cache.now() or None}
    u = U.Updater("", app.sync, app.journal, checks, lambda: idle(app), lambda: quiet(app),
                  app.board.reset, log, app.cfg["ota"]["trial_s"])
    app.update = u
    try:
        try:
            checks["public_key"] = read_public_key("/release.pub")
        except Refused as e:
            u._refuse(str(e))
            return
        await u.run(stage, fresh)
    finally:
        app.update = u.status()
        u = None
        U.forget()
