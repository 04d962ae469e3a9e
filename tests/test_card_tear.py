"""A card taken away at every step of a debit, under MicroPython (tests/card_harness.py runs
the firmware's driver, CardPayment, VendEngine and Journal against the simulated chip): the
outcome is always consistent with the journal, the card is never charged twice and no vend
starts unpaid. Then hypothesis throws random sequences of tears, timeouts and power cuts."""

import pytest
from card_helpers import (
    CARD_KEY,
    PRICE,
    UID4,
    UID7,
    card_wallet,
    check_accounting,
    issued_image,
    run_harness,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.device

OPENING = 1000
MODES = ("old", "new", "mixed")
# exchanges of one paid tap: REQA, anticollision + SELECT per cascade level, AUTH, 3 READs,
# WRITE command, WRITE data, read-back, HLTA
EXCHANGES = {UID4: 11, UID7: 13}


def _exhaustive(uid):
    img = issued_image(uid, OPENING)
    scenarios = []
    for k in [*range(EXCHANGES[uid] + 1), None]:
        for mode in MODES:
            for between in ([], [["expire"]], [["reboot"]]):
                events = [["tap", k, mode], *between, ["tap", None, None], ["start"]]
                scenarios.append({"image": img, "events": events, "k": k, "mode": mode,
                                  "between": between[0][0] if between else None})
    return scenarios


@pytest.mark.parametrize("uid", [UID4, UID7], ids=["uid4", "uid7"])
def test_card_removed_at_every_step_of_a_debit(tmp_path, uid):
    scenarios = _exhaustive(uid)
    results = run_harness(tmp_path, scenarios)
    kinds = set()
    for sc, r in zip(scenarios, results, strict=True):
        where = f"removed after {sc['k']} exchanges ({sc['mode']}), then {sc['between']}"
        charged = check_accounting(r, uid, OPENING)
        # the customer meant one wash: exactly one charge and one vend, whatever happened
        assert charged == PRICE, where
        assert r["starts"] == 1 and r["credit"] == 0, where
        assert not r["waiting"] and r["pending"] == 0, where
        types = [rec[0] for rec in r["journal"]]
        assert types.count("vend_running") == 1, (where, types)
        kinds.update(t for t in types if t.startswith("card_"))
        w = card_wallet(r, uid)
        # one debit: counter 0 -> 1, and a torn copy was always written over again
        assert w.counter == 1 and all(c is not None for c in w.copies), where
        if sc["k"] is None and sc["between"] is None:
            assert r["exchanges"] == EXCHANGES[uid], "a paid tap's RF exchanges changed"
    # the tear points reached every way a torn payment resolves
    assert {"card_debit", "card_cancel", "card_unresolved", "card_settled"} <= kinds


def test_a_torn_payment_waits_for_its_card(tmp_path):
    img = issued_image(UID4, OPENING)
    # torn in the WRITE's data frame, old data kept: the machine waits, nothing starts
    torn = [["tap", 8, "old"]]
    r1, r2 = run_harness(tmp_path, [
        {"image": img, "events": torn},
        {"image": img, "events": [*torn, ["expire"]]},
    ])
    assert r1["waiting"] and r1["state"] == "starting" and r1["starts"] == 0
    assert r1["display"] == ["Tap card again", "to finish paying"]
    assert r1["journal"][-1][0] == "card_debit"
    # the payment in flight is state, not code: the tap's code is gone while it waits
    assert not r1["tap_code_loaded"] and not r2["tap_code_loaded"]
    # the wait runs out: no vend, the payment is kept for the card's next tap
    assert not r2["waiting"] and r2["state"] == "idle" and r2["pending"] == 1
    assert [rec[0] for rec in r2["journal"]][-2:] == ["card_debit", "card_unresolved"]
    assert r2["starts"] == 0 and r2["credit"] == 0
    # while it waits, another card is not taken; the right one finishes the payment
    other = issued_image(UID7, OPENING)
    (r3,) = run_harness(tmp_path, [{"image": img, "events": [*torn, ["other", other]]}])
    assert r3["waiting"] and r3["display"] == ["Tap the card", "you paid with"]
    assert r3["other_blocks"] == [other["blocks"][b] for b in (4, 5, 6)]
    assert r3["journal"][-1][0] == "card_debit" and r3["starts"] == 0


def test_the_same_card_again_is_not_charged_twice(tmp_path):
    img = issued_image(UID4, OPENING)
    (r,) = run_harness(tmp_path, [{"image": img, "events": [
        ["tap", None, None], ["tap", None, None], ["finish"], ["tap", None, None]]}])
    # paid once; tapped again while running and right after the cycle: no second charge
    assert check_accounting(r, UID4, OPENING) == PRICE
    assert r["starts"] == 1 and r["counts"]["paid"] == 1
    assert not r["tap_code_loaded"]  # loaded for each tap, dropped after (washpay.use)


def test_charged_again_once_the_repeat_window_is_over(tmp_path):
    img = issued_image(UID4, OPENING)
    (r,) = run_harness(tmp_path, [{"image": img, "config": {"card": {"repeat_ms": 0}},
                                   "events": [["tap", None, None], ["finish"],
                                              ["tap", None, None]]}])
    assert check_accounting(r, UID4, OPENING) == 2 * PRICE
    assert r["starts"] == 2


def test_blacklisted_card_is_refused_and_journaled(tmp_path):
    img = issued_image(UID4, OPENING)
    march_1 = 1772323200  # 2026-03-01 00:00 UTC
    (r,) = run_harness(tmp_path, [{"image": img, "events": [
        ["blacklist", UID4.hex(), 1, march_1], ["tap", None, None]]}])
    assert r["starts"] == 0 and card_wallet(r, UID4).balance == OPENING
    assert r["display"] == ["Card blocked", "lost 2026-03-01"]
    rec = r["journal"][-1]
    assert rec[0] == "card_refused" and rec[6] == "blacklist: lost"
    assert rec[9] == UID4.hex()


def test_low_balance_is_shown_and_nothing_is_written(tmp_path):
    img = issued_image(UID4, PRICE - 1)
    (r,) = run_harness(tmp_path, [{"image": img, "events": [["tap", None, None]] * 3}])
    assert r["display"] == ["Low balance 2.49", "quick costs 2.50"]
    assert r["starts"] == 0 and card_wallet(r, UID4).balance == PRICE - 1
    # nothing written to the card; one card_refused however often it is tapped (per
    # fail window): balance before, the price
    assert [rec[:7] for rec in r["journal"]] == [
        ["boot", 0, 0, 0, 0, 0, "power on"],
        ["card_refused", PRICE, PRICE, 0, PRICE - 1, 0, "low balance"]]


def test_low_balance_after_paying_is_shown(tmp_path):
    img = issued_image(UID4, PRICE + 100)  # 1.00 left: under the 5.00 warning level
    (r,) = run_harness(tmp_path, [{"image": img, "events": [["tap", None, None]]}])
    assert r["starts"] == 1
    assert r["display"] == ["Low balance", "left 1.00"]


# ---- hypothesis: random tear points, repeated tears, timeouts and power cuts
_step = st.one_of(
    st.tuples(st.just("tap"), st.integers(0, 14), st.sampled_from(MODES)).map(list),
    st.just(["expire"]),
    st.just(["reboot"]),
)
_scenario = st.tuples(st.sampled_from([UID4, UID7]), st.lists(_step, max_size=6))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(batch=st.lists(_scenario, min_size=8, max_size=8))
def test_random_tears_keep_the_money_right(tmp_path_factory, batch):
    images = {UID4: issued_image(UID4, OPENING), UID7: issued_image(UID7, OPENING)}
    scenarios = [{"image": images[uid],
                  "events": [*steps, ["tap", None, None], ["start"], ["tap", None, None]]}
                 for uid, steps in batch]
    results = run_harness(tmp_path_factory.mktemp("tears"), scenarios)
    for (uid, steps), r in zip(batch, results, strict=True):
        charged = check_accounting(r, uid, OPENING)
        # however often the card was torn away, the customer paid once for one wash
        assert charged == PRICE, steps
        assert r["starts"] == 1 and r["credit"] == 0, steps
        assert not r["waiting"] and r["pending"] == 0, steps


def test_torn_payment_then_paid_elsewhere_is_not_taken_for_ours(tmp_path):
    """Torn here (nothing landed), timed out, then the card paid at another machine with the
    same counter: the copy there is not ours (other writer tag), so this machine gives no
    credit for it and takes a new payment for its own vend."""
    from host_tools import wallet as W

    img = issued_image(UID4, OPENING)
    # the other machine: counter 0 -> 1 into block 6, the same price, its own tag 0x77
    theirs = W.copy(CARD_KEY, UID4, 6, W.header(CARD_KEY), OPENING - PRICE, 1, 0x77)
    (r,) = run_harness(tmp_path, [{"image": img, "events": [
        ["tap", 8, "old"], ["expire"], ["elsewhere", 6, theirs.hex()],
        ["tap", None, None]]}])
    types = [rec[0] for rec in r["journal"]]
    assert types[-4:] == ["card_unresolved", "card_settled", "card_debit", "vend_running"]
    assert r["journal"][-3][1] == 0  # settled: our payment had not landed, no credit
    assert r["starts"] == 1 and r["credit"] == 0
    # one payment there, one here; this board's journal accounts for its own
    assert card_wallet(r, UID4).balance == OPENING - 2 * PRICE
    assert r["journal"][-2][1] == PRICE


# ---- coins already in, then a card (issue 12, item 1): the card pays only the rest
COIN = 100


def test_a_card_pays_only_what_the_credit_does_not_cover(tmp_path):
    img = issued_image(UID4, OPENING)
    (r,) = run_harness(tmp_path, [{"image": img, "events": [["coin", COIN],
                                                            ["tap", None, None]]}])
    assert check_accounting(r, UID4, OPENING, coins=COIN) == PRICE - COIN
    assert r["starts"] == 1 and r["credit"] == 0
    # card part + credit part on the display, then the card's balance
    assert r["display"] == ["Paid 1.50+1.00", "balance 8.50"]
    debit = [rec for rec in r["journal"] if rec[0] == "card_debit"]
    # amount: what the card paid; price: the vend; credit after: what the coins left
    assert [rec[:6] + [rec[8]] for rec in debit] == [
        ["card_debit", PRICE - COIN, PRICE, 1, OPENING, OPENING - PRICE + COIN, 0]]


def test_credit_and_card_at_every_tear_point(tmp_path):
    """The card torn away at every exchange of the debit (and the wait expiring, or the
    power cut before the card is back), with 1.00 of coins already in: the card is charged
    1.50 once, the coins once, one wash; the credit is back whenever the vend is not on."""
    img = issued_image(UID4, OPENING)
    scenarios = []
    for k in [*range(EXCHANGES[UID4] + 1), None]:
        for mode in MODES:
            for between in ([], [["expire"]], [["reboot"]]):
                events = [["coin", COIN], ["tap", k, mode], *between, ["tap", None, None],
                          ["start"]]
                scenarios.append({"image": img, "events": events, "k": k, "mode": mode,
                                  "between": between[0][0] if between else None})
    results = run_harness(tmp_path, scenarios)
    for sc, r in zip(scenarios, results, strict=True):
        where = f"removed after {sc['k']} exchanges ({sc['mode']}), then {sc['between']}"
        charged = check_accounting(r, UID4, OPENING, coins=COIN)
        assert charged == PRICE - COIN, where
        assert r["starts"] == 1 and r["credit"] == 0, where
        assert not r["waiting"] and r["pending"] == 0, where
        # whenever a card payment did not go through, the coins are credit again at once
        for rec in r["journal"]:
            if rec[0] in ("card_cancel", "card_unresolved"):
                assert rec[8] == COIN and rec[1] == PRICE - COIN and rec[2] == PRICE, where


def test_a_power_cut_after_the_card_write_loses_nothing(tmp_path):
    """The copy landed on the card, its read-back was cut off, and the power went before
    the card came back (after the card write, before any vend record): at boot the coins
    are credit again, the card's next tap turns its 1.50 into credit, START runs the wash."""
    img = issued_image(UID4, OPENING)
    (r,) = run_harness(tmp_path, [{"image": img, "events": [
        ["coin", COIN], ["tap", 9, "old"], ["reboot"]]}])
    assert r["starts"] == 0 and r["credit"] == COIN and r["pending"] == 1
    assert card_wallet(r, UID4).balance == OPENING - PRICE + COIN  # it did land
    (r,) = run_harness(tmp_path, [{"image": img, "events": [
        ["coin", COIN], ["tap", 9, "old"], ["reboot"], ["tap", None, None], ["start"]]}])
    types = [rec[0] for rec in r["journal"]]
    assert types[-5:] == ["card_unresolved", "boot", "card_settled", "vend_start",
                          "vend_running"], types
    settled = r["journal"][-3]
    assert settled[1] == PRICE - COIN and settled[8] == PRICE  # 1.50 + the 1.00 back
    assert check_accounting(r, UID4, OPENING, coins=COIN) == PRICE - COIN
    assert r["starts"] == 1 and r["credit"] == 0


# ---- overdraft (issue 12, item 22): a card in the red pays on within its tier's limit
def test_a_card_below_zero_pays_again_within_its_overdraft(tmp_path):
    img = issued_image(UID4, 200, tier="trusted")
    cfg = {"card": {"repeat_ms": 0}, "pricing": {"tiers": {"trusted": {"overdraft": 300}}}}
    tap = ["tap", None, None]
    (r,) = run_harness(tmp_path, [{"image": img, "config": cfg, "events": [
        tap, ["finish"], tap, ["finish"], tap]}])
    # 2.00 -> -0.50 -> -3.00 (exactly the limit); the third would end at -5.50: refused
    assert r["starts"] == 2 and card_wallet(r, UID4).balance == 200 - 2 * PRICE
    debits = [rec[4:6] for rec in r["journal"] if rec[0] == "card_debit"]
    assert debits == [[200, -50], [-50, -300]]
    refused = [rec for rec in r["journal"] if rec[0] == "card_refused"]
    assert [(rec[6], rec[4]) for rec in refused] == [("overdraft limit -3.00", -300)]
    assert r["display"] == ["Balance -3.00", "quick costs 2.50"]


def test_credit_covering_the_cards_discounted_price_charges_the_card_nothing(tmp_path):
    """2.00 of coins, a staff card (-50 %: 1.25): the credit covers the card's price but not
    the coin price (2.50). The cycle starts at the card's price from the credit alone; the
    card_debit says the card paid 0 and the credit kept the change."""
    img = issued_image(UID4, OPENING, tier="staff")
    cfg = {"pricing": {"tiers": {"staff": {"percent": -50}}}}
    (r,) = run_harness(tmp_path, [{"image": img, "config": cfg, "events": [
        ["coin", 200], ["tap", None, None]]}])
    assert r["starts"] == 1 and r["credit"] == 75
    assert card_wallet(r, UID4).balance == OPENING
    debit = [rec for rec in r["journal"] if rec[0] == "card_debit"]
    assert [[rec[1], rec[2], rec[8]] for rec in debit] == [[0, 125, 75]]


def test_a_card_short_of_its_part_is_refused_and_the_credit_stays(tmp_path):
    img = issued_image(UID4, 100)
    (r,) = run_harness(tmp_path, [{"image": img, "events": [["coin", COIN],
                                                            ["tap", None, None]]}])
    # 1.00 on the card does not pay the 1.50 the credit leaves: refused, nothing written
    assert r["starts"] == 0 and r["credit"] == COIN and card_wallet(r, UID4).balance == 100
    assert r["display"] == ["Low balance 1.00", "quick +1.50"]
    refused = [rec for rec in r["journal"] if rec[0] == "card_refused"]
    assert [rec[1:3] + [rec[6]] for rec in refused] == [[PRICE - COIN, PRICE, "low balance"]]
