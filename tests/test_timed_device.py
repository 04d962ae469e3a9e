"""Timed programs (a dryer selling time) on the simulated board, under the real micropython:
the relay is held for the paid time and released when it runs out, coins inserted while it
runs buy more steps up to the cap, the paid time survives a power cut, and every step is in
the journal with the time left. The machine on the relay is switched by its supply
(washer start_mode "power"), as dryers are wired."""

import json
import time
from pathlib import Path

import pytest
from test_card_device import journal

pytestmark = pytest.mark.device

ROOT = Path(__file__).resolve().parent.parent
DEVICE = "sim-0001"
# 1.00 buys 4 s, at most 12 s at a time: seconds so that a test runs in seconds; a dryer
# in the field sells minutes (step_minutes / max_minutes), the same code
DRY = {"name": "dry", "mode": "timed", "price": 100, "step_seconds": 4, "max_seconds": 12}


def dryer_board(start_mode="power"):
    board = json.loads((ROOT / "boards" / "sim" / "board.json").read_text())
    board["washer"]["start_mode"] = start_mode
    return board


def config(programs=(DRY,), **extra):
    return {"device_id": DEVICE, "programs": list(programs), "collect_ms": 0, **extra}


@pytest.fixture
def start_dryer(sim_with_config):
    """start_dryer(config=..., start_mode=..., ready=...): a board whose machine is a dryer."""
    def start(cfg=None, start_mode="power", ready=True):
        return sim_with_config(cfg or config(), dryer_board(start_mode), ready=ready)
    return start


@pytest.fixture
def dryer(start_dryer):
    return start_dryer()


def left(st):
    return st["firmware"]["left_s"]


def within(st, paid_s, since):
    """The paid time left in `st` is what the host's clock allows: at most `paid_s`, and at
    least `paid_s` less the time since `since`, a host time taken before that time began to
    run (the firmware rounds up). No window that a slow host could miss."""
    return paid_s - (time.monotonic() - since) <= left(st) <= paid_s


def test_coins_buy_whole_steps_and_the_relay_is_held_for_them(dryer, tmp_path):
    st = dryer.firmware_status()
    assert "dry 1.00/4s" in st["display"]
    dryer.insert_coin(200)
    st = dryer.insert_coin(50)  # 2.50: two steps (8 s); 0.50 stays credit
    assert "dry 0:08 START" in st["display"]
    t0 = time.monotonic()
    dryer.call("button", name="start")
    st = dryer.wait_for(lambda s: s["state"] == "running", what="running")
    assert st["relay"] == "on" and st["credit"] == 50
    assert within(st, 8, t0)
    assert st["display"].startswith("Running dry\n0:0")  # the time counts down, m:ss
    assert st["display"].endswith("cr 0.50")  # and the credit left over is shown
    # the machine's own busy signal does not end paid time: a customer opening the door
    # to look at the laundry keeps the time
    st = dryer.wait_for(lambda s: s["state"] != "running", timeout=20, what="time to run out")
    assert st["relay"] == "off" and st["state"] == "credit" and st["credit"] == 50
    assert time.monotonic() - t0 >= 8  # the relay was held for all 8 s paid (not longer:
    # the journal's vend_done below has none left, and the time ran by the firmware's clock)
    recs = [r for r in journal(dryer, tmp_path) if r["type"].startswith("vend")]
    start, running, done = recs[-3:]
    assert (start["type"], start["price"], start["amount"], start["left_s"]) == (
        "vend_start", 200, 200, 8)
    assert running["type"] == "vend_running" and running["left_s"] == 8
    assert done["type"] == "vend_done" and done["left_s"] == 0 and done["price"] == 200


def test_credit_below_one_step_does_not_start(dryer):
    dryer.insert_coin(50)
    dryer.call("button", name="start")
    st = dryer.wait_for(lambda s: "Insert 0.50" in s["display"], what="the shortfall")
    assert st["state"] == "credit" and st["relay"] == "off"


def coin_to_time(sim, value):
    """A coin while the dryer runs: journaled, then turned into time at once."""
    seq = sim.firmware_status()["journal"]["last_seq"]
    sim.call("coin", value=value)
    return sim.wait_for(lambda s: s["journal"]["last_seq"] >= seq + 2, what="coin and time")


def test_coins_while_running_extend_up_to_the_cap(start_dryer, tmp_path):
    # 1.00 buys 8 s, at most 16 s at a time: room for a step opens when 8 s are left. Each
    # step below has 8 s of paid time to be seen in before the next timer moves on: a
    # loaded host never misses it
    sim = start_dryer(config((dict(DRY, step_seconds=8, max_seconds=16),)))
    sim.insert_coin(100)
    t0 = time.monotonic()
    sim.call("button", name="start")
    # a dryer takes coins while it runs: they buy time (the acceptor, closed while the
    # machine starts, opens once the running state is journaled: a status may fall between)
    st = sim.wait_for(lambda s: s["state"] == "running" and s["inhibit"] is False,
                      what="running, taking coins")
    assert within(st, 8, t0)
    st = coin_to_time(sim, 100)  # one more step
    assert st["credit"] == 0 and within(st, 16, t0)
    assert st["journal"]["last_type"] == "vend_extend"
    # no whole step fits under the cap: the acceptor is closed and gives a coin back
    assert st["inhibit"] is True
    returned = st["coins_returned"]
    sim.call("coin", value=100)
    st = sim.wait_for(lambda s: s["coins_returned"] == returned + 1, what="coin returned")
    assert st["credit"] == 0
    # as time runs, room for a step opens (8 s left) and the acceptor takes coins again
    st = sim.wait_for(lambda s: s["inhibit"] is False, timeout=20, what="room for a step")
    assert left(st) <= 8
    sim.call("coin", value=200)  # two steps: one fits now, the other waits as credit
    st = sim.wait_for(lambda s: s["credit"] == 100, what="one step bought")
    assert 8 < left(st) <= 16 and st["inhibit"] is True
    # the waiting credit buys its step as soon as it fits
    st = sim.wait_for(lambda s: s["credit"] == 0, timeout=20, what="the waiting step")
    assert 8 < left(st) <= 16
    st = sim.wait_for(lambda s: s["state"] != "running", timeout=30, what="the end")
    assert st["relay"] == "off" and st["credit"] == 0 and st["state"] == "idle"
    recs = journal(sim, tmp_path)
    ext = [r for r in recs if r["type"] == "vend_extend"]
    assert [r["amount"] for r in ext] == [100, 100, 100]
    assert [r["price"] for r in ext] == [200, 300, 400]  # the vend's total so far
    assert all(8 < r["left_s"] <= 16 for r in ext)  # a step is bought only when it fits
    assert [r for r in recs if r["type"] == "vend_done"][-1]["price"] == 400
    # every coin is in the journal and every one became paid time: nothing lost
    coins = [r for r in recs if r["type"] == "coin"]
    assert sum(r["amount"] for r in coins) == 400
    assert [r["type"] for r in recs].count("vend_start") == 1


def test_paid_time_survives_a_power_cut(dryer, tmp_path):
    dryer.insert_coin(200)
    dryer.insert_coin(100)  # 12 s: the cap
    t0 = time.monotonic()
    dryer.call("button", name="start")
    dryer.wait_for(lambda s: s["state"] == "running", what="running")
    t_running = time.monotonic()
    time.sleep(3)  # paid time runs (not a wait for the firmware: the time to subtract)
    dryer.call("power", state="cut")
    time.sleep(2)  # the outage: the dryer stands still, but the clock runs
    t_on = time.monotonic()
    dryer.call("power", state="on")
    st = dryer.wait_for(lambda s: s["state"] == "running" and s["relay"] == "on",
                        timeout=20, what="the paid time to resume")
    # 12 s paid; by the wall clock at least the time from running to power on has gone
    # (run and outage), at most the time since the press. The board's clock has whole
    # seconds: it gives the customer the second it cannot tell, so up to 2 s more than
    # the wall clock says are left, never less
    gone = t_on - t_running
    assert within(st, 12, t0) and left(st) <= 12 - gone + 2, (
        left(st), time.monotonic() - t0, gone)
    st = dryer.wait_for(lambda s: s["state"] == "idle", timeout=20, what="the end")
    assert st["relay"] == "off"
    recs = journal(dryer, tmp_path)
    resumed = [r for r in recs if r["type"] == "vend_running" and r["recovered"]]
    assert len(resumed) == 1 and resumed[0]["left_s"] <= 12 - gone + 2
    assert recs[-1]["type"] == "vend_done" or any(r["type"] == "vend_done" for r in recs)


def test_time_run_out_during_the_outage_ends_the_vend(dryer, tmp_path):
    dryer.insert_coin(100)  # 4 s
    dryer.call("button", name="start")
    dryer.wait_for(lambda s: s["state"] == "running", what="running")
    dryer.call("power", state="cut")
    time.sleep(5)
    dryer.call("power", state="on")
    st = dryer.wait_for(lambda s: s["state"] == "idle", timeout=20, what="the vend over")
    assert st["relay"] == "off"
    recs = journal(dryer, tmp_path)
    assert not [r for r in recs if r["type"] == "vend_running" and r["recovered"]]
    assert [r["type"] for r in recs].count("vend_done") == 1


def test_timed_program_on_a_contact_washer_is_a_config_error(start_dryer):
    b = start_dryer(start_mode="contact", ready=False)
    st = b.wait_for(lambda s: s["state"] == "out_of_order", timeout=20,
                    what="out of order")
    assert "timed program needs washer" in st["firmware"]["fault"]
    assert st["inhibit"] is True


@pytest.mark.parametrize("bad,why", [
    ({"step_seconds": 4}, "max_minutes or max_seconds"),
    ({"step_seconds": 4, "step_minutes": 1, "max_seconds": 12}, "step_minutes or step_seconds"),
    ({"step_seconds": 10, "max_seconds": 5}, "max_seconds"),
    ({"step_minutes": 1, "max_minutes": 2000}, "max_minutes"),
    ({"step_seconds": 0, "max_seconds": 5}, "step_seconds"),
])
def test_bad_timed_program_is_refused_with_the_field_named(start_dryer, bad, why):
    prog = {"name": "dry", "mode": "timed", "price": 100, **bad}
    b = start_dryer(config((prog,)), ready=False)
    st = b.wait_for(lambda s: s["state"] == "out_of_order", timeout=20,
                    what="out of order")
    assert why in st["firmware"]["fault"]


def test_token_worth_more_than_the_cap_buys_all_its_time(start_dryer, tmp_path):
    import token_env as E

    # 2 s steps, 3 at most at a time: the same rules in 10 s of running
    sim = start_dryer(config((dict(DRY, step_seconds=2, max_seconds=6),)))
    E.wait_scanner(sim)
    # 5.00 on a 1.00-a-step dryer capped at 3 steps: 6 s now, and 2.00 as credit that
    # buys its steps as the cap allows, while the dryer runs
    t0 = time.monotonic()
    E.scan(sim, E.issue(sim.state, "dry", amount=500))
    st = sim.wait_for(lambda s: s["state"] == "running", what="the token's time")
    assert st["credit"] == 200 and within(st, 6, t0)
    st = sim.wait_for(lambda s: s["state"] != "running", timeout=30, what="the end")
    assert st["state"] == "idle" and st["credit"] == 0 and st["relay"] == "off"
    recs = journal(sim, tmp_path)
    (redeem,) = [r for r in recs if r["type"] == "token_redeem"]
    # amount = what the token paid, price = what the time cost, credit = the difference
    assert (redeem["amount"], redeem["price"], redeem["credit"], redeem["left_s"]) == (
        500, 300, 200, 6)
    assert [r["amount"] for r in recs if r["type"] == "vend_extend"] == [100, 100]
    assert [r for r in recs if r["type"] == "vend_done"][-1]["price"] == 500


def test_card_tap_buys_one_step_at_the_cards_price(start_dryer, tmp_path):
    from card_helpers import UID4, UID7, issued_image
    from test_card_device import card, card_key, tap

    pricing = {"tiers": {"double": {"percent": 100}, "half": {"percent": -50}}}
    # 10 s steps: the second tap lands while the first step runs however slow the host
    sim = start_dryer(config((dict(DRY, step_seconds=10, max_seconds=30),), pricing=pricing,
                             card={"repeat_ms": 0}))
    # a tier that pays double gets one step for its price, not two
    t0 = time.monotonic()
    tap(sim, issued_image(UID4, 1000, "double", card_key=card_key(sim)))
    st = sim.wait_for(lambda s: s["state"] == "running", what="paid")
    assert card(st)["last"]["result"] == "paid 200" and within(st, 10, t0)
    # a card tapped while it runs is not charged: extending is by coins
    tap(sim, issued_image(UID7, 1000, card_key=card_key(sim)))
    st = sim.firmware_status()
    assert card(st)["counts"]["paid"] == 1 and st["credit"] == 0
    st = sim.wait_for(lambda s: s["state"] == "idle", timeout=30, what="the end")
    # a discounted tier: one step for 0.50
    t0 = time.monotonic()
    tap(sim, issued_image(UID7, 1000, "half", card_key=card_key(sim)))
    st = sim.wait_for(lambda s: s["state"] == "running", what="paid")
    assert card(st)["last"]["result"] == "paid 50" and within(st, 10, t0)
    assert st["credit"] == 0
    sim.wait_for(lambda s: s["state"] == "idle", timeout=30, what="the end")
    recs = journal(sim, tmp_path)
    debits = [r for r in recs if r["type"] == "card_debit"]
    assert [(r["price"], r["left_s"]) for r in debits] == [(200, 10), (50, 10)]


def test_a_card_tops_the_credit_up_to_one_step(start_dryer, tmp_path):
    """Issue 12, item 1, for a dryer: 0.50 of coins in, a card tap buys one step (1.00) and
    pays only the 0.50 the credit does not cover."""
    from card_helpers import UID4, issued_image
    from test_card_device import card_key, dump, tap, wallet_of

    sim = start_dryer()
    sim.insert_coin(50)
    tap(sim, issued_image(UID4, 1000, card_key=card_key(sim)))
    st = sim.wait_for(lambda s: s["state"] == "running", what="the step paid by both")
    assert st["credit"] == 0 and wallet_of(sim, dump(sim)).balance == 950
    debit = [r for r in journal(sim, tmp_path) if r["type"] == "card_debit"]
    assert [(r["amount"], r["price"], r["credit"], r["left_s"]) for r in debit] == [
        (50, 100, 0, 4)]
