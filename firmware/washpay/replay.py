# Single use for signed one-shot payments (QR tokens, remote-start commands) and the
# operator's commands: the ids already executed, kept in flash until each one's expiry, and
# the board's idea of "now" for expiry checks when its clock cannot be trusted.
# docs/token-format.md ("On the board") is the file layout, the clock policy and the rule
# below.
#
#   cache = ReplayCache("/used_commands", capacity=32, admin=16)
#   cache.now()                           effective time: the clock, or the authenticated floor
#   cache.check_time(issued, exp, pool)   None, or why the validity window is refused
#   cache.used(id)                        True if this id was executed and has not expired
#   cache.add(id, issued, expires, pool)  durable when it returns
#
# Two pools of slots: PAYMENT (tokens, remote starts) and ADMIN (the operator's commands),
# so that an operator's pushes never take a payment's room. A full pool never refuses: it
# drops the id that expires first and raises the pool's expiry floor to that expiry; from
# then on every id of the pool that expires at or before the floor counts as expired. An
# id still held is refused as used, one that was dropped as expired: none runs twice.
#
# Order of writes for a redemption: the journal record first, then add(). A power cut
# between the two leaves the redemption as the journal's last record; recover() puts its id
# here at the next boot, before anything else is journaled.
import binascii
import struct
import time

from micropython import const

MAGIC = b"WPRC"
_VERSION = const(2)
_ID_LEN = const(8)
_HEADER_SIZE = const(28)
_ENTRY_SIZE = const(12)  # id (8) + expiry (u32)
PAYMENT = const(0)
ADMIN = const(1)
_MIN_TRUSTED_T = const(1704067200)  # 2024-01-01, as the journal: an earlier clock was never set
MAX_VALIDITY_S = const(604800)  # 7 days: the longest window a token or command may have
_FUTURE_SKEW_S = const(3600)  # a trusted clock refuses anything issued further ahead than this


class CacheFull(Exception):
    pass


class ReplayCache:
    def __init__(self, path, capacity=64, admin=0, clock=time.time, trusted=None):
        if not 1 <= capacity <= 255 or not 0 <= admin <= 255:
            raise ValueError("replay cache capacity must be 1..255 (admin 0..255)")
        self.path = path
        self.cap = (capacity, admin)
        self.clock = clock
        self._trusted = trusted  # callable -> True/False/None (None: judge by the date)
        self.n = [0, 0]  # ids held per pool
        self.expired_to = [0, 0]  # per pool: every id expiring at or before this is refused
        self.evicted = 0  # ids dropped before their expiry (a full pool), since boot
        self.floor = 0  # newest authenticated issue time seen: time is at least this
        self.damaged = False
        # the file's image: header, then each pool's slots at a fixed place
        self._buf = bytearray(_HEADER_SIZE + (capacity + admin) * _ENTRY_SIZE)
        self._mv = memoryview(self._buf)
        self._load()

    @property
    def count(self):
        return self.n[0] + self.n[1]

    # ---- time
    def clock_trusted(self):
        t = self._trusted() if self._trusted else None
        if t is None:
            return self.clock() >= _MIN_TRUSTED_T
        return bool(t)

    def now(self):
        """Seconds since 1970 to judge expiry by: the clock when it is trusted, never less
        than the newest issue time this board has authenticated."""
        t = int(self.clock()) if self.clock_trusted() else 0
        return t if t > self.floor else self.floor

    def check_time(self, issued, expires, pool=PAYMENT):
        """None if the window [issued, expires) is acceptable now, else a reason code."""
        if expires <= issued or expires - issued > MAX_VALIDITY_S:
            return "window"
        if self.clock_trusted() and issued > int(self.clock()) + _FUTURE_SKEW_S:
            return "future"
        if expires <= self.now() or expires <= self.expired_to[pool]:
            return "expired"
        return None

    # ---- ids
    def _at(self, pool, i):
        return _HEADER_SIZE + (self.cap[0] * pool + i) * _ENTRY_SIZE

    def _exp(self, o):
        return struct.unpack_from(">I", self._buf, o + _ID_LEN)[0]

    def _find(self, tid):
        b = self._buf
        first = tid[0]
        for pool in (PAYMENT, ADMIN):
            o = self._at(pool, 0)
            for i in range(self.n[pool]):
                # the first byte before a slice: a miss allocates nothing
                if b[o] == first and b[o : o + _ID_LEN] == tid:
                    return o
                o += _ENTRY_SIZE
        return -1

    def used(self, tid):
        return self._find(tid) >= 0

    def _prune(self, pool, now):
        b = self._buf
        o = j = self._at(pool, 0)
        for _ in range(self.n[pool]):
            if self._exp(o) > now:
                if o != j:
                    b[j : j + _ENTRY_SIZE] = self._mv[o : o + _ENTRY_SIZE]
                j += _ENTRY_SIZE
            o += _ENTRY_SIZE
        self.n[pool] = (j - self._at(pool, 0)) // _ENTRY_SIZE

    def room(self, pool=PAYMENT):
        """True if add() can take an id of `pool`: always, unless the pool has no slots."""
        return self.cap[pool] > 0

    def add(self, tid, issued, expires, pool=PAYMENT):
        """Remember `tid` as used until `expires`; durable in flash when this returns."""
        if len(tid) != _ID_LEN:
            raise ValueError("ids are %d bytes" % _ID_LEN)
        if not self.cap[pool]:
            raise CacheFull("replay cache has no room for this kind of id")
        self.floor = max(self.floor, issued)
        if self._find(tid) < 0:
            self._insert(pool, tid, expires)
        # if the write fails the id stays used in RAM: single use must not depend on flash
        self._save()

    def _insert(self, pool, tid, expires):
        self._prune(pool, self.now())
        n = self.n[pool]
        if n >= self.cap[pool]:
            # full of unexpired ids: the one that expires first goes (or the new one, if it
            # expires sooner still), and the pool's expiry floor rises to its expiry: every
            # id of this pool that expires no later counts as expired, none runs twice
            o = first = self._at(pool, 0)
            for _ in range(n):
                if self._exp(o) < self._exp(first):
                    first = o
                o += _ENTRY_SIZE
            gone = self._exp(first)
            self.evicted += 1
            if expires <= gone:
                self.expired_to[pool] = max(self.expired_to[pool], expires)
                return
            self.expired_to[pool] = max(self.expired_to[pool], gone)
            n -= 1
            last = self._at(pool, n)
            self._buf[first : first + _ENTRY_SIZE] = self._mv[last : last + _ENTRY_SIZE]
        o = self._at(pool, n)
        self._buf[o : o + _ID_LEN] = tid
        struct.pack_into(">I", self._buf, o + _ID_LEN, expires)
        self.n[pool] = n + 1

    # ---- flash
    def _save(self):
        b = self._buf
        mv = self._mv
        b[0:4] = MAGIC
        b[4] = _VERSION
        b[5] = _ID_LEN
        b[6] = self.cap[PAYMENT]
        b[7] = self.cap[ADMIN]
        struct.pack_into(">IIBBHII", b, 8, self.floor, 0, self.n[PAYMENT], self.n[ADMIN], 0,
                         self.expired_to[PAYMENT], self.expired_to[ADMIN])
        pay = mv[_HEADER_SIZE : self._at(PAYMENT, self.n[PAYMENT])]
        adm = mv[self._at(ADMIN, 0) : self._at(ADMIN, self.n[ADMIN])]
        crc = binascii.crc32(adm, binascii.crc32(pay, binascii.crc32(mv[16:_HEADER_SIZE],
                                                                     binascii.crc32(mv[0:12]))))
        struct.pack_into(">I", b, 12, crc & 0xFFFFFFFF)
        # LittleFS commits a file on close: after a power cut it is the old or the new list
        with open(self.path, "wb") as f:
            f.write(mv[:_HEADER_SIZE])
            f.write(pay)
            f.write(adm)

    def _load(self):
        try:
            with open(self.path, "rb") as f:
                data = f.read()  # once, at boot: at most a few hundred bytes
        except OSError:
            return  # never written: a new board
        n = len(data)
        ok = n >= 16 and data[0:4] == MAGIC and data[5] == _ID_LEN
        if ok and data[4] == 1:  # version 1: one pool, header of 16 bytes
            counts = (data[7], 0)
            at, floors = 16, (0, 0)
        elif ok and data[4] == _VERSION and n >= _HEADER_SIZE:
            _, counts0, counts1, _, f0, f1 = struct.unpack_from(">IBBHII", data, 12)
            counts, at, floors = (counts0, counts1), _HEADER_SIZE, (f0, f1)
        else:
            ok = False
        if ok:
            crc = binascii.crc32(data[16:], binascii.crc32(data[0:12])) & 0xFFFFFFFF
            ok = (n == at + (counts[0] + counts[1]) * _ENTRY_SIZE
                  and struct.unpack_from(">I", data, 12)[0] == crc)
        if not ok:
            # flash damage, not a power cut (LittleFS keeps whole files): start empty; the
            # server still sees every redemption in the journal and catches a double one
            self.damaged = True
            return
        self.floor = struct.unpack_from(">I", data, 8)[0]
        self.expired_to[0], self.expired_to[1] = floors
        # entry by entry into this build's pools (their sizes may differ from the file's;
        # an admin id without an admin pool stays held as a payment one)
        for pool in (PAYMENT, ADMIN):
            into = pool if self.cap[pool] else PAYMENT
            for _ in range(counts[pool]):
                self._insert(into, data[at : at + _ID_LEN],
                             struct.unpack_from(">I", data, at + _ID_LEN)[0])
                at += _ENTRY_SIZE
        if self.expired_to[PAYMENT] < self.expired_to[ADMIN] and not self.cap[ADMIN]:
            self.expired_to[PAYMENT] = self.expired_to[ADMIN]

    def status(self):
        return {"used": self.n[PAYMENT], "capacity": self.cap[PAYMENT],
                "admin_used": self.n[ADMIN], "admin_capacity": self.cap[ADMIN],
                "expired_to": self.expired_to[PAYMENT], "evicted": self.evicted,
                "floor": self.floor, "clock_trusted": self.clock_trusted(),
                "damaged": self.damaged}
