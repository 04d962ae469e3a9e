# The application: wires board, drivers, payment sources, vend engine and journal together
# on asyncio, recovers after a reset, and feeds the watchdog only while its tasks are alive.
import asyncio
import json
import sys
import time

from washpay import VERSION, forget
from washpay import board as boardmod
from washpay.drivers.coin_acceptor import CoinAcceptor
from washpay.drivers.keypad import Keypad
from washpay.drivers.washer import Washer
from washpay.journal import Journal
from washpay.payments.coin import PulseTrainDecoder
from washpay.ui import Screen
from washpay.vend.engine import VendEngine

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
        # config.py checks the files once, at boot: it is unloaded after (forget)
        from washpay import config

        self.cfg, self.config_error = config.load()
        secrets = config.load_secrets()
        self.device_id = device_id(self.cfg, self.board)
        b = self.board
        self.screen = Screen(_display(b), self.cfg["decimals"])
        # the journal is sealed with keys derived from this board's provisioned secret
        from washpay.keys import journal_keys, load_device_secret

        secret = load_device_secret(secrets)
        if secret is None:
            raise boardmod.BoardError(
                "%s has no device_secret: provision the board (washpay provision)"
                % config.SECRETS_PATH
            )
        jcfg = self.cfg.get("journal") or {}
        self.journal = Journal(keys=journal_keys(secret), currency=self.cfg["currency"],
                               capacity=jcfg.get("capacity", 6200), warn=jcfg.get("warn"),
                               reserve=jcfg.get("reserve"))
        self.washer = Washer(b.pin_out("relay"), b.pin_in("washer_busy"), b.pin_in("door"),
                             b.washer)
        if self.washer.mode != "power" and not self.config_error and any(
                p.get("mode") == "timed" for p in self.cfg["programs"]):
            # selling time means holding the machine's supply: only a power-switched washer
            self.config_error = "timed program needs washer start_mode power"
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
            stuck_ms=self.cfg["risk"]["stuck_ms"],
            inhibit_grace_ms=self.cfg["risk"]["inhibit_grace_ms"],
        )
        self.keypad = Keypad({"start": b.button("btn_start"), "select": b.button("btn_select")})
        self.engine = VendEngine(self.cfg, self.journal, self.washer, self.acceptor, self.screen)
        self.sync = self._sync(secret, secrets.get("wifi_password"))
        self.tiers = None  # the server's tier overrides by card (tierlist.py)
        self.card = self._card(secrets)  # before recover(): it settles card payments cut short
        self.qr = None
        self.tokens, self.remote = self._signed_payments(secret)
        del config, secrets
        forget("washpay.config")

    def _card(self, secrets):
        # card payments (payments/card.py) when the board has a reader and the site's card
        # key is provisioned; a reader that does not answer is logged, and coins go on
        b = self.board
        if not b.has_pin("card_cs"):
            return None
        from washpay.payments.wallet import CardKeys, load_card_key

        key = load_card_key(secrets)
        if key is None:
            log("card payments off: /secrets.json has no card_key (washpay provision)")
            return None
        from washpay.cardlists.blacklist import Blacklist
        from washpay.cardlists.tierlist import TierList
        from washpay.drivers.mfrc522 import MFRC522, CardError
        from washpay.payments.card import CardPayment

        reader = MFRC522(b.spi("card_spi"), b.pin_out("card_cs", 1), b.pin_out("card_rst", 1))
        try:
            reader.init()
        except CardError as e:
            log("card payments off:", e)
            return None
        # the server's tier overrides (tierlist.py) are the card's tier where they name it
        self.tiers = TierList()
        return CardPayment(reader, CardKeys(key), self.engine, self.journal, Blacklist(),
                           self.cfg["card"], tiers=self.tiers)

    def _signed_payments(self, secret):
        # QR tokens on the board's scanner (payments/token.py) and remote starts from the
        # server (payments/remote.py): both checked offline, under keys derived from the
        # device secret, each once only (replay.py keeps the used ids in flash)
        from washpay.keys import command_key, token_key
        from washpay.payments.signed import RemoteStart, TokenPayments
        from washpay.replay import ReplayCache

        def trusted():
            return self.journal.clock_trusted

        tokens = None
        if self.board.has_pin("qr_tx"):
            from washpay.drivers.gm65 import GM65

            try:
                self.qr = GM65(self.board.uart("qr"), log=log)
            except (OSError, ValueError, boardmod.BoardError) as e:
                log("QR payments off:", e)
        if self.qr is not None:
            cache = ReplayCache("/used_tokens", 64, trusted=trusted)
            tokens = TokenPayments(self.engine, self.journal, token_key(secret),
                                   self.device_id, cache, log=log)
        # remote starts (paid) and the operator's commands in separate pools (replay.py)
        cache = ReplayCache("/used_commands", 32, admin=16, trusted=trusted)
        remote = RemoteStart(self.engine, self.journal, command_key(secret), self.device_id,
                             cache, log=log)
        if self.sync is not None and self.sync.commands is None:
            # the command topic's dispatcher: remote start is `remote`'s; prices, blacklist,
            # clock and status are the operator's commands (docs/sync.md)
            from washpay.cardlists.blacklist import Blacklist
            from washpay.cardlists.tierlist import TierList
            from washpay.net import Commands

            bl = self.card.blacklist if self.card is not None else Blacklist()
            if self.tiers is None:  # no card reader: the list is kept for when one is fitted
                self.tiers = TierList()
            self.sync.commands = Commands(remote, self.engine, self.journal,
                                          command_key(secret), self.device_id, blacklist=bl,
                                          board=self.board, status=self.status, log=log,
                                          tiers=self.tiers)
        return tokens, remote

    async def _scanner(self):
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

    def _sync(self, secret, wifi_password):
        # the journal's way to the operator's server (docs/sync.md), when a broker is set;
        # a sync that cannot start is logged, and the machine takes payments regardless
        if not self.cfg.get("broker"):
            return None
        from washpay.net import Sync

        try:
            return Sync(self.board.wlan(), self.cfg, secret, self.journal, self.device_id,
                        wifi_password=wifi_password, log=log)
        except (OSError, ValueError, ImportError) as e:
            log("sync disabled:", e)
            return None

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
        # a token or remote start journaled just before a power cut, whose id did not reach
        # its replay cache, is put there before boot recovery journals anything
        last = self.journal.last()
        for src in (self.tokens, self.remote):
            if src is not None:
                src.recover(last)
        await self.engine.recover(self.board.reset_cause())
        if self.card:
            self._restore_card_risk()
        for src in (self.tokens, self.remote):
            if src is not None and src.cache.damaged:
                from washpay.journal import records as R

                self.journal.append(R.FAULT, reason="replay cache damaged: " + src.cache.path)
        if self.tiers is not None and self.tiers.error:  # the board sells on without it
            from washpay.journal import JournalError
            from washpay.journal import records as R

            try:
                self.journal.append(R.FAULT, reason=self.tiers.error)
            except JournalError:
                pass
        if self.config_error:
            log("config refused:", self.config_error)
            self.engine.out_of_order("config: " + self.config_error)
        # The acceptor stays inhibited until the sampler has watched a quiet line for a
        # whole end-of-train gap: a train already under way at boot cannot be decoded.
        asyncio.create_task(self.acceptor.run(self.engine.on_coin))
        await asyncio.sleep_ms(self.cfg["coins"]["end_ms"] + 50)
        self.engine.update_inhibit()
        asyncio.create_task(self.keypad.run(self.engine.on_button))
        if self.card:
            asyncio.create_task(self.card.run())
        if self.tokens:
            asyncio.create_task(self._scanner())
        port = self.board.command_port()
        if port is not None:
            asyncio.create_task(self.remote.serve(port))
        if self.sync:
            self.sync.start()  # its own task: nothing on the payment path awaits it
        self.board.attach_status(self.status)
        log("ready; journal", self.journal.count, "records, credit", self.engine.credit)
        # one machine-readable line: `washpay provision` reads it to see the board came up
        log("boot", json.dumps(self.boot_report()))
        await self.watchdog()

    def _restore_card_risk(self):
        # the card risk counters from the journal's newest records (recovery's included),
        # before any tap and before the coin task shares the CPU with the reads; a bug in
        # there must not keep the board from booting (it would reset for ever)
        try:
            log("card risk:", json.dumps(self.card.restore_risk()))
        except Exception as e:  # noqa: BLE001
            sys.print_exception(e)
            from washpay.journal import JournalError
            from washpay.journal import records as R

            try:
                self.journal.append(R.FAULT, reason="card risk not restored")
            except JournalError:
                pass

    def boot_report(self):
        j = self.journal
        return {
            "device_id": self.device_id, "version": VERSION, "board": self.board.id,
            "reset": self.board.reset_cause(), "state": self.engine.state,
            "config_error": self.config_error,
            "journal": {"count": j.count, "last_seq": j.last_seq, "unsynced": j.unsynced,
                        "level": j.level},
            # a display that failed at start-up is dropped (None); a coin line held active
            # with no coin in it is a wiring fault (short, or a missing pull-up)
            "peripherals": {"display": self.screen.lcd is not None and not self.screen.errors,
                            "coin_line": "active" if self.acceptor.level else "idle"},
        }


def run():
    app = None
    try:
        try:
            app = App()
        except boardmod.BoardError as e:
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
