"""A storm on the coin line (a motor, a relay, a bad ground: 1 kHz of glitches) on the
simulated board, the firmware under the real micropython: coins are refused while it lasts,
one fault record says so, the board keeps answering (no watchdog reset), the credit stays,
and coins are taken again once the line is quiet. `make bench` runs a 60 s storm."""

import pytest

from tests.test_coin_risk_device import fault_reasons

pytestmark = pytest.mark.device

STORM_HZ = 1000
STORM_S = 12  # long enough for many noise windows, short enough for the suite


def test_a_storm_on_the_coin_line_inhibits_coins_and_leaves_the_credit(sim, tmp_path):
    sim.insert_coin(100)
    reply = sim.call("glitch", rate=STORM_HZ, seconds=STORM_S)
    assert reply["glitches"] == STORM_HZ * STORM_S
    st = sim.wait_for(lambda s: s["inhibit"], what="coins inhibited for the storm")
    assert st["firmware"].get("coin_storm") is not None
    assert st["display"] == "Coins blocked\nask staff"
    assert sim.call("coin", value=100).get("returned") is True  # the acceptor gives it back
    # the board answers all through the storm; when the line is quiet it takes coins again
    st = sim.wait_for(lambda s: s["firmware"]["coin_storm"] is None,
                      timeout=STORM_S + 30, what="the storm to end")
    assert st["credit"] == 100 and st["inhibit"] is False and st["state"] == "credit"
    assert st["boots"] == 1 and st["firmware"]["faults"] == 1
    events = [e["event"] for e in sim.call("events")["events"]]
    assert "watchdog reset" not in events and events.count("power on") == 1
    sim.insert_coin(100)
    assert sim.firmware_status()["credit"] == 200
    faults = fault_reasons(sim, tmp_path)
    assert len(faults) == 1 and faults[0].startswith("coin line noise: "), faults
