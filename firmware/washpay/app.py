# The application: board, drivers, payment sources, vend engine and journal on asyncio,
# and the watchdog, fed only while its tasks are alive. Its start (building the parts from
# the board's files, boot recovery, the tasks) is wiring.py's, run once and dropped.
import asyncio
import sys
import time

from washpay import VERSION, forget
from washpay.chip import BoardError

_FEED_MS = 500


def log(*args):
    print("washpay:", *args)


class App:
    def __init__(self):
        from washpay import wiring

        wiring.build(self)  # board, config, journal, drivers, payment sources, sync
        del wiring
        forget("washpay.wiring")

    def clock_trusted(self):
        return self.journal.clock_trusted

    async def scanner(self):
        # probe and configure the scanner, then read codes; a scanner that does not answer
        # is tried again now and then (plugged in late, or powered after the board), and
        # whatever goes wrong in here restarts the scanner, never the board
        while True:
            try:
                if await self.qr.configure():
                    await self.qr.run(self.tokens.on_line, self.tokens.on_error)
            except Exception as e:  # noqa: BLE001
                log("QR scanner:", repr(e))
                await asyncio.sleep_ms(5000)
                continue
            await asyncio.sleep_ms(60000)

    def status(self):
        st = self.engine.status()
        st["device_id"] = self.device_id
        st["version"] = VERSION
        st["currency"] = self.cfg["currency"]
        st["board"] = self.board.id
        st["config_error"] = self.config_error
        st["sync"] = self.sync.status() if self.sync else None
        st["card"] = self.card.status() if self.card else None
        st["tiers"] = self.tiers.status() if self.tiers is not None else None
        if self.tokens:
            st["qr"] = self.tokens.status()
            st["qr"]["scanner"] = self.qr.status()
        st["remote"] = self.remote.status()
        u = self.update
        st["update"] = u if u is None or isinstance(u, dict) else u.status()
        return st

    # ---- over-the-air updates (docs/ota.md): washpay/updates.py, loaded only when needed
    def offer(self, *offer):
        from washpay import updates

        return updates.offer(self, *offer)

    async def watchdog(self):
        # Fed only while the coin sampler makes progress: a stuck loop resets the board.
        wdt = self.board.watchdog(self.cfg["watchdog_ms"])
        seen = -1
        while True:
            n = self.acceptor.samples
            if n != seen:
                seen = n
                wdt.feed()
            await asyncio.sleep_ms(_FEED_MS)

    async def main(self):
        from washpay import wiring

        await wiring.start(self)  # recovery, then the tasks; logs the boot line
        del wiring
        forget("washpay.wiring")
        await self.watchdog()


def run():
    app = None
    try:
        try:
            app = App()
        except BoardError as e:
            log("cannot start:", e)
            return
        try:
            asyncio.run(app.main())
        except Exception as e:
            sys.print_exception(e)
            log("crashed; resetting")
            time.sleep(2)
            app.board.reset()
    except KeyboardInterrupt:
        # Ctrl-C from the console (mpremote) at any point of the start or later: the REPL
        # takes over. Coins stay refused (nobody would count them) and the firmware's tasks
        # are dropped, so that code run at the REPL never resumes them.
        if app is not None:
            app.acceptor.inhibit(True)
        asyncio.new_event_loop()
        log("stopped (Ctrl-C); REPL")
        raise
