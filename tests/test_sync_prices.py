"""A whole price table pushed by the server (docs/sync.md, action 7 "price table"): on the
simulated board, the whole firmware under micropython, the real broker and server. The
table takes effect at once (status, a coin vend's price), survives a power cut (the config
on flash holds it) and is journaled; an older or equal version, an invalid table, a
malformed or oversized body are each refused, and leave the table in force and
/config.json as they were. The host's builder (CPython) checks a table as the board does
before it sends one."""

import datetime
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from littlefs import LittleFS
from sync_env import SITE_KEY, command_rig, online, sync_of, write_site_key

from host_tools import journal as J
from host_tools import token as T
from host_tools.server import commands as C

ROOT = Path(__file__).resolve().parent.parent
DEVICE = "sim-0001"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
QUIET = lambda *a: None  # noqa: E731


def rules_now(percent):
    """+percent all of today and tomorrow (UTC: the tables' offset is 0, so a test that runs
    over midnight still sees it), +100 % on the other days, which must not apply; then two
    rules that are never reached (the first rule that matches applies)."""
    today = datetime.datetime.now(datetime.timezone.utc).weekday()
    on = (today, (today + 1) % 7)
    return [{"days": ",".join(DAYS[d] for d in range(7) if d not in on), "percent": 100},
            {"days": ",".join(DAYS[d] for d in on), "from": "00:00", "to": "24:00",
             "percent": percent},
            {"days": "mon-fri", "from": "22:00", "to": "06:00", "percent": -20},
            {"days": "sat,sun", "from": "11:00", "to": "14:00", "percent": -10}]


def table(version, percent=20):
    """A realistic table: 4 rules and 4 tiers (about 520 bytes of JSON)."""
    return {"version": version, "max_price": 1500, "utc_offset_min": 0,
            "rules": rules_now(percent),
            "tiers": {"staff": {"percent": -50},
                      "student": {"percent": -10, "programs": ["quick", "standard"],
                                  "min_balance": 500, "overdraft": 0},
                      "resident": {"percent": -20, "overdraft": 1000},
                      "guest": {"percent": 10, "programs": ["quick"], "min_balance": 1000}}}


FIRST = {"version": 5, "tiers": {"staff": {"percent": -50}}}  # provisioned: base prices


# ---- the board, its flash and its journal
def flash_file(sim, path):
    """A file of the board's LittleFS volume, read from the simulator's flash image."""
    image = bytearray((sim.state / "flash.bin").read_bytes())
    fs = LittleFS(block_size=4096, block_count=len(image) // 4096, mount=False)
    fs.context.buffer = image
    fs.mount()
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except Exception:  # noqa: BLE001 - littlefs raises its own error for a missing file
        return None


def records(sim):
    """The board's journal, decoded and verified by the host's decoder (host_tools/journal.py)
    from the flash image."""
    report = J.verify(J.load_inputs([sim.state / "flash.bin"]), J.Keys(SITE_KEY, DEVICE))
    assert report.ok, [p.message for p in report.problems]
    return [dict(r.fields) for r in report.records]


def prices_of(st):
    return {p["name"]: p["price"] for p in st["firmware"]["programs"]}


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """One board (provisioned with table v5), broker and server for the module."""
    with command_rig(tmp_path_factory.mktemp("prices"), {"pricing": FIRST}) as r:
        yield r["sim"], r["server"]


def send(server, payload, kind="price-table", args=None, qos=1):
    """Publish a signed command; the board's reply."""
    cid = payload[1:9]
    if qos:
        mark = server.send_command(DEVICE, cid.hex(), kind, payload, args)
    else:  # no packet id: two bytes more of the board's MQTT buffer for the payload
        mark = len(server.results)
        server.client.publish(f"wp/{DEVICE}/cmd", payload, qos=0).wait_for_publish(10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for r in server.results[mark:]:
            if r.get("cmd") == cid.hex() or "cmd" not in r:  # an invalid one names no id
                return r
        time.sleep(0.02)
    raise AssertionError(f"no reply to {kind} within 15 s")


def push(server, tbl):
    payload, _ = C.build(SITE_KEY, DEVICE, "price-table", table=tbl)
    return send(server, payload, args={"table": tbl})


def signed(body, action=C.PRICE_TABLE):
    """A genuine command with any body, past the host's own checks (as a buggy or older
    server would send it): the board must refuse on its own."""
    now = int(time.time())
    head = C.HEAD.pack(T.VERSION << 4 | T.KIND_COMMAND, os.urandom(8), os.urandom(8),
                       T.device_hash(DEVICE), now, now + 300, action, len(body) & 0xFFFF)
    key = C.command_key(SITE_KEY, DEVICE)
    return head + body + hmac.new(key, head + body, hashlib.sha256).digest()[:16]


def end_cycle(sim):
    sim.call("washer", state="idle")
    sim.wait_for(lambda s: s["state"] in ("idle", "credit"), what="the cycle to end")
    sim.call("washer", state="auto")


# ---- on the board
@pytest.mark.device
def test_a_pushed_table_takes_effect_survives_a_power_cut_and_is_journaled(rig):
    sim, server = rig
    st = sim.status()
    assert st["firmware"]["prices_version"] == 5
    assert prices_of(st) == {"quick": 250, "standard": 350, "heavy": 450}
    new = table(6)
    assert len(C.table_body(new)) < C.BODY_MAX
    res = push(server, new)
    assert res["result"] == "done", res
    assert res["reason"] == "prices v6 (was v5)" and res["prices_version"] == 6
    st = sim.status()
    assert st["firmware"]["prices_version"] == 6
    # +20 % now: 2.50 / 3.50 / 4.50 become 3.00 / 4.20 / 5.40
    assert prices_of(st) == {"quick": 300, "standard": 420, "heavy": 540}
    assert st["journal"]["last_type"] == "command_done"
    stored = json.loads(flash_file(sim, "/config.json"))
    assert stored["pricing"] == new and stored["device_id"] == DEVICE  # the rest kept
    assert flash_file(sim, "/config.json.new") is None

    # coins pay the new price: 3.00 for quick, not the 2.50 it cost before
    sim.select_program("quick")
    sim.insert_coin(200)
    sim.insert_coin(50)
    sim.call("button", name="start")
    st = sim.wait_for(lambda s: "Insert 0.50" in s["display"], what="the shortfall")
    assert st["relay_pulses"] == 0 and st["state"] == "credit"
    sim.insert_coin(50)
    sim.call("button", name="start")
    st = sim.wait_for(lambda s: s["state"] == "running", what="the vend running")
    assert st["credit"] == 0
    end_cycle(sim)

    sim.call("power", state="cut")
    sim.call("power", state="on")
    st = sim.wait_ready(timeout=30)
    assert st["firmware"]["prices_version"] == 6
    assert prices_of(st) == {"quick": 300, "standard": 420, "heavy": 540}
    online(sim)

    recs = records(sim)
    done = [r for r in recs if r["type"] == "command_done"]
    assert done and done[-1]["reason"] == "prices v6 (was v5)"
    assert bytes.fromhex(done[-1]["source"]) == bytes.fromhex(res["cmd"])
    vend = [r for r in recs if r["type"] == "vend_start"][-1]
    assert vend["program"] == "quick" and vend["price"] == 300
    boots = [r["reason"] for r in recs if r["type"] == "boot"]
    assert boots[0].endswith("prices v5") and boots[-1].endswith("prices v6")


def assert_unchanged(sim, config_before, version):
    st = sim.status()
    assert st["firmware"]["prices_version"] == version
    assert prices_of(st) == {"quick": 300, "standard": 420, "heavy": 540}
    assert flash_file(sim, "/config.json") == config_before
    assert flash_file(sim, "/config.json.new") is None
    return st


@pytest.mark.device
def test_refused_tables_change_nothing(rig):
    sim, server = rig
    st = online(sim)
    if st["firmware"]["prices_version"] != 6:  # run alone: bring the board to v6 first
        assert push(server, table(6))["result"] == "done"
    before = flash_file(sim, "/config.json")
    seq = sim.status()["journal"]["last_seq"]
    wrong_program = table(7)
    wrong_program["tiers"]["student"]["programs"] = ["quick", "spin"]
    cases = [
        # a late or replayed old push never replaces a newer table
        (json.dumps(table(6, percent=50)), "prices v6 not newer than v6"),
        (json.dumps(table(3, percent=50)), "prices v3 not newer than v6"),
        (json.dumps({"rules": []}), "prices v0 not newer than v6"),
        # invalid tables, refused by the same validation as at boot
        (json.dumps(wrong_program), "pricing.tiers.student: no program 'spin'"),
        (json.dumps(dict(table(7), max_price=400)),
         "pricing.max_price must be at least the dearest base price"),
        (json.dumps(dict(table(7), rules=[{"days": "someday"}])),
         "pricing.rules[0].days: unknown day 'someday' (use mon..sun)"),
        (json.dumps(dict(table(7), version="7")),
         "pricing.version must be a non-negative integer"),
        # not a table at all
        ('{"version": 7, "rules": [', "malformed body"),
        ("[7]", "malformed body"),
    ]
    for body, reason in cases:
        res = send(server, signed(body.encode()))
        assert (res["result"], res["reason"]) == ("refused", reason), body
        assert "cmd" in res  # authentic: refused by name, not as a forgery
        assert sim.status()["journal"]["last_type"] == "command_refused"
        assert_unchanged(sim, before, 6)
    # the host's check says what the board says, and sends none of the invalid ones
    for body, reason in cases[3:7]:
        assert C.check_table(body.encode()) == reason
        with pytest.raises(C.CommandError, match="price table refused"):
            C.table_body(json.loads(body))
    # too long to be a command (the limit is 1024 bytes): refused unread, whether it still
    # fits the MQTT buffer (QoS 0: no packet id) or was dropped by the MQTT client, and the
    # link stays up (a message it could not take is acknowledged: it never comes again)
    for size, qos in ((C.BODY_MAX + 1, 0), (C.BODY_MAX + 1, 1), (4000, 1)):
        big = json.dumps(dict(table(8), pad="x" * size)).encode()[:size]
        res = send(server, signed(big), qos=qos)
        assert (res["result"], res["reason"]) == ("invalid", "command too long"), size
        assert "cmd" not in res  # unread: its id cannot be trusted
        assert_unchanged(sim, before, 6)
        assert sync_of(sim.status())["link"] == "up"
    # the board still takes commands, and a good table after all these
    res = send(server, signed(json.dumps(table(9)).encode()))
    assert res["result"] == "done" and res["reason"] == "prices v9 (was v6)"
    # journaled: every refusal (by the board's reason), the oversized ones as forged
    # (at most one record a minute), the table it took
    sim.wait_for(lambda s: sync_of(s).get("acked") == s["journal"]["last_seq"], timeout=20,
                 what="the journal uploaded")
    rows = server.store.query(
        "SELECT type, reason FROM records WHERE device = ? AND seq > ? ORDER BY seq",
        (DEVICE, seq))
    refused = [r for t, r in rows if t == "command_refused"]
    assert refused[: len(cases)] == [reason[:25] for _, reason in cases]
    assert refused[len(cases):] == ["forged: command too long"]
    assert ("command_done", "prices v9 (was v6)") in rows


# ---- on the host (CPython)
def test_host_builds_a_table_command_the_board_reads():
    tbl = table(12)
    payload, cid = C.build(SITE_KEY, DEVICE, "price-table", table=tbl, issued=1767225600,
                           command_id=bytes(8))
    head = C.HEAD.unpack_from(payload)
    assert head[6] == C.PRICE_TABLE == 7 and cid == bytes(8)
    body = payload[C.HEAD.size : C.HEAD.size + head[7]]
    assert json.loads(body) == tbl and b" " not in body.replace(b"sat,sun", b"")
    assert len(payload) == C.HEAD.size + len(body) + 16 <= C.COMMAND_MAX


@pytest.mark.parametrize("change, why", [
    ({"tiers": {"staff": {"programs": ["spin"]}}}, "pricing.tiers.staff: no program 'spin'"),
    ({"max_price": 400}, "pricing.max_price must be at least the dearest base price"),
    ({"utc_offset_min": 900}, "pricing.utc_offset_min must be minutes from -840 to 840"),
    ({"rules": [{"from": "25:00"}]}, "pricing.rules[0].from must be between 00:00 and 24:00"),
    ({"tiers": ["staff"]}, "pricing.tiers must be an object"),
])
def test_host_refuses_an_invalid_table_before_sending(change, why):
    with pytest.raises(C.CommandError) as e:
        C.build(SITE_KEY, DEVICE, "price-table", table=dict(table(12), **change))
    assert str(e.value).startswith("price table refused: " + why)


def test_host_checks_against_the_boards_programs():
    board = {"programs": [{"name": "quick", "price": 250}, {"name": "spin", "price": 900}],
             "max_credit": 3000, "pricing": {"version": 4}}
    tbl = {"version": 5, "tiers": {"staff": {"programs": ["spin"]}}}
    C.table_body(tbl, board)  # a program this board has
    with pytest.raises(C.CommandError, match="no program 'spin'"):
        C.table_body(tbl)  # not one of the default programs
    with pytest.raises(C.CommandError, match="max_price must be at least"):
        C.table_body(dict(tbl, max_price=800), board)


def test_host_refuses_what_no_board_takes():
    with pytest.raises(C.CommandError, match="version of 1 or more"):
        C.table_body({"rules": []})
    with pytest.raises(C.CommandError, match="a JSON object"):
        C.table_body([1, 2])
    # 4 rules and 4 tiers that each list eight 10-character programs: 1001 bytes, over
    # the 976-byte body
    progs = [{"name": f"program{i:03d}", "price": 300} for i in range(8)]
    names = [p["name"] for p in progs]
    big = dict(table(12), tiers={f"tier{i}": {"percent": -10, "programs": names,
                                              "min_balance": 500, "overdraft": 1000}
                                 for i in range(4)})
    with pytest.raises(C.CommandError, match=r"bytes of JSON; one command holds at most 976"):
        C.table_body(big, {"programs": progs})
    with pytest.raises(C.CommandError, match="a board takes at most 976"):
        C.operator_command(bytes(32), DEVICE, C.PRICE_TABLE, b"x" * 977, 0, 60)


def test_host_and_board_agree_on_the_longest_command():
    src = (ROOT / "firmware" / "washpay" / "net" / "__init__.py").read_text()
    assert f"COMMAND_MAX = const({C.COMMAND_MAX})" in src
    doc = " ".join((ROOT / "docs" / "sync.md").read_text().split())
    assert f"A command is at most {C.COMMAND_MAX} bytes" in doc
    assert f"so a body at most {C.BODY_MAX};" in doc


def washpay(*args):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_cli_refuses_an_invalid_table_and_sends_nothing(tmp_path):
    key = write_site_key(tmp_path / "site.key")
    bad = tmp_path / "prices.json"
    bad.write_text(json.dumps({"version": 3, "tiers": {"staff": {"programs": ["spin"]}}}))
    db = tmp_path / "ledger.db"
    # no broker listens on port 9: a command that got as far as sending would say so
    common = ("--device", DEVICE, "--site-key", key, "--broker", "mqtt://127.0.0.1:9",
              "--db", db)
    r = washpay("server", "command", "price", "--table", bad, *common)
    assert r.returncode == 2
    assert "price table refused: pricing.tiers.staff: no program 'spin'" in r.stderr
    assert not db.exists()
    # the same table checked against the board's own config (it has a "spin"), or given
    # as a whole config.json: valid, so it goes as far as the (missing) broker
    board = tmp_path / "board-config.json"
    board.write_text(json.dumps({"programs": [{"name": "spin", "price": 300}]}))
    r = washpay("server", "command", "price", "--table", bad, "--config", board, *common)
    assert r.returncode == 2 and "no connection to the broker" in r.stderr, r.stderr
    whole = tmp_path / "config.json"
    whole.write_text(json.dumps({"programs": [{"name": "spin", "price": 300}],
                                 "pricing": json.loads(bad.read_text())}))
    r = washpay("server", "command", "price", "--table", whole, *common)
    assert r.returncode == 2 and "no connection to the broker" in r.stderr, r.stderr
    r = washpay("server", "command", "price", "quick=300", "--table", bad, *common)
    assert r.returncode == 2 and "not both" in r.stderr
    r = washpay("server", "command", "price", "--table", tmp_path / "none.json", *common)
    assert r.returncode == 2 and "cannot read price table" in r.stderr
    r = washpay("server", "command", "price", "quick=300", "--config", board, *common)
    assert r.returncode == 2 and "give the table too" in r.stderr


@pytest.mark.device
def test_pushes_the_board_cannot_read_are_refused_with_a_reason(rig):
    # issue 18: program names that are not UTF-8 (a surrogate; an overlong "q", which
    # MicroPython's decoder reads as "quick"; a stray byte) and a table nested ~450 deep
    # (within one command; deeper repr'd in the error message stops a board's stack)
    sim, server = rig
    st = online(sim)
    version, prices = st["firmware"]["prices_version"], prices_of(st)
    before = flash_file(sim, "/config.json")
    for name in (b"\xed\xa0\x80", b"\xc1\xb1uick", b"\xff"):
        res = send(server, signed(bytes([1, len(name)]) + name + b"\x00\x01\x2c", C.PRICE),
                   kind="price")
        assert (res["result"], res["reason"]) == ("refused", "program name not UTF-8"), name
        assert "cmd" in res
    deep = '{"version": 99, "rules": [{"from": ' + "[" * 450 + "]" * 450 + "}]}"
    res = send(server, signed(deep.encode()))
    assert (res["result"], res["reason"]) == (
        "refused", "pricing.rules[0].from must be HH:MM, not a list")
    # nothing changed, and the board runs on
    st = online(sim)
    assert (st["firmware"]["prices_version"], prices_of(st)) == (version, prices)
    assert flash_file(sim, "/config.json") == before
    res = send(server, signed(b"", C.STATUS), kind="status")
    assert res["result"] == "done"
