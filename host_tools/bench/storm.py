"""`make bench`: a storm on the coin line (1 kHz of glitches for 60 s, as a motor or a relay
next to the coin wire makes): how soon the firmware refuses coins, how it answers meanwhile,
what it journals, and how soon coins are taken again. Figures, not pass/fail (the device
test tests/test_coin_storm_device.py asserts the behaviour with a shorter storm)."""

import tempfile
import time
from pathlib import Path

from host_tools.sim.client import SimBoard

STORM_HZ = 1000
STORM_S = 60


def bench(storm_s=STORM_S, rate=STORM_HZ):
    with tempfile.TemporaryDirectory() as tmp, SimBoard(Path(tmp) / "st") as sim:
        sim.wait_ready()
        sim.insert_coin(100)
        faults0 = sim.status()["firmware"]["faults"]
        t0 = time.monotonic()
        sim.call("glitch", rate=rate, seconds=storm_s)
        sim.wait_for(lambda s: s["inhibit"], timeout=10, interval=0.01)
        t_inhibit = time.monotonic() - t0
        worst = 0.0
        while time.monotonic() - t0 < storm_s:  # how the board answers during the storm
            t = time.monotonic()
            st = sim.status()
            worst = max(worst, time.monotonic() - t)
            time.sleep(0.2)
        st = sim.wait_for(lambda s: not s["inhibit"], timeout=30, interval=0.01)
        t_quiet = time.monotonic() - t0 - storm_s
        events = [e["event"] for e in sim.call("events")["events"]]
        return [
            (f"storm: {rate} Hz for {storm_s} s; glitch -> coins inhibited",
             int(t_inhibit * 1000), "ms"),
            ("slowest status answer during the storm", int(worst * 1000), "ms"),
            ("storm over -> coins taken again", int(t_quiet * 1000), "ms"),
            ("fault records for the storm", st["firmware"]["faults"] - faults0, "records"),
            ("watchdog resets", events.count("watchdog reset"), "resets"),
            ("credit kept through the storm (was 100)", st["credit"], "minor units"),
        ]
