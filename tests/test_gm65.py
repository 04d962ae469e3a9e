"""The GM65 scanner (docs/gm65.md): frame and CRC vectors on the firmware driver, the
simulated module and Python's own CRC-CCITT; the line assembler under hypothesis (CPython);
and the real driver talking to the simulated module over the simulated UART under
micropython: probe at any baud, configure once, read codes, survive garbage."""

import binascii
import json
import re
import time

import pytest
import token_env as E  # first: puts the shims and firmware/ on sys.path
from conftest import SIM, micropython_i386, run_micropython
from hypothesis import given, settings
from hypothesis import strategies as st

if not hasattr(time, "ticks_ms"):  # the driver's clock calls, for CPython
    time.ticks_ms = lambda: int(time.monotonic() * 1000)
    time.ticks_diff = lambda a, b: a - b

from washpay.drivers import gm65 as G  # noqa: E402
from washpay.drivers import gm65_setup as S  # noqa: E402

assert E.DOCS  # token_env is imported for its sys.path set-up


def doc_frames():
    text = (E.DOCS / "gm65.md").read_text().split("## Vectors", 1)[1]
    frames = {}
    for m in re.finditer(r"^\| ([^|]+?) \| `([0-9A-F ]+)` \|$", text, re.M):
        frames[m.group(1)] = bytes.fromhex(m.group(2))
    assert len(frames) >= 5
    return frames


def ref_crc(data):
    return binascii.crc_hqx(bytes(data), 0)  # CRC-CCITT, init 0 = CRC-16/XMODEM


def test_documented_frames_carry_their_crc():
    import sys

    sys.path.insert(0, str(SIM))
    import sim_gm65

    for name, f in doc_frames().items():
        body = f[2:-2]
        crc = int.from_bytes(f[-2:], "big")
        assert ref_crc(body) == crc, name
        assert S.crc16_xmodem(body) == crc, name
        assert sim_gm65.crc16(body) == crc, name


def test_baud_codes_are_3mhz_over_baud():
    for baud, code in S.BAUD_CODES:
        assert code == int(3_000_000 / baud + 0.5), baud
    assert S.BAUD_CODES[0] == (9600, 0x0139)
    with pytest.raises(ValueError):
        S.baud_code(9601)


# ---- the line assembler
def reference_split(stream):
    out = []
    for part in re.split(rb"[\r\n]", stream)[:-1]:  # the tail has no end yet
        if not part:
            continue
        if any(b < 0x20 or b > 0x7E for b in part):
            out.append(("noise", None))
        elif len(part) > G.MAX_LINE:
            out.append(("too_long", None))
        else:
            out.append(("line", bytes(part)))
    return out


chunks = st.lists(st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"\r", b"\n", b"\r\n", b"WP:ABC\r", b"\x02\x00\x00\x01\x00\x33\x31"]),
    st.binary(min_size=120, max_size=300).map(lambda b: bytes(c % 95 + 32 for c in b)),
), max_size=30)


@settings(max_examples=400)
@given(chunks)
def test_assembler_splits_like_the_reference(parts):
    got = []
    la = G.LineAssembler(lambda mv: got.append(("line", bytes(mv))),
                         lambda kind: got.append((kind, None)))
    t = 1000
    for p in parts:
        la.feed(p, t)
        t += 1  # bytes back to back: no pause
    assert got == reference_split(b"".join(parts))
    for _kind, line in got:
        if line is not None:
            assert len(line) <= G.MAX_LINE and all(32 <= b <= 126 for b in line)


@settings(max_examples=200)
@given(st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b),
       st.binary(min_size=1, max_size=60).map(lambda b: bytes(c % 95 + 32 for c in b)))
def test_a_stub_never_spoils_the_next_code(stub, code):
    got = []
    la = G.LineAssembler(lambda mv: got.append(bytes(mv)), got.append)
    la.feed(stub, 1000)
    la.feed(code + b"\r", 1000 + G._IDLE_MS + 1)  # after a pause: the stub is dropped
    assert got == ((["partial"] if stub else []) + [code])


def test_reply_frames_only_while_awaiting():
    la = G.LineAssembler()
    la.awaiting = True
    crc = ref_crc(b"\x00\x01\x3c")
    la.feed(bytes.fromhex(f"020000013C{crc:04X}"), 0)
    assert la.reply_len == 1 and la.reply[0] == 0x3C
    la.reply_len = -1
    la.feed(bytes.fromhex("020000013CFFFF"), 1)  # bad CRC: no reply, counted
    assert la.reply_len == -1 and la.counts["bad_frames"] == 1
    errors = []
    la = G.LineAssembler(on_error=errors.append)
    la.feed(bytes.fromhex("02000001003331") + b"\r", 0)  # not awaiting: just noise
    assert errors == ["noise"] and la.counts["replies"] == 0



def test_a_reply_is_not_overwritten_by_the_next_frame_in_the_same_read():
    # issue 18: a verified reply (data 39 01) and the next frame (data 01) in one read;
    # the reply awaited is the first one, the rest of the read is dropped
    stream = bytes.fromhex("020000023901c14c0200000100")
    assert ref_crc(b"\x00\x02\x39\x01") == 0xC14C
    code = f"""
from washpay.drivers.gm65 import LineAssembler
for cut in range({len(stream)} + 1):   # in one read, and split anywhere over two reads
    la = LineAssembler()
    la.awaiting = True
    data = {stream!r}
    la.feed(data[:cut], 0)
    if la.reply_len < 0:
        la.feed(data[cut:], 1)
    print("RESULT", bytes(la.reply[: la.reply_len]).hex())
"""
    for interp in [None] + [x for x in (micropython_i386(),) if x]:
        out = run_micropython(code, interpreter=interp)[1].split()
        assert [x for x in out if x != "RESULT"] == ["3901"] * (len(stream) + 1)
    la = G.LineAssembler()  # and under CPython
    la.awaiting = True
    la.feed(stream, 0)
    assert bytes(la.reply[: la.reply_len]) == b"\x39\x01"


# ---- the driver and the simulated module, under micropython
HARNESS = """
import sys, json
sys.path.insert(0, %(sim)r)
import simhw
with open(%(sim)r + "/board.json") as f:
    board = json.load(f)
bench = simhw.Bench(board, None, None, 1)
simhw.bench = bench
import asyncio, machine, time
from washpay.drivers.gm65 import GM65
from washpay.drivers import gm65_setup as S
module = bench.scanner
def uart():
    return machine.UART(1, baudrate=9600, tx=machine.Pin(17), rx=machine.Pin(16))
out = {}
"""


def run_driver(script):
    code = HARNESS % {"sim": str(SIM)} + script + "\nprint('RESULT', json.dumps(out))\n"
    stdout = run_micropython(code, heap="256k")[1]
    line = [x for x in stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def test_configure_a_factory_module_once():
    out = run_driver("""
async def main():
    g = GM65(uart())
    out["ok"] = await g.configure()
    out["writes"], out["saved"], out["baud"] = g.writes, g.saved, g.found_baud
    out["module"] = module.status()
    g2 = GM65(g.uart)  # the next boot: the module keeps its settings
    out["ok2"] = await g2.configure()
    out["writes2"], out["saved2"] = g2.writes, g2.saved
    out["saves"] = module.saves
asyncio.run(main())
""")
    assert out["ok"] and out["baud"] == 9600
    assert out["writes"] == 2 and out["saved"]  # mode and same-code delay
    assert out["module"]["mode"] == G.MODE_SENSE and out["module"]["same_code"] == 0x9E
    assert out["module"]["saved"] == {"0000": 3, "0013": 0x9E, "002a": 0x39, "002b": 0x01}
    assert out["ok2"] and out["writes2"] == 0 and not out["saved2"]
    assert out["saves"] == 1  # the module's flash is written once, not at every boot


def test_probe_finds_a_module_at_another_baud_and_brings_it_to_9600():
    out = run_driver("""
module.regs[0x2A], module.regs[0x2B] = 0x1A, 0x00   # set to 115200 by someone
async def main():
    u = uart()
    g = GM65(u)
    out["ok"] = await g.configure()
    out["found"], out["uart"], out["module_baud"] = g.found_baud, u.baudrate, module.baud
    out["saved"] = module.status()["saved"]
    out["noise_in"] = module.noise_in
asyncio.run(main())
""")
    assert out["ok"] and out["found"] == 115200
    assert out["uart"] == 9600 and out["module_baud"] == 9600
    assert out["saved"]["002a"] == 0x39 and out["saved"]["002b"] == 0x01
    assert out["noise_in"] > 0  # the 9600 probe reached it as garbage first


def test_no_module_means_no_scanner_not_a_crash():
    out = run_driver("""
del bench.uart_devices["qr_tx"]
async def main():
    u = uart()
    g = GM65(u)
    t0 = time.ticks_ms()
    out["ok"] = await g.configure()
    out["found"], out["uart"] = g.found, u.baudrate
asyncio.run(main())
""")
    assert out == {"ok": False, "found": False, "uart": 9600}


def test_driver_sends_the_documented_frames():
    frames = doc_frames()
    out = run_driver("""
class Recorder:
    def __init__(self):
        self.frames = []
    def attach(self, u):
        self.u = u
    def receive(self, data, u):
        self.frames.append(bytes(data).hex())
        self.u._deliver(bytes.fromhex("02000001003331"), 9600, simhw.now_us() + 1000)
rec = Recorder()
bench.uart_devices["qr_tx"] = rec
async def main():
    g = GM65(uart())
    await S.save(g)
    await S.read(g, 0x2A, 2)
    out["write_ok"] = await S.write(g, 0x2A, bytes((0x39, 0x01)))
    out["frames"] = rec.frames
asyncio.run(main())
""")
    assert out["write_ok"]
    assert [bytes.fromhex(f) for f in out["frames"]] == [
        frames["save"], frames["read baud (2 registers)"], frames["write baud 9600"]]


def test_driver_refuses_a_reply_with_a_bad_crc():
    out = run_driver("""
del bench.uart_devices["qr_tx"]
async def main():
    u = uart()
    g = GM65(u)
    for name, hexdata in (("good", "020000013C"), ("bad", "020000013C")):
        body = bytes.fromhex(hexdata)
        c = S.crc16_xmodem(body[2:])
        if name == "bad":
            c ^= 1
        u._deliver(body + bytes((c >> 8, c & 0xFF)), 9600, simhw.now_us() + 5000)
        r = await S.read(g, 0x0000)
        out[name] = None if r is None else r.hex()
asyncio.run(main())
""")
    assert out == {"good": "3c", "bad": None}


def test_scanning_survives_garbage_stubs_and_overlong_lines():
    out = run_driver("""
async def main():
    g = GM65(uart())
    await g.configure()
    got = []
    asyncio.create_task(g.run(lambda mv: got.append(bytes(mv).decode()), got.append))
    async def show(text=None, raw=None, wait=400):
        r = module.op_qr({"text": text}) if text is not None else module.op_raw({"hex": raw})
        await asyncio.sleep_ms(wait)
        return r
    await show("WP:FIRST")
    await show(raw="00ff13fe80" + "0d")                  # binary noise, then CR
    await show(raw=("41" * 300) + "0d", wait=600)          # 300 characters
    await show(raw="575031", wait=500)                     # a stub ("WP1"), then a pause
    await show("WP:SECOND")
    r = await show("WP:SECOND")                            # held up again within 3 s
    out["again"] = r
    await show(raw="02000001003331" + "0d")                # a reply frame nobody asked for
    await show("WP:THIRD")
    out["got"] = got
    out["counts"] = g.status()
asyncio.run(main())
""")
    assert out["got"] == ["WP:FIRST", "noise", "too_long", "partial", "WP:SECOND", "noise",
                          "WP:THIRD"]
    assert out["again"] == {"sent": False, "why": "same code within the same-code delay"}
    assert out["counts"]["lines"] == 3


def test_the_module_ignores_a_frame_with_a_bad_crc():
    out = run_driver("""
async def main():
    u = uart()
    u.write(bytes.fromhex("7E000901000000" + "0000"))   # save, wrong CRC
    await asyncio.sleep_ms(50)
    out["reply"] = u.any()
    out["bad"], out["saves"] = module.bad_frames, module.saves
    u.write(bytes.fromhex("7E000901000000" + "ABCD"))   # AB CD: "do not check"
    await asyncio.sleep_ms(50)
    out["reply2"] = (u.read() or b"").hex()
asyncio.run(main())
""")
    assert out == {"reply": 0, "bad": 1, "saves": 0, "reply2": "02000001003331"}


def test_json_of_docs_is_consistent():
    # the settings table names what configure writes
    text = (E.DOCS / "gm65.md").read_text()
    assert "`9E` (on, 3.0 s)" in text and "mode 3, sense" in text
    assert json.dumps(doc_frames()["save"].hex()) == '"7e000901000000dec8"'
