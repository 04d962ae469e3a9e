# MIFARE Classic on the MFRC522 (mfrc522.py): ISO 14443A activation (anticollision and
# SELECT over every cascade level, so 4- and 7-byte UIDs) and the MIFARE Classic commands
# (authentication with key A or B, block read/write, value-block operations). The reader's
# second half: loaded for a card tap (payments/card_tap.py) or the card tool and dropped
# after (washpay.use), so that between taps the board keeps only what polls (issue 13).
#
#   if reader.poll():
#       select(reader)                  the UID is in reader.uid[:reader.uid_len]
#       auth(reader, 7, key_b, True)
#       read_block(reader, 4, buf16)
#       write_block(reader, 5, data16)
#       reader.halt()
#
# Failures are CardError (mfrc522.py) subclasses a caller can act on: NoCard (nothing
# answered), AuthFailed, CardLeftMidWrite (the card went away after the data of a write left
# the reader: the block holds the old data, the new data or anything in between), CardRefused
# (the card answered NAK: nothing was written), and mfrc522.py's CRCError, Collision,
# ReaderFault. A write whose command phase gets no answer raises NoCard: the data never left
# the reader.
from micropython import const

from washpay.drivers.mfrc522 import CardError, CRCError

_CASCADE_TAG = const(0x88)
_NVB_ANTICOLL = const(0x20)  # 2 bytes sent, no UID bits known: every card sends its UID
_NVB_SELECT = const(0x70)  # 7 bytes sent: the whole UID part of this level
_SAK_MORE = const(0x04)  # SAK bit: the UID continues on the next cascade level
_AUTH_A = const(0x60)
_AUTH_B = const(0x61)
_READ = const(0x30)
_WRITE = const(0xA0)
_DECREMENT = const(0xC0)
_INCREMENT = const(0xC1)
_RESTORE = const(0xC2)
_TRANSFER = const(0xB0)
_ACK = const(0x0A)  # 4-bit answer; anything else in 4 bits is a NAK


class NoCard(CardError):
    """No card answered: none in the field, or it left before the command reached it."""


class AuthFailed(CardError):
    """The card refused the key for that sector (wrong key, or access bits forbid it)."""


class CardLeftMidWrite(CardError):
    """The card left after a write's data was sent: the block's content is unknown."""


class CardRefused(CardError):
    """The card answered NAK: it did not carry out the command (nothing was written)."""


def _check_crc(r, n):
    b = r._resp
    if n < 3 or r._crc(b, n - 2) != b[n - 2] | (b[n - 1] << 8):
        raise CRCError("a frame from the card failed its CRC check")


def _nak(r, n):
    """Raise if the answer of n bytes is not a MIFARE ACK."""
    if n == 1 and r._bits == 4 and r._resp[0] & 0x0F == _ACK:
        return
    if n == 1 and r._bits == 4:
        raise CardRefused("the card refused the command (NAK 0x%x)" % (r._resp[0] & 0x0F))
    raise CRCError("no valid ACK from the card (%d bytes)" % n)


def _gone(n):
    if n < 0:
        raise NoCard("the card left the field")


# ---- ISO 14443A activation
def select(r):
    """Anticollision and SELECT on every cascade level. Fills r.uid/uid_len and returns the
    SAK (0x08: MIFARE Classic 1K). Call after r.poll() returned True."""
    f = r._frame
    b = r._resp
    r.uid_len = 0
    for sel in (0x93, 0x95, 0x97):  # cascade levels 1, 2, 3
        f[0] = sel
        f[1] = _NVB_ANTICOLL
        n = r._transceive(2)
        _gone(n)
        if n != 5:
            raise CRCError("anticollision answer of %d bytes, not 5" % n)
        if b[0] ^ b[1] ^ b[2] ^ b[3] != b[4]:
            raise CRCError("UID check byte (BCC) does not match")
        f[1] = _NVB_SELECT
        for i in range(5):
            f[2 + i] = b[i]
        n = r._transceive(r._append_crc(7))
        _gone(n)
        if n != 3:
            raise CRCError("SELECT answer of %d bytes, not 3" % n)
        _check_crc(r, 3)
        sak = b[0]
        u = r.uid
        k = r.uid_len
        if sak & _SAK_MORE:
            if f[2] != _CASCADE_TAG:
                raise CRCError("SAK announces more UID, but no cascade tag came")
            u[k] = f[3]
            u[k + 1] = f[4]
            u[k + 2] = f[5]
            r.uid_len = k + 3
            continue
        for i in range(4):
            u[k + i] = f[2 + i]
        r.uid_len = k + 4
        r.sak = sak
        return sak
    raise CRCError("the UID does not end after three cascade levels")


def activate(r, wake=True):
    """poll() + select() for one operation on a card that must be there: raises NoCard.
    A card still in an authenticated session takes the first (plain) request as garbage
    and drops to idle without answering; the second one wakes it."""
    if not r.poll(wake) and not r.poll(wake):
        raise NoCard("no card on the reader")
    return select(r)


# ---- MIFARE Classic
def auth(r, block, key, key_b=False):
    """Authenticate the sector of `block` with a 6-byte key (A, or B if key_b). On failure
    the card drops back to idle: activate() again."""
    f = r._frame
    f[0] = _AUTH_B if key_b else _AUTH_A
    f[1] = block
    for i in range(6):
        f[2 + i] = key[i]
    k = r.uid_len - 4  # the last four UID bytes (the last cascade level's) seed Crypto1
    for i in range(4):
        f[8 + i] = r.uid[k + i]
    if not r._authent():
        raise AuthFailed("sector %d refused key %s" % (block // 4, "B" if key_b else "A"))


def _command_ack(r, cmd, block):
    """First phase of a two-phase command: NoCard or CardRefused if the card did not take
    it (so nothing that follows was sent)."""
    f = r._frame
    f[0] = cmd
    f[1] = block
    n = r._transceive(r._append_crc(2))
    _gone(n)
    _nak(r, n)


def read_block(r, block, out):
    """Read 16 bytes of `block` into `out`."""
    f = r._frame
    f[0] = _READ
    f[1] = block
    n = r._transceive(r._append_crc(2))
    _gone(n)
    if n == 1:
        _nak(r, n)
    if n != 18:
        raise CRCError("READ answer of %d bytes, not 18" % n)
    _check_crc(r, 18)
    b = r._resp
    for i in range(16):
        out[i] = b[i]


def _sent(r, n, what, block):
    # the second phase of a write or transfer left the reader: no answer means the card may
    # have been writing when it left
    if n < 0:
        raise CardLeftMidWrite(
            "the card left during the %s block %d: its content is unknown" % (what, block))
    _nak(r, n)


def write_block(r, block, data):
    """Write 16 bytes to `block`. NoCard/CardRefused: nothing written; CardLeftMidWrite:
    the data went out but no ACK came back, so the block's content is unknown."""
    _command_ack(r, _WRITE, block)
    f = r._frame
    for i in range(16):
        f[i] = data[i]
    _sent(r, r._transceive(r._append_crc(16)), "write of", block)


# ---- value blocks: value, ~value, value (little-endian int32), addr, ~addr, addr, ~addr
def _operand(r, cmd, block, operand):
    _command_ack(r, cmd, block)
    f = r._frame
    v = operand & 0xFFFFFFFF
    f[0] = v & 0xFF
    f[1] = (v >> 8) & 0xFF
    f[2] = (v >> 16) & 0xFF
    f[3] = v >> 24
    n = r._transceive(r._append_crc(4))
    if n < 0:
        return  # the card acknowledges an operand by staying silent
    _nak(r, n)
    raise CRCError("unexpected answer to a value operand")


def decrement(r, block, amount):
    """Value in `block` minus `amount` into the card's transfer buffer (see transfer)."""
    _operand(r, _DECREMENT, block, amount)


def increment(r, block, amount):
    _operand(r, _INCREMENT, block, amount)


def restore(r, block):
    """Value of `block` into the transfer buffer, unchanged (to copy a value block)."""
    _operand(r, _RESTORE, block, 0)


def transfer(r, block):
    """Write the transfer buffer to `block`. No answer: the card may have been writing when
    it left, so this raises CardLeftMidWrite."""
    f = r._frame
    f[0] = _TRANSFER
    f[1] = block
    _sent(r, r._transceive(r._append_crc(2)), "transfer to", block)


def write_value(r, block, value, addr=None):
    """Format `block` as a value block holding `value` (int32)."""
    buf = bytearray(16)
    v = value & 0xFFFFFFFF
    for i in range(4):
        b = (v >> (8 * i)) & 0xFF
        buf[i] = b
        buf[4 + i] = b ^ 0xFF
        buf[8 + i] = b
    a = block if addr is None else addr
    buf[12] = a
    buf[13] = a ^ 0xFF
    buf[14] = a
    buf[15] = a ^ 0xFF
    write_block(r, block, buf)


def read_value(r, block):
    """(value, addr) of a value block; CardError if the block is not one."""
    buf = bytearray(16)
    read_block(r, block, buf)
    for i in range(4):
        if buf[i] != buf[8 + i] or buf[i] ^ buf[4 + i] != 0xFF:
            raise CardError("block %d is not a value block" % block)
    if buf[12] != buf[14] or buf[12] ^ buf[13] != 0xFF or buf[14] ^ buf[15] != 0xFF:
        raise CardError("block %d is not a value block (address bytes)" % block)
    v = buf[0] | (buf[1] << 8) | (buf[2] << 16) | (buf[3] << 24)
    if v & 0x80000000:
        v -= 0x100000000
    return v, buf[12]
