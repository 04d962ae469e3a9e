# MFRC522 answers (drivers/mfrc522.py, mifare.py): the reader's registers and FIFO answer at random
# (answers of any length, most with a right CRC_A or BCC so that parsing goes deep, error
# and IRQ bits anywhere, ACKs and NAKs); every operation must end in its result or a
# CardError, with a UID of 4, 7 or 10 bytes after a select.
from fzlib import below, chance, pick, rbytes, rnd
from washpay.drivers import mifare as M
from washpay.drivers.mfrc522 import MFRC522, CardError

STATS = {"ops": 0, "card_errors": 0, "selected": 0}
_FIFO = 0x09


def crc_a(data):
    c = 0x6363  # ISO 14443-3 CRC_A: reflected CCITT, preset 6363
    for x in data:
        b = (x ^ c) & 0xFF
        b = (b ^ (b << 4)) & 0xFF
        c = (c >> 8) ^ (b << 8) ^ (b << 3) ^ (b >> 4)
    return c & 0xFFFF


class Chip:
    """An SPI bus and chip select that answer like a reader with a strange card."""

    def __init__(self):
        self.first = False
        self.reg = 0
        self.fifo = bytearray()
        self.resp = b""
        self.pos = 0
        self.crc = 0

    def __call__(self, level):  # chip select: a new register access when pulled low
        if not level:
            self.first = True

    def _answer(self):
        """Mostly what a card would answer to the frame in the FIFO (so that parsing gets
        deep), now and then anything; a right CRC_A or BCC most of the time."""
        f = self.fifo
        cmd = f[0] if f else 0
        if below(4) == 0:
            n = pick((0, 1, 2, 3, 4, 5, 16, 17, 18, 19, 64))
        elif cmd in (0x26, 0x52):
            n = 2
        elif cmd in (0x93, 0x95, 0x97):
            n = 5 if len(f) == 2 else 3
        elif cmd == 0x30:
            n = 18
        else:
            n = 1
        body = rbytes(n)
        if n == 5 and below(4):
            if chance(3):
                body = b"\x88" + body[1:4]
            body = body[:4] + bytes((body[0] ^ body[1] ^ body[2] ^ body[3],))
        elif n == 1 and below(4):
            body = b"\x0a"
        elif n == 3 and below(2):
            body = bytes((pick((0x08, 0x04, 0x18, 0x00)),))
        if n >= 3 and n != 5 and below(4):
            c = crc_a(body[: n - 2])
            body = body[: n - 2] + bytes((c & 0xFF, c >> 8))
        self.resp = body
        self.pos = 0

    def _wr(self, reg, v):
        if reg == 0x01:
            if v == 0x03:
                self.crc = crc_a(self.fifo)
            elif v == 0x0C:
                self._answer()
        elif reg == 0x0A and v & 0x80:
            self.fifo = bytearray()

    def _rd(self, reg):
        if reg == 0x37:
            return pick((0x92, 0x91, 0x92, 0x00, 0xFF, rnd(8)))
        if reg == 0x01:
            return 0x10 if chance(50) else 0
        if reg == 0x04:
            return rnd(8) & pick((0x7F, 0x0F, 0x3F)) | pick((0x30, 0x30, 0x20, 0x10, 0x01))
        if reg == 0x05:
            return rnd(8) | 0x04
        if reg == 0x06:
            return 0 if below(4) else rnd(8)
        if reg == 0x0A:
            return len(self.resp) if below(8) else rnd(7)
        if reg == 0x0C:
            if len(self.resp) == 1 and below(4):
                return 4
            return 0 if below(4) else rnd(3)
        if reg == 0x21:
            return self.crc >> 8 if below(10) else rnd(8)
        if reg == 0x22:
            return self.crc & 0xFF if below(10) else rnd(8)
        return rnd(8)

    def write(self, buf):
        if self.first:
            self.first = False
            if len(buf) == 2:
                self._wr((buf[0] >> 1) & 0x3F, buf[1])
            else:
                self.reg = (buf[0] >> 1) & 0x3F
        elif self.reg == _FIFO:
            self.fifo.append(buf[0])

    def write_readinto(self, w, r):
        if len(w) == 2:
            self.first = False
            r[1] = self._rd((w[0] >> 1) & 0x3F)
        else:
            r[0] = self.resp[self.pos] if self.pos < len(self.resp) else rnd(8)
            self.pos += 1


def run(req, count, found):
    out = bytearray(16)
    data = bytes(16)
    key = b"\xff" * 6
    for _ in range(count):
        chip = Chip()
        r = MFRC522(chip, chip)
        ops = []
        for k in range(2 + below(6)):
            op = below(12) if k else 0
            ops.append(op)
            STATS["ops"] += 1
            try:
                if op == 0:
                    r.init()
                elif op == 1:
                    r.poll(chance(2))
                elif op < 4:
                    M.select(r) if op == 2 else M.activate(r)
                    STATS["selected"] += 1
                    if r.uid_len not in (4, 7, 10):
                        found.add("uid of " + str(r.uid_len) + " bytes", bytes(ops), bytes(r.uid))
                elif op == 4:
                    M.auth(r, 4 + below(4), key, chance(2))
                elif op == 5:
                    M.read_block(r, 4 + below(4), out)
                elif op == 6:
                    M.write_block(r, 5, data)
                elif op == 7:
                    M.read_value(r, 6)
                elif op == 8:
                    M.decrement(r, 6, below(1000))
                elif op == 9:
                    M.transfer(r, 6)
                elif op == 10:
                    M.write_value(r, 6, rnd(31) - (1 << 30))
                else:
                    r.halt()
            except CardError:
                STATS["card_errors"] += 1
            except Exception as e:  # noqa: BLE001
                found.add("op " + str(op) + ": " + type(e).__name__, bytes(ops) + chip.resp,
                          repr(e))
        if len(out) != 16:
            found.add("buffer resized", bytes(ops))
    return count
