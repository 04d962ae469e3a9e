# GM65-family QR/barcode scanner on a UART (docs/gm65.md is the protocol and the settings).
#
#   scanner = GM65(uart)                   a machine.UART wired to the module (9600 8N1)
#   await scanner.configure()              probe (any baud), set mode/same-code delay/baud
#                                          (gm65_setup.py, loaded for it and dropped)
#   await scanner.run(on_line, on_error)   on_line(memoryview of printable ASCII, no CR)
#                                          on_error("noise" | "too_long" | "partial")
#
# The module sends each scanned code as text ended by CR, and answers configuration
# frames (7E 00 ...) with reply frames (02 00 00 ...), both protected by CRC-16/XMODEM.
# Bytes come through an asyncio stream; one line buffer is reused, so reading allocates
# nothing per byte. Noise on the line, a code longer than the buffer and a line cut off by
# a pause all end as one on_error() call, and the next line is read cleanly.
import asyncio
import time

from micropython import const

from washpay import use

_REPLY1 = const(0x02)  # reply frame: 02 00 | 00 | len | data | crc hi, lo
MODE_MANUAL = const(0)  # scans while its trigger input is held
MODE_COMMAND = const(1)  # scans when told to over the UART
MODE_CONTINUOUS = const(2)  # scans all the time
MODE_SENSE = const(3)  # scans when the picture in front of it changes (a phone comes up)
_SETUP = ("washpay.drivers.gm65_setup",)

MAX_LINE = const(128)  # longest code taken; a token is at most 79 characters
_IDLE_MS = const(300)  # a code's bytes come in one burst: a pause this long ends a stub
_CR = const(0x0D)
_LF = const(0x0A)

# reply parser states
_TEXT = const(0)
_R_HEAD2 = const(1)
_R_TYPE = const(2)
_R_LEN = const(3)
_R_DATA = const(4)
_R_CRC1 = const(5)
_R_CRC2 = const(6)


def crc16_step(crc, b):
    """CRC-16/XMODEM (poly 0x1021, init 0, no reflection) of one more byte."""
    crc ^= b << 8
    for _ in range(8):
        crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
    return crc & 0xFFFF


class LineAssembler:
    """Bytes in, whole lines or errors out; pure logic (also runs under CPython).

    Lines end with CR (or LF: a module set to CRLF or LF works too); empty lines are
    skipped. Reply frames are recognised only while `awaiting` is set (configuration).
    """

    def __init__(self, on_line=None, on_error=None, idle_ms=_IDLE_MS):
        self.on_line = on_line
        self.on_error = on_error
        self.idle_ms = idle_ms
        self._line = bytearray(MAX_LINE)
        self._mv = memoryview(self._line)
        self._n = 0
        self._bad = False
        self._over = False
        self._last = time.ticks_ms()
        self.awaiting = False
        self.reply = bytearray(16)  # data of the last good reply frame
        self.reply_len = -1  # -1: none yet
        self._rstate = _TEXT
        self._rlen = 0
        self._rpos = 0
        self._rcrc = 0
        self.counts = {"lines": 0, "noise": 0, "too_long": 0, "partial": 0, "replies": 0,
                       "bad_frames": 0}

    def _error(self, kind):
        self.counts[kind] += 1
        if self.on_error:
            self.on_error(kind)

    def _reset(self):
        self._n = 0
        self._bad = False
        self._over = False

    def pending(self):
        return self._n or self._bad or self._over or self._rstate != _TEXT

    def feed(self, data, now=None):
        """Take the bytes just read; `now` (ticks_ms) is when they were read."""
        if now is None:
            now = time.ticks_ms()
        if self.pending() and time.ticks_diff(now, self._last) > self.idle_ms:
            # the rest never came: drop the stub so that it cannot spoil the next code
            if self._rstate != _TEXT:
                self.counts["bad_frames"] += 1
                self._rstate = _TEXT
            if self._n or self._bad or self._over:
                self._reset()
                self._error("partial")
        self._last = now
        for b in data:
            if self._rstate != _TEXT:
                if self._frame_byte(b) and self.awaiting:
                    # the reply awaited is here: the caller reads it now, before any frame
                    # after it in this read could overwrite it (_command drops the rest)
                    return
            elif b in (_CR, _LF):
                self._end_line()
            elif b == _REPLY1 and self.awaiting and not self._n and not self._bad:
                self._rstate = _R_HEAD2
            else:
                if b < 0x20 or b > 0x7E:
                    self._bad = True
                if self._n < MAX_LINE:
                    self._line[self._n] = b
                    self._n += 1
                else:
                    self._over = True

    def _end_line(self):
        if self._bad:
            self._error("noise")
        elif self._over:
            self._error("too_long")
        elif self._n:
            self.counts["lines"] += 1
            if self.on_line:
                self.on_line(self._mv[: self._n])
        self._reset()

    def _frame_byte(self, b):
        st = self._rstate
        if st == _R_HEAD2:
            self._rstate = _R_TYPE if b == 0 else self._bad_frame()
        elif st == _R_TYPE:
            self._rcrc = crc16_step(0, b)
            self._rstate = _R_LEN if b == 0 else self._bad_frame()
        elif st == _R_LEN:
            self._rcrc = crc16_step(self._rcrc, b)
            if b > len(self.reply):
                self._rstate = self._bad_frame()
            else:
                self._rlen = b
                self._rpos = 0
                self._rstate = _R_DATA if b else _R_CRC1
        elif st == _R_DATA:
            self._rcrc = crc16_step(self._rcrc, b)
            self.reply[self._rpos] = b
            self._rpos += 1
            if self._rpos == self._rlen:
                self._rstate = _R_CRC1
        elif st == _R_CRC1:
            self._rstate = _R_CRC2 if b == self._rcrc >> 8 else self._bad_frame()
        else:
            self._rstate = _TEXT
            if b == self._rcrc & 0xFF:
                self.reply_len = self._rlen
                self.counts["replies"] += 1
                return True
            self.counts["bad_frames"] += 1
        return False

    def _bad_frame(self):
        self.counts["bad_frames"] += 1
        return _TEXT


class GM65:
    def __init__(self, uart, baudrate=9600, mode=MODE_SENSE, same_code_ms=3000,
                 idle_ms=_IDLE_MS, log=None):
        use(_SETUP, "baud_code", baudrate)  # refuse a rate the module cannot do, now
        if not 0 <= same_code_ms <= 12700:
            raise ValueError("same-code delay must be 0..12700 ms")
        self.uart = uart
        self.baudrate = baudrate
        self.mode = mode
        self.same_code_ms = same_code_ms
        self.log = log or (lambda *a: None)
        self.lines = LineAssembler(idle_ms=idle_ms)
        self._reader = asyncio.StreamReader(uart)
        self._rx = bytearray(32)
        self._rxv = memoryview(self._rx)
        self.found = False
        self.found_baud = None  # the rate the module answered at, before configure changed it
        self.writes = 0  # registers written by configure (0 once the module is set up)
        self.saved = False
        self.reading = False  # run() is taking codes

    # ---- set-up: gm65_setup.py's, loaded for it and dropped after (washpay.use)
    def configure(self):
        """Probe, then set baud rate, read mode and same-code delay (gm65_setup.py)."""
        return use(_SETUP, "configure", self)

    # ---- scanning
    async def run(self, on_line, on_error=None):
        """Read scanned codes for ever; the callbacks run in this task and must not block."""
        la = self.lines
        la.on_line = on_line
        la.on_error = on_error
        rx = self._rxv
        self.reading = True
        try:
            while True:
                k = await self._reader.readinto(rx)
                if k:
                    la.feed(rx[:k])
        finally:
            self.reading = False

    def status(self):
        st = dict(self.lines.counts)
        st["found"] = self.found
        st["reading"] = self.reading
        st["baud"] = self.baudrate if self.found else None
        st["found_baud"] = self.found_baud
        st["writes"] = self.writes
        return st
