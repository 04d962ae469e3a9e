"""The simulated board's LCD1602 I2C module: a PCF8574 port expander driving an HD44780.

It sees exactly what the real module sees, the bytes written to its I2C address, and does
what the chips do with them: the PCF8574 sets its eight outputs to each byte; the HD44780
latches RS, RW and D4..D7 on every falling edge of E, builds bytes from one (8-bit mode) or
two (4-bit mode) latches, and executes them. So a driver that skips the init sequence, mixes
up nibbles or writes while the controller is busy gets the same garbage a real display shows.

Modelled from the HD44780U datasheet:
- Power-on: the internal reset leaves 8-bit mode, 1 line, display off, increment, no shift,
  DDRAM all spaces, and the controller busy for 40 ms (the datasheet's wait at 2.7 V). The
  PCF8574 comes up with all outputs high (so E and RW are high).
- D0..D3 are not wired on the backpack; in 8-bit mode they read high (the HD44780's pull-ups),
  so a nibble n arrives as the byte n<<4 | 0x0F.
- Instructions: clear, return home, entry mode (increment/decrement, display shift), display
  on/off/cursor/blink, cursor and display shift, function set (DL, N), CGRAM and DDRAM address.
  Data goes to DDRAM (line 0 at 0x00-0x27, line 1 at 0x40-0x67; one line 0x00-0x4F) or CGRAM.
- Timing: clear and home keep the chip busy 1.52 ms, everything else 37 us. Each I2C byte
  takes 9 bit times at `bus_hz`; the simulated bus returns at once, so the transfer time is
  added to a virtual clock where real hardware would have spent it.
- Reads (RW high on a falling edge) return nothing, but take a nibble slot in 4-bit mode and
  move the address counter after a data read, as on the chip.

Simplifications: an instruction or data nibble latched while the chip is busy is dropped and
counted in `busy_writes` (the datasheet leaves the outcome undefined); function set always
takes effect (the datasheet says N and F are fixed after the first one, clones disagree);
the 4.1 ms / 100 us waits of the init sequence are not checked, as they only matter when the
power-on reset failed, which this model never does. RS/data changing in the same PCF8574
update as E's fall are taken as held (the value while E was high is latched).
Character ROM A00 (the common one): 0x5C is shown as a yen sign and 0x7E/0x7F as arrows;
CGRAM and codes without an ASCII look-alike are shown as U+FFFD.
The clock is time.ticks_us, which never wraps in practice on the 64-bit unix port.
"""

import time

from micropython import const

_RS = const(0x01)
_RW = const(0x02)
_E = const(0x04)
_BL = const(0x08)

_POWER_ON_US = const(40000)
_SLOW_US = const(1520)  # clear display, return home
_EXEC_US = const(37)
_CELLS = const(80)  # DDRAM characters: two lines of 40, or one of 80
_LINE_CELLS = const(40)
_HISTORY = const(8)  # screens kept for `shown`


class SimLCD1602:
    def __init__(self, cols=16, rows=2, bus_hz=400000):
        # 400 kHz (machine.I2C's default) is the strict case: the slower the bus, the more
        # time the controller gets between latches.
        self.cols = cols
        self.rows = rows
        self._byte_us = 9000000 // bus_hz
        self._lag = 0  # bus time the instantaneous simulated transfers would have taken
        self._port = 0xFF
        self._ddram = bytearray(b" " * _CELLS)
        self._cgram = bytearray(64)
        self.eight_bit = True
        self.two_line = False
        self.display_on = False
        self.cursor = False
        self.blink = False
        self._increment = True
        self._shift_on_write = False
        self._shift = 0  # display shift: visible column 0 shows this cell of each line
        self._ac = 0  # the address counter, DDRAM or CGRAM according to _cg
        self._cg = False
        self._high = -1  # 4-bit mode: the first nibble of a byte, until the second comes
        self._busy_until = time.ticks_add(time.ticks_us(), _POWER_ON_US)
        self.busy_writes = 0
        # the last screens shown: a test reads what a notice of a few seconds said however
        # late it looks (taken at each address set or clear, when one screen's writing
        # begins and the one before it is whole). Kept as copies of the cells and the shift
        # in buffers made here: note() runs inside the firmware's heap and allocates nothing
        self._snaps = [bytearray(_CELLS + 2) for _ in range(_HISTORY)]
        self._snap_at = -1  # the newest snapshot's slot
        self.shown_n = 0  # screens ever noted

    @property
    def backlight(self):
        return bool(self._port & _BL)

    def i2c_write(self, buf):
        """Every byte the bus master writes to the PCF8574's address, in order."""
        t = time.ticks_add(time.ticks_us(), self._lag + self._byte_us)  # address byte
        for b in buf:
            t = time.ticks_add(t, self._byte_us)  # outputs change after the byte's ACK
            if self._port & _E and not b & _E:
                self._latch(self._port, t)
            self._port = b
        self._lag += (len(buf) + 1) * self._byte_us

    def _latch(self, port, t):
        rs = port & _RS
        nibble = port >> 4
        if port & _RW:
            self._read(rs)
            return
        if time.ticks_diff(self._busy_until, t) > 0:
            self.busy_writes += 1
            return
        if self.eight_bit:
            self._execute(rs, (nibble << 4) | 0x0F, t)
        elif self._high < 0:
            self._high = nibble
        else:
            byte = (self._high << 4) | nibble
            self._high = -1
            self._execute(rs, byte, t)

    def _read(self, rs):
        if not self.eight_bit:
            if self._high < 0:
                self._high = 0  # first half of a read
                return
            self._high = -1
        if rs:
            self._step(self._increment)

    def _execute(self, rs, b, t):
        busy = _EXEC_US
        if not rs and b & 0x83:  # set DDRAM address, home or clear: note what is shown
            self.note()
        if rs:
            self._write_data(b)
        elif b & 0x80:
            self._ac = b & 0x7F
            self._cg = False
        elif b & 0x40:
            self._ac = b & 0x3F
            self._cg = True
        elif b & 0x20:
            self.eight_bit = bool(b & 0x10)
            self.two_line = bool(b & 0x08)
            self._high = -1
        elif b & 0x10:
            right = bool(b & 0x04)
            if b & 0x08:
                # Shifting the display right shows lower addresses at column 0.
                self._shift = (self._shift + (-1 if right else 1)) % _CELLS
            else:
                self._step(right)
        elif b & 0x08:
            self.display_on = bool(b & 0x04)
            self.cursor = bool(b & 0x02)
            self.blink = bool(b & 0x01)
        elif b & 0x04:
            self._increment = bool(b & 0x02)
            self._shift_on_write = bool(b & 0x01)
        elif b & 0x02:
            self._ac = 0
            self._cg = False
            self._shift = 0
            busy = _SLOW_US
        elif b & 0x01:
            for i in range(_CELLS):
                self._ddram[i] = 0x20
            self._ac = 0
            self._cg = False
            self._shift = 0
            self._increment = True
            busy = _SLOW_US
        self._busy_until = time.ticks_add(t, busy)

    def _cell(self, addr):
        """DDRAM address -> index into _ddram, or -1 where no memory answers."""
        if not self.two_line:
            return addr if addr < _CELLS else -1
        if addr < _LINE_CELLS:
            return addr
        if 0x40 <= addr < 0x40 + _LINE_CELLS:
            return addr - 0x40 + _LINE_CELLS
        return -1

    def _step(self, up):
        a = self._ac
        if self._cg:
            self._ac = (a + (1 if up else -1)) & 0x3F
            return
        if self.two_line:
            if up:
                a = 0x40 if a == 0x27 else 0 if a == 0x67 else a + 1
            else:
                a = 0x27 if a == 0x40 else 0x67 if a == 0 else a - 1
        elif up:
            a = 0 if a == 0x4F else a + 1
        else:
            a = 0x4F if a == 0 else a - 1
        self._ac = a & 0x7F

    def _write_data(self, b):
        if self._cg:
            self._cgram[self._ac] = b & 0x1F  # 5 pixels per row
        else:
            cell = self._cell(self._ac)
            if cell >= 0:
                self._ddram[cell] = b
            if self._shift_on_write:
                self._shift = (self._shift + (1 if self._increment else -1)) % _CELLS
        self._step(self._increment)

    @staticmethod
    def _glyph(code):
        if code == 0x5C:
            return "\u00a5"
        if code == 0x7E:
            return "\u2192"
        if code == 0x7F:
            return "\u2190"
        if 0x20 <= code < 0x7F:
            return chr(code)
        return "\ufffd"

    def row_text(self, row, ddram=None, shift=None, two_line=None):
        """What DDRAM puts on one row of the glass, whether or not the display is on (of a
        snapshot's cells, shift and mode where given)."""
        cols = self.cols
        ddram = self._ddram if ddram is None else ddram
        shift = self._shift if shift is None else shift
        if self.two_line if two_line is None else two_line:
            base = (row & 1) * _LINE_CELLS
            first = (row >> 1) * cols  # rows 2 and 3 of 4-row glass continue lines 0 and 1
            span = _LINE_CELLS
        elif row == 0:
            base = 0
            first = 0
            span = _CELLS
        else:
            return ""  # one-line mode drives only the first row
        out = [self._glyph(ddram[base + (first + c + shift) % span]) for c in range(cols)]
        return "".join(out).rstrip(" ")

    def note(self):
        """Keep the screen as it is now among the last ones shown, if it is not blank and
        not the newest kept already."""
        if not self.display_on:
            return
        d = self._ddram
        for i in range(_CELLS):
            if d[i] != 0x20:
                break
        else:
            return  # blank
        if self._snap_at >= 0:
            s = self._snaps[self._snap_at]
            for i in range(_CELLS):
                if s[i] != d[i]:
                    break
            else:
                if s[_CELLS] == self._shift and s[_CELLS + 1] == self.two_line:
                    return  # the same screen
        self._snap_at = (self._snap_at + 1) % _HISTORY
        s = self._snaps[self._snap_at]
        for i in range(_CELLS):
            s[i] = d[i]
        s[_CELLS] = self._shift
        s[_CELLS + 1] = self.two_line
        self.shown_n += 1

    @property
    def shown(self):
        """The last screens shown (at most 8), oldest first, as text."""
        n = min(self.shown_n, _HISTORY)
        out = []
        for k in range(n):
            s = self._snaps[(self._snap_at - n + 1 + k) % _HISTORY]
            out.append("\n".join([self.row_text(r, s, s[_CELLS], s[_CELLS + 1])
                                  for r in range(self.rows)]))
        return out

    def text(self):
        """The visible rows, joined with newlines; blank while the display is off."""
        if not self.display_on:
            return "\n" * (self.rows - 1)
        return "\n".join([self.row_text(r) for r in range(self.rows)])
