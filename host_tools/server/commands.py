"""The server's commands to a board (docs/sync.md "Commands"), built with `cryptography`.

Remote start is docs/remote-start.md's command, built by host_tools/token.py; the
operator's commands (prices, blacklist, clock, status) share its header, key and tag:

    0x12 | command id (8) | nonce (8) | device hash (4) | issued u32 | expires u32 | action
    | body length u16 | body | HMAC-SHA256(command key, everything before)[:16]
"""

import hashlib
import hmac
import os
import struct
import time

from host_tools import keys as K
from host_tools import token as T

PRICE = 2
BLACKLIST_ADD = 3
BLACKLIST_REMOVE = 4
CLOCK = 5
STATUS = 6
ACTIONS = {"price": PRICE, "blacklist-add": BLACKLIST_ADD, "blacklist-remove": BLACKLIST_REMOVE,
           "clock": CLOCK, "status": STATUS}
HEAD = struct.Struct(">B8s8s4sIIBH")
BLACKLIST_REASONS = ("blocked", "lost", "stolen", "replaced", "fraud")


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
    if len(body) > 900:
        raise CommandError("command body too long")
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


def clock_body(t=None):
    return struct.pack(">I", int(time.time() if t is None else t))


def build(site_key, device_id, kind, ttl_s=300, issued=None, command_id=None, **args):
    """(command bytes, command id, a description) for `kind`: start, price, blacklist-add,
    blacklist-remove, clock, status."""
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
    else:
        body = b""
    key = command_key(site_key, device_id)
    return operator_command(key, device_id, ACTIONS[kind], body, issued, issued + ttl_s,
                            command_id), command_id
