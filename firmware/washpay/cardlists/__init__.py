# A list of cards on flash, one file per list: the card blacklist (blacklist.py) and the
# tier overrides (tierlist.py) are two of them, with different entry payloads.
# docs/blacklist-format.md is the format: a 16-byte header (magic, version 1, generation,
# count), then fixed-size entries sorted by (UID length, UID), each starting with that
# 11-byte key. A lookup is a binary search in the file, one entry read per step; a change
# streams the old file into a new one and renames it over the old (atomic on LittleFS). So
# a list of thousands of cards costs no RAM, and a power cut leaves the old list or the new.
import os
import struct

from micropython import const

VERSION = const(1)
HEADER_SIZE = const(16)
UID_MAX = const(10)
KEY_SIZE = const(11)  # UID length + UID, zero-padded: the sort key


class CardListError(Exception):
    pass


class CardList:
    # set by each list: its magic, entry size (KEY_SIZE + payload), most entries (0: no
    # limit), and the words its errors use
    MAGIC = b""
    ENTRY_SIZE = KEY_SIZE
    LIMIT = 0
    FILE = ""  # "blacklist.bin"
    KIND = ""  # "card blacklist"
    LABEL = ""  # "blacklist"

    def __init__(self, path):
        self.path = path
        self._key = bytearray(KEY_SIZE)
        self._ent = bytearray(self.ENTRY_SIZE)
        self.count = 0
        self.generation = 0
        self.error = None  # why the file was not usable (the board runs without the list)
        self._open()

    def _open(self):
        self.count = 0
        self.generation = 0
        self.error = None
        try:
            size = os.stat(self.path)[6]
        except OSError:
            return  # no list provisioned or pushed: an empty list
        h = bytearray(HEADER_SIZE)
        try:
            with open(self.path, "rb") as f:
                n = f.readinto(h)
        except OSError as e:
            self.error = "%s unreadable: %s" % (self.LABEL, e)
            return
        if n != HEADER_SIZE or bytes(h[0:4]) != self.MAGIC or h[4] != VERSION:
            self.error = "%s is not a version-%d %s" % (self.FILE, VERSION, self.KIND)
            return
        generation, count = struct.unpack_from(">II", h, 8)
        if size != HEADER_SIZE + count * self.ENTRY_SIZE:
            self.error = "%s is %d bytes, its header says %d entries" % (self.FILE, size, count)
            return
        self.generation = generation
        self.count = count

    def _find(self, uid):
        """True if `uid` is listed; its entry is then in self._ent."""
        if not self.count:
            return False
        key = self._key
        _set_key(key, uid)
        ent = self._ent
        size = self.ENTRY_SIZE
        lo, hi = 0, self.count - 1
        with open(self.path, "rb") as f:
            while lo <= hi:
                mid = (lo + hi) // 2
                f.seek(HEADER_SIZE + mid * size)
                if f.readinto(ent) != size:
                    return False
                c = _compare(ent, key)
                if c == 0:
                    return True
                if c < 0:
                    lo = mid + 1
                else:
                    hi = mid - 1
        return False

    def _entries(self):
        """Yield (uid, entry buffer) in file order; the buffer is reused: copy what you keep."""
        ent = bytearray(self.ENTRY_SIZE)
        with open(self.path, "rb") as f:
            f.seek(HEADER_SIZE)
            for _ in range(self.count):
                f.readinto(ent)
                yield bytes(ent[1 : 1 + ent[0]]), ent

    def _merge(self, changes, generation=None):
        """Apply `changes` {uid: payload bytes, or None to remove it}: stream the old file
        and the sorted changes into a new file, then rename it over the old one. Returns the
        new count. Past LIMIT entries nothing changes (CardListError)."""
        for uid in changes:
            check_uid(uid)  # before anything is written
        keys = sorted(changes, key=_order)
        size = self.ENTRY_SIZE
        old = bytearray(size)
        new = bytearray(size)
        left = self.count
        tmp = self.path + ".new"
        count = 0
        i = 0
        with open(tmp, "wb") as out:
            out.write(bytes(HEADER_SIZE))
            src = open(self.path, "rb") if left else None
            try:
                if src is not None:
                    src.seek(HEADER_SIZE)
                have = False  # an old entry in `old`, not yet written
                while True:
                    if not have and left:
                        if src.readinto(old) != size:
                            raise CardListError("%s ends early" % self.FILE)
                        left -= 1
                        have = True
                    if i < len(keys):
                        uid = keys[i]
                        _set_key(new, uid)
                        c = _compare(old, new) if have else 1
                        if c >= 0:  # the change comes first, or replaces the old entry
                            i += 1
                            if c == 0:
                                have = False
                            payload = changes[uid]
                            if payload is not None:
                                new[KEY_SIZE:] = payload
                                out.write(new)
                                count += 1
                            continue
                    if not have:
                        break
                    out.write(old)
                    count += 1
                    have = False
            finally:
                if src is not None:
                    src.close()
            gen = self.generation + 1 if generation is None else generation
            out.seek(0)
            h = bytearray(HEADER_SIZE)
            h[0:4] = self.MAGIC
            h[4] = VERSION
            struct.pack_into(">II", h, 8, gen, count)
            out.write(h)
        if self.LIMIT and count > self.LIMIT:
            os.remove(tmp)
            raise CardListError("%s full: at most %d cards" % (self.LABEL, self.LIMIT))
        os.rename(tmp, self.path)
        self._open()
        return count

    def status(self):
        return {"count": self.count, "generation": self.generation, "error": self.error}


def check_uid(uid):
    if not 0 < len(uid) <= UID_MAX:
        raise CardListError("a UID has 1 to 10 bytes")


def _set_key(key, uid):
    check_uid(uid)
    n = len(uid)
    key[0] = n
    for i in range(UID_MAX):
        key[1 + i] = uid[i] if i < n else 0


def _order(uid):
    return (len(uid), uid)


def _compare(ent, key):
    for i in range(KEY_SIZE):
        d = ent[i] - key[i]
        if d:
            return d
    return 0
