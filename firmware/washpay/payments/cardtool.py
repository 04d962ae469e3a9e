# Card operations run by the host tools through this board's own reader (`washpay card
# issue|topup|read` over mpremote). The host computes every key, block and MAC with its own
# implementation of docs/wallet-format.md and verifies what comes back; this runs the RF
# steps it sends, in order, and stops at the first that fails:
#
#   ["site", site_id_hex]                 this board's card key must make this site id (the
#                                         host's key is the board's): refused otherwise
#   ["select", uid_hex | None, wait_ms]   wait for a card (WUPA: halted cards too) and select
#   ["auth", block, "A" | "B", key_hex]
#   ["read", block]                       -> reads[block] = hex
#   ["expect", block, hex]                the card must still hold exactly this
#   ["write", block, hex]
#   ["halt"]
#   ["journal", record type, fields]      append to this board's journal (source as hex)
#
# The result is one line: WPCARD {"ok": true, "uid": ..., "reads": {...}, "journal": seq}
# or {"ok": false, "step": i, "kind": "NoCard" | "CardLeftMidWrite" | ..., "error": text}.
# Loaded only when the host asks: the firmware's card payments do not need it.
import json
import time
from binascii import hexlify, unhexlify

from washpay.drivers import mifare as M
from washpay.drivers.mfrc522 import CardError
from washpay.drivers.mifare import NoCard


class StepError(Exception):
    pass


class SiteMismatch(StepError):
    """The host's card key is not this board's: nothing may be written or journaled."""


def _same_site(site_hex):
    """The site id (docs/wallet-format.md: public, on every card of the site) that this
    board's card key makes must be the one the host's key makes: a key check that keeps the
    board's key on the board and tells a wrong --site-key before any write or record."""
    from washpay import config
    from washpay.payments.wallet import CardKeys, load_card_key

    key = load_card_key(config.load_secrets())
    if key is None:
        raise SiteMismatch("this board has no card key (/secrets.json card_key): provision "
                           "it with the site key")
    mine = hexlify(CardKeys(key).site_id).decode()
    if mine != site_hex:
        raise SiteMismatch("the site key is not this board's (its cards are of site %s, the "
                           "key given makes site %s): check --site-key" % (mine, site_hex))


def _select(reader, uid, wait_ms, result):
    deadline = time.ticks_add(time.ticks_ms(), wait_ms)
    while True:
        try:
            sak = M.activate(reader, True)
            break
        except NoCard:
            if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                raise NoCard("no card on the reader")
            time.sleep_ms(50)
    got = hexlify(bytes(reader.uid[: reader.uid_len])).decode()
    if uid and got != uid:
        raise StepError("another card (%s) is on the reader, not %s" % (got, uid))
    result["uid"] = got
    result["sak"] = sak


def execute(reader, steps, journal=None):
    """Run `steps` with `reader`; `journal(rtype, fields)` appends a record. -> result dict."""
    result = {"ok": True, "reads": {}, "done": 0}
    buf = bytearray(16)
    for i, step in enumerate(steps):
        op = step[0]
        try:
            if op == "site":
                _same_site(step[1])
            elif op == "select":
                _select(reader, step[1], step[2] if len(step) > 2 else 0, result)
            elif op == "auth":
                M.auth(reader, step[1], unhexlify(step[3]), step[2] == "B")
            elif op == "read":
                M.read_block(reader, step[1], buf)
                result["reads"][str(step[1])] = hexlify(buf).decode()
            elif op == "expect":
                M.read_block(reader, step[1], buf)
                if bytes(buf) != unhexlify(step[2]):
                    raise StepError("block %d changed since it was read" % step[1])
            elif op == "write":
                M.write_block(reader, step[1], unhexlify(step[2]))
            elif op == "halt":
                reader.halt()
            elif op == "journal":
                if journal is None:
                    raise StepError("no journal on this board")
                result["journal"] = journal(step[1], step[2])
            else:
                raise StepError("unknown card step %r" % op)
        except (CardError, StepError, ValueError, OSError) as e:
            result["ok"] = False
            result["step"] = i
            result["op"] = op
            result["kind"] = type(e).__name__
            result["error"] = str(e)
            return result
        result["done"] = i + 1
    return result


def _journal_appender():
    from washpay import config
    from washpay.journal import Journal
    from washpay.journal import records as R
    from washpay.keys import journal_keys, load_device_secret

    cfg, _ = config.load()
    secret = load_device_secret(config.load_secrets())
    if secret is None:
        return None
    jcfg = cfg.get("journal") or {}
    j = Journal(keys=journal_keys(secret), currency=cfg["currency"],
                capacity=jcfg.get("capacity", 6200), warn=jcfg.get("warn"),
                reserve=jcfg.get("reserve"))

    def append(rtype, fields):
        last = j.last()
        if last is not None and last.get("state") == R.STARTING:
            # the record would carry a vend in progress: boot recovery must see that one
            raise StepError("a vend is starting on this board: let it finish, then retry")
        f = dict(fields)
        if "source" in f:
            f["source"] = unhexlify(f["source"])
        return j.append(rtype, **f)

    return append


def run(steps):
    """Entry point for `mpremote exec`: this board's reader, its journal, one result line."""
    from washpay import board as boardmod
    from washpay.drivers.mfrc522 import MFRC522

    try:
        b = boardmod.load()
        reader = MFRC522(b.spi("card_spi"), b.pin_out("card_cs", 1), b.pin_out("card_rst", 1))
        reader.init()
        journal = None
        if any(s[0] == "journal" for s in steps):
            journal = _journal_appender()
        result = execute(reader, steps, journal)
    except (CardError, boardmod.BoardError, OSError) as e:
        result = {"ok": False, "step": -1, "kind": type(e).__name__, "error": str(e)}
    print("WPCARD " + json.dumps(result))
