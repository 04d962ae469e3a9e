"""Credit scores pushed back as card tiers, end to end: the whole firmware under micropython
on the simulated board, the real broker, the real server on SQLite, the operator's
commands as processes. A card whose laundry is left in the machine loses score; `washpay
server cards` shows it; `server command tiers --from-scores` puts the policy's tier on the
board's override list (docs/sync.md action 8, docs/blacklist-format.md); the list survives
a power cut and the card's next payments follow the tier (docs/pricing.md, "Credit score
and tiers"). Malformed tiers commands are refused and change nothing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from card_helpers import UID4, issued_image
from sync_env import SITE_KEY, command_rig, online, sync_of
from test_card_device import card, card_key, lift, tap
from test_sync_prices import flash_file, signed

from host_tools import card as HC
from host_tools.server import commands as C

pytestmark = pytest.mark.device

ROOT = Path(__file__).resolve().parent.parent
DEVICE = "sim-0001"
QUIET = lambda *a: None  # noqa: E731
POLICY = {"window_days": 90, "tiers": [{"below": 70, "tier": "late"},
                                       {"below": 90, "tier": "watch"}]}
# the board's price table: "late" cards may buy the quick program only
PRICING = {"version": 1, "tiers": {"late": {"programs": ["quick"]},
                                   "watch": {"min_balance": 1000}}}


def uploaded(sim):
    return sim.wait_for(lambda s: sync_of(s).get("acked") == s["journal"]["last_seq"],
                        timeout=30, what="the journal uploaded")


def tiers_of(st):
    return st["firmware"]["tiers"]


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiers")
    policy = tmp / "policy.json"
    policy.write_text(json.dumps(POLICY))
    # laundry not collected 0.3 s after the cycle: the door stays closed here
    cfg = {"card": {"repeat_ms": 0}, "collect_ms": 300, "pricing": PRICING}
    with command_rig(tmp, cfg) as r:
        yield {"sim": r["sim"], "server": r["server"], "db": r["db"], "policy": policy,
               "broker": r["broker"], "key": r["state"] / "site.key"}


def washpay(*args):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def tiers_command(rig, *words):
    """`washpay server command tiers ...` as the operator runs it: its reply lines."""
    r = washpay("server", "command", "tiers", *words, "--device", DEVICE, "--site-key",
                rig["key"], "--broker", rig["broker"], "--db", rig["db"])
    assert r.returncode == 0, (r.stdout, r.stderr)
    return [json.loads(line) for line in r.stdout.splitlines()]


def pay(sim, program):
    """The card on the reader pays `program`; the cycle runs to its end; the door stays
    closed, so the laundry is not collected."""
    sim.select_program(program)
    st = tap(sim, UID4)
    assert card(st)["last"]["result"].startswith("paid"), card(st)["last"]
    sim.wait_for(lambda s: s["state"] == "running", what="the cycle running")
    sim.call("washer", state="idle")
    sim.wait_for(lambda s: s["state"] == "idle", what="the cycle's end")
    sim.call("washer", state="auto")
    lift(sim)
    return sim.wait_for(lambda s: s["firmware"]["laundry"] == "not collected", timeout=20,
                        what="laundry not collected")


def refused(sim, program):
    sim.select_program(program)
    st = tap(sim, UID4)
    lift(sim)
    return st


def test_laundry_left_lowers_the_score_and_the_tier_follows_the_card(rig):
    sim, server = rig["sim"], rig["server"]
    st = sim.status()
    assert tiers_of(st) == {"count": 0, "generation": 0, "error": None}
    tap(sim, issued_image(UID4, 5000, card_key=card_key(sim)))
    sim.wait_for(lambda s: s["state"] == "running", what="the first cycle paid")
    sim.call("washer", state="idle")
    sim.wait_for(lambda s: s["firmware"]["laundry"] == "not collected", timeout=20,
                 what="laundry not collected")
    sim.call("washer", state="auto")
    lift(sim)
    pay(sim, "standard")  # the second cycle left in the machine
    uploaded(sim)

    # the server: two cycles, both left in the machine: 100 - 2 x 20
    r = washpay("server", "cards", "--db", rig["db"], "--policy", rig["policy"], "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["cards"]
    assert rows == [{"uid": UID4.hex(), "cycles": 2, "not_collected": 2, "score": 60,
                     "tier": "late"}]
    r = washpay("server", "cards", "--db", rig["db"], "--policy", rig["policy"])
    assert [UID4.hex(), "2", "2", "60", "late"] in [ln.split() for ln in r.stdout.splitlines()]

    # pushed to the board: the policy's tier for the card
    (res,) = tiers_command(rig, "--from-scores", "--policy", rig["policy"])
    assert (res["result"], res["reason"], res["tiers"], res["generation"]) == (
        "done", "tiers +1 -0", 1, 1), res
    st = sim.status()
    assert tiers_of(st) == {"count": 1, "generation": 1, "error": None}
    assert HC.parse_tier_list(flash_file(sim, "/tiers.bin")) == (1, [(UID4, "late")])

    # the card's next payment follows its tier: "late" buys the quick program only
    st = refused(sim, "standard")
    assert card(st)["last"]["result"] == "tier late: not standard"
    assert st["display"].startswith("Not for card") and st["state"] == "idle"

    # through a power cut: the list is on flash
    sim.call("power", state="cut")
    sim.call("power", state="on")
    st = sim.wait_ready(timeout=30)
    assert tiers_of(st) == {"count": 1, "generation": 1, "error": None}
    online(sim)
    st = refused(sim, "standard")
    assert card(st)["last"]["result"] == "tier late: not standard"
    assert card(st)["counts"]["paid"] == 0
    pay(sim, "quick")  # what its tier allows

    # a tier the board's price table does not have: no tier rules, as in a card header
    (res,) = tiers_command(rig, f"{UID4.hex()}=nosuch")
    assert (res["reason"], res["tiers"], res["generation"]) == ("tiers +1 -0", 1, 2)
    pay(sim, "standard")
    # cleared by hand: the header's tier (none) applies again
    (res,) = tiers_command(rig, f"{UID4.hex()}=-")
    assert (res["reason"], res["tiers"], res["generation"]) == ("tiers +0 -1", 0, 3)
    assert HC.parse_tier_list(flash_file(sim, "/tiers.bin")) == (3, [])
    pay(sim, "standard")

    # the server has it all: the refusals against the card, the commands done
    uploaded(sim)
    rows = server.store.query(
        "SELECT type, source, reason FROM records WHERE device = ? AND type IN "
        "('card_refused', 'command_done', 'card_debit') ORDER BY seq", (DEVICE,))
    assert [r if t != "card_debit" else t for t, _, r in rows] == [
        "card_debit", "card_debit", "tiers +1 -0",
        "tier late: not standard", "tier late: not standard", "card_debit",
        "tiers +1 -0", "card_debit", "tiers +0 -1", "card_debit",
    ]
    assert {s for t, s, _ in rows if t != "command_done"} == {UID4.hex()}
    # five cycles, all left in the machine: the score goes on falling
    r = washpay("server", "cards", "--db", rig["db"], "--policy", rig["policy"], "--json")
    assert json.loads(r.stdout)["cards"][0] == {"uid": UID4.hex(), "cycles": 5,
                                                "not_collected": 5, "score": 0,
                                                "tier": "late"}


def test_malformed_tiers_commands_are_refused_and_change_nothing(rig):
    sim, server = rig["sim"], rig["server"]
    online(sim)
    res = send(server, C.build(SITE_KEY, DEVICE, "tiers", tiers={"0a0b0c0d": "watch"})[0])
    assert res["result"] == "done"
    before = flash_file(sim, "/tiers.bin")
    listed = tiers_of(sim.status())
    uid = bytes.fromhex("04a1b2c3")
    one = b"\x01\x04" + uid
    cases = [
        (b"", "malformed body"),
        (b"\x00", "malformed body"),  # no card
        (b"\x01", "malformed body"),  # a count, no card
        (one, "malformed body"),  # no tier length
        (one + b"\x05late", "malformed body"),  # the tier cut short
        (one + b"\x04latex", "malformed body"),  # a byte left over
        (b"\x02\x04" + uid + b"\x04late", "malformed body"),  # one card of two
        (b"\x01\x00\x04late", "malformed body"),  # a UID of no bytes
        (b"\x01\x0b" + bytes(11) + b"\x04late", "a UID has 1 to 10 bytes"),
        (one + b"\x09latelater", "a tier name has 1 to 8 bytes"),
        (one + b"\x04la e", "a tier name is printable ASCII"),
        (one + b"\x04l\xe4te", "a tier name is printable ASCII"),
        (b"\x02\x04" + uid + b"\x04late\x04" + uid + b"\x00", "card 04a1b2c3 twice"),
    ]
    for body, reason in cases:
        res = send(server, signed(body, action=C.TIERS))
        assert (res["result"], res["reason"]) == ("refused", reason), body
        st = sim.status()
        assert st["journal"]["last_type"] == "command_refused"
        assert tiers_of(st) == listed
        assert flash_file(sim, "/tiers.bin") == before
        assert flash_file(sim, "/tiers.bin.new") is None
    # the blacklist is still its own list, with its own command
    res = send(server, C.build(SITE_KEY, DEVICE, "blacklist-add",
                               cards=[("0a0b0c0d", "lost", 1_780_000_000)])[0])
    assert res["result"] == "done" and res["blacklist"] == 1
    assert HC.parse_blacklist(flash_file(sim, "/blacklist.bin"))[1] == [
        (bytes.fromhex("0a0b0c0d"), 1, 1_780_000_000)]
    assert flash_file(sim, "/tiers.bin") == before


def send(server, payload):
    cid = payload[1:9]
    mark = server.send_command(DEVICE, cid.hex(), "tiers", payload)
    res = server.result_for(cid.hex(), after=mark, timeout=15)
    assert res is not None, "no reply within 15 s"
    return res


def test_a_change_too_long_for_one_command_goes_in_several(rig):
    sim = rig["sim"]
    online(sim)
    before = tiers_of(sim.status())
    many = [f"04{i:012x}" for i in range(100)]  # 7-byte UIDs, "watch": 14 bytes each
    replies = tiers_command(rig, *(f"{u}=watch" for u in many))
    assert [(r["result"], r["reason"]) for r in replies] == [
        ("done", "tiers +69 -0"), ("done", "tiers +31 -0")]
    assert replies[-1]["tiers"] == before["count"] + 100
    assert replies[-1]["generation"] == before["generation"] + 2
    _, entries = HC.parse_tier_list(flash_file(sim, "/tiers.bin"))
    assert {u.hex() for u, t in entries if t == "watch"} >= set(many)
    # from the scores: the policy's tiers, and a clear for each card the server gave an
    # override the policy does not give (the 100 above): one command holds them all
    r = washpay("server", "cards", "--db", rig["db"], "--policy", rig["policy"], "--json")
    tiered = [c["uid"] for c in json.loads(r.stdout)["cards"] if c["tier"]]
    (res,) = tiers_command(rig, "--from-scores", "--policy", rig["policy"])
    assert (res["result"], res["reason"]) == ("done", f"tiers +{len(tiered)} -100")
    _, entries = HC.parse_tier_list(flash_file(sim, "/tiers.bin"))
    assert not {u.hex() for u, _ in entries} & set(many)
    assert {u.hex() for u, _ in entries} >= set(tiered)
