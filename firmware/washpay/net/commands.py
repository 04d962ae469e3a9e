# Server commands over the sync link (docs/sync.md, "Commands"): one dispatcher for the
# board's command topic. Remote start (action 1) is payments/remote.py's, byte for byte
# (docs/remote-start.md); the operator's commands use the same header, key, clock policy
# and single-use cache, with their own action codes and bodies:
#
#   0x12 | command id (8) | nonce (8) | device hash (4) | issued u32 | expires u32 | action
#   | body length u16 | body | tag = HMAC-SHA256(command key, everything before)[:16]
#
#   2 price table     n, n x (name length, name, price u24)   re-prices existing programs
#   3 blacklist add   n, n x (uid length, uid, reason u8, since u32)
#   4 blacklist del   n, n x (uid length, uid)
#   5 clock set       server time u32                          the board's clock is trusted
#   6 status          (empty)                                  the reply carries the status
#   7 price table     the whole "pricing" object, compact JSON  replaces the table in force
#   8 tiers           n, n x (uid length, uid, tier length 0-8, tier)  tier overrides
#                     (tierlist.py): a tier name sets the card's override, length 0 clears it
#   9 update          manifest SHA-256 (32), signature (64), manifest size u16, version
#                     length, version               an over-the-air update (docs/ota.md)
#
# A command is at most COMMAND_MAX (1024) bytes, so a body at most 976.
# Each executed command is journaled (command_done, source = command id) before its id goes
# into the single-use cache and before on_command() returns; the transport acknowledges the
# MQTT message only then. Forged, replayed and expired commands are refused with a reason
# and journaled as command_refused, at most one record a minute for the unauthenticated
# kind (forged), so that a flood cannot fill the journal.
#
# This module is the check and the actions: loaded for one command and dropped after
# (washpay.use), while Commands (net/__init__.py) keeps the counters and the wiring; c is
# that Commands.
import json
import struct
from binascii import hexlify

from micropython import const

from washpay.crypto import MacKey
from washpay.journal import JournalError
from washpay.journal import records as R
from washpay.net import COMMAND_MAX as _MAX
from washpay.payments.token import authentic, device_hash, program_name

_KIND = const(0x12)
_ACTION_AT = const(29)
_HEAD = const(32)  # bytes before the body
_TAG = const(16)
_FORGED_EVERY_S = const(60)
_ADMIN = const(1)  # replay.py's pool of the operator's commands
_REASONS_KEPT = const(12)  # refusal reasons counted by name in status(); the rest: other

PRICE = const(2)
BLACKLIST_ADD = const(3)
BLACKLIST_REMOVE = const(4)
CLOCK = const(5)
STATUS = const(6)
PRICE_TABLE = const(7)
TIERS = const(8)
UPDATE = const(9)
ACTIONS = {PRICE: "price", BLACKLIST_ADD: "blacklist add", BLACKLIST_REMOVE: "blacklist remove",
           CLOCK: "clock", STATUS: "status", PRICE_TABLE: "price table", TIERS: "tiers",
           UPDATE: "update"}


class _Refused(Exception):
    def __init__(self, reason, cid=None):
        super().__init__(reason)
        self.reason = reason
        self.cid = cid


# ---- dispatch
def on_command(c, payload):
    """Verify and execute one command; return the JSON reply (bytes). Never raises.
    `payload` None: a message too long for the MQTT buffer, which mqtt.py dropped."""
    if payload is None or (len(payload) > _ACTION_AT and payload[0] == _KIND
                           and payload[_ACTION_AT] != 1):
        return _operator(c, payload)
    out = c.remote.on_command(payload)
    # remote start journals its own refusals; forged and replayed ones are journaled
    # here, as the sync layer's rule for every command
    try:
        r = json.loads(out)
    except ValueError:
        return out
    if r.get("result") == "invalid":
        _journal_forged(c, r.get("reason", "invalid"))
    elif r.get("result") == "duplicate":
        _journal_refusal(c, payload[1:9], "replayed: already executed")
    return out

def _reply(c, cid, result, reason=None, **extra):
    r = {"result": result}
    if cid is not None:
        r["cmd"] = hexlify(cid).decode()
    if reason:
        r["reason"] = reason
    r.update(extra)
    return json.dumps(r).encode()

def _count(c, why):
    r = c.refused
    if why not in r and len(r) >= _REASONS_KEPT:
        why = "other"  # reasons carry values (versions, names, times): a bounded count
    r[why] = r.get(why, 0) + 1

def _operator(c, payload):
    cid = None
    try:
        cid, action, body, issued, expires = _verify(c, payload)
        cache = c.cache
        # the operator's commands have their own pool: they never take a payment's room
        why = cache.check_time(issued, expires, _ADMIN)
        if why:
            raise _Refused(_TIME_REASONS.get(why, why), cid)
        if cache.used(cid):
            raise _Refused("replayed: already executed", cid)
        if not cache.room(_ADMIN):
            raise _Refused("replay cache full", cid)
        try:
            what, extra = _execute(c, action, body, issued)
        except _Refused as e:
            e.cid = cid  # authentic, but not executed
            raise
        seq = c.journal.append(R.COMMAND_DONE, source=cid, source_kind=R.SOURCE_COMMAND,
                               reason=what)
        try:
            cache.add(cid, issued, expires, _ADMIN)
        except Exception as e:  # noqa: BLE001 - executed and journaled regardless
            c.log("command cache not written:", e)
        c.done += 1
        return _reply(c, cid, "done", what, seq=seq, **extra)
    except _Refused as e:
        _count(c, e.reason)
        if e.cid is None:
            _journal_forged(c, e.reason)
            return _reply(c, None, "invalid", e.reason)
        _journal_refusal(c, e.cid, e.reason)
        return _reply(c, e.cid, "refused", e.reason)
    except JournalError as e:
        _count(c, "journal")
        return _reply(c, cid, "refused", str(e)[:60])
    except Exception as e:  # noqa: BLE001 - a command must never stop the board
        c.log("command failed:", repr(e))
        return _reply(c, cid, "error", repr(e)[:60])

def _verify(c, payload):
    if payload is None or len(payload) > _MAX:
        raise _Refused("command too long")  # its tag cannot be checked: invalid
    n = len(payload)
    if n < _HEAD + _TAG:
        raise _Refused("malformed command")
    m = struct.unpack_from(">H", payload, 30)[0]
    if n != _HEAD + m + _TAG:
        raise _Refused("malformed command")
    if payload[17:21] != device_hash(c.device_id):
        raise _Refused("command for another device")
    # the command key (keys.md), as remote start's
    if not authentic(MacKey(c.key), payload, _HEAD + m, _TAG):
        raise _Refused("bad tag")
    cid = bytes(payload[1:9])
    issued, expires = struct.unpack_from(">II", payload, 21)
    action = payload[_ACTION_AT]
    if action not in ACTIONS:
        raise _Refused("unknown action %d" % action, cid)
    return cid, action, memoryview(payload)[_HEAD : _HEAD + m], issued, expires

# ---- journal
def _journal_refusal(c, cid, reason):
    try:
        c.journal.append(R.COMMAND_REFUSED, source=bytes(cid),
                            source_kind=R.SOURCE_COMMAND, reason=reason)
    except JournalError as e:
        c.log("command refusal not journaled:", e)

def _journal_forged(c, reason):
    now = int(c.clock())
    if c.forged_at is not None and now - c.forged_at < _FORGED_EVERY_S:
        c.forged_quiet += 1
        return
    c.forged_at = now
    n, c.forged_quiet = c.forged_quiet, 0
    text = "forged: " + reason if not n else "forged x%d: %s" % (n + 1, reason)
    try:
        c.journal.append(R.COMMAND_REFUSED, source_kind=R.SOURCE_COMMAND, reason=text)
    except JournalError as e:
        c.log("forged command not journaled:", e)

# ---- actions
def _execute(c, action, body, issued):
    if action == PRICE:
        return _prices(c, body)
    if action in (BLACKLIST_ADD, BLACKLIST_REMOVE):
        return _blacklist(c, action, body)
    if action == CLOCK:
        return _clock(c, body, issued)
    if action == PRICE_TABLE:
        return _table(c, body)
    if action == TIERS:
        return _tiers(c, body)
    if action == UPDATE:
        return _update(c, body)
    st = c.status_fn() if c.status_fn else {}
    return "status", {"status": st}

def _items(c, body, fixed_after):
    """Parse n x (length, bytes, fixed_after bytes) from body -> list of (bytes, mv)."""
    if not len(body):
        raise _Refused("malformed body")
    n = body[0]
    pos = 1
    out = []
    for _ in range(n):
        if pos >= len(body):
            raise _Refused("malformed body")
        k = body[pos]
        end = pos + 1 + k + fixed_after
        if not k or end > len(body):
            raise _Refused("malformed body")
        out.append((bytes(body[pos + 1 : pos + 1 + k]), body[pos + 1 + k : end]))
        pos = end
    if pos != len(body) or not n:
        raise _Refused("malformed body")
    return out

def _prices(c, body):
    items = _items(c, body, 3)
    new = {}
    for name, rest in items:
        text = program_name(name)
        if text is None:  # the names are the config's: UTF-8 text (docs/sync.md)
            raise _Refused("program name not UTF-8")
        new[text] = rest[0] << 16 | rest[1] << 8 | rest[2]
    known = [p["name"] for p in c.engine.programs]
    for name in new:
        if name not in known:
            raise _Refused("unknown program %s" % name[:10])
    # the config on flash first (validated as at boot), then the running machine
    raw = _config(c)
    progs = raw.get("programs") or [dict(p) for p in c.engine.programs]
    for p in progs:
        if p.get("name") in new:
            p["price"] = new[p["name"]]
    raw["programs"] = progs
    # also checks the stored price table (docs/pricing.md) against the new bases
    cfg = _store(c, raw)
    for p in c.engine.programs:
        if p["name"] in new:
            p["price"] = new[p["name"]]
    c.engine.set_prices(cfg["pricing"])
    c.engine.show()
    # the table version first: the journal's reason text is cut at 25 bytes
    what = "price v%d " % cfg["pricing"].get("version", 0) + \
        " ".join("%s=%d" % (k, v) for k, v in new.items())
    return what, {"prices": new}

def _table(c, body):
    # a whole price table (docs/pricing.md), in force now and after a reboot; never
    # an older one than the table in force (a late delivery, a replayed old push)
    try:
        new = json.loads(body)  # any buffer: the body is not copied
    except ValueError:
        raise _Refused("malformed body")
    if not isinstance(new, dict):
        raise _Refused("malformed body")
    v = new.get("version", 0)
    old = c.engine.prices.version
    if isinstance(v, int) and v <= old:  # not an integer: the validation says so
        raise _Refused("prices v%d not newer than v%d" % (v, old))
    raw = _config(c)
    raw["pricing"] = new
    c.engine.set_prices(_store(c, raw)["pricing"])
    # the new version first: the journal's reason text is cut at 25 bytes
    return "prices v%d (was v%d)" % (v, old), {"prices_version": v}

def _config(c):
    """/config.json as stored (a dict to change and _store)."""
    try:
        with open(c.config_path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}

def _store(c, raw):
    """Validate `raw` as at boot and write it to /config.json atomically (a new file,
    then a rename: a power cut leaves the old config or the new one); return the
    validated config. A config the board would refuse at boot is refused here."""
    from washpay import config, forget

    try:
        cfg = config.validate(raw)
    except config.ConfigError as e:
        raise _Refused(str(e)[:60])
    finally:
        forget("washpay.config")  # loaded for this check only, as at boot
    tmp = c.config_path + ".new"
    try:
        with open(tmp, "w") as f:
            json.dump(raw, f)
    except RuntimeError:  # a value nested deeper than this board's stack writes
        raise _Refused("config nested too deep to store")
    import os

    os.rename(tmp, c.config_path)
    return cfg

def _blacklist(c, action, body):
    bl = c.blacklist
    if bl is None:
        raise _Refused("no card reader: no blacklist")
    items = _items(c, body, 5 if action == BLACKLIST_ADD else 0)
    for uid, _ in items:
        if len(uid) > 10:
            raise _Refused("a UID has 1 to 10 bytes")
    if action == BLACKLIST_ADD:
        add = [(uid, rest[0], struct.unpack_from(">I", rest, 1)[0]) for uid, rest in items]
        count = bl.update(add=add)
        verb = "blacklist +"
    else:
        count = bl.update(remove=[uid for uid, _ in items])
        verb = "blacklist -"
    what = verb + ",".join(hexlify(u).decode() for u, _ in items)
    return what, {"blacklist": count, "generation": bl.generation}

def _tiers(c, body):
    # tier overrides by card (docs/sync.md action 8): n x (uid length, uid, tier
    # length, tier); a tier of length 0 clears the card's override
    from washpay.cardlists import CardListError
    from washpay.cardlists.tierlist import TIER_LEN

    tl = c.tiers
    if tl is None:
        raise _Refused("no tier list")
    n = len(body)
    if not n or not body[0]:
        raise _Refused("malformed body")
    pos = 1
    add = []
    remove = []
    seen = {}
    for _ in range(body[0]):
        k = body[pos] if pos < n else 0
        if not k or pos + 2 + k > n:  # a UID and the tier's length byte
            raise _Refused("malformed body")
        if k > 10:
            raise _Refused("a UID has 1 to 10 bytes")
        uid = bytes(body[pos + 1 : pos + 1 + k])
        pos += 1 + k
        m = body[pos]
        pos += 1
        if m > TIER_LEN:
            raise _Refused("a tier name has 1 to 8 bytes")
        if pos + m > n:
            raise _Refused("malformed body")
        if uid in seen:
            raise _Refused("card %s twice" % hexlify(uid).decode())
        seen[uid] = 1
        if m:
            add.append((uid, bytes(body[pos : pos + m])))
        else:
            remove.append(uid)
        pos += m
    if pos != n:
        raise _Refused("malformed body")
    try:
        count = tl.update(add=add, remove=remove)
    except CardListError as e:  # a tier name that is not one, or a full list
        raise _Refused(str(e))
    # the journal keeps 25 bytes of reason: counts, not UIDs (the server has the list)
    return "tiers +%d -%d" % (len(add), len(remove)), {"tiers": count,
                                                       "generation": tl.generation}

def _update(c, body):
    # an offer (docs/ota.md, "The offer"); the download runs afterwards, on its own
    n = len(body)
    v = body[98] if n > 98 else 0
    if n < 99 or n != 99 + v or not 5 <= v <= 16:
        raise _Refused("malformed body")
    try:
        version = bytes(body[99:]).decode()
    except UnicodeError:
        raise _Refused("malformed body")
    if c.update is None:
        raise _Refused("no updates without the sync link")
    why = c.update(bytes(body[0:32]), bytes(body[32:96]),
                   struct.unpack_from(">H", body, 96)[0], version)
    if why:
        raise _Refused(why)
    return "update %s offered" % version, {}


def _clock(c, body, issued):
    if len(body) != 4:
        raise _Refused("malformed body")
    t = struct.unpack_from(">I", body, 0)[0]
    if abs(t - issued) > 3600:
        raise _Refused("clock %d far from the command's issue time" % t)
    before = int(c.clock())
    if c.board is not None:
        try:
            c.board.set_time(t)
        except (OSError, AttributeError) as e:
            c.log("clock not set:", e)
    c.journal.clock_trusted = True
    cache = c.cache
    cache.floor = max(cache.floor, t)
    return "clock %+d s" % (t - before), {"offset_s": t - before}


# the replay cache's reasons (replay.py check_time) as replies say them
_TIME_REASONS = {"window": "validity window refused", "future": "issued in the future",
                 "expired": "expired"}
