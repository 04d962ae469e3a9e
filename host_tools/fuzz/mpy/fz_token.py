# QR tokens (payments/token.py TokenVerifier.parse): the host's tokens and fresh ones
# signed here (firmware MacKey) must verify with their fields; any change of a token's text
# or of its bytes (re-encoded) must be refused; garbage must be refused; nothing but Refused
# may come out.
import struct
from binascii import unhexlify

from fzlib import NOT_UTF8, OpenCache, b32encode, below, mutate, name, pick, rbytes, rnd, utf8_ok
from washpay.crypto import MacKey
from washpay.payments.token import MESSAGES, Refused, TokenVerifier, b32decode_into

STATS = {"valid": 0, "forged": 0, "signed_garbage": 0}


def _body(device, prog=None):
    prog = prog or name().encode()
    issued = rnd(32)
    return (b"\x11" + rbytes(8) + device + struct.pack(">II", issued, rnd(32))
            + rbytes(3) + bytes((len(prog),)) + prog)


def run(req, count, found):
    key = unhexlify(req["token_key"])
    v = TokenVerifier(key, req["device"], OpenCache())
    mac = MacKey(key)
    device = v.device
    seeds = [s.encode() for s in req["tokens"]]
    for s in seeds:  # signed by the host with `cryptography`: each must verify
        try:
            v.parse(s)
        except Exception as e:  # noqa: BLE001
            found.add("host token refused", s, repr(e))
    pool = list(seeds)
    for _ in range(count):
        mode = below(8)
        if mode < 2:  # a fresh valid token
            body = _body(device)
            raw = body + mac.mac(body)[:12]
            text = b"WP:" + b32encode(raw)
            STATS["valid"] += 1
            try:
                t = v.parse(text)
                if (t.tid, t.program.encode()) != (body[1:9], body[25:]) or \
                        t.amount != (body[21] << 16 | body[22] << 8 | body[23]):
                    found.add("fields differ", text)
            except Exception as e:  # noqa: BLE001
                found.add("valid refused", text, repr(e))
            if len(pool) < 64:
                pool.append(text)
            else:
                pool[below(64)] = text
            continue
        base = pool[below(len(pool))]
        if mode < 5:  # the text changed
            text = mutate(base, pool)
            STATS["forged"] += 1
        elif mode < 7:  # the bytes changed, re-encoded (reaches the tag check)
            raw = bytearray(len(base))
            k = b32decode_into(base, 3, len(base), raw)
            text = b"WP:" + b32encode(mutate(bytes(raw[:k])))
            STATS["forged"] += 1
        else:  # signed garbage: any body, a right tag (what a buggy issuer could sign)
            k = below(4)
            if k == 0:
                body = b"\x11" + rbytes(below(40))
            elif k == 1:  # a name that is not UTF-8, as a buggy issuer could sign one
                body = _body(device, pick(NOT_UTF8))
            else:
                body = mutate(_body(device))
            text = b"WP:" + b32encode(body + mac.mac(body)[:12])
            STATS["signed_garbage"] += 1
            try:
                t = v.parse(text)
                if not utf8_ok(body[25:]) or t.program.encode() != body[25:]:
                    found.add("program not UTF-8 taken", text, t.program)
            except Refused as e:
                if e.code not in MESSAGES:
                    found.add("unknown refusal", text, e.code)
            except Exception as e:  # noqa: BLE001
                found.add("crash " + type(e).__name__, text, repr(e))
            continue
        if text in pool:  # a splice can rebuild a genuine token whole
            continue
        try:
            v.parse(text)
            found.add("forged accepted", text)
        except Refused as e:
            if e.code not in MESSAGES:
                found.add("unknown refusal", text, e.code)
        except Exception as e:  # noqa: BLE001
            found.add("crash " + type(e).__name__, text, repr(e))
    return count
