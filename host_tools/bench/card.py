"""Benchmark of card payments on the simulated board: figures, not pass/fail.

- card detected (REQA answered) -> relay command, measured by the firmware with
  time.ticks_us under the unix port: MAC checks, the journal record and the SPI traffic of
  the simulated MFRC522 (an ESP32 is slower, and its RF exchanges take real time);
- RF exchanges per debit: each is a frame to the card and its answer, about 1-5 ms on real
  hardware (a MIFARE WRITE's EEPROM programming alone takes a few ms);
- flash programs per card payment (journal records and the seen-counter file);
- `washpay card issue` / `topup` wall time through mpremote (host);
- GC heap the card code holds once imported (as .mpy).

    python -m host_tools.bench.card
"""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from host_tools import keys as K
from host_tools import wallet as W
from host_tools.sim.client import SimBoard

TAPS = 5
UID4 = bytes.fromhex("04a1b2c3")
UID7 = bytes.fromhex("04112233445566")


def _issued(card_key, uid, balance):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "boards" / "sim"))
    from sim_mfrc522 import blank_blocks

    blocks = blank_blocks(uid)
    for b, data in W.issue_blocks(card_key, uid, balance).items():
        blocks[16 * b : 16 * b + 16] = data
    return {"uid": uid.hex(), "blocks": [blocks[16 * i : 16 * i + 16].hex() for i in range(64)]}


def _board(tmp, heap="512k"):
    st = Path(tmp) / "st"
    (st / "provision").mkdir(parents=True)
    (st / "provision" / "config.json").write_text(
        json.dumps({"device_id": "sim-0001", "card": {"repeat_ms": 0}}))
    return SimBoard(st, heap=heap)


def _pay(sim, image):
    """One paid tap; returns (card status, flash programs it cost)."""
    before = sim.status()
    paid = before["firmware"]["card"]["counts"]["paid"]
    programs = before["flash"]["programs"]
    sim.call("card", action="tap", image=image)
    st = sim.wait_for(lambda s: s["firmware"]["card"]["counts"]["paid"] > paid
                      and s["firmware"]["card"]["counts"]["taps"] >
                      before["firmware"]["card"]["counts"]["taps"], timeout=20,
                      what="a paid tap")
    cost = st["flash"]["programs"] - programs
    sim.call("washer", state="idle")
    sim.wait_for(lambda s: s["state"] == "idle", timeout=20, what="the cycle to end")
    sim.call("washer", state="busy")
    image = sim.call("card", action="dump")["image"]
    sim.call("card", action="remove")
    return st["firmware"]["card"], cost, image


def bench_payments():
    rows = []
    with tempfile.TemporaryDirectory() as tmp, _board(tmp) as sim:
        sim.wait_ready()
        ck = W.site_card_key(K.load_site_key(sim.state / "site.key"))
        sim.call("washer", state="busy")  # the machine confirms at once: quick cycles
        for uid, label in ((UID4, "4-byte UID"), (UID7, "7-byte UID")):
            image = _issued(ck, uid, 100000)
            times, exchanges, costs = [], set(), []
            for _ in range(TAPS):
                card, cost, image = _pay(sim, image)
                times.append(card["timings"]["card_to_relay_us"])
                exchanges.add(card["timings"]["exchanges"])
                costs.append(cost)
            rows.append((f"card detected -> relay command, {label} (median of {TAPS})",
                         int(statistics.median(times)), "µs"))
            rows.append((f"RF exchanges per debit, {label}",
                         "/".join(str(e) for e in sorted(exchanges)), "exchanges"))
        rows.append(("flash programs per card payment (debit + vend_running records, "
                     "seen counters)", int(statistics.median(costs)), "programs"))
        low = _issued(ck, UID4, 10)
        before = sim.status()["firmware"]["card"]["exchanges"]
        taps = sim.status()["firmware"]["card"]["counts"]["taps"]
        sim.call("card", action="tap", image=low)
        st = sim.wait_for(lambda s: s["firmware"]["card"]["counts"]["taps"] > taps,
                          what="the refused tap")
        rows.append(("RF exchanges of a refused tap (balance too low)",
                     st["firmware"]["card"]["exchanges"] - before, "exchanges"))
        sim.call("card", action="remove")
        rows += bench_tool(sim)
    return rows


def bench_tool(sim):
    from host_tools import card as C

    ck = W.site_card_key(K.load_site_key(sim.state / "site.key"))
    sim.call("door", state="open")  # the firmware takes no payment meanwhile
    sim.call("card", action="tap", uid="0a0b0c0d")
    link = C.BoardLink(sim.status()["console"])
    t0 = time.monotonic()
    C.issue(link, ck, 1000, wait_s=5, say=lambda m: None)
    t1 = time.monotonic()
    C.topup(link, ck, 500, wait_s=5, say=lambda m: None)
    t2 = time.monotonic()
    link.finish()
    return [("washpay card issue through the board (mpremote, host)", round(t1 - t0, 2), "s"),
            ("washpay card topup through the board (mpremote, host)", round(t2 - t1, 2), "s")]


_MEM_SCRIPT = """
import gc, sys
sys.path.insert(0, {root!r})
from washpay import crypto
from washpay.vend import engine as vend
from washpay.journal import Journal
gc.collect(); a0 = gc.mem_alloc()
from washpay.drivers import mfrc522
gc.collect(); a1 = gc.mem_alloc()
from washpay.payments import card, card_state, wallet
from washpay.cardlists import blacklist, tierlist
gc.collect(); a2 = gc.mem_alloc()
print(a1 - a0, a2 - a1)
"""


def bench_heap():
    """GC heap the card code keeps once imported, compiled to .mpy as provisioning ships
    it (bytecode of .mpy files lives in RAM; frozen into the firmware it would not)."""
    import subprocess

    from host_tools.bench import compile_firmware
    from host_tools.sim.runner import micropython_command

    with tempfile.TemporaryDirectory() as tmp:
        rom = compile_firmware(Path(tmp) / "rom")
        out = subprocess.run([micropython_command(), "-X", "heapsize=1m", "-c",
                              _MEM_SCRIPT.format(root=str(rom))],
                             capture_output=True, text=True, timeout=60).stdout.split()
    driver, payment = int(out[0]), int(out[1])
    return [("GC heap held by the MFRC522 driver (.mpy)", driver, "bytes"),
            ("GC heap held by card payments: card, wallet, card_state, card lists (.mpy)",
             payment, "bytes")]


def bench():
    return bench_payments() + bench_heap()


def main():
    for name, value, unit in bench():
        print(f"  {name:<78} {value:>10} {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
