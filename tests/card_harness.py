"""Card payments under MicroPython without the full simulated board: the firmware's MFRC522
driver, CardPayment, VendEngine and Journal (on a LittleFS in RAM) against the simulated chip
and card of boards/sim/sim_mfrc522.py, wired by a direct SPI bus. Hundreds of tear points
run in one process this way.

    micropython tests/card_harness.py SPEC.json

SPEC: {"card_key": hex, "journal_keys": [hex, hex], "price": int,
       "scenarios": [{"image": card image, "config": {...}, "events": [...]}, ...]}
events: ["tap", remove_after | null, tear mode | null]   the card is held to the reader
        ["expire"]                                     the torn payment's wait runs out
        ["reboot"]                                     power cut and boot (flash and card stay)
        ["start"] / ["finish"]                         START pressed / the cycle ends
        ["blacklist", uid hex, reason code, since]      add the card to /blacklist.bin
        ["elsewhere", block, hex]                       another machine wrote that block
        ["other", image]                               a different card is held to the reader
Prints one line per scenario: RESULT {json}.
"""

import asyncio
import json
import sys
import time

import vfs

sys.path.append("firmware")
sys.path.append("boards/sim")

from sim_mfrc522 import SimMFRC522, SimMifareClassic  # noqa: E402
from washpay import config  # noqa: E402
from washpay.cardlists.blacklist import Blacklist  # noqa: E402
from washpay.drivers.mfrc522 import MFRC522  # noqa: E402
from washpay.journal import Journal  # noqa: E402
from washpay.journal import records as R  # noqa: E402
from washpay.payments.card import CardPayment  # noqa: E402
from washpay.payments.wallet import CardKeys  # noqa: E402
from washpay.ui import Screen  # noqa: E402
from washpay.vend import engine as vendmod  # noqa: E402

vendmod._POLL_MS = 1  # the engine polls the washer every ms: a cycle ends at once here
ROOT = "/ram"

_tasks = []
_create_task = asyncio.create_task


def _tracked(coro):
    t = _create_task(coro)
    _tasks.append(t)
    return t


asyncio.create_task = _tracked  # so a power cut can end the old firmware's tasks


_ERASED = b"\xff" * 4096


class RamBlocks:
    def __init__(self, n):
        self.data = bytearray(n * 4096)
        self.n = n

    def readblocks(self, block, buf, off=0):
        o = block * 4096 + off
        buf[:] = self.data[o : o + len(buf)]

    def writeblocks(self, block, buf, off=None):
        if off is None:
            self.ioctl(6, block)
            off = 0
        o = block * 4096 + off
        self.data[o : o + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return 4096
        if op == 6:
            self.data[arg * 4096 : arg * 4096 + 4096] = _ERASED
        return 0


_FLASH = RamBlocks(48)


class Bus:
    """The SPI bus and chip select, straight to the chip model."""

    def __init__(self, chip):
        self.chip = chip
        self.level = 1

    def write(self, buf):
        self.chip.xfer(buf)

    def write_readinto(self, wbuf, rbuf):
        rbuf[:] = self.chip.xfer(wbuf)

    def __call__(self, v):  # the chip-select pin
        if v != self.level:
            self.level = v
            self.chip.select(v == 0)


class Washer:
    mode = "contact"

    def __init__(self):
        self.starts = 0
        self.running = False

    async def start(self, price):
        self.starts += 1
        self.running = True

    def busy(self):
        return self.running

    def door_closed(self):
        return True

    def stop(self):
        pass


class Acceptor:
    inhibited = False

    def inhibit(self, on):
        self.inhibited = on


class World:
    def __init__(self, spec, scenario):
        self.spec = spec
        self.card_key = bytes.fromhex(spec["card_key"])
        self.jkeys = [bytes.fromhex(k) for k in spec["journal_keys"]]
        raw = {"programs": [{"name": "quick", "price": spec["price"], "minutes": 30}],
               "start_confirm_ms": 200}
        raw.update(scenario.get("config", {}))
        self.cfg = config.validate(raw)
        try:
            vfs.umount(ROOT)
        except OSError:
            pass
        vfs.VfsLfs2.mkfs(_FLASH)  # a fresh flash for every scenario
        vfs.mount(vfs.VfsLfs2(_FLASH), ROOT)
        self.card = SimMifareClassic.from_image(scenario["image"])
        self.chip = SimMFRC522()
        self.washer = Washer()
        self.acceptor = Acceptor()
        self.other_blocks = None
        self.boot()

    def boot(self):
        for t in _tasks:
            t.cancel()
        _tasks.clear()
        self.journal = Journal(root=ROOT + "/journal", keys=self.jkeys, capacity=1000)
        self.screen = Screen(None)
        self.engine = vendmod.VendEngine(self.cfg, self.journal, self.washer, self.acceptor,
                                         self.screen)
        bus = Bus(self.chip)
        self.reader = MFRC522(bus, bus)
        self.reader.init()
        self.pay = CardPayment(self.reader, CardKeys(self.card_key), self.engine, self.journal,
                               Blacklist(ROOT + "/blacklist.bin"), self.cfg["card"],
                               ROOT + "/card_pending", ROOT + "/card_seen")

    async def event(self, ev):
        kind = ev[0]
        chip = self.chip
        if kind == "tap":
            chip.card = self.card
            self.card.power_up()
            chip.remove_after = ev[1]
            chip.tear_mode = ev[2] or "mixed"
            await self.pay.step()
            chip.card = None  # the customer takes the card away (if it is still there)
            chip.remove_after = None
        elif kind == "expire":
            w = self.pay.waiting
            if w is not None:
                w["deadline"] = time.ticks_add(time.ticks_ms(), -1)
            await self.pay.step()
        elif kind == "reboot":
            self.boot()
            await self.engine.recover("power on")
            self.pay.restore_risk()  # as app.py does at boot
            self.pay.quiet_present_card()
        elif kind == "start":
            await self.engine.on_button("start")
        elif kind == "coin":  # a coin of ev[1] minor units, decoded by the acceptor
            await self.engine.on_coin(("coin", ev[1], 2))
        elif kind == "finish":
            self.washer.running = False
            for _ in range(500):
                if self.engine.state != R.RUNNING:
                    break
                await asyncio.sleep_ms(2)
        elif kind == "other":  # a different card (an image) is held to the reader
            other = SimMifareClassic.from_image(ev[1])
            chip.card = other
            await self.pay.step()
            chip.card = None
            self.other_blocks = [other.block(b).hex() for b in (4, 5, 6)]
        elif kind == "elsewhere":  # another machine wrote block ev[1] of the card
            self.card.blocks[16 * ev[1] : 16 * ev[1] + 16] = bytes.fromhex(ev[2])
        elif kind == "blacklist":
            Blacklist(ROOT + "/blacklist.bin").update(
                add=[(bytes.fromhex(ev[1]), ev[2], ev[3])])
            self.pay.blacklist = Blacklist(ROOT + "/blacklist.bin")
        else:
            raise ValueError("unknown event " + repr(kind))

    def result(self):
        recs = []
        for d in self.journal.records():
            recs.append([d["type"], d["amount"], d["price"], d["card_counter"],
                         d["balance_before"], d["balance_after"], d["reason"], d["state"],
                         d["credit"], d["source"].hex(), d["ok"]])
        return {
            "blocks": [self.card.block(b).hex() for b in (4, 5, 6)],
            "other_blocks": self.other_blocks,
            "starts": self.washer.starts,
            "credit": self.engine.credit,
            "state": self.engine.state,
            "waiting": self.pay.waiting is not None,
            "pending": len(self.pay.pending),
            "counts": self.pay.counts,
            "exchanges": self.pay.timings["exchanges"],
            "display": list(self.screen.lines),
            "journal": recs,
            # a tap's code is loaded for the tap only (payments/card.py, washpay.use)
            "tap_code_loaded": "washpay.payments.card_tap" in sys.modules,
        }


async def main(path):
    with open(path) as f:
        spec = json.load(f)
    for i, sc in enumerate(spec["scenarios"]):
        w = World(spec, sc)
        await w.event(["reboot"])  # the first boot: recovery and the boot record
        for ev in sc["events"]:
            await w.event(ev)
        out = w.result()
        out["i"] = i
        print("RESULT " + json.dumps(out))


asyncio.run(main(sys.argv[1]))
