"""Card payments on the simulated board: the firmware under the real micropython with the
simulated MFRC522, cards held to it through the control channel (`washpay sim ctl card`),
and `washpay card` writing cards through the board's own reader over mpremote."""

import json
import subprocess
import sys

import pytest
from card_helpers import UID4, UID7, image, issued_blocks, issued_image
from conftest import ROOT

from host_tools import card as C
from host_tools import journal as J
from host_tools import keys as K
from host_tools import wallet as W
from host_tools.sim.client import SimBoard

pytestmark = pytest.mark.device

DEVICE = "sim-0001"
# record types newer than the host decoder's table show as "typeN": their names (docs)
CARD_TYPES = {"type13": "card_topup", "type14": "card_refused", "type15": "card_fraud",
              "type16": "card_cancel", "type17": "card_unresolved", "type18": "card_settled"}


def board_with(tmp_path, card_cfg):
    """A simulated board whose factory config.json has this "card" section."""
    st_dir = tmp_path / "st"
    (st_dir / "provision").mkdir(parents=True)
    (st_dir / "provision" / "config.json").write_text(
        json.dumps({"device_id": DEVICE, "card": card_cfg}))
    return SimBoard(st_dir, log=tmp_path / "sim.log")


@pytest.fixture
def sim(tmp_path):
    # repeat_ms 0: these tests tap the same card again at once, and mean it
    board = board_with(tmp_path, {"repeat_ms": 0})
    board.start()
    try:
        board.wait_ready()
        yield board
    finally:
        board.stop()


def site_key(sim):
    return K.load_site_key(sim.state / "site.key")


def card_key(sim):
    return W.site_card_key(site_key(sim))


def card(st):
    return st["firmware"]["card"]


def tap(sim, what, **kw):
    """Hold a card (UID or image) to the reader and wait until the firmware handled it.

    Not before the reader has looked at its field since the board started (its start-up
    look and one poll after it): a card already there at that look is one left on the
    reader through a reset, which the firmware quiets instead of charging. Right after boot
    the status can answer before the card task has run; on a loaded host the tap could
    then land first."""
    st = sim.wait_for(lambda s: card(s)["exchanges"] >= 2, what="the card reader to poll")
    before = card(st)["counts"]["taps"]
    n0 = st["shown_n"]
    req = {"image": what} if isinstance(what, dict) else {"uid": what.hex()}
    sim.call("card", action="tap", **req, **kw)
    st = sim.wait_for(lambda s: card(s)["counts"]["taps"] > before, what="the tap")
    return since(st, n0)


def since(st, n0):
    """`st` with "seen": the screens shown since the display's count was n0, the current
    one last. What a notice said (3 s on the glass) is read from there: a loaded host may
    look after it is gone."""
    new = st["shown_n"] - n0
    st["seen"] = st["shown"][-new:] if new > 0 else st["shown"][-1:]
    return st


def saw(st, text, how="=="):
    """Whether a screen in st["seen"] (see since) is `text` ("=="), starts with it
    ("start") or holds it ("in")."""
    test = {"==": str.__eq__, "start": str.startswith, "in": lambda s, t: t in s}[how]
    return any(test(s, text) for s in st["seen"])


def lift(sim):
    sim.call("card", action="remove")


def dump(sim, uid=None):
    """The card on the reader, or (by UID) the card as the simulator keeps it."""
    req = {"uid": uid.hex()} if uid else {}
    return sim.call("card", action="dump", **req)["image"]


def end_cycle(sim):
    """The washer finishes its cycle now (the simulated machine runs 4 s otherwise)."""
    sim.call("washer", state="idle")
    sim.wait_for(lambda s: s["state"] == "idle", what="the cycle to end")
    sim.call("washer", state="auto")


def wallet_of(sim, img):
    blocks = bytes.fromhex("".join(img["blocks"]))
    return W.read_wallet(card_key(sim), bytes.fromhex(img["uid"]),
                         {b: blocks[16 * b : 16 * b + 16] for b in (4, 5, 6)})


def washpay(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          stdin=subprocess.DEVNULL)


def journal(sim, tmp_path):
    """The board's journal, pulled with mpremote and verified by the host's decoder."""
    out = tmp_path / f"pull{len(list(tmp_path.glob('pull*')))}"
    J.pull(sim.status()["console"], out)
    report = J.verify(J.load_inputs([out / "journal"]), J.Keys(site_key(sim), DEVICE))
    assert report.ok, [p.message for p in report.problems]
    sim.wait_ready()
    recs = []
    for r in report.records:
        f = dict(r.fields)
        f["type"] = CARD_TYPES.get(f["type"], f["type"])
        recs.append(f)
    return recs


def test_issue_top_up_and_pay_with_the_card_tool(sim, tmp_path):
    port = sim.status()["console"]
    key_file = sim.state / "site.key"
    st = tap(sim, UID4)
    assert saw(st, "Card not issued", "start")
    r = washpay("card", "issue", "--port", port, "--site-key", key_file, "--balance", 1000,
                "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"uid": UID4.hex(), "tier": "", "flags": 0,
                                    "site": W.site_id(card_key(sim)).hex(), "balance": 1000,
                                    "counter": 0, "copies": ["valid", "valid"],
                                    "currency": "EUR", "decimals": 2}  # balance: minor units
    r = washpay("card", "topup", 500, "--port", port, "--site-key", key_file, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["balance"] == 1500
    r = washpay("card", "read", "--port", port, "--site-key", key_file)
    assert r.returncode == 0 and "balance: 15.00 EUR" in r.stdout and "counter: 1" in r.stdout
    # the tool restarted the firmware with the card still on the reader: that is no tap
    st = sim.wait_ready()
    assert card(st)["counts"]["paid"] == 0 and st["relay_pulses"] == 0
    lift(sim)
    st = tap(sim, UID4)
    st = sim.wait_for(lambda s: "balance 12.50" in s["display"], what="paid, balance shown")
    assert st["state"] == "running" and st["relay_pulses"] == 1
    assert card(st)["timings"]["exchanges"] == 11 and card(st)["timings"]["card_to_relay_us"] > 0
    w = wallet_of(sim, dump(sim))
    assert (w.balance, w.counter) == (1250, 2)
    recs = [r for r in journal(sim, tmp_path) if r["type"] != "boot"]
    issued, topped, debit = (r for r in recs if r["type"] in ("card_topup", "card_debit"))
    assert (issued["amount"], issued["reason"], issued["card_counter"]) == (1000, "card issued",
                                                                             0)
    assert (topped["amount"], topped["balance_before"], topped["balance_after"],
            topped["card_counter"]) == (500, 1000, 1500, 1)
    # every card record names its source as a card (docs/journal-format.md, source kind)
    assert {r["source_kind"] for r in (issued, topped, debit)} == {"card"}
    assert (debit["amount"], debit["balance_before"], debit["balance_after"],
            debit["card_counter"], debit["source"]) == (250, 1500, 1250, 2, UID4.hex())
    assert recs[-1]["type"] == "vend_running"


def test_seven_byte_uid_card_is_issued_and_pays(sim):
    link = C.BoardLink(sim.status()["console"])
    sim.call("card", action="tap", uid=UID7.hex())
    doc = C.issue(link, card_key(sim), balance=800, tier="student", wait_s=5)
    assert (doc["uid"], doc["balance"], doc["tier"]) == (UID7.hex(), 800, "student")
    link.finish()
    sim.wait_ready()
    lift(sim)
    tap(sim, UID7)
    st = sim.wait_for(lambda s: s["state"] == "running", what="running")
    assert card(st)["timings"]["exchanges"] == 13  # a second cascade level: 2 more frames
    assert wallet_of(sim, dump(sim)).balance == 550


def test_edited_balance_is_refused_and_signalled(sim, tmp_path):
    img = issued_image(UID4, 1000, card_key=card_key(sim))
    tap(sim, img)
    sim.wait_for(lambda s: s["state"] == "running", what="the first payment")
    end_cycle(sim)
    lift(sim)
    paid = dump(sim, UID4)
    # someone with the keys rewrites the current copy's balance (the MAC cannot follow)
    blocks = bytearray(bytes.fromhex("".join(paid["blocks"])))
    cur = wallet_of(sim, paid).current.block
    blocks[16 * cur : 16 * cur + 4] = (99999).to_bytes(4, "big")
    edited = image(UID4, blocks)
    st = tap(sim, edited)
    assert saw(st, "Card refused", "start")
    assert dump(sim)["blocks"] == edited["blocks"]  # nothing written to it
    lift(sim)
    # both copies edited: nothing on the card verifies
    other = 11 - cur
    blocks[16 * other : 16 * other + 4] = (99999).to_bytes(4, "big")
    st = tap(sim, image(UID4, blocks))
    assert saw(st, "Card invalid", "start") and st["relay_pulses"] == 1
    frauds = [r["reason"] for r in journal(sim, tmp_path) if r["type"] == "card_fraud"]
    assert frauds == ["MAC failure (one copy)", "counter rollback 0<1", "MAC failure"]


def test_restored_older_dump_is_detected(sim, tmp_path):
    img = issued_image(UID4, 1000, card_key=card_key(sim))
    tap(sim, img)
    sim.wait_for(lambda s: s["state"] == "running", what="the payment")
    end_cycle(sim)
    old = img  # the dump taken before paying, restored onto the card
    lift(sim)
    st = tap(sim, old)
    assert saw(st, "Card refused", "start") and st["relay_pulses"] == 1
    # the board remembers the counter through a power cut
    sim.call("power", state="cut")
    sim.call("power", state="on")
    sim.wait_ready()
    lift(sim)
    st = tap(sim, old)
    assert saw(st, "Card refused", "start") and st["relay_pulses"] == 1
    frauds = [r for r in journal(sim, tmp_path) if r["type"] == "card_fraud"]
    assert [r["reason"] for r in frauds] == ["counter rollback 0<1"] * 2
    assert frauds[0]["source"] == UID4.hex() and frauds[0]["card_counter"] == 0


def test_blacklisted_card_is_refused(sim, tmp_path):
    port = sim.status()["console"]
    r = washpay("card", "blacklist", "--port", port, "--add", UID4.hex(), "--reason", "lost",
                "--since", "2026-03-01")
    assert r.returncode == 0, r.stderr
    assert f"{UID4.hex()}  lost     2026-03-01" in r.stdout
    sim.wait_ready()
    img = issued_image(UID4, 1000, card_key=card_key(sim))
    st = tap(sim, img)
    assert saw(st, "Card blocked\nlost 2026-03-01")
    assert st["relay_pulses"] == 0 and dump(sim)["blocks"] == img["blocks"]
    assert st["journal"]["last_type"] in ("card_refused", "type14")
    lift(sim)
    r = washpay("card", "blacklist", "--port", port, "--remove", UID4.hex(), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["entries"] == []
    sim.wait_ready()
    tap(sim, UID4)
    sim.wait_for(lambda s: s["state"] == "running", what="paying once unblocked")
    refused = [r for r in journal(sim, tmp_path) if r["type"] == "card_refused"]
    assert [(r["reason"], r["source"]) for r in refused] == [("blacklist: lost",
                                                               UID4.hex())]


def test_torn_payment_resolves_on_the_next_tap_and_across_a_power_cut(sim, tmp_path):
    img = issued_image(UID4, 1000, card_key=card_key(sim))
    # torn in the WRITE's data frame (exchange 9 of the tap), the old data kept
    tap(sim, img, remove_after=8, torn="old")
    st = sim.wait_for(lambda s: card(s)["waiting"] == UID4.hex(), what="waiting for the card")
    assert st["display"] == "Tap card again\nto finish paying" and st["state"] == "starting"
    assert st["relay_pulses"] == 0
    tap(sim, UID4)  # the same card comes back: the copy is written again, then the start
    st = sim.wait_for(lambda s: s["state"] == "running", what="running")
    assert wallet_of(sim, dump(sim)).balance == 750 and st["relay_pulses"] == 1
    end_cycle(sim)
    lift(sim)
    # torn at the read-back (the copy landed), then the power goes before the card is back
    tap(sim, UID4, remove_after=9, torn="old")
    sim.wait_for(lambda s: card(s)["waiting"] == UID4.hex(), what="waiting again")
    sim.call("power", state="cut")
    sim.call("power", state="on")
    st = sim.wait_ready()
    assert st["state"] == "idle" and st["credit"] == 0 and card(st)["pending"] == 1
    st = tap(sim, UID4)  # the card's next tap settles it: it had paid, the price is credit
    assert st["credit"] == 250 and saw(st, "Paid earlier", "start")
    assert wallet_of(sim, dump(sim)).balance == 500
    sim.call("button", name="start")
    st = sim.wait_for(lambda s: s["state"] == "running", what="the vend paid by card")
    assert st["relay_pulses"] == 2 and st["credit"] == 0
    types = [r["type"] for r in journal(sim, tmp_path) if r["type"].startswith(("card", "vend"))]
    assert types == ["card_debit", "vend_running", "vend_done", "card_debit",
                     "card_unresolved", "card_settled", "vend_start", "vend_running"]


def test_cards_the_board_does_not_take(sim, tmp_path):
    foreign = issued_image(UID4, 1000, card_key=W.site_card_key(b"\x07" * 32))
    st = tap(sim, foreign)
    assert saw(st, "Card of another\nsite: not taken")
    lift(sim)
    st = tap(sim, issued_image(UID7, 100, card_key=card_key(sim)))
    assert saw(st, "Low balance 1.00\nquick costs 2.50")
    lift(sim)
    locked = bytearray(issued_blocks(bytes.fromhex("0a0b0c0d"), 0))
    locked[16 * 7 : 16 * 7 + 6] = b"\x11" * 6  # key A nobody knows, key B readable
    st = tap(sim, image(bytes.fromhex("0a0b0c0d"), locked))
    assert saw(st, "Card unknown", "start")
    lift(sim)
    tap(sim, bytes.fromhex("0a0b0c0e"))  # a card on the reader (handled, then halted),
    st = sim.firmware_status()
    before, n0 = card(st)["counts"]["taps"], st["shown_n"]
    sim.call("card", action="tap", uid=UID7.hex(), second=True)  # then two together
    st = since(sim.wait_for(lambda s: card(s)["counts"]["taps"] > before, what="the tap"), n0)
    assert saw(st, "One card only\nplease")
    assert st["relay_pulses"] == 0
    frauds = [r["reason"] for r in journal(sim, tmp_path) if r["type"] == "card_fraud"]
    assert frauds == ["foreign site " + W.site_id(W.site_card_key(b"\x07" * 32)).hex()]


def test_sim_ctl_card_commands(sim, tmp_path):
    state = sim.state
    r = washpay("sim", "ctl", "--state", state, "card", "tap", "0102")
    assert r.returncode == 2 and "4 or 7 bytes in hex" in r.stderr
    r = washpay("sim", "ctl", "--state", state, "card", "dump")
    assert r.returncode == 2 and "no card is on the reader" in r.stderr
    r = washpay("sim", "ctl", "--state", state, "card", "tap", "04a1b2c3")
    assert r.returncode == 0, r.stderr
    r = washpay("sim", "ctl", "--state", state, "card", "dump")
    saved = tmp_path / "card.json"
    saved.write_text(r.stdout)
    assert json.loads(r.stdout)["image"]["uid"] == "04a1b2c3"
    r = washpay("sim", "ctl", "--state", state, "card", "remove")
    assert r.returncode == 0
    r = washpay("sim", "ctl", "--state", state, "card", "remove")
    assert r.returncode == 2 and "no card is on the reader" in r.stderr
    r = washpay("sim", "ctl", "--state", state, "card", "tap", saved, "--remove-after", "3")
    assert r.returncode == 0, r.stderr
    r = washpay("sim", "ctl", "--state", state, "card", "tap", "04a1b2c3", "--torn", "sideways")
    assert r.returncode == 2 and "--torn takes old, new, mixed" in r.stderr
    # the board off: cards are objects, they can still be held to the reader and read
    sim.call("power", state="cut")
    r = washpay("sim", "ctl", "--state", state, "card", "tap", "04a1b2c3")
    assert r.returncode == 0 and json.loads(r.stdout)["board"] == "off"
    r = washpay("sim", "ctl", "--state", state, "card", "dump")
    assert r.returncode == 0 and json.loads(r.stdout)["image"]["uid"] == "04a1b2c3"
    r = washpay("sim", "ctl", "--state", state, "card", "tap", "0a0b0c0d")
    assert r.returncode == 2 and "the board is off" in r.stderr


def test_the_same_card_again_is_not_charged_twice(tmp_path):
    with board_with(tmp_path, {"repeat_ms": 600000}) as sim:
        sim.wait_ready()
        img = issued_image(UID4, 1000, card_key=card_key(sim))
        sim.call("washer", state="busy")  # the machine confirms at once
        tap(sim, img)
        sim.wait_for(lambda s: s["state"] == "running", what="the payment")
        sim.call("washer", state="idle")
        sim.wait_for(lambda s: s["state"] == "idle", what="the cycle to end")
        lift(sim)
        st = tap(sim, UID4)  # again, soon after: not a second payment
        assert card(st)["counts"]["paid"] == 1 and st["relay_pulses"] == 1
        assert st["state"] == "idle" and wallet_of(sim, dump(sim)).balance == 750


def test_coins_then_a_card_the_card_pays_only_the_rest(sim, tmp_path):
    """Issue 12, item 1: 1.00 of coins in, then a card: the card pays 1.50, not 2.50."""
    sim.insert_coin(100)
    st = tap(sim, issued_image(UID4, 1000, card_key=card_key(sim)))
    st = sim.wait_for(lambda s: s["state"] == "running", what="the vend paid by both")
    assert st["credit"] == 0 and st["relay_pulses"] == 1
    assert wallet_of(sim, dump(sim)).balance == 850
    assert card(st)["last"]["result"] == "paid 150"
    debit = [r for r in journal(sim, tmp_path) if r["type"] == "card_debit"]
    # amount: the card's part; price: the vend; credit after: what the coins left
    assert [(r["amount"], r["price"], r["credit"], r["balance_before"], r["balance_after"])
            for r in debit] == [(150, 250, 0, 1000, 850)]


def test_coins_then_a_card_then_a_power_cut_after_the_card_write(sim, tmp_path):
    """The card's new copy landed, the power went before any vend record: at boot the coins
    are credit again; the card's next tap gives its 1.50 as credit; START runs the wash.
    Nothing lost, nobody charged twice."""
    sim.insert_coin(100)
    img = issued_image(UID4, 1000, card_key=card_key(sim))
    tap(sim, img, remove_after=9, torn="old")  # the copy is written, its read-back cut off
    sim.wait_for(lambda s: card(s)["waiting"] == UID4.hex(), what="waiting for the card")
    sim.call("power", state="cut")
    sim.call("power", state="on")
    st = sim.wait_ready()
    assert st["state"] == "credit" and st["credit"] == 100 and card(st)["pending"] == 1
    assert st["relay_pulses"] == 0
    st = tap(sim, UID4)
    assert st["credit"] == 250 and st["display"].startswith("Paid earlier")
    assert wallet_of(sim, dump(sim)).balance == 850
    sim.call("button", name="start")
    st = sim.wait_for(lambda s: s["state"] == "running", what="the vend")
    assert st["relay_pulses"] == 1 and st["credit"] == 0
    recs = [r for r in journal(sim, tmp_path) if r["type"] not in ("boot",)]
    assert [(r["type"], r["amount"], r["credit"]) for r in recs] == [
        ("coin", 100, 100), ("card_debit", 150, 0), ("card_unresolved", 150, 100),
        ("card_settled", 150, 250), ("vend_start", 250, 0), ("vend_running", 0, 0)]
