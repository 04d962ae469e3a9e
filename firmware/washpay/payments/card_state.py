# What the board remembers about cards between taps, in two 128-byte files (LittleFS keeps
# files that small inline in its metadata: a write costs a few page programs, no erase).
# The layouts are in docs/wallet-format.md ("On the board").
#
#   /card_pending  payments whose card write was never confirmed (torn, then the card did
#                  not come back, or the power went): settled at the card's next tap
#   /card_seen     the highest counter seen per card, to notice an older dump restored
#
# and the site's card keys (CardKeys: docs/wallet-format.md, "Keys of one card"), with the wallet's
# error: wallet.py has the rest of the wallet and is loaded for a tap only.
import struct
from hashlib import sha256

from micropython import const

from washpay.crypto import MacKey, hkdf_extract

_PENDING_SLOTS = const(4)
_PENDING_SIZE = const(32)
_SEEN_SLOTS = const(16)
_SEEN_SIZE = const(8)
_UID_MAX = const(10)
CARD_SALT = b"washpay/v1/card"
_ONE = b"\x01"


class WalletError(Exception):
    pass


class CardKeys:
    """The site card key (from /secrets.json) and what each card's keys are made of.

    HKDF-Extract is done once here; every per-card key is then one HKDF-Expand block
    (HMAC(prk, info | 0x01)), the same bytes docs/wallet-format.md's HKDF(...) gives.
    """

    def __init__(self, card_key):
        if len(card_key) != 32:
            raise WalletError("the site card key must be 32 bytes")
        self._prk = MacKey(hkdf_extract(CARD_SALT, card_key))
        self.site_id = self._prk.mac(b"card/site-id", _ONE)[:4]

    def key_b(self, uid):
        return self._prk.mac(b"card/key-b/", uid, _ONE)[:6]

    def mac_key(self, uid):
        return MacKey(self._prk.mac(b"card/wallet-mac/", uid, _ONE))


def _store(path, buf):
    with open(path, "wb") as f:
        f.write(buf)


def _load(path, buf):
    try:
        with open(path, "rb") as f:
            n = f.readinto(buf)
    except OSError:
        n = 0
    if n != len(buf):  # missing or short (never written whole): start empty
        for i in range(len(buf)):
            buf[i] = 0


class PendingPayments:
    """Up to four unconfirmed card payments; the oldest is dropped for a fifth (its
    card_unresolved record stays in the journal for the server)."""

    def __init__(self, path="/card_pending"):
        self.path = path
        self._buf = bytearray(_PENDING_SLOTS * _PENDING_SIZE)
        _load(path, self._buf)

    def __len__(self):
        return sum(1 for i in range(_PENDING_SLOTS) if self._buf[i * _PENDING_SIZE])

    def find(self, uid):
        b = self._buf
        n = len(uid)
        for i in range(_PENDING_SLOTS):
            o = i * _PENDING_SIZE
            if b[o] == n and b[o + 1 : o + 1 + n] == uid:
                return i
        return -1

    def get(self, i):
        """(counter, tag, balance before, balance after, price, journal seq) of slot i."""
        o = i * _PENDING_SIZE
        b = self._buf
        counter = (b[o + 11] << 16) | (b[o + 12] << 8) | b[o + 13]
        before, after, price, seq = struct.unpack_from(">iiiI", b, o + 15)
        return counter, b[o + 14], before, after, price, seq

    def put(self, uid, counter, tag, before, after, price, seq):
        if len(uid) > _UID_MAX:
            raise ValueError("UID longer than 10 bytes")
        i = self.find(uid)
        if i < 0:
            i = self._free_or_oldest()
        o = i * _PENDING_SIZE
        b = self._buf
        for k in range(_PENDING_SIZE):
            b[o + k] = 0
        b[o] = len(uid)
        b[o + 1 : o + 1 + len(uid)] = uid
        b[o + 11] = (counter >> 16) & 0xFF
        b[o + 12] = (counter >> 8) & 0xFF
        b[o + 13] = counter & 0xFF
        b[o + 14] = tag & 0xFF
        struct.pack_into(">iiiI", b, o + 15, before, after, price, seq)
        _store(self.path, b)

    def _free_or_oldest(self):
        oldest = 0
        oldest_seq = None
        for i in range(_PENDING_SLOTS):
            if not self._buf[i * _PENDING_SIZE]:
                return i
            seq = self.get(i)[5]
            if oldest_seq is None or seq < oldest_seq:
                oldest, oldest_seq = i, seq
        return oldest

    def drop(self, i):
        o = i * _PENDING_SIZE
        for k in range(_PENDING_SIZE):
            self._buf[o + k] = 0
        _store(self.path, self._buf)


class SeenCounters:
    """The highest counter seen for the 16 cards used most recently at this board."""

    def __init__(self, path="/card_seen"):
        self.path = path
        self._buf = bytearray(_SEEN_SLOTS * _SEEN_SIZE)
        _load(path, self._buf)
        self.dirty = False

    @staticmethod
    def _id(uid):
        return sha256(uid).digest()[:4]

    def get(self, uid):
        """The highest counter this board saw on the card, or -1."""
        h = self._id(uid)
        b = self._buf
        for i in range(_SEEN_SLOTS):
            o = i * _SEEN_SIZE
            if b[o : o + 4] == h:
                return struct.unpack_from(">I", b, o + 4)[0]
        return -1

    def note(self, uid, counter):
        """Remember `counter` (if higher) and move the card to the front."""
        h = self._id(uid)
        b = self._buf
        found = _SEEN_SLOTS - 1  # not there: the least recent entry goes
        for i in range(_SEEN_SLOTS):
            o = i * _SEEN_SIZE
            if b[o : o + 4] == h:
                found = i
                counter = max(counter, struct.unpack_from(">I", b, o + 4)[0])
                break
        if found == 0 and struct.unpack_from(">I", b, 4)[0] == counter:
            return
        o = found * _SEEN_SIZE
        b[_SEEN_SIZE : o + _SEEN_SIZE] = b[0:o]
        b[0:4] = h
        struct.pack_into(">I", b, 4, counter)
        self.dirty = True

    def save(self):
        if self.dirty:
            _store(self.path, self._buf)
            self.dirty = False
