# Cards that must be refused (lost, stolen, replaced, fraud): /blacklist.bin on the board,
# written by provisioning now (`washpay card blacklist`) and by server push later.
# docs/blacklist-format.md is the format: a 16-byte header, then 16-byte entries sorted by
# (UID length, UID). A lookup is a binary search in the file, 16 bytes read per step, so
# the list can hold thousands of cards without taking RAM.
import os
import struct

from micropython import const

MAGIC = b"WPBL"
VERSION = const(1)
HEADER_SIZE = const(16)
ENTRY_SIZE = const(16)
UID_MAX = const(10)
KEY_SIZE = const(11)  # UID length + UID: the sort key
REASONS = ("blocked", "lost", "stolen", "replaced", "fraud")


def civil_date(unix_time):
    """'YYYY-MM-DD' of a UTC unix time, by integer arithmetic (the board's epoch does not
    matter): the days-to-civil algorithm for the proleptic Gregorian calendar."""
    z = unix_time // 86400 + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    return "%04d-%02d-%02d" % (y, m, d)


class BlacklistError(Exception):
    pass


class Blacklist:
    def __init__(self, path="/blacklist.bin"):
        self.path = path
        self._key = bytearray(KEY_SIZE)
        self._ent = bytearray(ENTRY_SIZE)
        self.count = 0
        self.generation = 0
        self.error = None  # why the file was not usable (the board runs without a list)
        self._open()

    def _open(self):
        self.count = 0
        self.generation = 0
        self.error = None
        try:
            size = os.stat(self.path)[6]
        except OSError:
            return  # no list provisioned: nothing is blocked
        h = bytearray(HEADER_SIZE)
        try:
            with open(self.path, "rb") as f:
                n = f.readinto(h)
        except OSError as e:
            self.error = "blacklist unreadable: %s" % e
            return
        if n != HEADER_SIZE or bytes(h[0:4]) != MAGIC or h[4] != VERSION:
            self.error = "blacklist.bin is not a version-%d card blacklist" % VERSION
            return
        generation, count = struct.unpack_from(">II", h, 8)
        if size != HEADER_SIZE + count * ENTRY_SIZE:
            self.error = "blacklist.bin is %d bytes, its header says %d entries" % (size, count)
            return
        self.generation = generation
        self.count = count

    def _set_key(self, uid):
        k = self._key
        n = len(uid)
        if not 0 < n <= UID_MAX:
            raise BlacklistError("a UID has 1 to 10 bytes")
        k[0] = n
        for i in range(UID_MAX):
            k[1 + i] = uid[i] if i < n else 0

    def lookup(self, uid):
        """(reason, since) if the card is blacklisted, else None. `since` is a unix time
        (0 if unknown)."""
        if not self.count:
            return None
        self._set_key(uid)
        key = self._key
        ent = self._ent
        lo, hi = 0, self.count - 1
        with open(self.path, "rb") as f:
            while lo <= hi:
                mid = (lo + hi) // 2
                f.seek(HEADER_SIZE + mid * ENTRY_SIZE)
                if f.readinto(ent) != ENTRY_SIZE:
                    return None
                c = _compare(ent, key)
                if c == 0:
                    reason = ent[11]
                    name = REASONS[reason] if reason < len(REASONS) else "blocked"
                    return name, struct.unpack_from(">I", ent, 12)[0]
                if c < 0:
                    lo = mid + 1
                else:
                    hi = mid - 1
        return None

    @staticmethod
    def describe(entry):
        """'lost 2026-03-01' for the display and the journal."""
        reason, since = entry
        return "%s %s" % (reason, civil_date(since)) if since else reason

    def entries(self):
        """Yield (uid, reason, since) in file order."""
        ent = bytearray(ENTRY_SIZE)
        with open(self.path, "rb") as f:
            f.seek(HEADER_SIZE)
            for _ in range(self.count):
                f.readinto(ent)
                yield bytes(ent[1 : 1 + ent[0]]), ent[11], struct.unpack_from(">I", ent, 12)[0]

    def update(self, add=(), remove=(), generation=None):
        """Add (uid, reason code, since) entries and remove UIDs, streaming the old file into
        a new one that replaces it atomically (LittleFS rename). For the server's pushes."""
        changes = {}
        for uid in remove:
            changes[bytes(uid)] = None
        for uid, reason, since in add:
            changes[bytes(uid)] = (reason, since)
        keys = sorted(changes, key=lambda u: (len(u), u))
        tmp = self.path + ".new"
        out = bytearray(ENTRY_SIZE)
        count = 0
        with open(tmp, "wb") as f:
            f.write(bytes(HEADER_SIZE))
            old = self.entries() if self.count else iter(())
            cur = next(old, None)
            i = 0
            while cur is not None or i < len(keys):
                take_new = cur is None or (
                    i < len(keys) and (len(keys[i]), keys[i]) <= (len(cur[0]), cur[0])
                )
                if take_new:
                    uid = keys[i]
                    i += 1
                    if cur is not None and uid == cur[0]:
                        cur = next(old, None)  # replaced or removed
                    ch = changes[uid]
                    if ch is None:
                        continue
                    item = (uid, ch[0], ch[1])
                else:
                    item = cur
                    cur = next(old, None)
                _pack(out, *item)
                f.write(out)
                count += 1
            gen = self.generation + 1 if generation is None else generation
            f.seek(0)
            h = bytearray(HEADER_SIZE)
            h[0:4] = MAGIC
            h[4] = VERSION
            struct.pack_into(">II", h, 8, gen, count)
            f.write(h)
        os.rename(tmp, self.path)
        self._open()
        return count

    def status(self):
        return {"count": self.count, "generation": self.generation, "error": self.error}


def _pack(out, uid, reason, since):
    n = len(uid)
    if not 0 < n <= UID_MAX:
        raise BlacklistError("a UID has 1 to 10 bytes")
    out[0] = n
    for i in range(UID_MAX):
        out[1 + i] = uid[i] if i < n else 0
    out[11] = reason
    struct.pack_into(">I", out, 12, since)


def _compare(ent, key):
    for i in range(KEY_SIZE):
        d = ent[i] - key[i]
        if d:
            return d
    return 0
