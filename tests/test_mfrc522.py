"""The MFRC522 driver under MicroPython against the simulated chip and cards of
boards/sim/sim_mfrc522.py (register level: the driver runs unchanged), and the model's own
CRC_A and access-bit logic under CPython."""

import itertools
import sys

import pytest
from conftest import ROOT, run_micropython

sys.path.insert(0, str(ROOT / "boards" / "sim"))
import sim_mfrc522 as M  # noqa: E402

pytestmark = pytest.mark.device

# A direct SPI bus and chip select from the driver to the chip model.
PRELUDE = """
import sys
sys.path.append('boards/sim')
from sim_mfrc522 import SimMFRC522
from washpay.drivers.mfrc522 import *
from washpay.drivers.mifare import *

class Bus:
    def __init__(self, chip):
        self.chip = chip
        self.level = 1
    def write(self, buf):
        self.chip.xfer(buf)
    def write_readinto(self, w, r):
        r[:] = self.chip.xfer(w)
    def __call__(self, v):
        if v != self.level:
            self.level = v
            self.chip.select(v == 0)

chip = SimMFRC522()
bus = Bus(chip)
rd = MFRC522(bus, bus)
rd.init()
FF = b'\\xff' * 6
buf = bytearray(16)

def attempt(fn, *args):
    try:
        r = fn(*args)
        return 'ok' if r is None else r
    except CardError as e:
        return type(e).__name__ + ': ' + str(e)
"""


def mpy(code, heap="256k"):
    return run_micropython(PRELUDE + code, heap=heap)[1].strip().split("\n")


def test_crc_a_vectors():
    # ISO/IEC 14443-3: HLTA is 50 00 57 CD; CRC_A of 00 00 is A0 1E (low byte first)
    assert M.with_crc(b"\x50\x00") == bytes.fromhex("500057cd")
    assert M.with_crc(b"\x00\x00") == bytes.fromhex("0000a01e")
    assert M.crc_ok(bytes.fromhex("500057cd")) and not M.crc_ok(bytes.fromhex("500057ce"))


def test_access_bits_round_trip_and_known_values():
    for conds in itertools.product(range(8), repeat=4):
        raw = bytes(6) + M.access_bytes(conds) + bytes(7)
        assert M.access_conditions(raw) == list(conds)
    assert M.access_conditions(M.TRANSPORT_TRAILER) == [0, 0, 0, 1]
    wallet = bytes(6) + bytes.fromhex("787788") + bytes(7)
    assert M.access_conditions(wallet) == [4, 4, 4, 3]
    assert M.access_conditions(bytes(6) + b"\x78\x77\x89" + bytes(7)) is None  # inconsistent


def test_chip_version_and_no_card():
    out = mpy("print(hex(rd.version), rd.poll(), rd.poll(True), attempt(activate, rd))")
    assert out == ["0x92 False False NoCard: no card on the reader"]


def test_chip_crc_coprocessor_matches_iso_vector():
    out = mpy("f = bytearray(b'\\x50\\x00')\nprint(hex(rd._crc(f, 2)))")
    assert out == ["0xcd57"]


def test_select_4_and_7_byte_uids_and_read_write():
    out = mpy("""
for uid in ('04a1b2c3', '04112233445566'):
    chip.handle({'action': 'tap', 'uid': uid})
    print(rd.poll(), select(rd), bytes(rd.uid[:rd.uid_len]).hex())
    auth(rd, 8, FF)                       # key A, transport configuration
    write_block(rd, 9, b'0123456789abcdef')
    read_block(rd, 9, buf)
    print(bytes(buf))
    read_block(rd, 11, buf)               # trailer: key A reads back as zeros
    print(bytes(buf).hex())
    rd.halt()
    print(rd.poll(), rd.poll(True))     # halted: only WUPA wakes it
""")
    assert out == [
        "True 8 04a1b2c3", "b'0123456789abcdef'", "000000000000ff078069ffffffffffff",
        "False True",
        "True 8 04112233445566", "b'0123456789abcdef'", "000000000000ff078069ffffffffffff",
        "False True",
    ]


def test_authentication_failures_and_refusals():
    out = mpy("""
chip.handle({'action': 'tap', 'uid': '04a1b2c3'})
activate(rd)
print(attempt(auth, rd, 4, b'\\x00' * 6))               # wrong key A
activate(rd)
auth(rd, 4, FF, True)                                   # key B is readable here: not a key
print(attempt(read_block, rd, 4, buf))
activate(rd)
auth(rd, 0, FF)
print(attempt(write_block, rd, 0, bytes(16)))           # the manufacturer block
activate(rd)
auth(rd, 4, FF)
print(attempt(read_block, rd, 8, buf))                  # another sector than authenticated
""")
    assert out == [
        "AuthFailed: sector 1 refused key A",
        "CardRefused: the card refused the command (NAK 0x4)",
        "CardRefused: the card refused the command (NAK 0x4)",
        "CardRefused: the card refused the command (NAK 0x4)",
    ]


def test_wallet_access_bits_need_key_b_to_write():
    # sector 2 set up like a wallet sector: key A reads, only key B writes
    out = mpy("""
chip.handle({'action': 'tap', 'uid': '04a1b2c3'})
activate(rd)
auth(rd, 11, FF)
KA = b'\\xa0\\xa1\\xa2\\xa3\\xa4\\xa5'
KB = b'\\xb0\\xb1\\xb2\\xb3\\xb4\\xb5'
write_block(rd, 11, KA + b'\\x78\\x77\\x88\\x00' + KB)
activate(rd)
auth(rd, 8, KA)
read_block(rd, 8, buf)
print(attempt(write_block, rd, 8, bytes(16)))
activate(rd)
print(attempt(auth, rd, 8, FF))
activate(rd)
auth(rd, 8, KB, True)
print(attempt(write_block, rd, 8, b'B' * 16), attempt(read_block, rd, 8, buf), bytes(buf[:2]))
""")
    assert out == [
        "CardRefused: the card refused the command (NAK 0x4)",
        "AuthFailed: sector 2 refused key A",
        "ok ok b'BB'",
    ]


def test_value_block_operations():
    out = mpy("""
chip.handle({'action': 'tap', 'uid': '04a1b2c3'})
activate(rd)
auth(rd, 4, FF)
write_value(rd, 5, 1000)
decrement(rd, 5, 250)
transfer(rd, 5)
print(read_value(rd, 5))
increment(rd, 5, 50)
transfer(rd, 6)
print(read_value(rd, 6), read_value(rd, 5))
restore(rd, 6)
transfer(rd, 4)
print(read_value(rd, 4))
write_block(rd, 4, b'not a value blk!')
print(attempt(read_value, rd, 4))
activate(rd)
auth(rd, 4, FF)
print(attempt(decrement, rd, 4, 1))
""")
    assert out == [
        "(750, 5)", "(800, 5) (750, 5)", "(800, 5)",
        "CardError: block 4 is not a value block",
        "CardRefused: the card refused the command (NAK 0x4)",
    ]


@pytest.mark.parametrize("mode,expect", [
    ("old", "b'................'"), ("new", "b'NEWNEWNEWNEWNEW!'"),
    ("mixed", "b'NEWNEWNE\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00'"),
])
def test_card_leaving_mid_write_is_reported(mode, expect):
    out = mpy(f"""
chip.handle({{'action': 'tap', 'uid': '04a1b2c3'}})
card = chip.card                 # the physical card, to hold it to the reader again
activate(rd)
auth(rd, 4, FF)
write_block(rd, 5, b'.' * 16)
# the WRITE command is exchange 1 from now, its data exchange 2: the card leaves during it
chip.handle({{'action': 'remove', 'after_exchanges': 1, 'torn': {mode!r}}})
print(attempt(write_block, rd, 5, b'NEWNEWNEWNEWNEW!'))
print(attempt(read_block, rd, 5, buf))
chip.card = card
card.power_up()
activate(rd)
auth(rd, 4, FF)
read_block(rd, 5, buf)
print(bytes(buf))
""")
    assert out[0] == "CardLeftMidWrite: the card left during the write of block 5: its " \
                     "content is unknown"
    assert out[1] == "NoCard: the card left the field"
    assert out[2] == expect


def test_write_command_not_acknowledged_means_nothing_written():
    out = mpy("""
chip.handle({'action': 'tap', 'uid': '04a1b2c3'})
activate(rd)
auth(rd, 4, FF)
chip.handle({'action': 'remove', 'after_exchanges': 0})
print(attempt(write_block, rd, 5, b'X' * 16))
""")
    assert out == ["NoCard: the card left the field"]


def test_crc_error_on_noise():
    out = mpy("""
chip.handle({'action': 'tap', 'uid': '04a1b2c3'})
activate(rd)
auth(rd, 4, FF)
chip.handle({'action': 'noise', 'count': 1})
print(attempt(read_block, rd, 4, buf))
activate(rd)
auth(rd, 4, FF)
print(attempt(read_block, rd, 4, buf))
""")
    assert out == ["CRCError: a frame from the card failed its CRC check", "ok"]


def test_reader_not_answering_is_a_reader_fault():
    out = mpy("""
chip.reset(0)                     # held in reset: MISO floats high
print(attempt(rd.init))
rd2 = MFRC522(bus, bus, rst=lambda v: chip.reset(v))
print(attempt(rd2.init))          # the RST pin brings it back
""")
    assert out == [
        "ReaderFault: no MFRC522 answers on the SPI bus (version 0xff): check power and wiring",
        "146",
    ]


def test_register_access_and_an_empty_poll_allocate_nothing():
    # A bus that allocates nothing itself: a register file, no card (the timer fires).
    code = """
from washpay.drivers.mfrc522 import MFRC522
import micropython

class Regs:
    def __init__(self):
        self.r = bytearray(64)
        self.r[0x04] = 0x01          # ComIrqReg: TimerIRq, nothing answered
        self.r[0x05] = 0x04          # DivIrqReg: CRCIRq
        self.addr = 0
        self.mode = 0
    def write(self, buf):
        for i in range(len(buf)):  # (iterating a buffer directly would allocate)
            b = buf[i]
            if self.mode == 0:
                self.addr = (b >> 1) & 0x3F
                self.mode = 2
            elif self.addr not in (0x04, 0x05):
                self.r[self.addr] = b
    def write_readinto(self, w, out):
        for i in range(len(w)):
            b = w[i]
            if self.mode == 0:
                self.addr = (b >> 1) & 0x3F
                self.mode = 1 if b & 0x80 else 2
                out[i] = 0
            elif self.mode == 1:
                out[i] = self.r[self.addr]
                self.addr = (b >> 1) & 0x3F
            else:
                out[i] = 0
    def __call__(self, v):
        self.mode = 0

bus = Regs()
rd = MFRC522(bus, bus)
frame = bytearray(b'\\x50\\x00')
buf = bytearray(8)

def hammer(n):  # in a function: new module globals would allocate
    found = None
    for _ in range(n):
        rd._wr(0x01, 0)
        rd._rd(0x37)
        rd._fifo_write(frame, 2)
        rd._fifo_read(buf, 8)
        rd._crc(frame, 2)
        found = rd.poll()
    return found

hammer(1)
micropython.heap_lock()
try:
    found = hammer(100)
finally:
    micropython.heap_unlock()
print('no allocation', found)
"""
    assert run_micropython(code, heap="256k")[1].strip() == "no allocation False"


def test_two_cards_at_once_are_a_collision():
    out = mpy("""
chip.handle({'action': 'tap', 'uid': '04a1b2c3'})
chip.handle({'action': 'tap', 'uid': '04d1e2f3', 'second': True})
print(rd.poll(), attempt(select, rd))
chip.handle({'action': 'remove', 'second': True})
print(rd.poll(True), select(rd), bytes(rd.uid[:rd.uid_len]).hex())
""")
    assert out == ["True Collision: more than one card in the field: hold one card",
                   "True 8 04a1b2c3"]
