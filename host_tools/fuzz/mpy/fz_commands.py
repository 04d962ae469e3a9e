# Server commands (net/commands.py on_command, which never raises: an unexpected
# exception is its catch-all's "error" reply, a finding here). Valid operator commands
# signed here (or by the host) must be "done"; any change of a signed command must be
# "invalid"; signed garbage (any header and body, a right tag) must be "done", "refused"
# or "invalid" with a reason, never "error".
import json
import os
import struct
from binascii import unhexlify

from fzlib import NOT_UTF8, OpenCache, below, chance, mutate, pick, rbytes, rnd
from washpay.crypto import MacKey
from washpay.net import Commands
from washpay.net.commands import on_command
from washpay.payments.token import device_hash

STATS = {"valid": 0, "forged": 0, "signed_garbage": 0}
PROGRAMS = ("quick", "standard", "heavy")
DAYS = ("mon", "tue", "sat", "sun", "mon-fri", "fri-mon", "sat,sun")


class _Remote:
    cache = OpenCache()

    def on_command(self, payload):
        return b'{"result": "invalid", "reason": "remote start"}'


class _Journal:
    clock_trusted = False
    seq = 0

    def append(self, rtype, **fields):
        self.seq += 1
        return self.seq


class _Prices:
    version = 0


class _Engine:
    def __init__(self):
        self.programs = [{"name": n, "price": 250 + 100 * i} for i, n in enumerate(PROGRAMS)]
        self.prices = _Prices()

    def program_named(self, name):
        for p in self.programs:
            if p["name"] == name:
                return p
        return None

    def set_prices(self, raw):
        self.prices.version = raw.get("version", 0)

    def show(self, *a):
        pass


def _uid():
    return rbytes(pick((4, 7)))


def _table(version):
    t = {"version": version}
    if chance(2):
        t["rules"] = [{"days": pick(DAYS), "from": f"{below(24):02d}:{below(60):02d}",
                       "to": "24:00", "percent": below(201) - 100} for _ in range(below(3))]
    if chance(2):
        t["tiers"] = {"t" + str(i): {"percent": below(201) - 100, "programs": [pick(PROGRAMS)]}
                      for i in range(below(3))}
    return t


def _valid(engine, issued):
    """(action, body) of an operator command that must be executed."""
    a = below(7)
    if a == 0:
        names = list(PROGRAMS)
        body = bytes((0,))
        n = 0
        for p in names:
            if chance(2) or (not n and p == names[-1]):
                body += bytes((len(p),)) + p.encode() + (1 + below(2000)).to_bytes(3, "big")
                n += 1
        return 2, bytes((n,)) + body[1:]
    if a == 1:
        k = 1 + below(3)
        return 3, bytes((k,)) + b"".join(
            bytes((len(u),)) + u + bytes((below(5),)) + struct.pack(">I", rnd(32))
            for u in (_uid() for _ in range(k)))
    if a == 2:
        k = 1 + below(3)
        return 4, bytes((k,)) + b"".join(bytes((len(u),)) + u for u in (_uid() for _ in
                                                                         range(k)))
    if a == 3:
        return 5, struct.pack(">I", issued - 3600 + below(7200))
    if a == 4:
        return 6, b""
    if a == 5:
        if engine.prices.version > 1 << 30:  # signed garbage took a table of a huge version
            engine.prices.version = 0
        return 7, json.dumps(_table(engine.prices.version + 1 + below(3))).encode()
    k = 1 + below(3)
    out = bytes((k,))
    for _ in range(k):
        u = _uid()
        tier = "".join(pick("abcdefXYZ019-_") for _ in range(below(9))).encode()
        out += bytes((len(u),)) + u + bytes((len(tier),)) + tier
    return 8, out


def _sign(mac, head, body):
    msg = head + struct.pack(">H", len(body)) + body
    return msg + mac.mac(msg)[:16]


def _head(device, issued, action):
    return b"\x12" + rbytes(16) + device + struct.pack(">II", issued, issued + 300) + \
        bytes((action,))


def run(req, count, found):
    from washpay.cardlists.blacklist import Blacklist
    from washpay.cardlists.tierlist import TierList

    key = unhexlify(req["command_key"])
    d = req["dir"]
    engine = _Engine()
    cmds = Commands(_Remote(), engine, _Journal(), key, req["device"],
                    blacklist=Blacklist(d + "/blacklist.bin"), tiers=TierList(d + "/tiers.bin"),
                    config_path=d + "/config.json")
    mac = MacKey(key)
    device = device_hash(req["device"])
    t0 = req["t0"]

    def result(payload):
        try:
            # the code itself, kept loaded: Commands.on_command loads it for each command
            r = json.loads(on_command(cmds, payload))
            return r.get("result"), r.get("reason", "")
        except Exception as e:  # noqa: BLE001 - on_command must never raise
            return "raised", repr(e)

    seeds = [unhexlify(c) for c in req["commands"]]
    for s in seeds:
        got = result(s)
        if got[0] != "done":
            found.add("host command not done", s, got)
    pool = list(seeds)
    for i in range(count):
        if not i % 200:  # fresh card lists: a full one refuses valid commands, a long one
            for f in ("/blacklist.bin", "/tiers.bin"):  # slows every command down
                try:
                    os.remove(d + f)
                except OSError:
                    pass
            cmds.blacklist = Blacklist(d + "/blacklist.bin")
            cmds.tiers = TierList(d + "/tiers.bin")
        mode = below(8)
        if mode < 2:
            issued = t0 + below(100000)
            action, body = _valid(engine, issued)
            payload = _sign(mac, _head(device, issued, action), body)
            STATS["valid"] += 1
            got = result(payload)
            if got[0] != "done":
                found.add("valid not done", payload, got)
            if len(pool) < 32:
                pool.append(payload)
            else:
                pool[below(32)] = payload
            continue
        base = pool[below(len(pool))]
        if mode < 5:
            payload = mutate(base, pool)
            STATS["forged"] += 1
            if payload in pool:
                continue
            got = result(payload)
            if got[0] != "invalid":
                found.add("forged " + str(got[0]), payload, got)
            continue
        # signed garbage: the header's fields and the body changed, signed again
        head = base[:30] if not chance(3) else (mutate(base[:30], pool) + rbytes(30))[:30]
        body = mutate(base[32:-16], pool) if not chance(8) else rbytes(below(60))
        if chance(16):  # a price push naming a program by bytes that are not UTF-8
            bad = pick(NOT_UTF8)
            head = head[:29] + b"\x02"
            body = bytes((1, len(bad))) + bad + rbytes(3)
        payload = _sign(mac, head, body)
        STATS["signed_garbage"] += 1
        got = result(payload)
        if got[0] not in ("done", "refused", "invalid") or not got[1]:
            found.add("signed garbage " + str(got[0]), payload, got)
    return count
