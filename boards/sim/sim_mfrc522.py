"""The simulated board's card reader: an MFRC522 on SPI and the MIFARE Classic 1K cards that
a person holds to it.

The chip model sees what the real chip sees: bytes clocked in while its chip select is low.
It keeps the 64 registers and the 64-byte FIFO and carries out the commands a driver gives:
SoftReset, Idle, CalcCRC (CRC_A into CRCResultReg, CRCIRq), Transceive (started by StartSend,
TxLastBits for short frames, RxLastBits for 4-bit answers, TimerIRq when nothing answers)
and MFAuthent (12 bytes from the FIFO: command, block, key, 4 UID bytes; MFCrypto1On in
Status2Reg on success, TimerIRq on failure). SPI framing as in datasheet 8.1.2: address byte
(addr << 1) & 0x7E, bit 7 set to read; in a read every byte sent is the next address and the
byte returned answers the previous one; in a write every byte after the address goes to it.

A virtual card follows ISO 14443-3 (IDLE/READY/ACTIVE/HALT; REQA, WUPA, anticollision and
SELECT per cascade level with cascade tag 0x88 for 7-byte UIDs, HLTA) and the MIFARE Classic
1K command set (READ, WRITE, INCREMENT, DECREMENT, RESTORE, TRANSFER; ACK 0xA, NAK 0x4/0x5
in 4 bits) with the access conditions of its sector trailers (C1 C2 C3 per block, checked
against their inverted copies; key B that is readable cannot be used). CRC_A is checked on
every frame that carries one and appended to every answer that does.

Modelled abstractly: Crypto1. MFAuthent checks the key against the trailer, the UID bytes
against the card, and marks the sector authenticated for that key; frames after it go in
clear, with the rule that a reader whose Crypto1 is off talking to an authenticated card
(or the reverse) is garbage to the card, which falls back to IDLE. Not modelled: timing (a
command completes within the SPI access that starts it), the analogue registers (they read
back what was written). A second card can be held to the reader with the first: both
answer, and answers that differ collide (CollErr), which is all a payment terminal needs to
know ("one card only"); bit-level anticollision between them is not modelled.

The field: one card (and, to test collisions, a second one). A card can be placed or taken
away at any moment; the host can also schedule it to leave during the k-th frame exchange
from now (remove after k exchanges), or during the next WRITE (its command or its data
frame), which is how tests tear a write at a chosen step. A card that leaves during a
WRITE's data frame or a TRANSFER leaves that block `old`, `new` (written, ACK lost) or
`mixed` (first 8 bytes new, last 8 zero: EEPROM programming cut off). The card's memory
survives: every change is reported to the host (`on_event`), which keeps card images.
"""

_BLOCKS = 64
_ACK = 0x0A
_NAK_OP = 0x04  # invalid operation / access denied
_NAK_CRC = 0x05  # parity or CRC error

TRANSPORT_TRAILER = b"\xff\xff\xff\xff\xff\xff\xff\x07\x80\x69\xff\xff\xff\xff\xff\xff"

# Access conditions (MIFARE Classic 1K datasheet, tables 7 and 8): for (C1 C2 C3) as a
# 3-bit number C1<<2 | C2<<1 | C3, which key may do what; "AB" either, "B" key B, "" never.
# data blocks: read, write, increment, decrement/transfer/restore
_DATA_ACCESS = {
    0b000: ("AB", "AB", "AB", "AB"),
    0b010: ("AB", "", "", ""),
    0b100: ("AB", "B", "", ""),
    0b110: ("AB", "B", "B", "AB"),
    0b001: ("AB", "", "", "AB"),
    0b011: ("B", "B", "", ""),
    0b101: ("B", "", "", ""),
    0b111: ("", "", "", ""),
}
# trailer: key A read, key A write, access bits read, access bits write, key B read, write
_TRAILER_ACCESS = {
    0b000: ("", "A", "A", "", "A", "A"),
    0b010: ("", "", "A", "", "A", ""),
    0b100: ("", "B", "AB", "", "", "B"),
    0b110: ("", "", "AB", "", "", ""),
    0b001: ("", "A", "A", "A", "A", "A"),
    0b011: ("", "B", "AB", "B", "", "B"),
    0b101: ("", "", "AB", "B", "", ""),
    0b111: ("", "", "AB", "", "", ""),
}


def crc_a(data, n=None):
    """ISO 14443-3 CRC_A (x^16 + x^12 + x^5 + 1, reflected, preset 0x6363) -> int."""
    crc = 0x6363
    if n is None:
        n = len(data)
    for i in range(n):
        b = data[i] ^ (crc & 0xFF)
        b = (b ^ (b << 4)) & 0xFF
        crc = (crc >> 8) ^ (b << 8) ^ (b << 3) ^ (b >> 4)
    return crc & 0xFFFF


def with_crc(data):
    c = crc_a(data)
    return bytes(data) + bytes((c & 0xFF, c >> 8))


def crc_ok(data):
    return len(data) >= 3 and crc_a(data, len(data) - 2) == data[-2] | (data[-1] << 8)


def access_conditions(trailer):
    """Per block 0..3 of the sector: (C1 C2 C3) as 0..7, or None if the access bytes do not
    match their inverted copies (a card treats such a sector as blocked)."""
    b6, b7, b8 = trailer[6], trailer[7], trailer[8]
    c1, c2, c3 = b7 >> 4, b8 & 0x0F, b8 >> 4
    if (b6 & 0x0F) != (c1 ^ 0x0F) or (b6 >> 4) != (c2 ^ 0x0F) or (b7 & 0x0F) != (c3 ^ 0x0F):
        return None
    return [((c1 >> i) & 1) << 2 | ((c2 >> i) & 1) << 1 | ((c3 >> i) & 1) for i in range(4)]


def access_bytes(conds):
    """The access bytes 6..8 for (C1 C2 C3) of blocks 0..3 (inverse of access_conditions)."""
    c1 = c2 = c3 = 0
    for i, c in enumerate(conds):
        c1 |= ((c >> 2) & 1) << i
        c2 |= ((c >> 1) & 1) << i
        c3 |= (c & 1) << i
    return bytes((((c2 ^ 0x0F) << 4) | (c1 ^ 0x0F), (c1 << 4) | (c3 ^ 0x0F), (c3 << 4) | c2))


def blank_blocks(uid, sak=0x08, atqa=b"\x04\x00"):
    """A factory-fresh card: manufacturer block, zeros, transport trailers (FF.. keys)."""
    blocks = bytearray(_BLOCKS * 16)
    if len(uid) == 4:
        bcc = uid[0] ^ uid[1] ^ uid[2] ^ uid[3]
        head = bytes(uid) + bytes((bcc, sak)) + bytes(atqa)
    else:
        head = bytes(uid)
    mfr = head + b"\x62\x63\x64\x65\x66\x67\x68\x69\x6a"
    blocks[0:16] = mfr[:16]
    for s in range(16):
        blocks[(4 * s + 3) * 16 : (4 * s + 4) * 16] = TRANSPORT_TRAILER
    return blocks


# The memory of the cards a tap brings, made at start: the simulator shares the firmware's
# GC heap, and 1 KiB in one piece is what a fragmented heap lacks (make bench bisects that
# heap). Three, taken in turn: the card on the reader, a second one held with it, the next.
_MEMORY = [0, bytearray(_BLOCKS * 16), bytearray(_BLOCKS * 16), bytearray(_BLOCKS * 16)]


def _card_memory():
    _MEMORY[0] = _MEMORY[0] % 3 + 1
    return _MEMORY[_MEMORY[0]]


class SimMifareClassic:
    """One MIFARE Classic 1K card: its memory and its ISO 14443-3 state."""

    def __init__(self, uid, blocks=None, sak=0x08, atqa=None, own=False):
        if len(uid) not in (4, 7):
            raise ValueError("a MIFARE Classic UID has 4 or 7 bytes")
        self.uid = bytes(uid)
        self.sak = sak
        self.atqa = bytes(atqa) if atqa else (b"\x04\x00" if len(uid) == 4 else b"\x44\x00")
        if own:  # memory of its own already (_card_memory): not copied
            self.blocks = blocks
        else:
            self.blocks = bytearray(blocks) if blocks else blank_blocks(self.uid, sak, self.atqa)
        if len(self.blocks) != _BLOCKS * 16:
            raise ValueError("a MIFARE Classic 1K image has 1024 bytes")
        if len(uid) == 4:
            self._levels = [self.uid]
        else:
            self._levels = [b"\x88" + self.uid[:3], self.uid[3:7]]
        self.changed = False
        self.power_up()

    # ---- image (what `card dump` shows and `card tap FILE` restores)
    def image(self):
        return {
            "uid": self.uid.hex(),
            "atqa": self.atqa.hex(),
            "sak": self.sak,
            "blocks": [self.blocks[16 * i : 16 * i + 16].hex() for i in range(_BLOCKS)],
        }

    @classmethod
    def from_image(cls, image):
        # block by block: no 2 KB string in the heap the firmware shares with the simulator
        if len(image["blocks"]) != _BLOCKS:
            raise ValueError("a MIFARE Classic 1K image has 1024 bytes")
        blocks = _card_memory()
        for i, b in enumerate(image["blocks"]):
            blocks[16 * i : 16 * i + 16] = bytes.fromhex(b)
        atqa = bytes.fromhex(image["atqa"]) if image.get("atqa") else None
        return cls(bytes.fromhex(image["uid"]), blocks, image.get("sak", 0x08), atqa, own=True)

    # ---- state
    def power_up(self):
        """Entering the field (or the field switched on): IDLE, nothing authenticated."""
        self.state = "idle"
        self.level = 0
        self.auth = None  # (sector, "A" or "B")
        self.pending = None  # second phase of WRITE / INCREMENT / DECREMENT / RESTORE
        self.transfer_buf = None

    def _to_idle(self):
        self.state = "idle"
        self.level = 0
        self.auth = None
        self.pending = None

    def block(self, n):
        return self.blocks[16 * n : 16 * n + 16]

    def _set_block(self, n, data):
        self.blocks[16 * n : 16 * n + 16] = data
        self.changed = True

    def _conds(self, sector):
        return access_conditions(self.block(4 * sector + 3))

    def _may(self, blk, what):
        """Is the authenticated key allowed `what` on block `blk`? what: read, write, inc,
        dec (data blocks); for the trailer see _write_trailer/_read_trailer."""
        if self.auth is None or self.auth[0] != blk // 4:
            return False
        conds = self._conds(blk // 4)
        if conds is None:
            return False
        key = self.auth[1]
        if key == "B" and "A" in _TRAILER_ACCESS[conds[3]][4]:
            return False  # key B is readable, so it is data, not a key
        who = _DATA_ACCESS[conds[blk % 4]][("read", "write", "inc", "dec").index(what)]
        return key in who

    def _trailer_rights(self, sector):
        conds = self._conds(sector)
        if conds is None or self.auth is None or self.auth[0] != sector:
            return None
        key = self.auth[1]
        rights = _TRAILER_ACCESS[conds[3]]
        if key == "B" and "A" in rights[4]:
            return None
        return [key in r for r in rights]

    def _read(self, blk):
        if blk % 4 != 3:
            return self.block(blk) if self._may(blk, "read") else None
        rights = self._trailer_rights(blk // 4)
        if rights is None:
            return None
        t = self.block(blk)
        out = bytearray(16)  # key A never reads back: zeros
        if rights[2]:
            out[6:10] = t[6:10]
        if rights[4]:
            out[10:16] = t[10:16]
        return bytes(out)

    def _write(self, blk, data):
        """True if the write is allowed (and done)."""
        if blk == 0:
            return False  # the manufacturer block is read-only
        if blk % 4 != 3:
            if not self._may(blk, "write"):
                return False
            self._set_block(blk, data)
            return True
        rights = self._trailer_rights(blk // 4)
        if rights is None:
            return False
        new = bytearray(self.block(blk))
        # each part is written only where the access conditions allow; the rest stays
        if rights[1]:
            new[0:6] = data[0:6]
        if rights[3]:
            new[6:10] = data[6:10]
        if rights[5]:
            new[10:16] = data[10:16]
        self._set_block(blk, new)
        return True

    def _value(self, blk):
        b = self.block(blk)
        for i in range(4):
            if b[i] != b[8 + i] or b[i] ^ b[4 + i] != 0xFF:
                return None
        if b[12] != b[14] or b[12] ^ b[13] != 0xFF or b[14] ^ b[15] != 0xFF:
            return None
        v = int.from_bytes(bytes(b[0:4]), "little")
        return v - (1 << 32) if v & 0x80000000 else v

    def _value_bytes(self, value, addr):
        v = (value & 0xFFFFFFFF).to_bytes(4, "little")
        inv = bytes(x ^ 0xFF for x in v)
        return v + inv + v + bytes((addr, addr ^ 0xFF, addr, addr ^ 0xFF))

    # ---- authentication (MFAuthent)
    def authenticate(self, cmd, blk, key, uid4):
        if self.state not in ("active", "auth") or blk >= _BLOCKS:
            self._to_idle()
            return False
        sector = blk // 4
        trailer = self.block(4 * sector + 3)
        conds = access_conditions(trailer)
        which = "A" if cmd == 0x60 else "B"
        stored = trailer[0:6] if which == "A" else trailer[10:16]
        if conds is None or bytes(uid4) != self.uid[-4:] or bytes(key) != bytes(stored):
            self._to_idle()
            return False
        self.state = "auth"
        self.auth = (sector, which)
        return True

    # ---- one frame from the reader; returns (answer bytes, valid bits of the last byte)
    # or None for silence. `tear`: the card leaves during this frame ("old"/"new"/"mixed").
    def frame(self, data, bits, crypto, tear=None):
        if tear is not None:
            self._tear(data, bits, crypto, tear)
            return None
        n = len(data)
        short = bits == 7 and n == 1
        if self.state in ("idle", "halt"):
            if short and (data[0] == 0x52 or (data[0] == 0x26 and self.state == "idle")):
                self.state = "ready"
                self.level = 0
                return self.atqa, 0
            return None
        if self.state == "ready":
            return self._anticollision(data, bits, short)
        # ACTIVE or AUTH: a reader with Crypto1 in the other state sends garbage to us
        if crypto != (self.state == "auth"):
            self._to_idle()
            return None
        if short:
            if data[0] == 0x52:  # WUPA while active: back to the start
                self.state = "ready"
                self.level = 0
                self.auth = None
                return self.atqa, 0
            self._to_idle()
            return None
        if not crc_ok(data):
            self.pending = None
            return self._nak(_NAK_CRC)
        body = data[:-2]
        if self.pending is not None:
            return self._second_phase(body)
        cmd = body[0]
        if cmd == 0x50 and len(body) == 2 and body[1] == 0:
            self.state = "halt"
            self.auth = None
            return None
        if len(body) != 2 or body[1] >= _BLOCKS:
            return self._nak(_NAK_OP)
        blk = body[1]
        if cmd == 0x30:
            out = self._read(blk)
            if out is None:
                return self._nak(_NAK_OP)
            return with_crc(out), 0
        if cmd == 0xA0:
            if self.auth is None or self.auth[0] != blk // 4 or blk == 0:
                return self._nak(_NAK_OP)
            self.pending = ("write", blk)
            return bytes((_ACK,)), 4
        if cmd in (0xC0, 0xC1, 0xC2):
            what = "inc" if cmd == 0xC1 else "dec"
            if blk % 4 == 3 or not self._may(blk, what) or self._value(blk) is None:
                return self._nak(_NAK_OP)
            self.pending = ("value", cmd, blk)
            return bytes((_ACK,)), 4
        if cmd == 0xB0:
            if self.transfer_buf is None or blk % 4 == 3 or not self._may(blk, "dec"):
                return self._nak(_NAK_OP)
            value, addr = self.transfer_buf
            self._set_block(blk, self._value_bytes(value, addr))
            return bytes((_ACK,)), 4
        return self._nak(_NAK_OP)

    def _nak(self, code):
        self._to_idle()
        return bytes((code,)), 4

    def _anticollision(self, data, bits, short):
        if short and data[0] == 0x52:
            self.level = 0
            return self.atqa, 0
        sel = (0x93, 0x95, 0x97)[self.level] if self.level < len(self._levels) else None
        if bits or len(data) < 2 or data[0] != sel:
            self._to_idle()
            return None
        part = self._levels[self.level]
        bcc = part[0] ^ part[1] ^ part[2] ^ part[3]
        if data[1] == 0x20 and len(data) == 2:
            return part + bytes((bcc,)), 0
        if data[1] == 0x70 and len(data) == 9 and crc_ok(data):
            if bytes(data[2:6]) != part or data[6] != bcc:
                return None  # another card's UID: not us
            self.level += 1
            if self.level < len(self._levels):
                return with_crc(b"\x04"), 0  # UID not complete
            self.state = "active"
            return with_crc(bytes((self.sak,))), 0
        self._to_idle()
        return None

    def _second_phase(self, body):
        pending = self.pending
        self.pending = None
        if pending[0] == "write":
            if len(body) != 16:
                return self._nak(_NAK_OP)
            if not self._write(pending[1], bytes(body)):
                return self._nak(_NAK_OP)
            return bytes((_ACK,)), 4
        # value operand: the answer to an accepted operand is silence
        _, cmd, blk = pending
        if len(body) != 4:
            return self._nak(_NAK_OP)
        operand = int.from_bytes(bytes(body), "little")
        if operand & 0x80000000:
            operand -= 1 << 32
        value = self._value(blk)
        if cmd == 0xC1:
            value += operand
        elif cmd == 0xC0:
            value -= operand
        self.transfer_buf = (value, self.block(blk)[12])
        return None

    def _tear(self, data, bits, crypto, mode):
        """The card leaves while this frame is on air: only a write in progress matters."""
        target = new = None
        transfer = False
        in_sync = crypto == (self.state == "auth")
        if (self.pending is not None and self.pending[0] == "write" and len(data) == 18
                and crc_ok(data) and in_sync):
            target, new = self.pending[1], bytes(data[:16])
        elif (self.pending is None and in_sync and len(data) == 4 and data[0] == 0xB0
              and crc_ok(data) and self.transfer_buf is not None and data[1] < _BLOCKS
              and data[1] % 4 != 3 and self._may(data[1], "dec")):
            target, new, transfer = data[1], self._value_bytes(*self.transfer_buf), True
        if target is not None and mode != "old":
            if mode == "mixed":
                new = new[:8] + bytes(8)
            if transfer:
                self._set_block(target, new)
            else:
                self._write(target, new)  # the same access rules as a completed write
        self.power_up()


class SimMFRC522:
    """The chip: registers, FIFO, commands, and the field with at most one card in it."""

    def __init__(self, rst=None, on_event=None):
        self.rst = rst  # name of the reset pin, for the bench
        self.on_event = on_event  # on_event(dict): card memory changed / card left
        self.card = None
        self.second = None  # another card held to the reader at the same time (collisions)
        self.remove_after = None  # exchanges the card stays for, then leaves during the next
        # [phase, writes to let through]: leaves during a WRITE's "command" or "data" frame
        self.remove_at_write = None
        self.tear_mode = "mixed"
        self.noise = 0  # answers still to be corrupted (CRC byte flipped)
        self.exchanges = 0  # frame exchanges with a card in the field
        self.commands = 0
        self._selected = False
        self._in_reset = False
        self._reset_chip()

    # ---- chip state
    def _reset_chip(self):
        r = bytearray(64)
        r[0x01] = 0x20
        r[0x02] = 0x80
        r[0x04] = 0x14
        r[0x07] = 0x21
        r[0x0B] = 0x08
        r[0x0C] = 0x10
        r[0x0E] = 0x80
        r[0x11] = 0x3F
        r[0x14] = 0x80
        r[0x21] = 0xFF
        r[0x22] = 0xFF
        r[0x37] = 0x92  # MFRC522 version 2.0
        self.regs = r
        self.fifo = bytearray()
        self._mode = None
        self._addr = 0
        self._last_rx_bits = 0
        if self.card is not None:
            self.card.power_up()  # the field went off and on

    def reset(self, level):
        """The RST pin: low holds the chip in hard power-down (field off)."""
        self._in_reset = level == 0
        self._reset_chip()

    def select(self, on):
        self._selected = on
        self._mode = None

    def antenna_on(self):
        return self.regs[0x14] & 0x03 != 0

    # ---- SPI
    def xfer(self, data):
        out = bytearray(len(data))
        if self._in_reset:
            return bytes(b"\xff" * len(data))
        for i, b in enumerate(data):
            if self._mode is None:
                self._addr = (b >> 1) & 0x3F
                self._mode = "read" if b & 0x80 else "write"
                out[i] = 0
            elif self._mode == "read":
                out[i] = self._read_reg(self._addr)
                if b & 0x80:
                    self._addr = (b >> 1) & 0x3F
                else:
                    self._mode = "done"
            elif self._mode == "write":
                self._write_reg(self._addr, b)
            # "done": bytes after the end of a read are ignored
        return bytes(out)

    def _read_reg(self, a):
        r = self.regs
        if a == 0x09:
            if not self.fifo:
                return 0
            v = self.fifo[0]
            self.fifo = self.fifo[1:]
            return v
        if a == 0x0A:
            return len(self.fifo)
        if a == 0x0C:
            return (r[0x0C] & 0xF8) | self._last_rx_bits
        return r[a]

    def _write_reg(self, a, v):
        r = self.regs
        if a == 0x09:
            if len(self.fifo) >= 64:
                r[0x06] |= 0x10  # BufferOvfl
            else:
                self.fifo.append(v)
        elif a == 0x0A:
            if v & 0x80:
                self.fifo = bytearray()
                r[0x06] &= 0xEF
        elif a in (0x04, 0x05):  # ComIrqReg, DivIrqReg: bit 7 says set or clear
            if v & 0x80:
                r[a] |= v & 0x7F
            else:
                r[a] &= (v & 0x7F) ^ 0x7F
        elif a == 0x01:
            r[a] = (r[a] & 0xF0) | (v & 0x0F)
            self._command(v & 0x0F)
        elif a == 0x0D:
            r[a] = v
            if v & 0x80 and r[0x01] & 0x0F == 0x0C:
                self._transceive()
        elif a == 0x08:
            r[a] = (r[a] & 0xF7) | (v & 0x08)  # only MFCrypto1On can be written (cleared)
        elif a == 0x14:
            was = self.antenna_on()
            r[a] = v
            if was and not self.antenna_on() and self.card is not None:
                self.card.power_up()  # no field, no power: the card forgets everything
        elif a == 0x37:
            pass  # VersionReg is read-only
        else:
            r[a] = v

    def _command(self, cmd):
        r = self.regs
        self.commands += 1
        if cmd == 0x0F:  # SoftReset
            self._reset_chip()
            r = self.regs
            r[0x01] = 0x20  # awake again at once: the model needs no oscillator start-up
            r[0x01] &= 0xEF
        elif cmd == 0x03:  # CalcCRC over the FIFO
            c = crc_a(self.fifo)
            self.fifo = bytearray()
            r[0x22] = c & 0xFF
            r[0x21] = c >> 8
            r[0x05] |= 0x04
        elif cmd == 0x0E:  # MFAuthent
            self._authenticate()
        elif cmd == 0x02:  # GenerateRandomID: 10 bytes into the internal buffer
            r[0x04] |= 0x10

    # ---- the field
    def _exchange_card(self, data=b""):
        """The card that takes part in this exchange, and the tear mode if it leaves
        during it (then it is gone afterwards)."""
        card = self.card
        if card is None or not self.antenna_on():
            return None, None
        self.exchanges += 1
        at = self.remove_at_write
        if at is not None:
            writing = card.pending is not None and card.pending[0] == "write"
            if (at[0] == "data" and writing and len(data) == 18) or (
                    at[0] == "command" and not writing and len(data) == 4 and data[0] == 0xA0):
                if at[1] > 0:
                    at[1] -= 1
                else:
                    self.remove_at_write = None
                    return card, self.tear_mode
        if self.remove_after is not None:
            if self.remove_after == 0:
                self.remove_after = None
                return card, self.tear_mode
            self.remove_after -= 1
        return card, None

    def _leave(self):
        self.card = None
        self._event({"ev": "card_left"})

    def _transceive(self):
        r = self.regs
        bits = r[0x0D] & 0x07
        data = bytes(self.fifo)
        self.fifo = bytearray()
        r[0x06] = 0
        r[0x04] |= 0x40  # TxIRq
        self._last_rx_bits = 0
        crypto = bool(r[0x08] & 0x08)
        card, tear = self._exchange_card(data)
        answer = None
        if card is not None:
            card.changed = False
            answer = card.frame(data, bits, crypto, tear)
            if card.changed:
                self._event({"ev": "card", "image": card.image()})
            if tear is not None:
                self._leave()
        other = self.second
        if other is not None and self.antenna_on():
            extra = other.frame(data, bits, crypto)
            if extra is not None and answer is not None and extra != answer:
                # both answered, differently: their bits collide on air (CollErr, ErrIRq)
                a, b = answer[0], extra[0]
                n = max(len(a), len(b))
                merged = bytes((a[i] if i < len(a) else 0) | (b[i] if i < len(b) else 0)
                               for i in range(n))
                answer = (merged, answer[1])
                r[0x06] |= 0x08
                r[0x04] |= 0x02
            elif answer is None:
                answer = extra
        if answer is None:
            r[0x04] |= 0x01  # TimerIRq: nothing came back
            return
        payload, rx_bits = answer
        payload = bytearray(payload)
        if self.noise and len(payload) >= 3:
            self.noise -= 1
            payload[-1] ^= 0x5A
        self.fifo = payload
        self._last_rx_bits = rx_bits
        r[0x04] |= 0x30  # RxIRq | IdleIRq

    def _authenticate(self):
        r = self.regs
        data = bytes(self.fifo)
        self.fifo = bytearray()
        card, tear = self._exchange_card()
        if card is None and self.second is not None and self.antenna_on():
            card = self.second
        elif self.second is not None and self.second.state in ("active", "auth"):
            card = self.second  # the second card is the one selected
        ok = False
        if card is not None and tear is None and len(data) >= 12 and data[0] in (0x60, 0x61):
            ok = card.authenticate(data[0], data[1], data[2:8], data[8:12])
        elif card is not None and tear is None:
            card.power_up()
        if tear is not None:
            card.power_up()
            self._leave()
        if ok:
            r[0x08] |= 0x08
            r[0x04] |= 0x10  # IdleIRq
        else:
            r[0x08] &= 0xF7
            r[0x04] |= 0x01  # the card never completed the exchange: the timer ran out

    def _event(self, msg):
        if self.on_event is not None:
            self.on_event(msg)

    # ---- the host's requests (op "card")
    def handle(self, msg):
        action = msg.get("action")
        if action == "tap":
            if msg.get("image"):
                card = SimMifareClassic.from_image(msg["image"])
            elif msg.get("uid"):
                card = SimMifareClassic(bytes.fromhex(msg["uid"]))
            else:
                return {"error": "card tap needs a UID or a card image"}
            if msg.get("second"):
                if self.card is None:
                    return {"error": "hold the first card to the reader before a second"}
                # held to the reader together with the first: both enter the field afresh
                self.second = card
                card.power_up()
                self.card.power_up()
                return {"uid": card.uid.hex(), "second": True}
            self.card = card
            card.power_up()
            self.remove_after = None
            self.remove_at_write = None
            self.second = None
            if msg.get("remove_after") is not None:
                self.remove_after = int(msg["remove_after"])
                self.tear_mode = msg.get("torn") or "mixed"
            if not msg.get("image"):
                self._event({"ev": "card", "image": card.image()})
            return {"uid": card.uid.hex(), "exchanges": self.exchanges}
        if action == "remove":
            if msg.get("second"):
                self.second = None
                return {"removed": True}
            if self.card is None:
                return {"error": "no card is on the reader"}
            after = msg.get("after_exchanges")
            at = msg.get("during_write")
            if at is not None:
                if at not in ("command", "data"):
                    return {"error": "during_write is command or data"}
                self.remove_at_write = [at, int(msg.get("after_writes", 0))]
                self.tear_mode = msg.get("torn") or "mixed"
                return {"removed": False, "during_write": at}
            if after is None:
                self._leave()
                self.remove_after = None
                return {"removed": True}
            self.remove_after = int(after)
            self.tear_mode = msg.get("torn") or "mixed"
            return {"removed": False, "after_exchanges": self.remove_after}
        if action == "dump":
            if self.card is None:
                return {"error": "no card is on the reader"}
            return {"image": self.card.image()}
        if action == "noise":
            self.noise = int(msg.get("count", 1))
            return {}
        if action == "status":
            return {
                "card": self.card.uid.hex() if self.card else None,
                "exchanges": self.exchanges,
                "remove_after": self.remove_after,
                "antenna": self.antenna_on(),
            }
        return {"error": "card takes tap, remove, dump, noise or status"}
