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
import json
import struct
import time
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


class Commands:
    def __init__(self, remote, engine, journal, key, device_id, blacklist=None, board=None,
                 status=None, config_path="/config.json", clock=time.time, log=None,
                 tiers=None, update=None):
        self.remote = remote  # payments/remote.py RemoteStart, and its single-use cache
        self.cache = remote.cache
        self._mac = MacKey(key)  # the command key (keys.md), as remote start's
        self._device = device_hash(device_id)
        self.engine = engine
        self.journal = journal
        self.blacklist = blacklist  # washpay.cardlists.blacklist.Blacklist (the card reader's own)
        self.tiers = tiers  # washpay.cardlists.tierlist.TierList (the card reader's own)
        # update(digest, sig, size, version) -> None (taken) or why not: the app's
        self.update = update
        self.board = board
        self.status_fn = status
        self.config_path = config_path
        self.clock = clock
        self.log = log or (lambda *a: None)
        self.done = 0
        self.refused = {}
        self._forged_at = -_FORGED_EVERY_S
        self._forged_quiet = 0

    def status(self):
        return {"done": self.done, "refused": dict(self.refused)}

    # ---- dispatch
    def on_command(self, payload):
        """Verify and execute one command; return the JSON reply (bytes). Never raises.
        `payload` None: a message too long for the MQTT buffer, which mqtt.py dropped."""
        if payload is None or (len(payload) > _ACTION_AT and payload[0] == _KIND
                               and payload[_ACTION_AT] != 1):
            return self._operator(payload)
        out = self.remote.on_command(payload)
        # remote start journals its own refusals; forged and replayed ones are journaled
        # here, as the sync layer's rule for every command
        try:
            r = json.loads(out)
        except ValueError:
            return out
        if r.get("result") == "invalid":
            self._journal_forged(r.get("reason", "invalid"))
        elif r.get("result") == "duplicate":
            self._journal_refusal(payload[1:9], "replayed: already executed")
        return out

    def _reply(self, cid, result, reason=None, **extra):
        r = {"result": result}
        if cid is not None:
            r["cmd"] = hexlify(cid).decode()
        if reason:
            r["reason"] = reason
        r.update(extra)
        return json.dumps(r).encode()

    def _count(self, why):
        r = self.refused
        if why not in r and len(r) >= _REASONS_KEPT:
            why = "other"  # reasons carry values (versions, names, times): a bounded count
        r[why] = r.get(why, 0) + 1

    def _operator(self, payload):
        cid = None
        try:
            cid, action, body, issued, expires = self._verify(payload)
            cache = self.cache
            # the operator's commands have their own pool: they never take a payment's room
            why = cache.check_time(issued, expires, _ADMIN)
            if why:
                raise _Refused(_TIME_REASONS.get(why, why), cid)
            if cache.used(cid):
                raise _Refused("replayed: already executed", cid)
            if not cache.room(_ADMIN):
                raise _Refused("replay cache full", cid)
            try:
                what, extra = self._execute(action, body, issued)
            except _Refused as e:
                e.cid = cid  # authentic, but not executed
                raise
            seq = self.journal.append(R.COMMAND_DONE, source=cid, source_kind=R.SOURCE_COMMAND,
                                      reason=what)
            try:
                cache.add(cid, issued, expires, _ADMIN)
            except Exception as e:  # noqa: BLE001 - executed and journaled regardless
                self.log("command cache not written:", e)
            self.done += 1
            return self._reply(cid, "done", what, seq=seq, **extra)
        except _Refused as e:
            self._count(e.reason)
            if e.cid is None:
                self._journal_forged(e.reason)
                return self._reply(None, "invalid", e.reason)
            self._journal_refusal(e.cid, e.reason)
            return self._reply(e.cid, "refused", e.reason)
        except JournalError as e:
            self._count("journal")
            return self._reply(cid, "refused", str(e)[:60])
        except Exception as e:  # noqa: BLE001 - a command must never stop the board
            self.log("command failed:", repr(e))
            return self._reply(cid, "error", repr(e)[:60])

    def _verify(self, payload):
        if payload is None or len(payload) > _MAX:
            raise _Refused("command too long")  # its tag cannot be checked: invalid
        n = len(payload)
        if n < _HEAD + _TAG:
            raise _Refused("malformed command")
        m = struct.unpack_from(">H", payload, 30)[0]
        if n != _HEAD + m + _TAG:
            raise _Refused("malformed command")
        if payload[17:21] != self._device:
            raise _Refused("command for another device")
        if not authentic(self._mac, payload, _HEAD + m, _TAG):
            raise _Refused("bad tag")
        cid = bytes(payload[1:9])
        issued, expires = struct.unpack_from(">II", payload, 21)
        action = payload[_ACTION_AT]
        if action not in ACTIONS:
            raise _Refused("unknown action %d" % action, cid)
        return cid, action, memoryview(payload)[_HEAD : _HEAD + m], issued, expires

    # ---- journal
    def _journal_refusal(self, cid, reason):
        try:
            self.journal.append(R.COMMAND_REFUSED, source=bytes(cid),
                                source_kind=R.SOURCE_COMMAND, reason=reason)
        except JournalError as e:
            self.log("command refusal not journaled:", e)

    def _journal_forged(self, reason):
        now = int(self.clock())
        if now - self._forged_at < _FORGED_EVERY_S:
            self._forged_quiet += 1
            return
        self._forged_at = now
        n, self._forged_quiet = self._forged_quiet, 0
        text = "forged: " + reason if not n else "forged x%d: %s" % (n + 1, reason)
        try:
            self.journal.append(R.COMMAND_REFUSED, source_kind=R.SOURCE_COMMAND, reason=text)
        except JournalError as e:
            self.log("forged command not journaled:", e)

    # ---- actions
    def _execute(self, action, body, issued):
        if action == PRICE:
            return self._prices(body)
        if action in (BLACKLIST_ADD, BLACKLIST_REMOVE):
            return self._blacklist(action, body)
        if action == CLOCK:
            return self._clock(body, issued)
        if action == PRICE_TABLE:
            return self._table(body)
        if action == TIERS:
            return self._tiers(body)
        if action == UPDATE:
            return self._update(body)
        st = self.status_fn() if self.status_fn else {}
        return "status", {"status": st}

    def _items(self, body, fixed_after):
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

    def _prices(self, body):
        items = self._items(body, 3)
        new = {}
        for name, rest in items:
            text = program_name(name)
            if text is None:  # the names are the config's: UTF-8 text (docs/sync.md)
                raise _Refused("program name not UTF-8")
            new[text] = rest[0] << 16 | rest[1] << 8 | rest[2]
        known = [p["name"] for p in self.engine.programs]
        for name in new:
            if name not in known:
                raise _Refused("unknown program %s" % name[:10])
        # the config on flash first (validated as at boot), then the running machine
        raw = self._config()
        progs = raw.get("programs") or [dict(p) for p in self.engine.programs]
        for p in progs:
            if p.get("name") in new:
                p["price"] = new[p["name"]]
        raw["programs"] = progs
        # also checks the stored price table (docs/pricing.md) against the new bases
        cfg = self._store(raw)
        for p in self.engine.programs:
            if p["name"] in new:
                p["price"] = new[p["name"]]
        self.engine.set_prices(cfg["pricing"])
        self.engine.show()
        # the table version first: the journal's reason text is cut at 25 bytes
        what = "price v%d " % cfg["pricing"].get("version", 0) + \
            " ".join("%s=%d" % (k, v) for k, v in new.items())
        return what, {"prices": new}

    def _table(self, body):
        # a whole price table (docs/pricing.md), in force now and after a reboot; never
        # an older one than the table in force (a late delivery, a replayed old push)
        try:
            new = json.loads(body)  # any buffer: the body is not copied
        except ValueError:
            raise _Refused("malformed body")
        if not isinstance(new, dict):
            raise _Refused("malformed body")
        v = new.get("version", 0)
        old = self.engine.prices.version
        if isinstance(v, int) and v <= old:  # not an integer: the validation says so
            raise _Refused("prices v%d not newer than v%d" % (v, old))
        raw = self._config()
        raw["pricing"] = new
        self.engine.set_prices(self._store(raw)["pricing"])
        # the new version first: the journal's reason text is cut at 25 bytes
        return "prices v%d (was v%d)" % (v, old), {"prices_version": v}

    def _config(self):
        """/config.json as stored (a dict to change and _store)."""
        try:
            with open(self.config_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _store(self, raw):
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
        tmp = self.config_path + ".new"
        try:
            with open(tmp, "w") as f:
                json.dump(raw, f)
        except RuntimeError:  # a value nested deeper than this board's stack writes
            raise _Refused("config nested too deep to store")
        import os

        os.rename(tmp, self.config_path)
        return cfg

    def _blacklist(self, action, body):
        bl = self.blacklist
        if bl is None:
            raise _Refused("no card reader: no blacklist")
        items = self._items(body, 5 if action == BLACKLIST_ADD else 0)
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

    def _tiers(self, body):
        # tier overrides by card (docs/sync.md action 8): n x (uid length, uid, tier
        # length, tier); a tier of length 0 clears the card's override
        from washpay.cardlists import CardListError
        from washpay.cardlists.tierlist import TIER_LEN

        tl = self.tiers
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

    def _update(self, body):
        # an offer (docs/ota.md, "The offer"); the download runs afterwards, on its own
        n = len(body)
        v = body[98] if n > 98 else 0
        if n < 99 or n != 99 + v or not 5 <= v <= 16:
            raise _Refused("malformed body")
        try:
            version = bytes(body[99:]).decode()
        except UnicodeError:
            raise _Refused("malformed body")
        if self.update is None:
            raise _Refused("no updates without the sync link")
        why = self.update(bytes(body[0:32]), bytes(body[32:96]),
                          struct.unpack_from(">H", body, 96)[0], version)
        if why:
            raise _Refused(why)
        return "update %s offered" % version, {}

    def _clock(self, body, issued):
        if len(body) != 4:
            raise _Refused("malformed body")
        t = struct.unpack_from(">I", body, 0)[0]
        if abs(t - issued) > 3600:
            raise _Refused("clock %d far from the command's issue time" % t)
        before = int(self.clock())
        if self.board is not None:
            try:
                self.board.set_time(t)
            except (OSError, AttributeError) as e:
                self.log("clock not set:", e)
        self.journal.clock_trusted = True
        cache = self.cache
        cache.floor = max(cache.floor, t)
        return "clock %+d s" % (t - before), {"offset_s": t - before}


# the replay cache's reasons (replay.py check_time) as replies say them
_TIME_REASONS = {"window": "validity window refused", "future": "issued in the future",
                 "expired": "expired"}
