# The application's start: builds its parts from board.json, config.json and the secrets
# (build), then recovers and starts its tasks (start). Run once at boot and dropped after
# (washpay.forget): nothing built here may hold one of this module's functions (a closure, a
# bound method of its own), or its code stays in the heap for ever.
import asyncio
import json
import sys

from washpay import VERSION, forget
from washpay import board as boardmod
from washpay.app import log
from washpay.chip import Chip
from washpay.drivers.coin_acceptor import CoinAcceptor
from washpay.drivers.keypad import Keypad
from washpay.drivers.washer import Washer
from washpay.journal import Journal
from washpay.payments.coin import PulseTrainDecoder
from washpay.ui import Screen
from washpay.vend.engine import VendEngine


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


def build(app):
    b = boardmod.load()
    # the running app keeps the board's Chip (watchdog, clock, reset); the rest of the
    # board (board.py: pins, buses) is boot's, dropped at the end of start()
    app.board = Chip(b.id)
    app.boot_board = b
    # config.py checks the files once, at boot: it is unloaded after (forget)
    from washpay import config

    app.cfg, app.config_error = config.load()
    secrets = config.load_secrets()
    app.device_id = device_id(app.cfg, b)
    app.screen = Screen(_display(b), app.cfg["decimals"])
    # the journal is sealed with keys derived from this board's provisioned secret
    from washpay.keys import journal_keys, load_device_secret

    secret = load_device_secret(secrets)
    if secret is None:
        raise boardmod.BoardError(
            "%s has no device_secret: provision the board (washpay provision)"
            % config.SECRETS_PATH
        )
    jcfg = app.cfg.get("journal") or {}
    app.journal = Journal(keys=journal_keys(secret), currency=app.cfg["currency"],
                          capacity=jcfg.get("capacity", 6200), warn=jcfg.get("warn"),
                          reserve=jcfg.get("reserve"))
    app.washer = Washer(b.pin_out("relay"), b.pin_in("washer_busy"), b.pin_in("door"),
                        b.washer)
    if app.washer.mode != "power" and not app.config_error and any(
            p.get("mode") == "timed" for p in app.cfg["programs"]):
        # selling time means holding the machine's supply: only a power-switched washer
        app.config_error = "timed program needs washer start_mode power"
    coins = app.cfg["coins"]
    app.decoder = PulseTrainDecoder(coins["table"], coins["pulse_ms"], coins["gap_ms"],
                                    coins["end_ms"], coins["tolerance_pct"])
    app.acceptor = CoinAcceptor(
        b.coin_counter(),
        b.pin_in("coin_pulse"),
        b.pin_out("coin_inhibit", b.inactive_level(b.coin["inhibit_active"])),
        app.decoder,
        active_low=b.coin["pulse_active"] == "low",
        inhibit_active_high=b.coin["inhibit_active"] == "high",
        stuck_ms=app.cfg["risk"]["stuck_ms"],
        inhibit_grace_ms=app.cfg["risk"]["inhibit_grace_ms"],
    )
    app.keypad = Keypad({"start": b.button("btn_start"), "select": b.button("btn_select")})
    app.engine = VendEngine(app.cfg, app.journal, app.washer, app.acceptor, app.screen)
    app.sync = _sync(app, secret, secrets.get("wifi_password"))
    app.tiers = None  # the server's tier overrides by card (tierlist.py)
    app.card = _card(app, secrets)  # before recover(): it settles card payments cut short
    app.qr = None
    app.update = None  # an update: its Updater while it runs, then its last status
    app.tokens, app.remote = _signed_payments(app, secret)
    del config, secrets
    forget("washpay.config")
    forget("washpay.keys")  # every key is derived (net keeps its `derive`)


def _card(app, secrets):
    # card payments (payments/card.py) when the board has a reader and the site's card
    # key is provisioned; a reader that does not answer is logged, and coins go on
    b = app.boot_board
    if not b.has_pin("card_cs"):
        return None
    from washpay.keys import load_secret
    from washpay.payments.card_state import CardKeys

    key = load_secret(secrets, "card_key")
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
    app.tiers = TierList()
    return CardPayment(reader, CardKeys(key), app.engine, app.journal, Blacklist(),
                       app.cfg["card"], tiers=app.tiers)


def _signed_payments(app, secret):
    # QR tokens on the board's scanner (payments/token.py) and remote starts from the
    # server (payments/remote.py): both checked offline, under keys derived from the
    # device secret, each once only (replay.py keeps the used ids in flash)
    from washpay.keys import command_key, token_key
    from washpay.payments.signed import RemoteStart, TokenPayments
    from washpay.replay import ReplayCache

    trusted = app.clock_trusted  # not a function of this module's: it is dropped
    tokens = None
    if app.boot_board.has_pin("qr_tx"):
        from washpay.drivers.gm65 import GM65

        try:
            app.qr = GM65(app.boot_board.uart("qr"), log=log)
        except (OSError, ValueError, boardmod.BoardError) as e:
            log("QR payments off:", e)
    if app.qr is not None:
        cache = ReplayCache("/used_tokens", 64, trusted=trusted)
        tokens = TokenPayments(app.engine, app.journal, token_key(secret), app.device_id,
                               cache, log=log)
    # remote starts (paid) and the operator's commands in separate pools (replay.py)
    cache = ReplayCache("/used_commands", 32, admin=16, trusted=trusted)
    remote = RemoteStart(app.engine, app.journal, command_key(secret), app.device_id, cache,
                         log=log)
    if app.sync is not None and app.sync.commands is None:
        # the command topic's dispatcher: remote start is `remote`'s; prices, blacklist,
        # clock and status are the operator's commands (docs/sync.md)
        from washpay.cardlists.blacklist import Blacklist
        from washpay.cardlists.tierlist import TierList
        from washpay.net import Commands

        bl = app.card.blacklist if app.card is not None else Blacklist()
        if app.tiers is None:  # no card reader: the list is kept for when one is fitted
            app.tiers = TierList()
        app.sync.commands = Commands(remote, app.engine, app.journal, command_key(secret),
                                     app.device_id, blacklist=bl, board=app.board,
                                     status=app.status, log=log, tiers=app.tiers,
                                     update=app.offer)
    return tokens, remote


def _sync(app, secret, wifi_password):
    # the journal's way to the operator's server (docs/sync.md), when a broker is set;
    # a sync that cannot start is logged, and the machine takes payments regardless
    if not app.cfg.get("broker"):
        return None
    from washpay.net import Sync

    try:
        return Sync(app.boot_board.wlan(), app.cfg, secret, app.journal, app.device_id,
                    wifi_password=wifi_password, log=log)
    except (OSError, ValueError, ImportError) as e:
        log("sync disabled:", e)
        return None


async def start(app):
    b = app.boot_board
    log("version", VERSION, "board", b.id, "device", app.device_id, "reset:", b.reset_cause())
    # a token or remote start journaled just before a power cut, whose id did not reach
    # its replay cache, is put there before boot recovery journals anything
    last = app.journal.last()
    for src in (app.tokens, app.remote):
        if src is not None:
            src.recover(last)
    await app.engine.recover(b.reset_cause())
    if app.card:
        _restore_card_risk(app)
    for src in (app.tokens, app.remote):
        if src is not None and src.cache.damaged:
            from washpay.journal import records as R

            app.journal.append(R.FAULT, reason="replay cache damaged: " + src.cache.path)
    if app.tiers is not None and app.tiers.error:  # the board sells on without it
        from washpay.journal import JournalError
        from washpay.journal import records as R

        try:
            app.journal.append(R.FAULT, reason=app.tiers.error)
        except JournalError:
            pass
    if app.config_error:
        log("config refused:", app.config_error)
        app.engine.out_of_order("config: " + app.config_error)
    # The acceptor stays inhibited until the sampler has watched a quiet line for a
    # whole end-of-train gap: a train already under way at boot cannot be decoded.
    asyncio.create_task(app.acceptor.run(app.engine.on_coin))
    await asyncio.sleep_ms(app.cfg["coins"]["end_ms"] + 50)
    app.engine.update_inhibit()
    asyncio.create_task(app.keypad.run(app.engine.on_button))
    if app.card:
        asyncio.create_task(app.card.run())
    if app.tokens:
        asyncio.create_task(app.scanner())
    port = b.command_port()
    if port is not None:
        asyncio.create_task(app.remote.serve(port))
    if app.sync:
        app.sync.start()  # its own task: nothing on the payment path awaits it
    if "bootslot" in sys.modules:  # the loader has news: a rollback, a trial, a resume
        from washpay import updates

        updates.on_boot(app, sys.modules["bootslot"])
    b.attach_status(app.status)
    log("ready; journal", app.journal.count, "records, credit", app.engine.credit)
    # one machine-readable line: `washpay provision` reads it to see the board came up
    log("boot", json.dumps(boot_report(app)))
    # None, not del: MicroPython keeps a deleted attribute's value in the instance's table
    # (until the slot is reused), and with it the Board, its class and all of board.py
    app.boot_board = b = None
    forget("washpay.board")
    # the config's parts only boot reads: the decoder and the journal hold their own
    app.cfg.pop("coins", None)
    app.cfg.pop("journal", None)


def _restore_card_risk(app):
    # the card risk counters from the journal's newest records (recovery's included),
    # before any tap and before the coin task shares the CPU with the reads; a bug in
    # there must not keep the board from booting (it would reset for ever)
    try:
        log("card risk:", json.dumps(app.card.restore_risk()))
    except Exception as e:  # noqa: BLE001
        sys.print_exception(e)
        from washpay.journal import JournalError
        from washpay.journal import records as R

        try:
            app.journal.append(R.FAULT, reason="card risk not restored")
        except JournalError:
            pass


def boot_report(app):
    j = app.journal
    return {
        "device_id": app.device_id, "version": VERSION, "board": app.board.id,
        "reset": app.boot_board.reset_cause(), "state": app.engine.state,
        "config_error": app.config_error,
        "journal": {"count": j.count, "last_seq": j.last_seq, "unsynced": j.unsynced,
                    "level": j.level},
        # a display that failed at start-up is dropped (None); a coin line held active
        # with no coin in it is a wiring fault (short, or a missing pull-up)
        "peripherals": {"display": app.screen.lcd is not None and not app.screen.errors,
                        "coin_line": "active" if app.acceptor.level else "idle"},
    }
