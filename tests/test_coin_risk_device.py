"""Coin acceptor risk control on the simulated board: a burst of rejected pulse trains (a
probe, a tampered or jammed acceptor) inhibits the acceptor for the lockout time, says so on
the display and journals a fault; the firmware runs under the real micropython."""

import json
import time

import pytest

from host_tools.sim.client import SimBoard

pytestmark = pytest.mark.device

RISK = {"reject_burst": 3, "reject_window_ms": 60000, "coin_lockout_ms": 8000}


@pytest.fixture
def sim(tmp_path):
    st_dir = tmp_path / "st"
    (st_dir / "provision").mkdir(parents=True)
    (st_dir / "provision" / "config.json").write_text(
        json.dumps({"device_id": "sim-0001", "risk": RISK}))
    b = SimBoard(st_dir, log=tmp_path / "sim.log")
    b.start()
    try:
        b.wait_ready()
        yield b
    finally:
        b.stop()


def reject(sim):
    faults = sim.status()["firmware"]["faults"]
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
    assert st["display"] == "Coins blocked\nuse card or ask"
    st = sim.wait_for(lambda s: s["display"].startswith("Coins blocked\nquick"),
                      what="the locked-out screen")
    reply = sim.call("coin", value=100)  # the inhibited acceptor gives it back
    assert reply.get("returned") is True and sim.status()["credit"] == 0
    # the lockout ends by itself; the count starts again from zero
    st = sim.wait_for(lambda s: not s["firmware"]["coin_lockout"], timeout=30,
                      what="the lockout to end")
    assert st["inhibit"] is False and st["display"].startswith("Insert coins")
    sim.call("coin", value=100)
    sim.wait_for(lambda s: s["credit"] == 100, what="coins taken again")
    st = reject(sim)
    assert st["inhibit"] is False and st["journal"]["last_type"] == "coin_rejected"


def fault_reasons(sim, tmp_path):
    """The board's FAULT records, pulled with mpremote and verified by the host's decoder."""
    from host_tools import journal as J
    from host_tools import keys as K

    st = sim.status()
    dev = st["firmware"]["device_id"]  # the journal keys are the provisioned device's
    out = tmp_path / f"pull{len(list(tmp_path.glob('pull*')))}"
    J.pull(st["console"], out)
    report = J.verify(J.load_inputs([out / "journal"]),
                      J.Keys(K.load_site_key(sim.state / "site.key"), dev))
    assert report.ok, [p.message for p in report.problems]
    sim.wait_ready()
    return [dict(r.fields)["reason"] for r in report.records if dict(r.fields)["type"] == "fault"]


def test_a_stuck_coin_line_inhibits_until_it_is_released(sim, tmp_path):
    sim.call("pulses", n=1, width_ms=2500)  # no coin pulse is 2.5 s long
    st = sim.wait_for(lambda s: s["firmware"]["coin_stuck"], what="the stuck line")
    assert st["inhibit"] is True and st["journal"]["last_type"] == "fault"
    assert sim.call("coin", value=100).get("returned") is True
    # the line goes idle: coins are taken again; the long pulse itself was no coin
    st = sim.wait_for(lambda s: not s["firmware"]["coin_stuck"], what="the line released")
    st = sim.wait_for(lambda s: s["journal"]["last_type"] == "coin_rejected", what="rejection")
    assert st["inhibit"] is False and st["credit"] == 0
    assert fault_reasons(sim, tmp_path) == ["coin line stuck active", "coin line released"]


def test_pulses_while_inhibited_are_a_fault(sim, tmp_path):
    for coin in (200, 200, 200, 200, 200, 200, 200, 200, 200, 200):  # max_credit 20.00
        sim.call("coin", value=coin)
    sim.wait_for(lambda s: s["credit"] == 2000 and s["inhibit"], what="the acceptor inhibited")
    time.sleep(1.0)  # past the grace for a coin in flight (risk.inhibit_grace_ms 500)
    sim.call("pulses", n=1)  # the acceptor pulses although inhibited: tampered or faulty
    st = sim.wait_for(lambda s: s["journal"]["last_type"] == "fault", what="the fault")
    assert st["firmware"]["last_fault"] == "pulses while inhibited"
    assert fault_reasons(sim, tmp_path) == ["pulses while inhibited"]
