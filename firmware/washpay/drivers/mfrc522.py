# MFRC522 contactless reader on SPI: ISO 14443A activation (REQA/WUPA, anticollision and
# SELECT over every cascade level, so 4- and 7-byte UIDs) and MIFARE Classic commands
# (authentication with key A or B, block read/write, value-block operations).
#
#   reader = MFRC522(spi, cs_pin, rst_pin)    pins already built as outputs
#   reader.init()                             raises ReaderFault when no chip answers
#   if reader.poll():                         REQA: False when no card answers (a poll)
#       reader.select()                       the UID is in reader.uid[:reader.uid_len]
#       reader.auth(7, key_b, key_b=True)
#       reader.read_block(4, buf16)
#       reader.write_block(5, data16)
#       reader.halt()
#
# Failures are exceptions a caller can act on: NoCard (nothing answered), AuthFailed,
# CardLeftMidWrite (the card went away after the data of a write left the reader: the block
# holds the old data, the new data or anything in between), CRCError, Collision, CardRefused
# (the card answered NAK: nothing was written), ReaderFault (the chip itself). A write whose
# command phase gets no answer raises NoCard: the data never left the reader.
#
# Register access allocates nothing: two preallocated 2-byte buffers per access, FIFO bytes
# moved one at a time through a 1-byte buffer inside a single chip-select. The chip computes
# CRC_A (CalcCRC) for frames sent and checks it for frames received.
import time

from micropython import const

# registers (datasheet section 9.2)
_COMMAND = const(0x01)
_COM_IRQ = const(0x04)
_DIV_IRQ = const(0x05)
_ERROR = const(0x06)
_STATUS2 = const(0x08)
_FIFO_DATA = const(0x09)
_FIFO_LEVEL = const(0x0A)
_CONTROL = const(0x0C)
_BIT_FRAMING = const(0x0D)
_COLL = const(0x0E)
_MODE = const(0x11)
_TX_CONTROL = const(0x14)
_TX_ASK = const(0x15)
_CRC_H = const(0x21)
_CRC_L = const(0x22)
_T_MODE = const(0x2A)
_T_PRESCALER = const(0x2B)
_T_RELOAD_H = const(0x2C)
_T_RELOAD_L = const(0x2D)
_VERSION = const(0x37)

# chip commands (section 10.3)
_CMD_IDLE = const(0x00)
_CMD_CALC_CRC = const(0x03)
_CMD_TRANSCEIVE = const(0x0C)
_CMD_MF_AUTHENT = const(0x0E)
_CMD_SOFT_RESET = const(0x0F)
_POWER_DOWN = const(0x10)  # CommandReg: set while the chip wakes up after a reset

# ComIrqReg / DivIrqReg bits
_IRQ_RX = const(0x20)
_IRQ_IDLE = const(0x10)
_IRQ_ERR = const(0x02)
_IRQ_TIMER = const(0x01)
_IRQ_ALL = const(0x7F)  # written with Set1 = 0: clears every request bit
_IRQ_CRC = const(0x04)  # DivIrqReg
# ErrorReg bits
_ERR_TEMP = const(0x40)  # the chip switched its antenna drivers off: too hot
_ERR_BUFFER = const(0x10)
_ERR_COLL = const(0x08)
_ERR_PARITY = const(0x02)
_ERR_PROTOCOL = const(0x01)
_ERR_COMM = const(0x13)  # buffer overflow, parity, protocol
_CRYPTO1_ON = const(0x08)  # Status2Reg
_START_SEND = const(0x80)  # BitFramingReg
_FLUSH = const(0x80)  # FIFOLevelReg
_ANTENNA = const(0x03)  # TxControlReg: Tx1RFEn | Tx2RFEn

# ISO 14443-3 and MIFARE Classic commands
_REQA = const(0x26)
_WUPA = const(0x52)
_CASCADE_TAG = const(0x88)
_NVB_ANTICOLL = const(0x20)  # 2 bytes sent, no UID bits known: every card sends its UID
_NVB_SELECT = const(0x70)  # 7 bytes sent: the whole UID part of this level
_SAK_MORE = const(0x04)  # SAK bit: the UID continues on the next cascade level
_HLTA = const(0x50)
_AUTH_A = const(0x60)
_AUTH_B = const(0x61)
_READ = const(0x30)
_WRITE = const(0xA0)
_DECREMENT = const(0xC0)
_INCREMENT = const(0xC1)
_RESTORE = const(0xC2)
_TRANSFER = const(0xB0)
_ACK = const(0x0A)  # 4-bit answer; anything else in 4 bits is a NAK

_WAIT_MS = const(60)  # the chip's own timer (25 ms) ends every command well before this


class CardError(Exception):
    """Something went wrong talking to a card; the subclass says what."""


class NoCard(CardError):
    """No card answered: none in the field, or it left before the command reached it."""


class AuthFailed(CardError):
    """The card refused the key for that sector (wrong key, or access bits forbid it)."""


class CardLeftMidWrite(CardError):
    """The card left after a write's data was sent: the block's content is unknown."""


class CRCError(CardError):
    """A frame arrived with a wrong checksum: noise, or a card leaving the field."""


class Collision(CardError):
    """More than one card answered at once."""


class CardRefused(CardError):
    """The card answered NAK: it did not carry out the command (nothing was written)."""


class ReaderFault(CardError):
    """The MFRC522 itself misbehaved: not on the bus, stuck, FIFO overflow."""


class MFRC522:
    def __init__(self, spi, cs, rst=None):
        self.spi = spi
        self.cs = cs
        self.rst = rst
        self._reg = bytearray(2)  # address byte, value
        self._ret = bytearray(2)  # what MISO carried back
        self._one = bytearray(1)
        self._got = bytearray(1)
        self._frame = bytearray(18)  # a frame to send: up to 16 data bytes + CRC_A
        self._resp = bytearray(18)  # the last frame received
        self.uid = bytearray(10)
        self.uid_len = 0
        self.sak = 0
        self.version = 0
        self.exchanges = 0  # frames exchanged with cards (REQA, SELECT, READ, auth...)
        self._bits = 0  # valid bits in the last byte received (0: all 8)
        self._crypto = False
        cs(1)

    # ---- registers: one chip-select per access, nothing allocated
    def _wr(self, reg, value):
        b = self._reg
        b[0] = (reg << 1) & 0x7E
        b[1] = value
        self.cs(0)
        self.spi.write(b)
        self.cs(1)

    def _rd(self, reg):
        b = self._reg
        b[0] = 0x80 | ((reg << 1) & 0x7E)
        b[1] = 0
        self.cs(0)
        self.spi.write_readinto(b, self._ret)
        self.cs(1)
        return self._ret[1]

    def _fifo_write(self, buf, n):
        one = self._one
        one[0] = (_FIFO_DATA << 1) & 0x7E
        self.cs(0)
        self.spi.write(one)
        for i in range(n):
            one[0] = buf[i]
            self.spi.write(one)
        self.cs(1)

    def _fifo_read(self, buf, n):
        # Each byte sent is the next address to read; the byte that comes back answers the
        # address before it. The last byte sent is 0: the datasheet's end of a read.
        one = self._one
        got = self._got
        one[0] = 0x80 | (_FIFO_DATA << 1)
        self.cs(0)
        self.spi.write(one)
        for i in range(n):
            if i == n - 1:
                one[0] = 0
            self.spi.write_readinto(one, got)
            buf[i] = got[0]
        self.cs(1)

    def _wait(self, reg, mask):
        deadline = time.ticks_add(time.ticks_ms(), _WAIT_MS)
        while True:
            v = self._rd(reg)
            if v & mask:
                return v
            if time.ticks_diff(deadline, time.ticks_ms()) < 0:
                self._wr(_COMMAND, _CMD_IDLE)
                raise ReaderFault("the MFRC522 did not finish a command: check its wiring")

    # ---- chip set-up
    def init(self):
        """Reset the chip, set its timer (25 ms per command) and CRC preset, antenna on."""
        if self.rst is not None:
            self.rst(0)
            time.sleep_ms(1)
            self.rst(1)
            time.sleep_ms(50)  # oscillator start-up
        v = self._rd(_VERSION)
        if v in (0x00, 0xFF):  # MISO stuck low or floating high
            raise ReaderFault(
                "no MFRC522 answers on the SPI bus (version 0x%02x): check power and wiring" % v
            )
        self.version = v
        self._wr(_COMMAND, _CMD_SOFT_RESET)
        deadline = time.ticks_add(time.ticks_ms(), 100)
        while self._rd(_COMMAND) & _POWER_DOWN:
            if time.ticks_diff(deadline, time.ticks_ms()) < 0:
                raise ReaderFault("the MFRC522 did not come out of reset")
        self._wr(_T_MODE, 0x80)  # TAuto: the timer starts when a transmission ends
        self._wr(_T_PRESCALER, 0xA9)  # 13.56 MHz / (2 * 169 + 1) = 40 kHz: 25 us per tick
        self._wr(_T_RELOAD_H, 0x03)  # 1000 ticks: a card that has not answered in 25 ms
        self._wr(_T_RELOAD_L, 0xE8)  # never will (a MIFARE write takes at most ~10 ms)
        self._wr(_TX_ASK, 0x40)  # 100 % ASK modulation, as ISO 14443 type A wants
        self._wr(_MODE, 0x3D)  # CRC coprocessor preset 0x6363: CRC_A
        self.antenna(True)
        self._crypto = False
        return v

    def antenna(self, on):
        v = self._rd(_TX_CONTROL)
        if on and (v & _ANTENNA) != _ANTENNA:
            self._wr(_TX_CONTROL, v | _ANTENNA)
        elif not on and v & _ANTENNA:
            self._wr(_TX_CONTROL, v & 0xFC)

    # ---- CRC_A by the chip's coprocessor
    def _crc(self, buf, n):
        """CRC_A of buf[:n] as an int (low byte goes first on air)."""
        self._wr(_COMMAND, _CMD_IDLE)
        self._wr(_DIV_IRQ, _IRQ_CRC)  # Set2 = 0: clear CRCIRq
        self._wr(_FIFO_LEVEL, _FLUSH)
        self._fifo_write(buf, n)
        self._wr(_COMMAND, _CMD_CALC_CRC)
        self._wait(_DIV_IRQ, _IRQ_CRC)
        self._wr(_COMMAND, _CMD_IDLE)
        return self._rd(_CRC_L) | (self._rd(_CRC_H) << 8)

    def _append_crc(self, n):
        f = self._frame
        c = self._crc(f, n)
        f[n] = c & 0xFF
        f[n + 1] = c >> 8
        return n + 2

    def _check_crc(self, n):
        r = self._resp
        if n < 3 or self._crc(r, n - 2) != r[n - 2] | (r[n - 1] << 8):
            raise CRCError("a frame from the card failed its CRC check")

    # ---- one frame out, one frame back
    def _transceive(self, n, bits=0):
        """Send self._frame[:n] (the last byte has `bits` valid bits, 0 = 8); return the
        number of bytes received into self._resp, or -1 if no card answered in time."""
        self._wr(_COMMAND, _CMD_IDLE)
        self._wr(_COM_IRQ, _IRQ_ALL)
        self._wr(_FIFO_LEVEL, _FLUSH)
        self._fifo_write(self._frame, n)
        self._wr(_BIT_FRAMING, bits)
        self._wr(_COMMAND, _CMD_TRANSCEIVE)
        self._wr(_BIT_FRAMING, _START_SEND | bits)
        self.exchanges += 1
        irq = self._wait(_COM_IRQ, _IRQ_RX | _IRQ_IDLE | _IRQ_TIMER)
        self._wr(_BIT_FRAMING, bits)  # StartSend off again
        if irq & _IRQ_ERR:
            err = self._rd(_ERROR)
            if err & _ERR_TEMP:
                raise ReaderFault("the MFRC522 overheated and stopped its antenna: check the "
                                  "antenna circuit and supply")
            if irq & _IRQ_RX and err & _ERR_COLL:
                raise Collision("more than one card in the field: hold one card")
            if irq & _IRQ_RX and err & _ERR_COMM:
                raise CRCError("garbled frame from the card (error 0x%02x)" % err)
        if not irq & _IRQ_RX:
            return -1
        level = self._rd(_FIFO_LEVEL) & 0x7F
        self._bits = self._rd(_CONTROL) & 0x07
        if level > len(self._resp):
            raise ReaderFault("a %d-byte answer does not fit the reader's buffer" % level)
        self._fifo_read(self._resp, level)
        return level

    def _nak(self, n):
        """Raise if the answer of n bytes is not a MIFARE ACK."""
        if n == 1 and self._bits == 4 and self._resp[0] & 0x0F == _ACK:
            return
        if n == 1 and self._bits == 4:
            raise CardRefused("the card refused the command (NAK 0x%x)" % (self._resp[0] & 0x0F))
        raise CRCError("no valid ACK from the card (%d bytes)" % n)

    # ---- ISO 14443A activation
    def poll(self, wake=False):
        """REQA (or WUPA: halted cards answer it too). True if a card answered and is now
        ready for select(). A poll: no card is the normal answer, not an error."""
        if self._crypto:
            self.stop_crypto()
        self._wr(_COLL, 0x80)  # ValuesAfterColl = 1 (clears bits received after a collision)
        self._frame[0] = _WUPA if wake else _REQA
        try:
            n = self._transceive(1, 7)  # short frame: 7 bits
        except Collision:
            return True  # cards of different types answered: select() reports it
        except CRCError:
            return False
        return n == 2 and self._bits == 0

    def select(self):
        """Anticollision and SELECT on every cascade level. Fills self.uid/uid_len and
        returns the SAK (0x08: MIFARE Classic 1K). Call after poll() returned True."""
        f = self._frame
        r = self._resp
        self.uid_len = 0
        for sel in (0x93, 0x95, 0x97):  # cascade levels 1, 2, 3
            f[0] = sel
            f[1] = _NVB_ANTICOLL
            n = self._transceive(2)
            if n < 0:
                raise NoCard("the card left the field")
            if n != 5:
                raise CRCError("anticollision answer of %d bytes, not 5" % n)
            if r[0] ^ r[1] ^ r[2] ^ r[3] != r[4]:
                raise CRCError("UID check byte (BCC) does not match")
            f[1] = _NVB_SELECT
            for i in range(5):
                f[2 + i] = r[i]
            n = self._transceive(self._append_crc(7))
            if n < 0:
                raise NoCard("the card left the field")
            if n != 3:
                raise CRCError("SELECT answer of %d bytes, not 3" % n)
            self._check_crc(3)
            sak = r[0]
            u = self.uid
            k = self.uid_len
            if sak & _SAK_MORE:
                if f[2] != _CASCADE_TAG:
                    raise CRCError("SAK announces more UID, but no cascade tag came")
                u[k] = f[3]
                u[k + 1] = f[4]
                u[k + 2] = f[5]
                self.uid_len = k + 3
                continue
            for i in range(4):
                u[k + i] = f[2 + i]
            self.uid_len = k + 4
            self.sak = sak
            return sak
        raise CRCError("the UID does not end after three cascade levels")

    def activate(self, wake=True):
        """poll() + select() for one operation on a card that must be there: raises NoCard.
        A card still in an authenticated session takes the first (plain) request as garbage
        and drops to idle without answering; the second one wakes it."""
        if not self.poll(wake) and not self.poll(wake):
            raise NoCard("no card on the reader")
        return self.select()

    def halt(self):
        """HLTA: the card stays silent until it leaves the field (or WUPA). A card that
        took the HLTA does not answer, so silence is the expected outcome here."""
        f = self._frame
        f[0] = _HLTA
        f[1] = 0
        try:
            self._transceive(self._append_crc(2))
        except CardError:
            pass
        self.stop_crypto()

    def stop_crypto(self):
        self._wr(_STATUS2, self._rd(_STATUS2) & (0xFF ^ _CRYPTO1_ON))
        self._crypto = False

    # ---- MIFARE Classic
    def auth(self, block, key, key_b=False):
        """Authenticate the sector of `block` with a 6-byte key (A, or B if key_b). On
        failure the card drops back to idle: poll(wake=True) and select() again."""
        f = self._frame
        f[0] = _AUTH_B if key_b else _AUTH_A
        f[1] = block
        for i in range(6):
            f[2 + i] = key[i]
        k = self.uid_len - 4  # the last four UID bytes (the last cascade level's) seed Crypto1
        for i in range(4):
            f[8 + i] = self.uid[k + i]
        self._wr(_COMMAND, _CMD_IDLE)
        self._wr(_COM_IRQ, _IRQ_ALL)
        self._wr(_FIFO_LEVEL, _FLUSH)
        self._fifo_write(f, 12)
        self._wr(_COMMAND, _CMD_MF_AUTHENT)
        self.exchanges += 1
        self._wait(_COM_IRQ, _IRQ_IDLE | _IRQ_TIMER)
        self._wr(_COMMAND, _CMD_IDLE)
        if not self._rd(_STATUS2) & _CRYPTO1_ON:
            self._crypto = False
            raise AuthFailed("sector %d refused key %s" % (block // 4, "B" if key_b else "A"))
        self._crypto = True

    def _command_ack(self, cmd, block):
        """First phase of a two-phase command: NoCard or CardRefused if the card did not
        take it (so nothing that follows was sent)."""
        f = self._frame
        f[0] = cmd
        f[1] = block
        n = self._transceive(self._append_crc(2))
        if n < 0:
            raise NoCard("the card left the field")
        self._nak(n)

    def read_block(self, block, out):
        """Read 16 bytes of `block` into `out`."""
        f = self._frame
        f[0] = _READ
        f[1] = block
        n = self._transceive(self._append_crc(2))
        if n < 0:
            raise NoCard("the card left the field")
        if n == 1:
            self._nak(n)
        if n != 18:
            raise CRCError("READ answer of %d bytes, not 18" % n)
        self._check_crc(18)
        r = self._resp
        for i in range(16):
            out[i] = r[i]

    def write_block(self, block, data):
        """Write 16 bytes to `block`. NoCard/CardRefused: nothing written; CardLeftMidWrite:
        the data went out but no ACK came back, so the block's content is unknown."""
        self._command_ack(_WRITE, block)
        f = self._frame
        for i in range(16):
            f[i] = data[i]
        n = self._transceive(self._append_crc(16))
        if n < 0:
            raise CardLeftMidWrite(
                "the card left during the write of block %d: its content is unknown" % block
            )
        self._nak(n)

    # ---- value blocks: value, ~value, value (little-endian int32), addr, ~addr, addr, ~addr
    def _operand(self, cmd, block, operand):
        self._command_ack(cmd, block)
        f = self._frame
        v = operand & 0xFFFFFFFF
        f[0] = v & 0xFF
        f[1] = (v >> 8) & 0xFF
        f[2] = (v >> 16) & 0xFF
        f[3] = v >> 24
        n = self._transceive(self._append_crc(4))
        if n < 0:
            return  # the card acknowledges an operand by staying silent
        self._nak(n)
        raise CRCError("unexpected answer to a value operand")

    def decrement(self, block, amount):
        """Value in `block` minus `amount` into the card's transfer buffer (see transfer)."""
        self._operand(_DECREMENT, block, amount)

    def increment(self, block, amount):
        self._operand(_INCREMENT, block, amount)

    def restore(self, block):
        """Value of `block` into the transfer buffer, unchanged (to copy a value block)."""
        self._operand(_RESTORE, block, 0)

    def transfer(self, block):
        """Write the transfer buffer to `block`. No answer: the card may have been writing
        when it left, so this raises CardLeftMidWrite."""
        f = self._frame
        f[0] = _TRANSFER
        f[1] = block
        n = self._transceive(self._append_crc(2))
        if n < 0:
            raise CardLeftMidWrite(
                "the card left during the transfer to block %d: its content is unknown" % block
            )
        self._nak(n)

    def write_value(self, block, value, addr=None):
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
        self.write_block(block, buf)

    def read_value(self, block):
        """(value, addr) of a value block; CardError if the block is not one."""
        buf = bytearray(16)
        self.read_block(block, buf)
        for i in range(4):
            if buf[i] != buf[8 + i] or buf[i] ^ buf[4 + i] != 0xFF:
                raise CardError("block %d is not a value block" % block)
        if buf[12] != buf[14] or buf[12] ^ buf[13] != 0xFF or buf[14] ^ buf[15] != 0xFF:
            raise CardError("block %d is not a value block (address bytes)" % block)
        v = buf[0] | (buf[1] << 8) | (buf[2] << 16) | (buf[3] << 24)
        if v & 0x80000000:
            v -= 0x100000000
        return v, buf[12]
