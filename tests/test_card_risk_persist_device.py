"""Card risk control across resets, and refusals for the balance, on the simulated board
under the real micropython: the counters that lock a card out or cap its payments are
rebuilt at boot from the journal's newest records (payments/card.py restore_risk, reading
them back with Journal.recent), so a power cut does not free a locked card, forget failures
or payments; and a card refused by its tier's minimum balance or overdraft limit is
journaled as card_refused, never as a failed payment."""

import json
import time

import pytest
from card_helpers import UID4, UID7, image, issued_blocks, issued_image
from conftest import ROOT, SIM, run_micropython
from test_card_device import card, card_key, end_cycle, journal, lift, saw, tap

from host_tools.sim.client import SimBoard

pytestmark = pytest.mark.device

DEVICE = "sim-0001"
TESTS = ROOT / "tests"
LONG = 600000  # a window no test outlives
# a rebuilt age is rounded down to whole seconds less one: a window can end up to 2 s late
LATE_S = 2.5


def board(tmp_path, risk, pricing=None):
    st_dir = tmp_path / "st"
    (st_dir / "provision").mkdir(parents=True)
    cfg = {"device_id": DEVICE, "card": {"repeat_ms": 0}, "risk": risk}
    if pricing:
        cfg["pricing"] = pricing
    (st_dir / "provision" / "config.json").write_text(json.dumps(cfg))
    b = SimBoard(st_dir, log=tmp_path / "sim.log")
    b.start()
    try:
        b.wait_ready()
    except BaseException:
        b.stop()
        raise
    return b


def forged(sim, uid):
    """Neither copy's MAC verifies: a failed payment each tap."""
    blocks = issued_blocks(uid, 1000, card_key=card_key(sim))
    for b in (5, 6):
        blocks[16 * b : 16 * b + 4] = (99999).to_bytes(4, "big")
    return image(uid, blocks)


def power_cycle(sim):
    """A power cut and the board back: RAM is gone, the flash stays."""
    sim.call("power", state="cut")
    sim.call("power", state="on")
    return sim.wait_ready()


def pay(sim, img, n):
    """Tap `img` and wait for the n-th payment of this boot; end the cycle; -> the card as
    it is now (its new copy)."""
    tap(sim, img)
    sim.wait_for(lambda s: s["state"] == "running" and card(s)["counts"]["paid"] == n,
                 what=f"payment {n}")
    end_cycle(sim)
    out = {"uid": img["uid"], "blocks": sim.call("card", action="dump")["image"]["blocks"]}
    lift(sim)
    return out


def since_boot(recs):
    """The records after the newest boot record (a journal pull resets the board after it
    has copied the journal: the pull's own boot is not in it)."""
    boots = [i for i, r in enumerate(recs) if r["type"] == "boot"]
    return recs[boots[-1] + 1 :]


# ---- the journal's reverse reader, under micropython without the board
RECENT = """
import journal_workload as w
from washpay.journal import records as R
from washpay.journal.recent import recent

img = w.blank_image()
w.mount(img)
j = w.Journal(w.ROOT, w.KEYS, capacity=400, warn=100, reserve=62)
def back(limit):
    return [[d["seq"], d["amount"]] for d in recent(j, limit)]
out = {"empty": back(10), "checked": []}
for n in range(1, 100):
    j.append(R.COIN, amount=n, credit=n, state=R.CREDIT)
    if n in (1, 30, 31, 32, 61, 62, 63, 99):
        fwd = [[d["seq"], d["amount"]] for d in j.records()]
        fwd.reverse()
        out["checked"].append([n, back(62) == fwd[:62], back(n + 5) == fwd, back(3) == fwd[:3]])
w.unmount()
w.mount(img)  # a reboot: a new Journal finds its way back the same
j = w.Journal(w.ROOT, w.KEYS, capacity=400, warn=100, reserve=62)
out["after_boot"] = back(4)
j.ack(70)  # the segments of 1..62 are deleted: the reader stops at the oldest stored
out["oldest_after_ack"] = back(1000)[-1][0]
path = j._stage_fmt % ((j.last_seq - 1) % 31 - 1)  # the record before the newest, in the stage
with open(path, "rb") as f:
    rec = bytearray(f.read())
rec[40] ^= 1  # flash corruption in its body
with open(path, "wb") as f:
    f.write(rec)
out["damaged"] = [s for s, _ in back(4)]
g = recent(j, 40)
for d in g:
    if d["seq"] < 70:
        break
g.close()  # stopping early: the segment file it had open is closed
out["after_close"] = back(3)  # the damaged one counts toward the limit
w.emit(out)
"""


def test_journal_reads_its_newest_records_back_verified():
    out = run_micropython(RECENT, heap="8m", extra_path=[SIM, TESTS])[1]
    (res,) = [json.loads(line[3:]) for line in out.splitlines() if line.startswith("@@ ")]
    assert res["empty"] == []
    # newest first, the same records as the forward reader, across the stage and segments
    assert res["checked"] == [[n, True, True, True] for n in (1, 30, 31, 32, 61, 62, 63, 99)]
    assert res["after_boot"] == [[99, 99], [98, 98], [97, 97], [96, 96]]
    assert res["oldest_after_ack"] == 63
    assert res["damaged"] == [99, 97, 96]  # 98 does not verify: skipped, the rest still do
    assert res["after_close"] == [[99, 99], [97, 97]]


# ---- restore_risk's rules for the clock and for what counts, on a journal written here
RESTORE = """
import time
import journal_workload as w
from washpay.journal import records as R
from washpay.payments.card import CardPayment

A, B, C, D = b"\\x04AAA", b"\\x04BBB", b"\\x04CCC", b"\\x04DDD"
img = w.blank_image()
w.mount(img)
j = w.Journal(w.ROOT, w.KEYS, capacity=400, warn=100, reserve=62)
now = int(time.time())
def put(rtype, uid, t, reason="", counter=0, clock=None):
    j.clock_trusted = clock
    j.append(rtype, source=uid, t=t, reason=reason, card_counter=counter)
    j.clock_trusted = None
put(R.CARD_FRAUD, A, now - 1000, "MAC failure")  # never read
put(R.CARD_FRAUD, B, now - 500, "MAC failure")  # past every window: the scan stops here
put(R.CARD_DEBIT, B, now - 100, counter=3)  # in the 120 s velocity window
put(R.CARD_FRAUD, A, now - 90, "MAC failure")  # past the 60 s fail window, scan goes on
put(R.CARD_FRAUD, A, 5, "MAC failure", clock=False)  # clock unset: as recent as the next
put(R.CARD_FRAUD, A, now - 10, "key B refused")
put(R.CARD_FRAUD, A, now - 5, "MAC failure (one copy)")  # the card paid: no failure
put(R.CARD_REFUSED, A, now - 3, "low balance")
put(R.CARD_FRAUD, C, now + 3600, "foreign site 01020304")  # the clock went back since: now
put(R.CARD_DEBIT, D, now - 2, counter=4)
put(R.CARD_UNRESOLVED, D, now - 2, counter=4)  # not a payment
put(R.CARD_REFUSED, C, now - 1, "lockout: 5 fails in 60s")  # clears C's failure before it


class Engine:
    cfg = {"risk": {"fail_limit": 5, "fail_window_ms": 60000, "card_lockout_ms": 30000,
                    "velocity": 5, "velocity_window_ms": 120000}}
    unconfirmed = {}


cfg = {"poll_ms": 150, "repeat_ms": 0, "retap_ms": 30000, "low_balance": 500}
def restore(clock):
    pay = CardPayment(None, None, Engine(), j, None, cfg, w.MOUNT + "/p", w.MOUNT + "/s")
    found = pay.restore_risk(clock)
    t = time.ticks_ms()
    def ages(table):
        return {k.decode()[1:]: [time.ticks_diff(t, x) for x in v] for k, v in table.items()}
    return {"found": found, "fails": ages(pay._fails), "pays": ages(pay._pays),
            "shorts": ages(pay._shorts),
            "locked": {k.decode()[1:]: time.ticks_diff(v, t) for k, v in pay._locked.items()}}
# the clock now; and the clock of a board that lost power and starts again at 2000-01-01
out = [restore(None), restore(946684800 + 30)]
# then, on that unset clock (not set since), two more failures of A
put(R.CARD_FRAUD, A, 946684800 + 10, "MAC failure", clock=False)
put(R.CARD_FRAUD, A, 946684800 + 20, "MAC failure", clock=False)
out.append(restore(946684800 + 30))
w.emit(out)
"""


def near(got, want):  # ms; a record's age is whole seconds less one, then read back
    return all(w - 1500 <= g <= w + 100 for g, w in zip(got, want, strict=True))


def test_restore_rules_for_the_clock_and_what_counts():
    out = run_micropython(RESTORE, heap="8m", extra_path=[SIM, TESTS])[1]
    ((res, unset, later),) = [json.loads(line[3:]) for line in out.splitlines()
                              if line.startswith("@@ ")]
    found = res["found"]
    # the newest 10, then the first past every window; the one before it is never read
    assert found["records"] == 11 and (found["fails"], found["pays"], found["locked"]) == (
        2, 1, 1)
    # A: the unset-clock failure counts as recent as the one after it; "one copy" does not
    assert set(res["fails"]) == {"AAA"} and near(res["fails"]["AAA"], [9000, 9000])
    assert set(res["pays"]) == {"BBB"} and near(res["pays"]["BBB"], [99000])
    assert set(res["shorts"]) == {"AAA"} and near(res["shorts"]["AAA"], [2000])
    # C's lockout runs 30 s from its record; its failure "in the future" came before it
    assert set(res["locked"]) == {"CCC"} and 28500 <= res["locked"]["CCC"] <= 30100
    # the clock back in 2000: ages count from the newest record (the board was on at least
    # until then), the time it was off as none: everything 1 s younger, nothing forgotten
    assert unset["found"] == found | {"ms": unset["found"]["ms"]}
    assert near(unset["fails"]["AAA"], [8000, 8000]) and near(unset["pays"]["BBB"], [98000])
    assert near(unset["shorts"]["AAA"], [1000]) and 29500 <= unset["locked"]["CCC"] <= 30100
    # records of the same unset clock compare with it by their own times; the set-clock
    # records before them are "in the future" of that clock: all now, and the scan goes
    # on to the oldest (A's failures stop at fail_limit, 5)
    assert later["found"]["records"] == 14 and later["found"]["fails"] == 6
    assert near(sorted(later["fails"]["AAA"]), [0, 0, 0, 9000, 19000])
    assert near(later["fails"]["BBB"], [0]) and 29500 <= later["locked"]["CCC"] <= 30100


# ---- lockout and failures across a power cut
LOCKOUT_MS = 12000
LOCK_RISK = {"fail_limit": 3, "fail_window_ms": LONG, "card_lockout_ms": LOCKOUT_MS}


@pytest.fixture
def lock_sim(tmp_path):
    b = board(tmp_path, LOCK_RISK)
    try:
        yield b
    finally:
        b.stop()


def test_a_locked_card_stays_locked_through_a_power_cut(lock_sim, tmp_path):
    sim = lock_sim
    bad = forged(sim, UID4)
    for _ in range(3):
        st = tap(sim, bad)
        lift(sim)
    assert saw(st, "Card locked\ntry later") and card(st)["locked"] == [UID4.hex()]
    locked_at = time.monotonic()
    st = power_cycle(sim)
    # rebuilt from the journal: three failures, then the lockout that cleared them
    assert card(st)["restored"]["locked"] == 1 and card(st)["locked"] == [UID4.hex()]
    good = issued_image(UID4, 1000, card_key=card_key(sim))
    st = tap(sim, good)
    assert saw(st, "Card locked\ntry later") and st["relay_pulses"] == 0
    lift(sim)
    recs = journal(sim, tmp_path)
    u = UID4.hex()
    assert [(r["type"], r["reason"], r["source"]) for r in since_boot(recs)] == [
        ("card_refused", "locked out", u)]
    assert not [r for r in recs if r["type"] == "card_debit"]
    # once the lockout is over (counted from the lockout record, not from the reset), it pays
    time.sleep(max(0.0, LOCKOUT_MS / 1000 + LATE_S - (time.monotonic() - locked_at)))
    sim.wait_ready()
    tap(sim, good)
    st = sim.wait_for(lambda s: s["state"] == "running", what="paying after the lockout")
    assert st["relay_pulses"] == 1 and card(st)["locked"] == []


def test_failures_before_a_reset_count_after_it(lock_sim, tmp_path):
    sim = lock_sim
    bad = forged(sim, UID4)
    for _ in range(2):  # fail_limit - 1 before the reset
        st = tap(sim, bad)
        assert saw(st, "Card invalid", "start")
        lift(sim)
    st = power_cycle(sim)
    assert card(st)["restored"]["fails"] == 2 and card(st)["locked"] == []
    st = tap(sim, bad)  # the fail_limit-th, after the reset: locked out
    assert saw(st, "Card locked\ntry later") and card(st)["locked"] == [UID4.hex()]
    lift(sim)
    # another card's single failure after the reset does not lock it
    st = tap(sim, forged(sim, UID7))
    assert saw(st, "Card invalid", "start")
    lift(sim)
    mine = [(r["type"], r["reason"]) for r in since_boot(journal(sim, tmp_path))
            if r["source"] == UID4.hex()]
    assert mine == [("card_fraud", "MAC failure"), ("card_refused", "lockout: 3 fails in 600s")]


def test_a_lockout_record_clears_the_failures_before_it(lock_sim, tmp_path):
    # lock, wait out the lockout, reset: the three failures before the lockout do not
    # count again, so one more failure does not lock the card
    sim = lock_sim
    bad = forged(sim, UID4)
    for _ in range(3):
        tap(sim, bad)
        lift(sim)
    time.sleep(LOCKOUT_MS / 1000 + LATE_S)
    st = power_cycle(sim)
    assert card(st)["locked"] == [] and card(st)["restored"]["fails"] == 0
    st = tap(sim, bad)
    assert saw(st, "Card invalid", "start") and card(st)["locked"] == []


# ---- velocity across a power cut
VELOCITY_MS = 20000


def test_payments_before_a_reset_count_toward_the_velocity_limit(tmp_path):
    sim = board(tmp_path, {"velocity": 2, "velocity_window_ms": VELOCITY_MS})
    try:
        img = issued_image(UID7, 5000, card_key=card_key(sim))
        first = time.monotonic()
        img = pay(sim, img, 1)
        img = pay(sim, img, 2)
        st = power_cycle(sim)
        assert card(st)["restored"]["pays"] == 2
        st = tap(sim, img)
        assert saw(st, "Too many uses\ntry later") and st["relay_pulses"] == 2
        lift(sim)
        # once the first payment is out of the window (its card_debit's wall time, read
        # back at boot), the card pays again
        time.sleep(max(0.0, VELOCITY_MS / 1000 + LATE_S - (time.monotonic() - first)))
        sim.wait_ready()
        tap(sim, img)
        st = sim.wait_for(lambda s: s["state"] == "running", what="paying after the window")
        assert st["relay_pulses"] == 3
        refused = [(r["reason"], r["source"]) for r in journal(sim, tmp_path)
                   if r["type"] == "card_refused"]
        assert refused == [("velocity: 2 in 20s", UID7.hex())]
    finally:
        sim.stop()


def test_a_cancelled_payment_is_not_counted_after_a_reset(tmp_path):
    # a payment whose write never reached the card (card_cancel) was never a payment
    sim = board(tmp_path, {"velocity": 1, "velocity_window_ms": LONG})
    try:
        img = issued_image(UID4, 1000, card_key=card_key(sim))
        tap(sim, img, remove_after=7)  # gone before the WRITE: committed, then cancelled
        st = sim.wait_for(lambda s: card(s)["counts"]["cancelled"] == 1, what="the cancel")
        assert st["relay_pulses"] == 0  # and the card is gone already
        st = power_cycle(sim)
        assert card(st)["restored"]["pays"] == 0
        tap(sim, img)
        st = sim.wait_for(lambda s: s["state"] == "running", what="the payment")
        types = [r["type"] for r in journal(sim, tmp_path) if r["type"].startswith("card")]
        assert types == ["card_debit", "card_cancel", "card_debit"]
    finally:
        sim.stop()


# ---- the balance: tier rules journaled, never a failed payment
PRICING = {"tiers": {"trusted": {"overdraft": 100}, "saver": {"min_balance": 500}}}
BAL_RISK = {"fail_limit": 3, "fail_window_ms": LONG, "card_lockout_ms": LONG}


@pytest.fixture
def bal_sim(tmp_path):
    b = board(tmp_path, BAL_RISK, PRICING)
    try:
        yield b
    finally:
        b.stop()


def refusals(sim, tmp_path):
    return [(r["reason"], r["source"], r["balance_before"], r["price"], r["amount"],
             r["program"]) for r in journal(sim, tmp_path) if r["type"] == "card_refused"]


def test_overdraft_limit_pays_exactly_and_refuses_one_unit_past(bal_sim, tmp_path):
    sim = bal_sim
    # quick costs 2.50; trusted may go down to -1.00: 1.50 pays, 1.49 does not
    st = tap(sim, issued_image(UID4, 149, "trusted", card_key=card_key(sim)))
    assert card(st)["last"]["result"] == "low balance" and st["relay_pulses"] == 0
    assert saw(st, "Low balance 1.49\nquick costs 2.50")
    lift(sim)
    tap(sim, issued_image(UID7, 150, "trusted", card_key=card_key(sim)))
    st = sim.wait_for(lambda s: s["state"] == "running", what="paid to the limit")
    recs = journal(sim, tmp_path)
    (debit,) = [r for r in recs if r["type"] == "card_debit"]
    assert (debit["balance_before"], debit["balance_after"]) == (150, -100)
    assert [(r["reason"], r["source"], r["balance_before"], r["price"], r["amount"])
            for r in recs if r["type"] == "card_refused"] == [
        ("overdraft limit -1.00", UID4.hex(), 149, 250, 250)]


def test_minimum_balance_refusal_is_journaled(bal_sim, tmp_path):
    sim = bal_sim
    st = tap(sim, issued_image(UID4, 499, "saver", card_key=card_key(sim)))
    assert saw(st, "Low balance 4.99\nmin 5.00 to pay") and st["relay_pulses"] == 0
    assert card(st)["last"]["reason"] == "min balance 5.00"
    lift(sim)
    tap(sim, issued_image(UID7, 500, "saver", card_key=card_key(sim)))
    sim.wait_for(lambda s: s["state"] == "running", what="paid at the minimum")
    assert refusals(sim, tmp_path) == [("min balance 5.00", UID4.hex(), 499, 250, 250, "quick")]


def test_balance_refusals_never_lock_a_card_and_are_journaled_once(bal_sim, tmp_path):
    sim = bal_sim
    over = issued_image(UID4, 100, "trusted", card_key=card_key(sim))
    empty = issued_image(UID7, 200, card_key=card_key(sim))  # no tier: simply short
    for _ in range(BAL_RISK["fail_limit"] + 2):
        for img, line in ((over, "Low balance 1.00"), (empty, "Low balance 2.00")):
            st = tap(sim, img)
            assert saw(st, line, "start") and card(st)["locked"] == []
            lift(sim)
    assert card(st)["counts"]["refused"] == 2 * (BAL_RISK["fail_limit"] + 2)
    # one record per card per fail window, and that quiet time survives a reset too
    st = power_cycle(sim)
    for img in (over, empty):
        st = tap(sim, img)
        assert saw(st, "Low balance", "start") and card(st)["locked"] == []
        lift(sim)
    assert refusals(sim, tmp_path) == [
        ("overdraft limit -1.00", UID4.hex(), 100, 250, 250, "quick"),
        ("low balance", UID7.hex(), 200, 250, 250, "quick")]
    # and a card refused for its balance still pays once topped up
    tap(sim, issued_image(UID7, 250, card_key=card_key(sim)))
    sim.wait_for(lambda s: s["state"] == "running", what="paid")
