"""The price table (docs/pricing.md) on the simulated board: a time rule that is active now
changes the coin price shown and charged, a card tier's discount and overdraft apply to card
payments, a tier that may not buy a program is refused and journaled, and the table's
version is in the BOOT record. The firmware runs under the real micropython."""

import datetime
import json

import pytest
from card_helpers import UID4, UID7, issued_image
from test_card_device import card, card_key, end_cycle, journal, lift, saw, tap, washpay

pytestmark = pytest.mark.device

DEVICE = "sim-0001"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def rules_now():
    """+20% on today and tomorrow (UTC, the table's offset is 0: a test that runs over
    midnight still sees it), and +100% on every other day, which must not apply."""
    today = datetime.datetime.now(datetime.timezone.utc).weekday()
    on = (today, (today + 1) % 7)
    off = [DAYS[d] for d in range(7) if d not in on]
    return [{"days": ",".join(off), "from": "00:00", "to": "24:00", "percent": 100},
            {"days": ",".join(DAYS[d] for d in on), "from": "00:00", "to": "24:00",
             "percent": 20}]


PRICING = {
    "version": 7,
    "utc_offset_min": 0,
    "rules": rules_now(),
    "tiers": {"staff": {"percent": -50},
              "student": {"programs": ["standard", "heavy"]},
              "trusted": {"overdraft": 100},
              "saver": {"min_balance": 500}},
}


def config(pricing):
    return {"device_id": DEVICE, "card": {"repeat_ms": 0}, "pricing": pricing}


@pytest.fixture
def sim(sim_with_config):
    return sim_with_config(config(PRICING))


def test_rule_active_now_sets_the_coin_price(sim, tmp_path):
    st = sim.firmware_status()
    progs = {p["name"]: p["price"] for p in st["firmware"]["programs"]}
    # base 2.50 / 3.50 / 4.50, +20% now (not the +100% of the other days)
    assert progs == {"quick": 300, "standard": 420, "heavy": 540}
    assert st["firmware"]["prices_version"] == 7
    assert st["display"].startswith("Insert coins") and "quick 3.00" in st["display"]
    sim.insert_coin(200)
    sim.insert_coin(50)  # the base price would be covered now
    sim.call("button", name="start")
    st = sim.wait_for(lambda s: "Insert 0.50" in s["display"], what="the shortfall")
    assert st["relay_pulses"] == 0 and st["credit"] == 250
    sim.insert_coin(50)
    sim.call("button", name="start")
    st = sim.wait_for(lambda s: s["state"] == "running", what="running")
    assert st["credit"] == 0 and st["relay_pulses"] == 1
    recs = journal(sim, tmp_path)
    (boot,) = [r for r in recs if r["type"] == "boot"]
    assert boot["reason"] == "power on; prices v7"
    (start,) = [r for r in recs if r["type"] == "vend_start"]
    assert (start["price"], start["amount"], start["program"]) == (300, 300, "quick")


def test_tier_discount_on_a_card_payment(sim, tmp_path):
    st = tap(sim, issued_image(UID4, 1000, "staff", card_key=card_key(sim)))
    st = sim.wait_for(lambda s: s["state"] == "running", what="paid")
    # 2.50 * (100 + 20 - 50)% = 1.75
    assert card(st)["last"]["result"] == "paid 175"
    debit = [r for r in journal(sim, tmp_path) if r["type"] == "card_debit"][-1]
    assert (debit["amount"], debit["balance_before"], debit["balance_after"]) == (175, 1000, 825)
    end_cycle(sim)
    # an untiered card pays the price of the moment, no discount
    tap(sim, issued_image(UID7, 1000, card_key=card_key(sim)))
    st = sim.wait_for(lambda s: s["state"] == "running", what="paid")
    assert card(st)["last"]["result"] == "paid 300"


def test_tier_that_may_not_buy_the_program_is_refused(sim, tmp_path):
    st = tap(sim, issued_image(UID4, 1000, "student", card_key=card_key(sim)))
    assert saw(st, "Not for card\nchoose another")
    assert st["state"] == "idle" and st["relay_pulses"] == 0
    assert card(st)["counts"]["refused"] == 1
    refused = [r for r in journal(sim, tmp_path) if r["type"] == "card_refused"]
    assert [(r["reason"], r["source"]) for r in refused] == [("tier student: not quick",
                                                             UID4.hex())]
    # the same card buys a program its tier allows
    sim.wait_ready()
    sim.select_program("standard")
    tap(sim, issued_image(UID4, 1000, "student", card_key=card_key(sim)))
    st = sim.wait_for(lambda s: s["state"] == "running", what="paid")
    assert card(st)["last"]["result"] == "paid 420"


def test_overdraft_down_to_exactly_the_limit(sim, tmp_path):
    # trusted: overdraft 1.00; quick costs 3.00 now. 1.99 would end at -1.01: refused
    st = tap(sim, issued_image(UID4, 199, "trusted", card_key=card_key(sim)))
    assert card(st)["last"]["result"] == "low balance" and st["relay_pulses"] == 0
    assert saw(st, "Low balance 1.99", "in")
    # 2.00 ends exactly at -1.00: paid
    tap(sim, issued_image(UID7, 200, "trusted", card_key=card_key(sim)))
    st = sim.wait_for(lambda s: s["state"] == "running", what="paid")
    debit = [r for r in journal(sim, tmp_path) if r["type"] == "card_debit"][-1]
    assert (debit["balance_before"], debit["balance_after"]) == (200, -100)
    # an untiered card has no overdraft: 2.99 does not buy 3.00
    end_cycle(sim)
    st = tap(sim, issued_image(UID4, 299, card_key=card_key(sim)))
    assert card(st)["last"]["result"] == "low balance" and st["relay_pulses"] == 1


def test_overdraft_is_settled_by_the_next_top_up(sim, tmp_path):
    # pay after use: 2.00 on a trusted card buys a 3.00 cycle, down to -1.00 ...
    tap(sim, issued_image(UID7, 200, "trusted", card_key=card_key(sim)))
    sim.wait_for(lambda s: s["state"] == "running", what="paid")
    end_cycle(sim)
    # ... and the top-up settles the debt first: -1.00 + 5.00 = 4.00 on the card
    r = washpay("card", "topup", 500, "--port", sim.status()["console"], "--site-key",
                sim.state / "site.key", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["balance"] == 400
    sim.wait_ready()
    lift(sim)
    tap(sim, UID7)  # the same card, as the top-up left it
    st = sim.wait_for(lambda s: s["state"] == "running", what="paid again")
    assert card(st)["last"]["result"] == "paid 300"
    recs = [r for r in journal(sim, tmp_path) if r["type"] in ("card_debit", "card_topup")]
    assert [(r["type"], r["balance_before"], r["balance_after"]) for r in recs] == [
        ("card_debit", 200, -100), ("card_topup", -100, 400), ("card_debit", 400, 100)]


def test_tier_minimum_balance(sim, tmp_path):
    # saver: must hold 5.00 to pay, though 3.00 is the price
    st = tap(sim, issued_image(UID4, 499, "saver", card_key=card_key(sim)))
    assert card(st)["last"]["result"] == "low balance" and st["relay_pulses"] == 0
    tap(sim, issued_image(UID7, 500, "saver", card_key=card_key(sim)))
    st = sim.wait_for(lambda s: s["state"] == "running", what="paid")
    assert card(st)["last"]["result"] == "paid 300"


@pytest.mark.parametrize("bad, why", [
    ({"rules": [{"days": "someday"}]}, "unknown day"),
    ({"tiers": {"x": {"programs": ["nosuch"]}}}, "no program"),
    ({"version": -1}, "pricing.version"),
])
def test_a_bad_price_table_is_a_config_error(sim_with_config, bad, why):
    st = sim_with_config(config(bad)).status()
    assert why in st["firmware"]["config_error"]
    assert st["state"] == "out_of_order"


def test_a_card_in_the_red_pays_again_within_its_overdraft(sim_with_config, tmp_path):
    """Issue 12, item 22: a card below zero was refused ("min 0.00 to pay"), so the
    overdraft allowed one payment into the red. Every payment within the limit is taken."""
    pricing = dict(PRICING, tiers={"resident": {"overdraft": 500}})
    sim = sim_with_config(config(pricing))
    tap(sim, issued_image(UID4, 200, "resident", card_key=card_key(sim)))
    sim.wait_for(lambda s: s["state"] == "running", what="paid into the red")
    end_cycle(sim)
    lift(sim)
    tap(sim, UID4)  # at -1.00: 3.00 more ends at -4.00, within -5.00
    st = sim.wait_for(lambda s: s["state"] == "running", what="paid again in the red")
    assert card(st)["last"]["result"] == "paid 300"
    end_cycle(sim)
    lift(sim)
    st = tap(sim, UID4)  # at -4.00: -7.00 would be past the limit
    assert card(st)["last"]["reason"] == "overdraft limit -5.00" and st["relay_pulses"] == 2
    assert st["display"] == "Balance -4.00\nquick costs 3.00"
    recs = [r for r in journal(sim, tmp_path) if r["type"] in ("card_debit", "card_refused")]
    assert [(r["type"], r["balance_before"], r["balance_after"]) for r in recs] == [
        ("card_debit", 200, -100), ("card_debit", -100, -400), ("card_refused", -400, 0)]
