# The GM65's set-up (docs/gm65.md): probe it at any baud rate and write its settings with
# configuration frames. Runs when the scanner task starts (and again after a scanner that
# did not answer), never while codes are read: loaded for it and dropped after
# (washpay.use), so that a running board keeps only gm65.py's line reader (issue 13).
#
#   await configure(scanner)            what GM65.configure() does
#   await read(scanner, addr, count)    registers' values (bytes), or None on silence
#   await write(scanner, addr, data)    True if the module answered
#   await save(scanner)                 keep the registers over a power cycle
import asyncio
import time

from micropython import const

from washpay.drivers.gm65 import crc16_step

_HEAD1 = const(0x7E)  # command frame: 7E 00 | type | len | addr hi, lo | data | crc hi, lo
T_READ = const(0x07)  # data = how many registers to read
T_WRITE = const(0x08)  # data = the values, written from addr on
T_SAVE = const(0x09)  # addr 0000, data 00: keep the registers over a power cycle

REG_MODE = const(0x0000)  # bits 1..0: read mode (the other bits: light, aimer, sound)
REG_SAME_CODE = const(0x0013)  # bit 7: same-code delay on; bits 6..0: the delay in 100 ms
REG_BAUD = const(0x002A)  # 2 registers, low byte first: the baud code below
_MODE_MASK = const(0x03)
_DATA_MAX = const(16)  # data bytes a frame carries here (the reply buffer's size)
_REPLY_MS = const(300)  # the module answers a frame within a few ms at any baud

# baud rate -> the module's code for it (3 MHz / baud, rounded); the default comes first
BAUD_CODES = (
    (9600, 0x0139), (115200, 0x001A), (57600, 0x0034), (38400, 0x004E), (19200, 0x009C),
    (14400, 0x00D0), (4800, 0x0271), (1200, 0x09C4),
)


def crc16_xmodem(data, crc=0):
    for b in data:
        crc = crc16_step(crc, b)
    return crc


def baud_code(baud):
    for b, code in BAUD_CODES:
        if b == baud:
            return code
    raise ValueError("the GM65 has no baud rate %d" % baud)


async def _command(g, ftype, addr, data):
    """Send one frame and wait for the reply: its data (bytes), or None on silence."""
    n = len(data)
    if n > _DATA_MAX:
        raise ValueError("a GM65 frame carries at most %d data bytes" % _DATA_MAX)
    f = bytearray(8 + n)  # header 6, data, CRC 2
    f[0] = _HEAD1
    f[2] = ftype
    f[3] = n
    f[4] = addr >> 8
    f[5] = addr & 0xFF
    f[6 : 6 + n] = data
    crc = crc16_xmodem(memoryview(f)[2 : 6 + n])
    f[6 + n] = crc >> 8
    f[7 + n] = crc & 0xFF
    la = g.lines
    while g.uart.any():  # a stale reply or a code half read: not this frame's answer
        g.uart.readinto(g._rx)
    la.reply_len = -1
    la.awaiting = True
    try:
        w = asyncio.StreamWriter(g.uart, {})
        w.write(f)
        await w.drain()
        t0 = time.ticks_ms()
        while la.reply_len < 0:
            left = _REPLY_MS - time.ticks_diff(time.ticks_ms(), t0)
            if left <= 0:
                return None
            try:
                k = await asyncio.wait_for_ms(g._reader.readinto(g._rxv), left)
            except asyncio.TimeoutError:
                return None
            if k:
                la.feed(g._rxv[:k])
        return bytes(la.reply[: la.reply_len])
    finally:
        la.awaiting = False


async def read(g, addr, count=1):
    r = await _command(g, T_READ, addr, bytes((count,)))
    return r if r is not None and len(r) == count else None


async def write(g, addr, data):
    return await _command(g, T_WRITE, addr, data) is not None


async def save(g):
    return await _command(g, T_SAVE, 0, b"\x00") is not None


async def probe(g):
    """Find the module at any baud rate; leave the UART at the rate it answered."""
    rates = [g.baudrate] + [b for b, _ in BAUD_CODES if b != g.baudrate]
    for baud in rates:
        g.uart.init(baudrate=baud)
        await asyncio.sleep_ms(20)  # let a byte in flight at the old rate pass
        if await read(g, REG_BAUD, 2) is not None:
            g.found = True
            g.found_baud = baud
            return baud
    g.found = False
    g.uart.init(baudrate=g.baudrate)
    return None


async def configure(g):
    """Probe, then set baud rate, read mode and same-code delay; save only if changed.

    Returns True when the module answers with the wanted settings. A board without a
    scanner (or a dead one) returns False after trying every rate once.
    """
    baud = await probe(g)
    if baud is None:
        g.log("QR scanner: no answer at any baud rate")
        return False
    g.writes = 0
    if baud != g.baudrate:
        code = baud_code(g.baudrate)
        # the module answers at the old rate, then switches
        if not await write(g, REG_BAUD, bytes((code & 0xFF, code >> 8))):
            return False
        g.writes += 1
        g.uart.init(baudrate=g.baudrate)
        await asyncio.sleep_ms(20)
        if await read(g, REG_BAUD, 2) is None:
            g.log("QR scanner: lost after switching to", g.baudrate, "baud")
            g.found = False
            return False
    mode = await read(g, REG_MODE)
    if mode is None:
        return False
    want = (mode[0] & ~_MODE_MASK) | g.mode
    if want != mode[0]:
        if not await write(g, REG_MODE, bytes((want,))):
            return False
        g.writes += 1
    same = await read(g, REG_SAME_CODE)
    if same is None:
        return False
    units = g.same_code_ms // 100
    want = (0x80 | units) if units else 0
    if want != same[0]:
        if not await write(g, REG_SAME_CODE, bytes((want,))):
            return False
        g.writes += 1
    # the module's flash wears: write it only when something changed
    g.saved = False
    if g.writes:
        g.saved = await save(g)
    g.log("QR scanner: found at", baud, "baud; settings written:", g.writes)
    return True
