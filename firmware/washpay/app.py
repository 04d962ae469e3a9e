# The application: wires board, drivers, payment sources, vend engine and journal together
# on asyncio, recovers after a reset, and feeds the watchdog only while its tasks are alive.
import asyncio
import sys
import time

from washpay import VERSION, config
from washpay import board as boardmod
from washpay.drivers.coin_acceptor import CoinAcceptor
from washpay.drivers.keypad import Keypad
from washpay.drivers.washer import Washer
from washpay.journal import Journal
from washpay.payments.coin import PulseTrainDecoder
from washpay.ui import Screen
from washpay.vend import VendEngine

_FEED_MS = 500


def log(*args):
    print("washpay:", *args)


def _display(board):
    spec = board.display_spec
    if not spec:
        return None
    if spec.get("type") == "lcd1602_pcf8574":
        from washpay.drivers.lcd1602 import LCD1602

        try:
            return LCD1602(board.i2c(), spec.get("addr", 0x27), spec.get("cols", 16),
                           spec.get("rows", 2))
        except OSError as e:  # no display fitted or not answering: run without one
            log("display not found at I2C address", spec.get("addr"), e)
    return None


def device_id(cfg, board):
    if cfg["device_id"]:
        return cfg["device_id"]
    uid = board.unique_id()
    return "wp-" + "".join("%02x" % b for b in uid[-3:])


class App:
    def __init__(self):
        self.board = boardmod.load()
        self.cfg, self.config_error = config.load()
        self.device_id = device_id(self.cfg, self.board)
        b = self.board
        self.screen = Screen(_display(b), self.cfg["decimals"])
        self.journal = Journal()
        self.washer = Washer(b.pin_out("relay"), b.pin_in("washer_busy"), b.pin_in("door"),
                             b.washer)
        coins = self.cfg["coins"]
        self.decoder = PulseTrainDecoder(coins["table"], coins["pulse_ms"], coins["gap_ms"],
                                         coins["end_ms"], coins["tolerance_pct"])
        self.acceptor = CoinAcceptor(
            b.coin_counter(),
            b.pin_in("coin_pulse"),
            b.pin_out("coin_inhibit", b.inactive_level(b.coin["inhibit_active"])),
            self.decoder,
            active_low=b.coin["pulse_active"] == "low",
            inhibit_active_high=b.coin["inhibit_active"] == "high",
        )
        self.keypad = Keypad({"start": b.button("btn_start"), "select": b.button("btn_select")})
        self.engine = VendEngine(self.cfg, self.journal, self.washer, self.acceptor, self.screen)

    def status(self):
        st = self.engine.status()
        st["device_id"] = self.device_id
        st["version"] = VERSION
        st["board"] = self.board.id
        st["config_error"] = self.config_error
        return st

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
        log("version", VERSION, "board", self.board.id, "device", self.device_id,
            "reset:", self.board.reset_cause())
        await self.engine.recover(self.board.reset_cause())
        if self.config_error:
            log("config refused:", self.config_error)
            self.engine.out_of_order("config: " + self.config_error)
        # The acceptor stays inhibited until the sampler has watched a quiet line for a
        # whole end-of-train gap: a train already under way at boot cannot be decoded.
        asyncio.create_task(self.acceptor.run(self.engine.on_coin))
        await asyncio.sleep_ms(self.cfg["coins"]["end_ms"] + 50)
        self.engine.update_inhibit()
        asyncio.create_task(self.keypad.run(self.engine.on_button))
        self.board.attach_status(self.status)
        log("ready; journal", self.journal.count, "records, credit", self.engine.credit)
        await self.watchdog()


def run():
    try:
        app = App()
    except boardmod.BoardError as e:
        log("cannot start:", e)
        return
    try:
        asyncio.run(app.main())
    except KeyboardInterrupt:
        log("stopped (Ctrl-C); REPL")
        raise
    except Exception as e:
        sys.print_exception(e)
        log("crashed; resetting")
        time.sleep(2)
        app.board.reset()
