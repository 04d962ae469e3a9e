"""Coin acceptor risk control on the simulated board: a burst of rejected pulse trains (a
probe, a tampered or jammed acceptor) inhibits the acceptor for the lockout time, says so on
the display and journals a fault; the firmware runs under the real micropython."""

import time

import pytest

pytestmark = pytest.mark.device

# The firmware's timers are set so that no step of a test races one on a slow or loaded
# machine: whatever must still hold when the host gets to look (the lockout, a stuck line)
# lasts far longer than the host could take, and whatever must be over before the host
# acts (the grace for a coin in flight) is as short as the config allows. The burst window
# outlasts the whole lockout test, so that its last step really shows the count restart.
LOCKOUT_MS = 15000  # > the 3 s notice + 10 s (the polls' deadline) of slack
GRACE_MS = 100  # risk.inhibit_grace_ms: the least allowed
RISK = {"reject_burst": 3, "reject_window_ms": 120000, "coin_lockout_ms": LOCKOUT_MS,
        "inhibit_grace_ms": GRACE_MS}
STUCK_PULSE_MS = 12000  # the coin line held active: stuck after risk.stuck_ms (default 1 s)


@pytest.fixture
def sim(sim_with_config):
    return sim_with_config({"device_id": "sim-0001", "risk": RISK})


def reject(sim):
    faults = sim.firmware_status()["firmware"]["faults"]
    sim.call("pulses", n=3)  # no coin is 3 pulses
    return sim.wait_for(lambda s: s["firmware"]["faults"] == faults + 1, what="the rejection")


def test_the_nth_rejected_train_locks_coins_out_for_a_while(sim):
    for _ in range(2):  # the first and the second: a rejection each, coins still taken
        st = reject(sim)
        assert st["journal"]["last_type"] == "coin_rejected"
        assert st["inhibit"] is False and st["firmware"]["coin_lockout"] is False
    st = reject(sim)  # the third within the window
    st = sim.wait_for(lambda s: s["journal"]["last_type"] == "fault", what="the fault record")
    assert st["inhibit"] is True and st["firmware"]["coin_lockout"] is True
    assert st["firmware"]["journal"]["count"] >= 4
    # the notice's 3 s are the firmware's own, not configurable: it is read from the first
    # status that shows the fault; everything after it has the long lockout to happen in
    assert st["display"] == "Coins blocked\nuse card or ask"
    st = sim.wait_for(lambda s: s["display"].startswith("Coins blocked\nquick"),
                      what="the locked-out screen")
    reply = sim.call("coin", value=100)  # the inhibited acceptor gives it back
    assert reply.get("returned") is True and sim.firmware_status()["credit"] == 0
    # the lockout ends by itself; the count starts again from zero
    st = sim.wait_for(lambda s: not s["firmware"]["coin_lockout"],
                      timeout=LOCKOUT_MS / 1000 + 30, what="the lockout to end")
    assert st["inhibit"] is False and st["display"].startswith("Insert coins")
    sim.call("coin", value=100)
    sim.wait_for(lambda s: s["credit"] == 100, what="coins taken again")
    st = reject(sim)
    assert st["inhibit"] is False and st["journal"]["last_type"] == "coin_rejected"


def fault_reasons(sim, tmp_path):
    """The board's FAULT records, pulled with mpremote and verified by the host's decoder."""
    from host_tools import journal as J
    from host_tools import keys as K

    st = sim.firmware_status()
    dev = st["firmware"]["device_id"]  # the journal keys are the provisioned device's
    out = tmp_path / f"pull{len(list(tmp_path.glob('pull*')))}"
    J.pull(st["console"], out)
    report = J.verify(J.load_inputs([out / "journal"]),
                      J.Keys(K.load_site_key(sim.state / "site.key"), dev))
    assert report.ok, [p.message for p in report.problems]
    sim.wait_ready()
    return [dict(r.fields)["reason"] for r in report.records if dict(r.fields)["type"] == "fault"]


def test_a_stuck_coin_line_inhibits_until_it_is_released(sim, tmp_path):
    sim.call("pulses", n=1, width_ms=STUCK_PULSE_MS)  # no coin pulse is that long
    st = sim.wait_for(lambda s: s["firmware"]["coin_stuck"], what="the stuck line")
    assert st["inhibit"] is True and st["journal"]["last_type"] == "fault"
    assert sim.call("coin", value=100).get("returned") is True
    # the line goes idle: coins are taken again; the long pulse itself was no coin
    st = sim.wait_for(lambda s: not s["firmware"]["coin_stuck"],
                      timeout=STUCK_PULSE_MS / 1000 + 10, what="the line released")
    st = sim.wait_for(lambda s: s["journal"]["last_type"] == "coin_rejected", what="rejection")
    assert st["inhibit"] is False and st["credit"] == 0
    assert fault_reasons(sim, tmp_path) == ["coin line stuck active", "coin line released"]


def test_pulses_while_inhibited_are_a_fault(sim, tmp_path):
    for coin in (200, 200, 200, 200, 200, 200, 200, 200, 200, 200):  # max_credit 20.00
        sim.call("coin", value=coin)
    st = sim.wait_for(lambda s: s["credit"] == 2000 and s["inhibit"],
                      what="the acceptor inhibited")
    faults = st["firmware"]["faults"]
    # Past the grace for a coin in flight. The firmware's grace runs from before the host
    # could see the inhibit line, and the pulse below starts only after this wait, so the
    # wait is a lower bound on what the firmware measures: ten graces, not a race.
    time.sleep(10 * GRACE_MS / 1000)
    sim.call("pulses", n=1)  # the acceptor pulses although inhibited: tampered or faulty
    # The fault record is the newest for a moment only: the pulse is then decoded (a coin
    # the firmware cannot refuse any more) and journaled after it. Wait for what stays.
    st = sim.wait_for(lambda s: s["firmware"]["faults"] > faults, what="the fault")
    assert st["firmware"]["faults"] == faults + 1
    assert st["firmware"]["last_fault"] == "pulses while inhibited"
    assert fault_reasons(sim, tmp_path) == ["pulses while inhibited"]
