# Single use for signed one-shot payments (QR tokens, remote-start commands): the ids already
# redeemed, kept in flash until each one's expiry, and the board's idea of "now" for expiry
# checks when its clock cannot be trusted. docs/token-format.md ("On the board") is the
# file layout and the clock policy.
#
#   cache = ReplayCache("/used_tokens", capacity=64)
#   cache.now()                      effective time: the clock, or the authenticated floor
#   cache.check_time(issued, exp)    None, or why the validity window is refused
#   cache.used(id)                   True if this id was redeemed and has not yet expired
#   cache.add(id, issued, expires)   durable when it returns; CacheFull if no slot is free
#
# Order of writes for a redemption: the journal record first, then add(). A power cut
# between the two leaves the redemption as the journal's last record; recover() puts its id
# here at the next boot, before anything else is journaled.
import binascii
import struct
import time
from array import array

from micropython import const

MAGIC = b"WPRC"
VERSION = const(1)
ID_LEN = const(8)
HEADER_SIZE = const(16)
ENTRY_SIZE = const(12)  # id (8) + expiry (u32)
MIN_TRUSTED_T = const(1704067200)  # 2024-01-01, as the journal: an earlier clock was never set
MAX_VALIDITY_S = const(604800)  # 7 days: the longest window a token or command may have
FUTURE_SKEW_S = const(3600)  # a trusted clock refuses anything issued further ahead than this


class CacheFull(Exception):
    pass


class ReplayCache:
    def __init__(self, path, capacity=64, clock=time.time, trusted=None):
        if not 1 <= capacity <= 255:
            raise ValueError("replay cache capacity must be 1..255")
        self.path = path
        self.capacity = capacity
        self.clock = clock
        self._trusted = trusted  # callable -> True/False/None (None: judge by the date)
        self._ids = bytearray(capacity * ID_LEN)
        # expiry times as u32: a list would hold each one as a heap integer on an ESP32
        # (small integers end at 2**30, epoch seconds are past it)
        self._exp = array("I", bytes(4 * capacity))
        self.count = 0
        self.floor = 0  # newest authenticated issue time seen: time is at least this
        self.damaged = False
        self._buf = bytearray(HEADER_SIZE + capacity * ENTRY_SIZE)
        self._load()

    # ---- time
    def clock_trusted(self):
        t = self._trusted() if self._trusted else None
        if t is None:
            return self.clock() >= MIN_TRUSTED_T
        return bool(t)

    def now(self):
        """Seconds since 1970 to judge expiry by: the clock when it is trusted, never less
        than the newest issue time this board has authenticated."""
        t = int(self.clock()) if self.clock_trusted() else 0
        return t if t > self.floor else self.floor

    def check_time(self, issued, expires):
        """None if the window [issued, expires) is acceptable now, else a reason code."""
        if expires <= issued or expires - issued > MAX_VALIDITY_S:
            return "window"
        if self.clock_trusted() and issued > int(self.clock()) + FUTURE_SKEW_S:
            return "future"
        if expires <= self.now():
            return "expired"
        return None

    # ---- ids
    def _find(self, tid):
        ids = self._ids
        for i in range(self.count):
            o = i * ID_LEN
            if ids[o : o + ID_LEN] == tid:
                return i
        return -1

    def used(self, tid):
        return self._find(tid) >= 0

    def _prune(self, now):
        ids = self._ids
        exp = self._exp
        j = 0
        for i in range(self.count):
            if exp[i] > now:
                if i != j:
                    ids[j * ID_LEN : (j + 1) * ID_LEN] = ids[i * ID_LEN : (i + 1) * ID_LEN]
                    exp[j] = exp[i]
                j += 1
        self.count = j

    def room(self):
        """True if add() would find a slot (after dropping expired ids)."""
        if self.count < self.capacity:
            return True
        self._prune(self.now())
        return self.count < self.capacity

    def add(self, tid, issued, expires):
        """Remember `tid` as used until `expires`; durable in flash when this returns."""
        if len(tid) != ID_LEN:
            raise ValueError("ids are %d bytes" % ID_LEN)
        self.floor = max(self.floor, issued)
        if self._find(tid) >= 0:
            self._save()
            return
        self._prune(self.now())
        if self.count >= self.capacity:
            raise CacheFull("replay cache full: %d unexpired ids" % self.count)
        i = self.count
        self._ids[i * ID_LEN : (i + 1) * ID_LEN] = tid
        self._exp[i] = expires
        self.count = i + 1
        # if the write fails the id stays used in RAM: single use must not depend on flash
        self._save()

    # ---- flash
    def _save(self):
        b = self._buf
        n = HEADER_SIZE + self.count * ENTRY_SIZE
        b[0:4] = MAGIC
        b[4] = VERSION
        b[5] = ID_LEN
        b[6] = self.capacity
        b[7] = self.count
        struct.pack_into(">I", b, 8, self.floor)
        for i in range(self.count):
            o = HEADER_SIZE + i * ENTRY_SIZE
            b[o : o + ID_LEN] = self._ids[i * ID_LEN : (i + 1) * ID_LEN]
            struct.pack_into(">I", b, o + ID_LEN, self._exp[i])
        mv = memoryview(b)
        struct.pack_into(">I", b, 12, _crc(mv, n))
        # LittleFS commits a file on close: after a power cut it is the old or the new list
        with open(self.path, "wb") as f:
            f.write(mv[:n])

    def _load(self):
        b = self._buf
        try:
            with open(self.path, "rb") as f:
                n = f.readinto(b)
                extra = f.read(1)
        except OSError:
            return  # never written: a new board
        mv = memoryview(b)
        ok = (
            n >= HEADER_SIZE
            and not extra
            and b[0:4] == MAGIC
            and b[4] == VERSION
            and b[5] == ID_LEN
            and b[7] <= self.capacity
            and n == HEADER_SIZE + b[7] * ENTRY_SIZE
            and struct.unpack_from(">I", b, 12)[0] == _crc(mv, n)
        )
        if not ok:
            # flash damage, not a power cut (LittleFS keeps whole files): start empty; the
            # server still sees every redemption in the journal and catches a double one
            self.damaged = True
            return
        self.floor = struct.unpack_from(">I", b, 8)[0]
        self.count = b[7]
        for i in range(self.count):
            o = HEADER_SIZE + i * ENTRY_SIZE
            self._ids[i * ID_LEN : (i + 1) * ID_LEN] = mv[o : o + ID_LEN]
            self._exp[i] = struct.unpack_from(">I", b, o + ID_LEN)[0]

    def status(self):
        return {"used": self.count, "capacity": self.capacity, "floor": self.floor,
                "clock_trusted": self.clock_trusted(), "damaged": self.damaged}


def _crc(mv, n):
    """CRC-32 of the file without its CRC field (bytes 0..11 and 16..n)."""
    return binascii.crc32(mv[HEADER_SIZE:n], binascii.crc32(mv[0:12])) & 0xFFFFFFFF
