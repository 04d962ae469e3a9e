"""Character display: an HD44780 16x2 LCD behind a PCF8574 I2C backpack ("LCD1602 I2C").

The backpack wires only D4..D7 of the LCD, so every byte goes over as two nibbles, and each
nibble costs two I2C bytes (E high, then E low: the HD44780 latches on the falling edge).
show() keeps a copy of what the screen holds and sends only the characters that changed.
"""

import time

from micropython import const

# PCF8574 port bits on the common backpack: P0=RS, P1=RW, P2=E, P3=backlight, P4..P7=D4..D7.
_RS = const(0x01)  # 1 = data (DDRAM), 0 = instruction; RW (0x02) stays 0: we never read
_E = const(0x04)
_BL = const(0x08)

# HD44780 instructions.
_CLEAR = const(0x01)
_ENTRY_INCREMENT = const(0x06)  # address counter +1 after each character, display not shifted
_DISPLAY_OFF = const(0x08)
_DISPLAY_ON = const(0x0C)  # cursor and blink off
_FUNCTION_4BIT = const(0x20)
_TWO_LINES = const(0x08)  # function set N bit; 5x8 font
_SET_DDRAM = const(0x80)

_LINE_ADDR = const(0x40)  # DDRAM address of the second line in 2-line mode
_SPACE = const(0x20)
_UNKNOWN = const(0x3F)  # "?": stands in for what the character ROM cannot show

# Clear takes 1.52 ms at the nominal 270 kHz oscillator; clones run slower.
_CLEAR_US = const(2000)


class LCD1602:
    """HD44780 text display on a PCF8574 at `addr`; `i2c` needs writeto(addr, buf).

    OSError from the bus (ENODEV: no backpack answering at `addr`) reaches the caller.
    """

    def __init__(self, i2c, addr=0x27, cols=16, rows=2):
        if not (1 <= cols <= 40 and 1 <= rows <= 4 and cols * ((rows + 1) // 2) <= 40):
            raise ValueError("an HD44780 drives at most 40 characters per line")
        self._i2c = i2c
        self._addr = addr
        self.cols = cols
        self.rows = rows
        self._bl = _BL
        # Four bus bytes per LCD byte; room for one address and a whole line, so a changed
        # line goes out as a single I2C transfer.
        self._buf = bytearray(4 * (cols + 1))
        self._mv = memoryview(self._buf)
        self._mv1 = self._mv[:1]
        self._mv2 = self._mv[:2]
        self._mv4 = self._mv[:4]
        self._shadow = bytearray(cols * rows)  # character codes the display holds now
        self._line = bytearray(cols)  # show()'s next line, before it is compared
        self._col = 0
        self._row = 0
        self._init()

    def _init(self):
        # The controller ignores everything for 40 ms after VCC reaches 2.7 V (15 ms at 4.5 V).
        time.sleep_ms(50)
        # The PCF8574 powers up with all outputs high, E included: set a known idle state.
        self._buf[0] = self._bl
        self._write(self._mv1)
        # Nobody knows whether the controller is in 8-bit mode or halfway through a 4-bit
        # byte (reset of the MCU alone, or a failed power-on reset). Three "8-bit" function
        # sets bring it to 8-bit mode from any of these states; the 0x2 nibble, still read
        # as an 8-bit instruction, switches it to 4 bits. Delays are the datasheet's.
        self._nibble(0x3)
        time.sleep_ms(5)
        self._nibble(0x3)
        time.sleep_us(150)
        self._nibble(0x3)
        time.sleep_us(150)
        self._nibble(0x2)
        time.sleep_us(150)
        self._command(_FUNCTION_4BIT | (_TWO_LINES if self.rows > 1 else 0))
        # Datasheet order: display off while clearing, so no power-on garbage flashes up.
        self._command(_DISPLAY_OFF)
        self.clear()
        self._command(_ENTRY_INCREMENT)
        self._command(_DISPLAY_ON)

    # ---- bus

    def _write(self, mv):
        try:
            self._i2c.writeto(self._addr, mv)
        except OSError:
            # What reached the screen is unknown: force the next show() to rewrite it all
            # (0 is never a code this driver writes).
            sh = self._shadow
            for i in range(len(sh)):
                sh[i] = 0
            raise

    def _nibble(self, nib):
        out = (nib << 4) | self._bl
        self._buf[0] = out | _E
        self._buf[1] = out
        self._write(self._mv2)

    def _queue(self, n, byte, rs):
        # Data and RS stay put while E falls: the chip samples them on that edge.
        b = self._buf
        out = (byte & 0xF0) | rs | self._bl
        b[n] = out | _E
        b[n + 1] = out
        out = ((byte << 4) & 0xF0) | rs | self._bl
        b[n + 2] = out | _E
        b[n + 3] = out
        n += 4
        if n == len(b):
            self._write(self._mv)
            n = 0
        return n

    def _flush(self, n):
        if n:
            self._write(self._mv[:n])

    def _command(self, cmd):
        self._queue(0, cmd, 0)
        self._write(self._mv4)

    def _address(self, col, row):
        # 20x4 and 16x4 glass continues lines 0 and 1 on rows 2 and 3.
        return _SET_DDRAM | ((_LINE_ADDR if row & 1 else 0) + (self.cols if row & 2 else 0) + col)

    # ---- API

    def clear(self):
        self._command(_CLEAR)
        time.sleep_us(_CLEAR_US)
        sh = self._shadow
        for i in range(len(sh)):
            sh[i] = _SPACE
        self._col = 0
        self._row = 0

    def move_to(self, col, row):
        if not (0 <= col < self.cols and 0 <= row < self.rows):
            raise ValueError("position off the display")
        self._command(self._address(col, row))
        self._col = col
        self._row = row

    def putstr(self, text):
        """Write `text` at the cursor; "\\n" and the right edge continue on the next row."""
        cols = self.cols
        n = 0
        for c in text:
            if c == "\n" or self._col == cols:
                # A full row wraps only when another character comes, so filling the last
                # column and then "\n" moves one row, not two.
                self._row = (self._row + 1) % self.rows
                self._col = 0
                n = self._queue(n, self._address(0, self._row), 0)
                if c == "\n":
                    continue
            code = ord(c)
            if not _SPACE <= code <= 0x7E:
                code = _UNKNOWN
            n = self._queue(n, code, _RS)
            self._shadow[self._row * cols + self._col] = code
            self._col += 1
        self._flush(n)

    def show(self, line1, line2="", line3="", line4=""):
        """Make the screen read these lines, padded with spaces; send only what changed."""
        self._show_row(0, line1)
        if self.rows > 1:
            self._show_row(1, line2)
        if self.rows > 2:
            self._show_row(2, line3)
        if self.rows > 3:
            self._show_row(3, line4)

    def _show_row(self, row, text):
        cols = self.cols
        line = self._line
        i = 0
        for c in text:  # no allocation: each distinct character is interned once, ever
            if i == cols:
                break
            code = ord(c)
            line[i] = code if _SPACE <= code <= 0x7E else _UNKNOWN
            i += 1
        while i < cols:
            line[i] = _SPACE
            i += 1
        sh = self._shadow
        base = row * cols
        n = 0
        after = -1  # column following the last character sent: the chip's address counter
        for col in range(cols):
            code = line[col]
            if sh[base + col] == code:
                continue
            if col != after:
                n = self._queue(n, self._address(col, row), 0)
            n = self._queue(n, code, _RS)
            sh[base + col] = code
            after = col + 1
        self._flush(n)
        if after >= 0:  # the cursor moved: a later putstr() goes on from there
            self._col = after
            self._row = row

    def backlight(self, on):
        self._bl = _BL if on else 0
        self._buf[0] = self._bl  # E low: no edge, the controller sees nothing
        self._write(self._mv1)
