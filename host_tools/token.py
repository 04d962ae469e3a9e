"""`washpay token`: QR tokens and remote-start commands, as the operator's server issues them.

An independent implementation of docs/token-format.md and docs/remote-start.md with
`cryptography` (the firmware has its own, in washpay/payments/); the shared vectors in those
pages pin both. The server imports issue_token() / build_command() from here.

    washpay token issue --device sim-0001 --program quick --ttl 30m --png quick.png
    washpay token decode WP:... --device sim-0001
    washpay token command --device sim-0001 --program quick --ttl 5m

(cli.py defines the command line; the *_command functions below do the work.)
"""

import base64
import hashlib
import os
import struct
import sys
import time
from datetime import datetime, timezone

from cryptography.hazmat.primitives import constant_time, hashes, hmac

from host_tools import keys as K

PREFIX = "WP:"
VERSION = 1
KIND_TOKEN = 1
KIND_COMMAND = 2
ID_LEN = 8
NONCE_LEN = 8
DEVICE_HASH_LEN = 4
TOKEN_TAG_LEN = 12  # 96 bits
COMMAND_TAG_LEN = 16
PROGRAM_MAX = 10
AMOUNT_MAX = 0xFFFFFF
MAX_VALIDITY_S = 7 * 24 * 3600
ACTION_START = 1
TOKEN_HEAD = struct.Struct(">B8s4sII3sB")  # kind, id, device hash, issued, expires, amount, len
COMMAND_HEAD = struct.Struct(">B8s8s4sIIB3sB")  # + nonce, action
# QR alphanumeric mode: the text must use only these characters
QR_ALPHANUMERIC = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")


class TokenError(ValueError):
    """A token or command that cannot be issued or does not verify; the message says why."""


def device_hash(device_id):
    return hashlib.sha256(device_id.encode()).digest()[:DEVICE_HASH_LEN]


def _tag(key, data, n):
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()[:n]


def _program(program):
    raw = program.encode()
    if not 1 <= len(raw) <= PROGRAM_MAX:
        raise TokenError(f"program name {program!r} must be 1 to {PROGRAM_MAX} bytes of UTF-8")
    return raw


def _window(issued, expires):
    if not 0 <= issued < expires <= 0xFFFFFFFF:
        raise TokenError("a token needs issued < expires, both 32-bit Unix times")
    if expires - issued > MAX_VALIDITY_S:
        raise TokenError("boards refuse tokens valid for more than 7 days: use a shorter --ttl")


def _amount(amount):
    if not 0 <= amount <= AMOUNT_MAX:
        raise TokenError(f"amount must be 0 (the machine's price) to {AMOUNT_MAX} minor units")
    return amount.to_bytes(3, "big")


def encode_token(key, device_id, program, issued, expires, amount=0, token_id=None):
    """The token text ("WP:" + base32) for one board, under that board's token key."""
    token_id = os.urandom(ID_LEN) if token_id is None else bytes(token_id)
    if len(token_id) != ID_LEN:
        raise TokenError(f"a token id is {ID_LEN} bytes")
    _window(issued, expires)
    name = _program(program)
    body = TOKEN_HEAD.pack(VERSION << 4 | KIND_TOKEN, token_id, device_hash(device_id), issued,
                           expires, _amount(amount), len(name)) + name
    raw = body + _tag(key, body, TOKEN_TAG_LEN)
    return PREFIX + base64.b32encode(raw).decode().rstrip("=")


def issue_token(site_key, device_id, program, ttl_s, amount=0, issued=None, token_id=None):
    """(text, token id) of a new token for `device_id`, valid for ttl_s from `issued`."""
    issued = int(time.time()) if issued is None else int(issued)
    key = K.token_key(K.device_secret(site_key, device_id))
    token_id = os.urandom(ID_LEN) if token_id is None else token_id
    text = encode_token(key, device_id, program, issued, issued + int(ttl_s), amount, token_id)
    return text, token_id


def _b32(text):
    body = text[len(PREFIX):]
    if not body or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" for c in body):
        raise TokenError("not base32 (A-Z, 2-7) after the WP: prefix")
    raw = base64.b32decode(body + "=" * (-len(body) % 8))
    if base64.b32encode(raw).decode().rstrip("=") != body:
        raise TokenError("not the canonical base32 of any token (stray bits or length)")
    return raw


def decode_token(text, key=None, device_id=None):
    """The token's fields as a dict; with key and device id, also whether it verifies
    ("device_ok", "tag_ok"). TokenError if it is not a token at all."""
    if not text.startswith(PREFIX):
        raise TokenError("not a washpay token (no WP: prefix)")
    raw = _b32(text)
    if len(raw) < TOKEN_HEAD.size + 1 + TOKEN_TAG_LEN:
        raise TokenError("too short for a token")
    kind, tid, dev, issued, expires, amount, plen = TOKEN_HEAD.unpack_from(raw)
    if kind != VERSION << 4 | KIND_TOKEN:
        raise TokenError(f"unknown token version/kind byte 0x{kind:02x}")
    if not 1 <= plen <= PROGRAM_MAX or len(raw) != TOKEN_HEAD.size + plen + TOKEN_TAG_LEN:
        raise TokenError("length does not match the program name's length")
    end = TOKEN_HEAD.size + plen
    out = {
        "token_id": tid.hex(),
        "device_hash": dev.hex(),
        "issued": issued,
        "expires": expires,
        "amount": int.from_bytes(amount, "big"),
        "program": raw[TOKEN_HEAD.size:end].decode("utf-8", "replace"),
        "chars": len(text),
        "bytes": len(raw),
    }
    if key is not None:
        out["device_ok"] = device_id is None or dev == device_hash(device_id)
        out["tag_ok"] = constant_time.bytes_eq(_tag(key, raw[:end], TOKEN_TAG_LEN), raw[end:])
    return out


def build_command(key, device_id, program, issued, expires, amount=0, command_id=None,
                  nonce=None, action=ACTION_START):
    """The bytes of one remote-start command for `device_id` (docs/remote-start.md)."""
    command_id = os.urandom(ID_LEN) if command_id is None else bytes(command_id)
    nonce = os.urandom(NONCE_LEN) if nonce is None else bytes(nonce)
    if len(command_id) != ID_LEN or len(nonce) != NONCE_LEN:
        raise TokenError(f"command id and nonce are {ID_LEN} bytes each")
    _window(issued, expires)
    name = _program(program)
    body = COMMAND_HEAD.pack(VERSION << 4 | KIND_COMMAND, command_id, nonce,
                             device_hash(device_id), issued, expires, action, _amount(amount),
                             len(name)) + name
    return body + _tag(key, body, COMMAND_TAG_LEN)


def remote_start(site_key, device_id, program, ttl_s=300, amount=0, issued=None,
                 command_id=None):
    """(command bytes, command id): what the server sends after an app payment clears."""
    issued = int(time.time()) if issued is None else int(issued)
    key = K.command_key(K.device_secret(site_key, device_id))
    command_id = os.urandom(ID_LEN) if command_id is None else command_id
    cmd = build_command(key, device_id, program, issued, issued + int(ttl_s), amount,
                        command_id)
    return cmd, command_id


def decode_command(payload, key=None, device_id=None):
    """A command's fields as a dict (and "tag_ok" with a key); TokenError if malformed."""
    n = COMMAND_HEAD.size
    if len(payload) < n + 1 + COMMAND_TAG_LEN:
        raise TokenError("too short for a remote-start command")
    kind, cid, nonce, dev, issued, expires, action, amount, plen = COMMAND_HEAD.unpack_from(
        payload)
    if kind != VERSION << 4 | KIND_COMMAND:
        raise TokenError(f"unknown command version/kind byte 0x{kind:02x}")
    if not 1 <= plen <= PROGRAM_MAX or len(payload) != n + plen + COMMAND_TAG_LEN:
        raise TokenError("length does not match the program name's length")
    out = {
        "command_id": cid.hex(), "nonce": nonce.hex(), "device_hash": dev.hex(),
        "issued": issued, "expires": expires, "action": action,
        "amount": int.from_bytes(amount, "big"),
        "program": payload[n:n + plen].decode("utf-8", "replace"),
    }
    if key is not None:
        out["device_ok"] = device_id is None or dev == device_hash(device_id)
        out["tag_ok"] = constant_time.bytes_eq(
            _tag(key, payload[:n + plen], COMMAND_TAG_LEN), payload[n + plen:])
    return out


def parse_ttl(text):
    """"30m", "2h", "90s", "1d" or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            value = int(t[:-1]) * units[t[-1]]
        else:
            value = int(t)
    except ValueError:
        raise TokenError(f"--ttl {text!r}: use seconds or a number with s, m, h or d") from None
    if not 0 < value <= MAX_VALIDITY_S:
        raise TokenError(f"--ttl {text!r}: must be more than 0 and at most 7d")
    return value


def qr_code(text):
    """The QR symbol for a token (alphanumeric mode, error correction M)."""
    import segno

    if set(text) - QR_ALPHANUMERIC:
        raise TokenError("token text is not QR alphanumeric")
    return segno.make_qr(text, error="m", boost_error=False)


def _when(t):
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ---- the command line
def _site_key(args):
    from host_tools import site

    key, _ = site.load(args.site_key, getattr(args, "passphrase_file", None))
    return key


def issue_command(args, out=None, err=None):
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        ttl = parse_ttl(args.ttl)
        key = _site_key(args)
        text, tid = issue_token(key, args.device, args.program, ttl, amount=args.amount or 0,
                                issued=args.issued)
        qr = qr_code(text)
        if args.png:
            qr.save(args.png, scale=args.scale, border=4)
    except (TokenError, K.KeyFileError, OSError) as e:
        print(f"washpay token issue: {e}", file=err)
        return 2
    info = decode_token(text)
    print(text, file=out)
    amount = info["amount"] or "the machine's price"
    print(f"token {tid.hex()} for {args.device}: {args.program}, amount {amount}, valid "
          f"{_when(info['issued'])} to {_when(info['expires'])}; {len(text)} characters, "
          f"QR version {qr.designator} ({qr.mode})"
          + (f"; PNG written to {args.png}" if args.png else ""), file=err)
    if args.show:
        qr.terminal(out=out, compact=True)
    return 0


def decode_command_line(args, out=None, err=None):
    out = out or sys.stdout
    err = err or sys.stderr
    import json

    try:
        key = None
        if args.device:
            key = K.token_key(K.device_secret(_site_key(args), args.device))
        info = decode_token(args.text.strip(), key, args.device)
    except (TokenError, K.KeyFileError) as e:
        print(f"washpay token decode: {e}", file=err)
        return 2
    print(json.dumps(info, indent=1), file=out)
    if key is not None and not (info["tag_ok"] and info["device_ok"]):
        print("washpay token decode: the token does NOT verify for this device", file=err)
        return 1
    return 0


def command_command(args, out=None, err=None):
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        ttl = parse_ttl(args.ttl)
        cmd, cid = remote_start(_site_key(args), args.device, args.program, ttl,
                                amount=args.amount or 0, issued=args.issued)
    except (TokenError, K.KeyFileError) as e:
        print(f"washpay token command: {e}", file=err)
        return 2
    print(cmd.hex(), file=out)
    print(f"remote start {cid.hex()} for {args.device}: {args.program}, valid {ttl} s "
          f"({len(cmd)} bytes)", file=err)
    return 0
