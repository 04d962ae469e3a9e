"""Card risk control on the simulated board, offline: repeated failed payments from one card
lock that card out (the first failures are refused as such, the N-th locks), and a card
paying too often within the window is refused; every decision is journaled. The firmware
runs under the real micropython with the simulated MFRC522."""


import pytest
from card_helpers import UID4, UID7, image, issued_blocks, issued_image
from test_card_device import card, card_key, end_cycle, journal, lift, saw, tap

pytestmark = pytest.mark.device

DEVICE = "sim-0001"
RISK = {"fail_limit": 3, "fail_window_ms": 600000, "card_lockout_ms": 600000,
        "velocity": 2, "velocity_window_ms": 600000}


@pytest.fixture
def sim(sim_with_config):
    return sim_with_config({"device_id": DEVICE, "card": {"repeat_ms": 0}, "risk": RISK})


def forged(sim, uid):
    """A card whose balances were rewritten without the key: neither copy's MAC verifies."""
    blocks = issued_blocks(uid, 1000, card_key=card_key(sim))
    for b in (5, 6):
        blocks[16 * b : 16 * b + 4] = (99999).to_bytes(4, "big")
    return image(uid, blocks)


def test_the_nth_failed_payment_locks_the_card_out(sim, tmp_path):
    bad = forged(sim, UID4)
    for _ in range(2):  # the first and second failure: refused, not locked
        st = tap(sim, bad)
        assert saw(st, "Card invalid", "start") and card(st)["locked"] == []
        lift(sim)
    st = tap(sim, bad)  # the third: locked out
    assert saw(st, "Card locked\ntry later")
    assert card(st)["locked"] == [UID4.hex()]
    lift(sim)
    # now even a good card with that UID is refused, without being read
    st = tap(sim, issued_image(UID4, 1000, card_key=card_key(sim)))
    assert saw(st, "Card locked\ntry later") and st["relay_pulses"] == 0
    lift(sim)
    # another card is not affected
    tap(sim, issued_image(UID7, 1000, card_key=card_key(sim)))
    st = sim.wait_for(lambda s: s["state"] == "running", what="another card paying")
    assert st["relay_pulses"] == 1
    recs = [(r["type"], r["reason"], r["source"]) for r in journal(sim, tmp_path)
            if r["type"] in ("card_fraud", "card_refused")]
    u = UID4.hex()
    assert recs == [("card_fraud", "MAC failure", u)] * 3 + [
        ("card_refused", "lockout: 3 fails in 600s", u), ("card_refused", "locked out", u)]


def test_a_card_paying_too_often_is_refused(sim, tmp_path):
    img = issued_image(UID7, 2000, card_key=card_key(sim))
    for n in (1, 2):  # the limit is 2 payments in the window
        tap(sim, img)
        sim.wait_for(lambda s, n=n: s["state"] == "running" and card(s)["counts"]["paid"] == n,
                     what=f"payment {n}")
        end_cycle(sim)
        img = {"uid": img["uid"], "blocks": sim.call("card", action="dump")["image"]["blocks"]}
        lift(sim)
    st = tap(sim, img)
    assert saw(st, "Too many uses\ntry later")
    assert card(st)["counts"]["paid"] == 2 and st["relay_pulses"] == 2
    refused = [(r["reason"], r["source"]) for r in journal(sim, tmp_path)
               if r["type"] == "card_refused"]
    assert refused == [("velocity: 2 in 600s", UID7.hex())]
