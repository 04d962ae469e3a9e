"""Credit scores and tiers (docs/pricing.md, "Credit score and tiers"; host_tools/server/
credit.py) on a ledger filled by the real ingest from records sealed by the firmware's own
Journal, on SQLite and PostgreSQL: what counts as a cycle and as laundry not collected,
the window's edges by wall time, the policy's thresholds; the tiers command's body, its
split into commands, and the command line (`washpay server cards`, `server command tiers`)
up to the broker."""

import io
import json
import subprocess
import sys

import pytest
from conftest import ROOT
from sync_env import SITE_KEY, firmware_records, write_site_key

from host_tools.server import commands as C
from host_tools.server import credit, wire
from host_tools.server.ingest import Ingest
from host_tools.server.store import open_store
from host_tools.token import device_hash

DAY = 86400
SINCE = 1_780_000_000  # the window's first second
NOW = SINCE + 90 * DAY
A = "04a1b2c3"
B = "04d5e6f7a8b9c0"
C_ = "0badcafe"
D = "0dddddd0"
POLICY = {"window_days": 90, "tiers": [{"below": 70, "tier": "watch"},
                                       {"below": 40, "tier": "late"}]}


def debit(uid, counter, t):
    return ("card_debit", {"amount": 250, "source": uid, "card_counter": counter,
                           "balance_before": 5000 - 250 * counter,
                           "balance_after": 4750 - 250 * counter, "t": t})


def undo(rtype, uid, counter, t):
    return (rtype, {"amount": 250, "source": uid, "card_counter": counter, "t": t,
                    "reason": "card left before the write"})


def left(uid, t, kind=1):
    return ("not_collected", {"program": "quick", "source": uid, "source_kind": kind, "t": t})


def ingest(store, tmp, device, steps, received):
    recs = firmware_records(tmp / device, [("boot", {"t": SINCE - DAY})] + steps,
                            device=device)
    out = Ingest(store, SITE_KEY, clock=lambda: received).batch(
        device, wire.build_batch(recs, len(recs)))
    assert out.stored == len(recs)


def fill(store, tmp):
    ingest(store, tmp, "sim-0001", [
        debit(A, 1, SINCE),  # the window's first second: in
        debit(A, 2, SINCE + 100),
        debit(A, 3, SINCE + 200), undo("card_cancel", A, 3, SINCE + 201),  # never paid
        debit(A, 4, SINCE - 1),  # a second before the window: out
        left(A, SINCE), left(A, SINCE + 300), left(A, SINCE - 1),
        debit(B, 5, SINCE + 10), undo("card_unresolved", B, 5, SINCE + 11),  # no cycle
        debit(B, 6, SINCE + 20),
        left(B, SINCE + 21), left(B, SINCE + 22), left(B, SINCE + 23),
        left("3031323334353637", SINCE + 30, kind=2),  # a QR token's vend: not a card
        ("not_collected", {"program": "quick", "t": SINCE + 40}),  # coins: nobody's
    ], received=NOW)
    # a board whose clock was never set: its records count by when the server got them
    ingest(store, tmp, "sim-0002", [left(C_, 100 + i) for i in range(6)], received=NOW - 10)
    ingest(store, tmp, "dev-1", [left(D, 100), left(A, SINCE + 500)], received=SINCE - 5)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ledger(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("credit")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp}/ledger.db"
    else:
        import psycopg

        base = request.getfixturevalue("pg_url")
        with psycopg.connect(base, autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS credit")
            c.execute("CREATE DATABASE credit")
        url = base.rsplit("/", 1)[0] + "/credit"
    store = open_store(url)
    fill(store, tmp)
    yield store, url
    store.close()


def by_uid(cards):
    return {c["uid"]: c for c in cards}


# ---- the score
def test_score_counts_cycles_and_laundry_left_in_the_window(ledger):
    store, _ = ledger
    cards = credit.scores(store, 90, NOW)
    got = {c["uid"]: (c["cycles"], c["not_collected"], c["score"]) for c in cards}
    assert got == {
        A: (2, 3, 40),  # the cancelled debit and what is before the window do not count;
        #                 the record of a board with a set clock counts by its own time
        B: (1, 3, 40),  # the unresolved debit paid no cycle
        C_: (0, 6, 0),  # clock not set: by the time the server got them; never below 0
    }  # D: its only record came before the window (clock not set, received before it)
    assert [c["score"] for c in cards] == [0, 40, 40]  # the lowest first
    # one second later the window's first second has left it
    later = by_uid(credit.scores(store, 90, NOW + 1))
    assert (later[A]["cycles"], later[A]["not_collected"], later[A]["score"]) == (1, 2, 60)
    # a shorter window: only what is newer than 12 days before NOW
    assert by_uid(credit.scores(store, 12, NOW)) == {
        C_: {"uid": C_, "cycles": 0, "not_collected": 6, "score": 0}}


def test_policy_gives_the_tier_of_the_lowest_threshold_the_score_is_below(ledger):
    store, _ = ledger
    policy = credit.parse_policy(POLICY)
    assert policy == {"window_days": 90, "tiers": [(40, "late"), (70, "watch")]}
    assert [credit.tier_for(s, policy) for s in (0, 39, 40, 69, 70, 100)] == [
        "late", "late", "watch", "watch", None, None]
    assert credit.tier_for(0, None) is None
    assert [credit.score(n) for n in range(7)] == [100, 80, 60, 40, 20, 0, 0]
    rep = credit.build(store, policy, NOW)
    assert {c["uid"]: c["tier"] for c in rep["cards"]} == {A: "watch", B: "watch", C_: "late"}
    assert rep["since"] == SINCE and rep["window_days"] == 90
    out = io.StringIO()
    credit.format_text(rep, out)
    lines = out.getvalue().splitlines()
    assert "since 2026-05-28" in lines[1] and "100 - 20 per cycle not collected" in lines[1]
    assert lines[2].split() == ["uid", "cycles", "not", "collected", "score", "tier"]
    assert lines[3].split() == [C_, "0", "6", "0", "late"]


@pytest.mark.parametrize("doc, why", [
    ([], "a JSON object"),
    ({"window": 90}, "unknown key 'window'"),
    ({"window_days": 0}, "window_days must be a whole number of days, 1 to 3650"),
    ({"window_days": "90"}, "window_days must be"),
    ({"tiers": {"late": 40}}, "tiers must be a list"),
    ({"tiers": [{"below": 40}]}, r"tiers\[0\] must be"),
    ({"tiers": [{"below": 101, "tier": "late"}]}, r"tiers\[0\].below must be a score from 1"),
    ({"tiers": [{"below": 0, "tier": "late"}]}, r"tiers\[0\].below must be a score from 1"),
    ({"tiers": [{"below": True, "tier": "late"}]}, r"below must be a score"),
    ({"tiers": [{"below": 40, "tier": "very late"}]}, "printable ASCII characters, no space"),
    ({"tiers": [{"below": 40, "tier": "toolatetoo"}]}, "1 to 8 printable ASCII"),
    ({"tiers": [{"below": 40, "tier": "late"}, {"below": 40, "tier": "watch"}]},
     "two tiers below 40"),
])
def test_policy_refused_says_what_to_fix(doc, why):
    with pytest.raises(credit.PolicyError, match=why):
        credit.parse_policy(doc)


def test_from_scores_sets_the_policys_tiers_and_clears_what_it_no_longer_gives(ledger):
    store, _ = ledger
    policy = credit.parse_policy(POLICY)
    assert credit.plan(store, "sim-0001", policy, NOW) == {A: "watch", B: "watch", C_: "late"}
    with store.transaction() as tx:
        for i, (args, status) in enumerate([
            ({"tiers": {"00000001": "late", D: "late"}}, "done"),
            ({"tiers": {"00000002": "late"}}, "refused"),  # never applied
            ({"tiers": {"00000003": "watch"}}, "sent"),  # no reply: it may have been
            ({"tiers": {D: None}}, "done"),  # cleared since
        ]):
            tx.execute("INSERT INTO commands (id, device, kind, args, created, status) "
                       "VALUES (?, 'sim-0001', 'tiers', ?, ?, ?)",
                       (f"c{i}", json.dumps(args), 1000.0 + i, status))
        tx.execute("INSERT INTO commands (id, device, kind, args, created, status) "
                   "VALUES ('other', 'sim-0002', 'tiers', ?, 1000, 'done')",
                   (json.dumps({"tiers": {"00000004": "late"}}),))
    assert credit.board_tiers(store, "sim-0001") == {"00000001": "late", "00000003": "watch"}
    assert credit.plan(store, "sim-0001", policy, NOW) == {
        A: "watch", B: "watch", C_: "late", "00000001": None, "00000003": None}


# ---- the command's body (docs/sync.md action 8)
def test_tiers_body_is_the_documented_layout():
    body = C.tiers_body({"04a1b2c3": "late", "04d5e6f7a8b9c0": None})
    assert body.hex() == "02" + "04" + "04a1b2c3" + "04" + b"late".hex() + \
        "07" + "04d5e6f7a8b9c0" + "00"
    payload, cid = C.build(SITE_KEY, "sim-0001", "tiers", tiers={"04a1b2c3": "staff"},
                           issued=1767225600, command_id=bytes(8))
    head = C.HEAD.unpack_from(payload)
    assert head[3] == device_hash("sim-0001") and head[6] == C.TIERS == 8
    assert payload[C.HEAD.size : C.HEAD.size + head[7]] == bytes.fromhex("010404a1b2c305") + \
        b"staff"


@pytest.mark.parametrize("tiers, why", [
    ({}, "at least one card"),
    ({"04a1b2c3": "very late"}, "no space"),
    ({"04a1b2c3": "latelater"}, "1 to 8 printable"),
    ({"04a1b2c3": "l\u00e4te"}, "printable ASCII"),
    ({"04a1b2c3": ""}, "1 to 8 printable"),
    ({"0102030405060708090a0b": "late"}, "1 to 10 bytes"),
    ({f"{i:08x}": "late" for i in range(256)}, "at most 255"),
    ({f"{i:020x}": "12345678" for i in range(49)}, "split them"),
])
def test_tiers_body_refuses_what_no_board_takes(tiers, why):
    with pytest.raises(C.CommandError, match=why):
        C.tiers_body(tiers)


def test_a_long_change_is_split_into_commands_that_each_fit():
    change = {f"04{i:012x}": "12345678" for i in range(200)}  # 7-byte UIDs: 17 bytes each
    change.update({f"{i:08x}": None for i in range(300)})  # clears of 4-byte UIDs: 6 each
    chunks = C.tiers_chunks(change)
    assert sum(len(c) for c in chunks) == 500 and {k for c in chunks for k in c} == set(change)
    for c in chunks:
        payload, _ = C.build(SITE_KEY, "sim-0001", "tiers", tiers=c)
        assert len(payload) <= C.COMMAND_MAX and len(c) <= C.TIERS_MAX
    # as few as fit: each but the last could not take the next one's first card
    for c, after in zip(chunks[:-1], chunks[1:], strict=True):
        uid, tier = next(iter(after.items()))
        entry = 1 + len(uid) // 2 + 1 + len(tier or "")
        assert len(C.tiers_body(c)) + entry > C.BODY_MAX
    with pytest.raises(C.CommandError, match="tier 'x y'"):
        C.tiers_chunks({"04a1b2c3": "x y"})


# ---- the command line
def washpay(*args):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_cards_command_prints_scores_and_tiers(tmp_path):
    # the command's window ends now: a ledger of its own, with records of today
    import time

    now = int(time.time())
    url = f"sqlite:///{tmp_path}/ledger.db"
    store = open_store(url)
    ingest(store, tmp_path, "dev-2", [debit("0cccccc0", 1, now - 60), left("0cccccc0", now - 30),
                                      left("0cccccc0", now - 20),
                                      left(A, now - 91 * DAY)], received=now)
    store.close()
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    r = washpay("server", "cards", "--db", url, "--policy", policy, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["window_days"] == 90 and rep["policy"] == [{"below": 40, "tier": "late"},
                                                          {"below": 70, "tier": "watch"}]
    assert rep["cards"] == [{"uid": "0cccccc0", "cycles": 1, "not_collected": 2,
                             "score": 60, "tier": "watch"}]  # A's is 91 days old
    r = washpay("server", "cards", "--db", url)
    assert r.returncode == 0, r.stderr
    row = next(line.split() for line in r.stdout.splitlines() if "0cccccc0" in line)
    assert row == ["0cccccc0", "1", "2", "60", "-"]
    assert "no policy" in r.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tiers": [{"below": 40, "tier": "very late"}]}))
    r = washpay("server", "cards", "--db", url, "--policy", bad)
    assert r.returncode == 2 and "no space" in r.stderr and str(bad) in r.stderr
    r = washpay("server", "cards", "--db", tmp_path / "none.db")
    assert r.returncode == 2 and "no ledger at" in r.stderr


def test_tiers_command_line_refuses_before_sending(tmp_path):
    key = write_site_key(tmp_path / "site.key")
    db = tmp_path / "ledger.db"
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    # no broker listens on port 9: a command that got as far as sending would say so
    common = ("--device", "sim-0001", "--site-key", key, "--broker", "mqtt://127.0.0.1:9",
              "--db", db)
    for words, why in (
        ((), "give UID=TIER or UID=- words, or --from-scores"),
        (("04a1b2c3",), "write UID=TIER"),
        (("zz=late",), "'zz' is not a card UID in hex"),
        (("04a1b2c3=very-late",), "1 to 8 printable ASCII"),
        (("04a1b2c3=late", "--policy", policy), "--from-scores and --policy go together"),
        (("--from-scores",), "--from-scores and --policy go together"),
        (("--from-scores", "--policy", policy), "no ledger at"),
        (("--from-scores", "--policy", tmp_path / "none.json"), "cannot read policy"),
    ):
        r = washpay("server", "command", "tiers", *words, *common)
        assert r.returncode == 2 and why in r.stderr, (words, r.stderr)
        assert not db.exists()
    r = washpay("server", "command", "status", "--from-scores", "--policy", policy, *common)
    assert r.returncode == 2 and "are the tiers command's" in r.stderr
    r = washpay("server", "command", "tiers", "04a1b2c3=late", "04d5e6f7=-", *common)
    assert r.returncode == 2 and "no connection to the broker" in r.stderr, r.stderr
