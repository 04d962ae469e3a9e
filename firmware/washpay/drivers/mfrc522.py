# MFRC522 contactless reader on SPI: the chip (registers, FIFO, CRC coprocessor, its timer)
# and one ISO 14443A frame out and back. What a card tap does with it (anticollision and
# SELECT over every cascade level, MIFARE Classic authentication and block commands) is
# mifare.py's, loaded for a tap and dropped after (issue 13): between taps the board only
# polls (REQA) and halts.
#
#   reader = MFRC522(spi, cs_pin, rst_pin)    pins already built as outputs
#   reader.init()                             raises ReaderFault when no chip answers
#   if reader.poll():                         REQA: False when no card answers (a poll)
#       mifare.select(reader)                 the UID is in reader.uid[:reader.uid_len]
#       ...                                   (mifare.py)
#       reader.halt()
#
# Failures are exceptions a caller can act on, all CardError: CRCError (a garbled frame),
# Collision (more than one card answered), ReaderFault (the chip itself); mifare.py adds
# those of a card's answers.
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

# ISO 14443-3 commands (mifare.py has the rest)
_REQA = const(0x26)
_WUPA = const(0x52)
_HLTA = const(0x50)

_WAIT_MS = const(60)  # the chip's own timer (25 ms) ends every command well before this


class CardError(Exception):
    """Something went wrong talking to a card; the subclass says what."""


class CRCError(CardError):
    """A frame arrived with a wrong checksum: noise, or a card leaving the field."""


class Collision(CardError):
    """More than one card answered at once."""


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

    def _authent(self):
        """MFAuthent with self._frame[:12] (command, block, key, UID): True if the card took
        the key (Crypto1 on). mifare.py's auth() fills the frame."""
        self._wr(_COMMAND, _CMD_IDLE)
        self._wr(_COM_IRQ, _IRQ_ALL)
        self._wr(_FIFO_LEVEL, _FLUSH)
        self._fifo_write(self._frame, 12)
        self._wr(_COMMAND, _CMD_MF_AUTHENT)
        self.exchanges += 1
        self._wait(_COM_IRQ, _IRQ_IDLE | _IRQ_TIMER)
        self._wr(_COMMAND, _CMD_IDLE)
        self._crypto = bool(self._rd(_STATUS2) & _CRYPTO1_ON)
        return self._crypto
