"""The server's commands to a board (docs/sync.md "Commands"), built with `cryptography`.

Remote start is docs/remote-start.md's command, built by host_tools/token.py; the
operator's commands (prices, price table, blacklist, clock, status, tier overrides) share
its header, key and tag:

    0x12 | command id (8) | nonce (8) | device hash (4) | issued u32 | expires u32 | action
    | body length u16 | body | HMAC-SHA256(command key, everything before)[:16]

A price table is checked before it is sent by the board's own validator
(firmware/washpay/config.py and pricing.py) under the board's interpreter, micropython:
one definition of a valid table, and no firmware module imported into this process.
"""

import hashlib
import hmac
import json
import os
import struct
import subprocess
import time
from pathlib import Path

from host_tools import keys as K
from host_tools import token as T

PRICE = 2
BLACKLIST_ADD = 3
BLACKLIST_REMOVE = 4
CLOCK = 5
STATUS = 6
PRICE_TABLE = 7
TIERS = 8
UPDATE = 9  # the offer of a firmware release (docs/ota.md)
ACTIONS = {"price": PRICE, "blacklist-add": BLACKLIST_ADD, "blacklist-remove": BLACKLIST_REMOVE,
           "clock": CLOCK, "status": STATUS, "price-table": PRICE_TABLE, "tiers": TIERS,
           "update": UPDATE}
HEAD = struct.Struct(">B8s8s4sIIBH")
# the longest command a board takes (firmware/washpay/net/__init__.py COMMAND_MAX), and so
# the longest body: a longer command is refused unread ("command too long")
COMMAND_MAX = 1024
BODY_MAX = COMMAND_MAX - HEAD.size - T.COMMAND_TAG_LEN  # 976
FIRMWARE_DIR = Path(__file__).resolve().parents[2] / "firmware"
BLACKLIST_REASONS = ("blocked", "lost", "stolen", "replaced", "fraud")
TIER_LEN = 8  # a tier name: the price table's key, as in the card header (wallet-format.md)
TIERS_MAX = 255  # cards in one tiers command (its count is one byte)


class CommandError(ValueError):
    """A command that cannot be built; the message says what is wrong."""


def command_key(site_key, device_id):
    return K.command_key(K.device_secret(site_key, device_id))


def operator_command(key, device_id, action, body, issued, expires, command_id=None,
                     nonce=None):
    command_id = os.urandom(T.ID_LEN) if command_id is None else bytes(command_id)
    nonce = os.urandom(T.NONCE_LEN) if nonce is None else bytes(nonce)
    if len(command_id) != T.ID_LEN or len(nonce) != T.NONCE_LEN:
        raise CommandError("command id and nonce are 8 bytes each")
    if not issued < expires <= issued + T.MAX_VALIDITY_S:
        raise CommandError("a command is valid for 1 s to 7 days")
    if len(body) > BODY_MAX:
        raise CommandError(f"command body of {len(body)} bytes: a board takes at most "
                           f"{BODY_MAX}")
    head = HEAD.pack(T.VERSION << 4 | T.KIND_COMMAND, command_id, nonce,
                     T.device_hash(device_id), issued, expires, action, len(body))
    msg = head + body
    return msg + hmac.new(key, msg, hashlib.sha256).digest()[: T.COMMAND_TAG_LEN]


def _name(text, what="program"):
    b = text.encode()
    if not 1 <= len(b) <= 10:
        raise CommandError(f"{what} {text!r}: 1 to 10 bytes")
    return bytes([len(b)]) + b


def price_body(prices):
    """{program: price in minor units}."""
    if not 1 <= len(prices) <= 8:
        raise CommandError("1 to 8 programs per price command")
    out = bytes([len(prices)])
    for name, price in prices.items():
        if not 1 <= int(price) <= 0xFFFFFF:
            raise CommandError(f"price {price} of {name}: 1 to 16777215 minor units")
        out += _name(name) + int(price).to_bytes(3, "big")
    return out


# Run under micropython with the firmware importable: the board's checks of a pushed table
# (net/commands.py: the body is a JSON object; the config with it validates as at boot),
# all but its version (newer than the board's own, which only the board knows). Reads
# {"config": {...}, "body": "hex"} on stdin; prints "ok" or what the board would say.
_CHECK = """
import sys, json
from binascii import unhexlify
from washpay import config
req = json.loads(sys.stdin.read())
raw = req["config"]
try:
    new = json.loads(unhexlify(req["body"]))
except ValueError:
    new = None
if not isinstance(new, dict):
    print("malformed body")
else:
    raw["pricing"] = new
    try:
        config.validate(raw)
        print("ok")
    except config.ConfigError as e:
        print(str(e))
"""


def _micropython():
    from host_tools.interp import InterpreterError, micropython

    try:
        return micropython()
    except InterpreterError as e:  # it checks a price table or a config as the board does
        raise CommandError(str(e)) from None


def firmware_check(code, request, what, firmware_dir=FIRMWARE_DIR):
    """Run `code` under micropython with the firmware importable and `request` (JSON) on
    stdin: the board's own rules, and no firmware module in this process. None if its last
    line is "ok", else that line (what the board would say). `what` names the thing checked
    in an error."""
    req = json.dumps(request)
    code = f"import sys\nsys.path.append({str(firmware_dir)!r})\n" + code
    try:
        proc = subprocess.run([_micropython(), "-X", "heapsize=1m", "-c", code], input=req,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CommandError(f"{what} could not be checked: {e}") from None
    out = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not out:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CommandError(f"{what} could not be checked: {detail}")
    return None if out[-1] == "ok" else out[-1]


def check_table(body, config=None, firmware_dir=FIRMWARE_DIR):
    """None if a board with `config` (its config.json as a dict; None: the firmware's
    defaults) takes `body` (a price table as JSON bytes), else what it would say."""
    return firmware_check(_CHECK, {"config": dict(config or {}), "body": bytes(body).hex()},
                          "the price table", firmware_dir)


# a whole config.json as the board reads it at boot (washpay/config.py validate)
_CHECK_CONFIG = """
import sys, json
from washpay import config
try:
    config.validate(json.loads(sys.stdin.read()))
    print("ok")
except config.ConfigError as e:
    print(str(e))
"""


def check_config(config, firmware_dir=FIRMWARE_DIR):
    """None if the firmware takes `config` (a config.json as a dict) at boot, else the reason
    it would give (and go out of order with)."""
    return firmware_check(_CHECK_CONFIG, config, "the config", firmware_dir)


def table_body(table, config=None):
    """The price table (the "pricing" object of config.json, docs/pricing.md) as the body
    of a price-table command: compact UTF-8 JSON, refused here if the board would refuse
    it (checked against `config`, the board's config.json; None: the default programs)."""
    if not isinstance(table, dict):
        raise CommandError("a price table is a JSON object (docs/pricing.md)")
    version = table.get("version", 0)
    if isinstance(version, int) and version < 1:
        raise CommandError("the price table needs a version of 1 or more: a board takes "
                           "only a table newer than its own (docs/sync.md)")
    body = json.dumps(table, separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > BODY_MAX:
        raise CommandError(f"the price table is {len(body)} bytes of JSON; one command "
                           f"holds at most {BODY_MAX}: fewer or shorter rules, tiers or "
                           "names")
    why = check_table(body, config)
    if why:
        raise CommandError(f"price table refused: {why}")
    return body


def _uid(uid):
    b = bytes.fromhex(uid) if isinstance(uid, str) else bytes(uid)
    if not 1 <= len(b) <= 10:
        raise CommandError(f"card UID {uid!r}: 1 to 10 bytes (hex)")
    return bytes([len(b)]) + b


def blacklist_add_body(cards):
    """[(uid hex, reason name, since unix time)]"""
    if not 1 <= len(cards) <= 40:
        raise CommandError("1 to 40 cards per blacklist command")
    out = bytes([len(cards)])
    for uid, reason, since in cards:
        if reason not in BLACKLIST_REASONS:
            raise CommandError(f"reason {reason!r}: one of {', '.join(BLACKLIST_REASONS)}")
        out += _uid(uid) + bytes([BLACKLIST_REASONS.index(reason)]) + struct.pack(">I", since)
    return out


def blacklist_remove_body(uids):
    if not 1 <= len(uids) <= 40:
        raise CommandError("1 to 40 cards per blacklist command")
    return bytes([len(uids)]) + b"".join(_uid(u) for u in uids)


def tier_name(name):
    """A tier name as the board takes it: 1 to 8 printable ASCII bytes, no space."""
    try:
        b = name.encode("ascii") if isinstance(name, str) else bytes(name)
    except UnicodeEncodeError:
        b = b""
    if not 1 <= len(b) <= TIER_LEN or not all(0x21 <= c <= 0x7E for c in b):
        raise CommandError(f"tier {name!r}: 1 to {TIER_LEN} printable ASCII characters, no "
                           "space (a key of the price table's \"tiers\")")
    return b


def _tier_entry(uid, tier):
    t = b"" if tier is None else tier_name(tier)
    return _uid(uid) + bytes([len(t)]) + t


def tiers_body(tiers):
    """{uid hex: tier name, or None to clear the card's override}: one command's body.
    More cards than one command holds: CommandError (tiers_chunks splits them)."""
    if not tiers:
        raise CommandError("a tiers command names at least one card")
    if len(tiers) > TIERS_MAX:
        raise CommandError(f"{len(tiers)} cards in one tiers command: at most {TIERS_MAX}")
    body = bytes([len(tiers)]) + b"".join(_tier_entry(u, t) for u, t in sorted(tiers.items()))
    if len(body) > BODY_MAX:
        raise CommandError(f"{len(tiers)} cards make a {len(body)}-byte tiers body; one "
                           f"command holds {BODY_MAX}: split them (tiers_chunks)")
    return body


def tiers_chunks(tiers):
    """Split {uid hex: tier or None} into dicts that each fit one tiers command, in UID
    order (each entry is checked here: a bad UID or tier name is a CommandError)."""
    chunks = []
    cur, size = {}, 1
    for uid, tier in sorted(tiers.items()):
        n = len(_tier_entry(uid, tier))
        if cur and (size + n > BODY_MAX or len(cur) == TIERS_MAX):
            chunks.append(cur)
            cur, size = {}, 1
        cur[uid] = tier
        size += n
    if cur:
        chunks.append(cur)
    return chunks


def clock_body(t=None):
    return struct.pack(">I", int(time.time() if t is None else t))


def update_body(manifest, signature, version):
    """The offer of a release (docs/ota.md, "The offer"): SHA-256 of manifest.json, the
    release signature (64 bytes), the manifest's size (u16), the version (length, ASCII)."""
    v = version.encode()
    if not 5 <= len(v) <= 16:
        raise CommandError(f"release version {version!r}: 5 to 16 characters")
    if len(signature) != 64:
        raise CommandError("a release signature is 64 bytes")
    if not 1 <= len(manifest) <= 16384:
        raise CommandError(f"a manifest of {len(manifest)} bytes: a board reads 1 to 16384")
    return (hashlib.sha256(manifest).digest() + bytes(signature)
            + struct.pack(">HB", len(manifest), len(v)) + v)


def build(site_key, device_id, kind, ttl_s=300, issued=None, command_id=None, **args):
    """(command bytes, command id) for `kind`: start, price, blacklist-add,
    blacklist-remove, clock, status, price-table (table=, and config= to check it
    against), tiers (tiers={uid hex: tier name or None}), update (manifest=bytes,
    signature=bytes, version=text)."""
    issued = int(time.time()) if issued is None else int(issued)
    command_id = os.urandom(T.ID_LEN) if command_id is None else bytes(command_id)
    if kind == "start":
        cmd, cid = T.remote_start(site_key, device_id, args["program"], ttl_s=ttl_s,
                                  amount=args.get("amount", 0), issued=issued,
                                  command_id=command_id)
        return cmd, cid
    if kind not in ACTIONS:
        raise CommandError(f"unknown command {kind!r}: start, {', '.join(ACTIONS)}")
    if kind == "price":
        body = price_body(args["prices"])
    elif kind == "blacklist-add":
        body = blacklist_add_body(args["cards"])
    elif kind == "blacklist-remove":
        body = blacklist_remove_body(args["uids"])
    elif kind == "clock":
        body = clock_body(args.get("t", issued))
    elif kind == "price-table":
        body = table_body(args["table"], args.get("config"))
    elif kind == "tiers":
        body = tiers_body(args["tiers"])
    elif kind == "update":
        body = update_body(args["manifest"], args["signature"], args["version"])
    else:
        body = b""
    key = command_key(site_key, device_id)
    return operator_command(key, device_id, ACTIONS[kind], body, issued, issued + ttl_s,
                            command_id), command_id
