"""`washpay journal settle --port P --device ID [--db LEDGER] [--upto SEQ]`: tell a board that
has no network that the ledger holds its records, as the server's acknowledgement would.

A site with no network pulls the journal (`washpay journal pull`), brings it to the ledger
(`washpay server import`), and then settles the board, so that it may delete what the
ledger has (docs/journal-format.md, "Capacity and acknowledgement") and so that
`washpay provision --wipe-journal` is no longer refused. Safe by construction:

- the sequence number settled is the ledger's own high-water mark for the device (every
  record up to it stored, the same number the MQTT server acknowledges), or a lower --upto;
- the board acknowledges only if its record at that sequence number is byte for byte the
  ledger's copy (same board, same history: a board rolled back, rewritten or swapped for
  another is refused, nothing changes);
- the board's own Journal.ack does the rest, the code a server's ack runs.

Exit status: 0 settled (or nothing to settle); 1 settled, but the board did not come back;
2 refused, nothing changed on the board.
"""

import json
import sys

from host_tools import provision as P
from host_tools.console import Console, ConsoleError

# run on the board (the firmware stopped): acknowledge up to SEQ if the record there is the
# ledger's copy; one WPSETTLE line says what happened
SETTLE = r"""
import sys, json
from binascii import hexlify
try:
    if sys.platform == "esp32":
        import machine
        machine.WDT(timeout=%(wdt)d).feed()
except Exception:
    pass
from washpay import config
from washpay.keys import journal_keys, load_device_secret
from washpay.journal import Journal
_cfg, _err = config.load()
_j = Journal(keys=journal_keys(load_device_secret(config.load_secrets())))
_seq = %(seq)d
_r = {"device_id": _cfg["device_id"], "last_seq": _j.last_seq, "synced": _j.synced_seq}
if _seq > _j.last_seq:
    _r["result"] = "ahead"
elif _seq <= _j.synced_seq:
    _r["result"] = "already"
else:
    _rec = None
    _g = _j.sealed(_seq - 1)
    for _s, _b in _g:
        if _s == _seq:
            _rec = hexlify(_b).decode()
        break
    _g.close()
    if _rec is None:
        _r["result"] = "missing"
    elif _rec != %(raw)r:
        _r["result"] = "differs"
    else:
        _j.ack(_seq)
        _r["result"] = "settled"
        _r["synced"] = _j.synced_seq
print("WPSETTLE " + json.dumps(_r))
"""


class SettleRefused(Exception):
    pass


def ledger_record(db, device, upto=None):
    """(seq to settle, its raw record) from the ledger."""
    from host_tools.server.cli import _ledger

    try:
        store = _ledger(db)
    except ValueError as e:
        raise SettleRefused(str(e)) from None
    try:
        rows = store.query("SELECT high_seq FROM devices WHERE device = ?", (device,))
        high = rows[0][0] if rows else 0
        if not high:
            raise SettleRefused(f"the ledger {db} holds no record of {device}: bring the pulled "
                                f"journal to it first (washpay server import DIR --device "
                                f"{device})")
        seq = high if upto is None else upto
        if not 1 <= seq <= high:
            raise SettleRefused(f"--upto {seq}: the ledger holds every record of {device} "
                                f"only up to {high}")
        raw = store.query("SELECT raw FROM records WHERE device = ? AND seq = ?",
                          (device, seq))[0][0]
    finally:
        store.close()
    return seq, bytes(raw)


def settle(port, db, device, upto=None, reset=True, timeout=30.0, say=print):
    seq, raw = ledger_record(db, device, upto)
    P.check_port(port)
    script = SETTLE % {"wdt": P.MAINTENANCE_WDT_MS, "seq": seq, "raw": raw.hex()}
    try:
        out = P.mpremote(port, "exec", script, resume=False)
        line = [x for x in out.splitlines() if x.startswith("WPSETTLE ")]
        if not line:
            raise SettleRefused(f"the board did not answer: {out.strip()[-200:]}")
        r = json.loads(line[-1][len("WPSETTLE "):])
        if r["device_id"] and r["device_id"] != device:
            # the record check below would refuse it too; this says why in plain words
            raise SettleRefused(f"the board at {port} is {r['device_id']}, not {device}")
        why = {
            "ahead": f"the ledger holds {device} up to {seq}, but the board's newest record is "
                     f"{r['last_seq']}: a board rolled back or replaced; nothing settled",
            "missing": f"the board has no record {seq} (damaged journal): nothing settled",
            "differs": f"the board's record {seq} is not the ledger's copy: another history "
                       "(rolled back, rewritten, or another board); nothing settled",
        }.get(r["result"])
        if why:
            raise SettleRefused(why)
    except (SettleRefused, P.Refused):
        if reset:
            _restart(port, timeout)
        raise
    if r["result"] == "already":
        say(f"  the board had already settled up to {r['synced']}: nothing to do")
    else:
        say(f"  settled: {device} records up to {seq} are in the ledger; the board's cursor "
            f"is {r['synced']} ({r['last_seq'] - r['synced']} record(s) not yet in the ledger)")
    if reset:
        report = _restart(port, timeout)
        if report is None:
            raise P.NotUp(f"the board at {port} did not report its boot within {timeout:g} s")
        say(f"  boot:     {P.boot_text(report)}")
    return r


def _restart(port, timeout):
    try:
        with Console(port) as con:
            return con.reset_and_wait_boot(timeout)
    except ConsoleError:
        return None


def settle_command(args, out=None, err=None):
    out = out or sys.stdout
    err = err or sys.stderr

    def say(text):
        out.write(text + "\n")
        out.flush()

    try:
        settle(args.port, args.db, args.device, args.upto, not args.no_reset, args.timeout, say)
    except (SettleRefused, P.Refused) as e:
        err.write(f"washpay journal settle: {e}\n")
        return 2
    except P.NotUp as e:
        err.write(f"washpay journal settle: {e}\n")
        return 1
    return 0


def add_parser(journal_sub):
    import os

    p = journal_sub.add_parser(
        "settle", help="tell a board without network that the ledger holds its records",
        description="After washpay journal pull and washpay server import: the board "
        "acknowledges what the ledger holds (checked record for record), as the server's "
        "MQTT ack would; it may then delete those records, and provision --wipe-journal "
        "is no longer refused. Exit status 0: settled; 1: settled, board not back; 2: "
        "refused, nothing changed.")
    p.add_argument("--port", required=True, help="serial port of the board (or STATE/console)")
    p.add_argument("--device", required=True, help="the board's device id")
    p.add_argument("--db", default=os.environ.get("WASHPAY_DB", "ledger.db"),
                   help="the ledger the journal was imported into")
    p.add_argument("--upto", type=int, default=None, metavar="SEQ",
                   help="settle only up to this record (default: all the ledger holds)")
    p.add_argument("--no-reset", action="store_true",
                   help="leave the board at the REPL instead of restarting the firmware")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for the board to come back up")
    p.set_defaults(func=settle_command)
