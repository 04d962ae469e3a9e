# Remote start (payments/remote.py CommandVerifier.parse): the host's commands and fresh
# ones signed here must verify with their fields; any change must be refused; signed
# garbage must give a Command naming a well-formed UTF-8 program, or Refused.
import struct
from binascii import unhexlify

from fzlib import NOT_UTF8, OpenCache, below, mutate, name, pick, rbytes, rnd, utf8_ok
from washpay.crypto import MacKey
from washpay.payments.remote import REASONS, CommandVerifier
from washpay.payments.token import Refused

STATS = {"valid": 0, "forged": 0, "signed_garbage": 0}


def _body(device, prog=None):
    prog = prog or name().encode()
    return (b"\x12" + rbytes(16) + device + struct.pack(">II", rnd(32), rnd(32)) + b"\x01"
            + rbytes(3) + bytes((len(prog),)) + prog)


def _refused_ok(found, data, e):
    if e.code not in REASONS:
        found.add("unknown refusal", data, e.code)


def run(req, count, found):
    key = unhexlify(req["command_key"])
    v = CommandVerifier(key, req["device"], OpenCache())
    mac = MacKey(key)
    seeds = [unhexlify(c) for c in req["commands"]]
    for s in seeds:
        try:
            v.parse(s)
        except Exception as e:  # noqa: BLE001
            found.add("host command refused", s, repr(e))
    pool = list(seeds)
    for _ in range(count):
        mode = below(8)
        if mode < 2:
            body = _body(v.device)
            cmd = body + mac.mac(body)[:16]
            STATS["valid"] += 1
            try:
                c = v.parse(cmd)
                if (c.cid, c.nonce, c.program.encode()) != (body[1:9], body[9:17], body[34:]):
                    found.add("fields differ", cmd)
            except Exception as e:  # noqa: BLE001
                found.add("valid refused", cmd, repr(e))
            if len(pool) < 64:
                pool.append(cmd)
            else:
                pool[below(64)] = cmd
            continue
        base = pool[below(len(pool))]
        if mode < 6:
            cmd = mutate(base, pool)
            STATS["forged"] += 1
            if cmd in pool:
                continue
            try:
                v.parse(cmd)
                found.add("forged accepted", cmd)
            except Refused as e:
                _refused_ok(found, cmd, e)
            except Exception as e:  # noqa: BLE001
                found.add("crash " + type(e).__name__, cmd, repr(e))
            continue
        k = below(4)
        if k == 0:
            body = b"\x12" + rbytes(below(48))
        elif k == 1:  # a name that is not UTF-8, as a buggy server could sign one
            body = _body(v.device, pick(NOT_UTF8))
        else:
            body = mutate(_body(v.device))
        cmd = body + mac.mac(body)[:16]
        STATS["signed_garbage"] += 1
        try:
            c = v.parse(cmd)
            if not utf8_ok(cmd[34:-16]) or c.program.encode() != cmd[34:-16]:
                found.add("program not UTF-8 taken", cmd, c.program)
        except Refused as e:
            _refused_ok(found, cmd, e)
        except Exception as e:  # noqa: BLE001
            found.add("crash " + type(e).__name__, cmd, repr(e))
    return count
