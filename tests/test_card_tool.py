"""`washpay card` through a simulated board's reader: refusals that say what to do and change
nothing, and a top-up whose write the card left in the middle of, resolved while the
operator holds the card again (host_tools/card.py over mpremote, the board's own RF code)."""

import json
import subprocess
import sys

import pytest
from card_helpers import UID4, UID7, issued_image
from conftest import ROOT
from token_env import journal_records

from host_tools import card as C
from host_tools import journal as J
from host_tools import keys as K
from host_tools import wallet as W
from host_tools.sim.client import SimBoard

pytestmark = pytest.mark.device


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cardtool")
    st_dir = tmp / "st"
    (st_dir / "provision").mkdir(parents=True)
    (st_dir / "provision" / "config.json").write_text(json.dumps({"device_id": "sim-0001"}))
    board = SimBoard(st_dir, log=tmp / "sim.log")
    board.start()
    try:
        board.wait_ready()
        # the machine's door stays open: the firmware takes no payment with the cards held
        # to the reader before the tool stops it (the simulator keeps the door through resets)
        board.call("door", state="open")
        yield board
    finally:
        board.stop()


@pytest.fixture
def link(sim):
    sim.wait_ready()
    lk = C.BoardLink(sim.status()["console"])
    yield lk
    lk.finish()


def key(sim):
    return W.site_card_key(K.load_site_key(sim.state / "site.key"))


def put(sim, what):
    if isinstance(what, dict):
        sim.call("card", action="tap", image=what)
    else:
        sim.call("card", action="tap", uid=what.hex())


def stored(sim, uid):
    img = sim.call("card", action="dump", uid=uid.hex())["image"]
    b = bytes.fromhex("".join(img["blocks"]))
    return W.read_wallet(key(sim), uid, {i: b[16 * i : 16 * i + 16] for i in (4, 5, 6)})


def washpay(*args):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          stdin=subprocess.DEVNULL)


def test_no_card_on_the_reader(sim):
    if sim.call("card", action="status")["card"]:
        sim.call("card", action="remove")
    r = washpay("card", "read", "--port", sim.wait_ready()["console"], "--site-key",
                sim.state / "site.key", "--wait", 1)
    assert r.returncode == 2
    assert "no card on the reader within 1 s: put the card on the reader" in r.stderr
    sim.wait_ready()


def test_refusals_change_nothing(sim, link):
    ck = key(sim)
    blank = bytes.fromhex("0b0c0d0e")
    put(sim, blank)
    with pytest.raises(C.CardToolError, match="is blank \\(not issued\\): washpay card issue"):
        C.read(link, ck, wait_s=2)
    with pytest.raises(C.CardToolError, match="is blank"):
        C.topup(link, ck, 500, wait_s=2)
    with pytest.raises(C.CardToolError, match="positive number"):
        C.topup(link, ck, 0, wait_s=2)
    with pytest.raises(W.WalletError, match="longer than 8"):
        C.issue(link, ck, 100, tier="undergraduate", wait_s=2)
    assert sim.call("card", action="dump")["image"]["blocks"][7] == \
        "ffffffffffffff078069ffffffffffff"  # still blank
    put(sim, issued_image(UID7, 300, card_key=ck))
    with pytest.raises(C.CardToolError, match="already issued \\(balance 300\\): use washpay"):
        C.issue(link, ck, 1000, wait_s=2)
    put(sim, issued_image(UID4, 300, card_key=W.site_card_key(b"\x01" * 32)))
    with pytest.raises(C.CardToolError, match="belongs to another site .* check --site-key"):
        C.topup(link, ck, 500, wait_s=2)
    assert stored(sim, UID7).balance == 300


def test_missing_site_key_and_bad_uid(sim, tmp_path):
    port = sim.wait_ready()["console"]
    r = washpay("card", "read", "--port", port, "--site-key", tmp_path / "nokey")
    assert r.returncode == 2 and "no site key at" in r.stderr and "washpay site init" in r.stderr
    r = washpay("card", "blacklist", "--port", port, "--add", "zz")
    assert r.returncode == 2 and "'zz' is not a UID in hex" in r.stderr
    r = washpay("card", "blacklist", "--port", port, "--add", "0102", "--json")
    assert r.returncode == 2 and "4, 7 or 10 bytes" in r.stderr
    r = washpay("card", "blacklist", "--port", port, "--json")  # nothing was added
    assert r.returncode == 0 and json.loads(r.stdout)["entries"] == []
    sim.wait_ready()


@pytest.mark.parametrize("mode", ["old", "new", "mixed"])
def test_torn_top_up_is_finished_with_the_card_back(sim, link, mode):
    ck = key(sim)
    uid = bytes.fromhex("04a0a0a" + "abcdef"[["old", "new", "mixed"].index(mode)])
    put(sim, issued_image(uid, 1000, card_key=ck))
    sim.call("card", action="remove", during_write="data", torn=mode)
    asked = []

    def operator(msg):  # the tool asks for the card: the operator holds it there again
        asked.append(msg)
        put(sim, uid)

    doc = C.topup(link, ck, 500, wait_s=5, say=operator)
    assert asked and "put it back" in asked[0]
    assert doc["balance"] == 1500 and doc["counter"] == 1  # added once, however it tore
    w = stored(sim, uid)
    assert (w.balance, w.counter) == (1500, 1)


def test_top_up_torn_before_the_data_adds_nothing(sim, link):
    ck = key(sim)
    uid = bytes.fromhex("04b0b0b0")
    put(sim, issued_image(uid, 1000, card_key=ck))
    sim.call("card", action="remove", during_write="command")
    with pytest.raises(C.CardToolError, match="left before the write: nothing was added"):
        C.topup(link, ck, 500, wait_s=2)
    assert stored(sim, uid).balance == 1000


def test_top_up_torn_and_never_back_is_journaled_unresolved(sim, link, tmp_path):
    ck = key(sim)
    uid = bytes.fromhex("04c0c0c0")
    put(sim, issued_image(uid, 1000, card_key=ck))
    sim.call("card", action="remove", during_write="data", torn="new")
    with pytest.raises(C.CardToolError, match="journaled but not confirmed on the card"):
        C.topup(link, ck, 500, wait_s=1, say=lambda msg: None)
    out = tmp_path / "pulled"
    J.pull(sim.status()["console"], out, reset=False)
    report = J.verify(J.load_inputs([out / "journal"]),
                      J.Keys(K.load_site_key(sim.state / "site.key"), "sim-0001"))
    recs = [r.fields for r in report.records if r.fields["source"] == uid.hex()]
    names = {"type13": "card_topup", "type17": "card_unresolved"}  # for an older decoder
    assert [names.get(r["type"], r["type"]) for r in recs] == ["card_topup", "card_unresolved"]
    assert [(r["amount"], r["card_counter"]) for r in recs] == [(500, 1), (500, 1)]
    # the card did take it ("new"): the next read shows it, the server settles the record
    put(sim, uid)
    assert C.read(link, ck, wait_s=2)["balance"] == 1500


def test_issue_torn_before_the_trailer_leaves_a_blank_card(sim, link):
    ck = key(sim)
    uid = bytes.fromhex("04d0d0d0")
    put(sim, uid)
    # the card leaves while block 5 (the second write) is being written
    sim.call("card", action="remove", during_write="data", after_writes=1, torn="mixed")
    with pytest.raises(C.CardToolError, match="not issued \\(still blank\\); run the issue"):
        C.issue(link, ck, 1000, wait_s=2)
    put(sim, uid)
    assert C.issue(link, ck, 1000, wait_s=2)["balance"] == 1000  # and again: it works


@pytest.mark.parametrize("mode,outcome", [
    ("new", "issued"), ("old", "blank"), ("mixed", "unusable")])
def test_issue_torn_in_the_trailer_write(sim, link, mode, outcome):
    ck = key(sim)
    uid = bytes.fromhex("04e0e0e" + "123"[["new", "old", "mixed"].index(mode)])
    put(sim, uid)
    # writes: header, copy, copy, trailer: the card leaves during the trailer's data
    sim.call("card", action="remove", during_write="data", after_writes=3, torn=mode)

    def operator(msg):
        put(sim, uid)

    if outcome == "issued":
        doc = C.issue(link, ck, 700, wait_s=3, say=operator)
        assert (doc["balance"], doc["counter"]) == (700, 0)
        return
    match = {"blank": "was not issued \\(still blank\\); run the issue again",
             "unusable": "unusable after the interrupted issue"}[outcome]
    with pytest.raises(C.CardToolError, match=match):
        C.issue(link, ck, 700, wait_s=3, say=operator)
    if outcome == "blank":
        assert C.issue(link, ck, 700, wait_s=3)["balance"] == 700


def test_another_sites_key_is_refused_before_anything_is_written(sim, tmp_path):
    """Issue 12, item 2: `card issue` / `card topup` with a site key that is not the board's
    stop with one line and exit 2; the card is untouched and nothing is journaled. The board
    checks the key (the site id it makes) itself: its card key never leaves it."""
    other = tmp_path / "other.key"
    other.write_text((b"\x05" * 32).hex() + "\n")
    other.chmod(0o600)
    st = sim.wait_ready()
    port, seen = st["console"], st["journal"]["last_seq"]
    blank = bytes.fromhex("0c0d0e0f")
    put(sim, blank)
    before = sim.call("card", action="dump")["image"]["blocks"]
    r = washpay("card", "issue", "--port", port, "--site-key", other, "--balance", 1000)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "the site key is not this board's" in lines[0]
    assert "check --site-key" in lines[0] and "Traceback" not in r.stderr
    assert sim.call("card", action="dump")["image"]["blocks"] == before  # still blank
    # a card of this site, topped up with the other key: refused the same way
    put(sim, issued_image(UID4, 300, card_key=key(sim)))
    r = washpay("card", "topup", 500, "--port", port, "--site-key", other)
    assert r.returncode == 2 and "the site key is not this board's" in r.stderr
    assert stored(sim, UID4).balance == 300
    sim.wait_ready()
    assert {r["type"] for r in journal_records(sim.state) if r["seq"] > seen} == {"boot"}
    # the board's own key still issues the blank card
    put(sim, blank)
    r = washpay("card", "issue", "--port", port, "--site-key", sim.state / "site.key",
                "--balance", 1000, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["balance"] == 1000, r.stderr
    sim.wait_ready()


def test_the_board_checks_the_site_key_without_giving_its_own(tmp_path):
    """The card tool's "site" step under MicroPython: the site id the board's card key makes
    must be the host's; a board without a card key refuses too. Only site ids (public) are
    compared and said; the board's card key is never in the result."""
    import os

    from conftest import run_micropython

    ck = W.site_card_key(bytes(range(32)))
    mine = W.site_id(ck).hex()
    other = W.site_id(W.site_card_key(b"\x05" * 32)).hex()
    code = (
        "import json\n"
        "from washpay import config\n"
        "from washpay.payments import cardtool\n"
        "for secrets, site in %r:\n"
        "    config.load_secrets = lambda: secrets\n"
        "    print('R', json.dumps(cardtool.execute(None, [['site', site]])))\n"
    ) % [({"card_key": ck.hex()}, mine), ({"card_key": ck.hex()}, other),
         ({"device_secret": os.urandom(32).hex()}, mine)]
    _, out, _ = run_micropython(code)
    same, wrong, keyless = (json.loads(line[2:]) for line in out.splitlines()
                            if line.startswith("R "))
    assert same["ok"] and same["done"] == 1
    assert (wrong["ok"], wrong["kind"], wrong["step"]) == (False, "SiteMismatch", 0)
    assert f"its cards are of site {mine}, the key given makes site {other}" in wrong["error"]
    assert keyless["kind"] == "SiteMismatch" and "no card key" in keyless["error"]
    assert ck.hex() not in out
