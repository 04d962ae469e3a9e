"""The fleet load generator (host_tools/fleet/): its sealer against the journal format from
both sides (the firmware's Journal under micropython, the host decoder), and a small fleet
against a real Mosquitto and the real server: every record stored once, every ack right."""

import asyncio
import json
import subprocess
import sys
import time

import pytest
from sync_env import (
    ROOT,
    SITE_KEY,
    MicroPythonScript,
    coin_day,
    firmware_records,
    make_broker,
)

from host_tools import journal as J
from host_tools.fleet.board import Backoff
from host_tools.fleet.fleet import Fleet, device_ids
from host_tools.fleet.seal import BoardJournal, SealError, pack_body
from host_tools.server import commands as C
from host_tools.server.service import Server

UID = "04a1b2c3d4e5f6"
# one of each kind of field: a boot with a reason code, trade, a card debit (source and
# balances), a command (source kind given), a reason text cut on a character boundary, a
# timed program's paid time, a record made before the clock was set
STEPS = [
    ("boot", {"t": 1_780_000_000, "reason": "power on"}),
    *coin_day(6),
    ("card_debit", {"amount": 250, "source": UID, "card_counter": 7, "balance_before": 1000,
                    "balance_after": 750, "price": 250, "program": "quick", "credit": 0,
                    "state": "starting", "t": 1_780_001_000}),
    ("command_done", {"source": "1011121314151617", "source_kind": "command",
                      "reason": "prices v3 (was v2)", "t": 1_780_001_100}),
    ("fault", {"reason": "capteur de porte bloqué ééé", "t": 1_780_001_200}),
    ("vend_extend", {"amount": 50, "price": 300, "left_s": 1800, "program": "dry",
                     "state": "running", "credit": 0, "t": 1_780_001_300}),
    ("coin", {"amount": 200, "credit": 200, "state": "credit", "t": 100}),
]


def _host_fields(fields):
    f = dict(fields)
    if "source" in f:
        f["source"] = bytes.fromhex(f["source"])
    return f


@pytest.fixture(scope="module")
def firmware_day(tmp_path_factory):
    return firmware_records(tmp_path_factory.mktemp("fw") / "journal", STEPS)


def test_sealer_seals_what_the_firmware_seals_byte_for_byte(firmware_day):
    # the format is deterministic but for the nonce: given the firmware's, every byte agrees
    j = BoardJournal(SITE_KEY, "sim-0001")
    assert len(firmware_day) == len(STEPS)
    for (rtype, fields), fw in zip(STEPS, firmware_day, strict=True):
        assert j.append(rtype, nonce=fw[8:16], **_host_fields(fields)) == fw, rtype


def test_nonces_are_fresh_for_every_record():
    a, b = BoardJournal(SITE_KEY, "sim-0001"), BoardJournal(SITE_KEY, "sim-0001")
    ra, rb = a.append("boot", t=1_780_000_000), b.append("boot", t=1_780_000_000)
    assert ra[8:16] != rb[8:16] and ra[:8] == rb[:8]


def _sealed_day():
    j = BoardJournal(SITE_KEY, "sim-0001")
    for rtype, fields in STEPS:
        j.append(rtype, **_host_fields(fields))
    return j.records


def test_the_host_decoder_accepts_what_the_sealer_seals():
    recs = _sealed_day()
    keys = J.Keys(SITE_KEY, "sim-0001")
    prev = bytes(16)
    decoded = []
    for seq, raw in enumerate(recs, 1):
        assert raw[0] == J.VERSION and int.from_bytes(raw[4:8], "big") == seq
        assert keys.tag(prev, raw) == raw[J.MAC_END:]  # the chain holds
        prev = raw[J.MAC_END:]
        decoded.append(J.decode_body(seq, keys.decrypt(raw)))
    assert [d["type"] for d in decoded] == [s[0] for s in STEPS]
    card = decoded[7]
    assert (card["amount"], card["source"], card["source_kind"], card["card_counter"],
            card["balance_after"]) == (250, UID, "card", 7, 750)
    assert decoded[0]["reason"] == "power on" and decoded[0]["clock_ok"]
    assert decoded[9]["reason"] == "capteur de porte bloqué "  # 25 bytes: no half é
    assert decoded[10]["left_s"] == 1800 and decoded[10]["state"] == "running"
    assert not decoded[11]["clock_ok"]
    # and the whole journal, laid out as a board stores it, verifies end to end
    snap = J.Snapshot("fleet", {f"stage/{i:02d}": r for i, r in enumerate(recs)})
    report = J.verify([snap], keys)
    assert report.ok, report.summary()


FIRMWARE_READER = """
import json
from binascii import hexlify, unhexlify
from washpay.journal.seal import Sealer, unpack
from washpay.keys import device_secret, journal_keys
ARGS = json.loads(%r)
s = Sealer(*journal_keys(device_secret(unhexlify(ARGS["site"]), ARGS["device"])))
prev = bytes(16)
body = bytearray(96)
for h in ARGS["records"]:
    rec = unhexlify(h)
    ok = s.check(rec, prev)
    s.open_into(rec, body)
    d = unpack(int.from_bytes(rec[4:8], "big"), body)
    d["source"] = hexlify(d["source"]).decode()
    d["ok"] = ok
    print(json.dumps(d))
    prev = rec[112:]
"""


def test_the_firmware_reads_what_the_sealer_seals():
    recs = _sealed_day()
    args = {"site": SITE_KEY.hex(), "device": "sim-0001", "records": [r.hex() for r in recs]}
    s = MicroPythonScript(FIRMWARE_READER % json.dumps(args))
    try:
        assert s.wait(60) == 0, s.log
    finally:
        s.close()
    got = s.events
    assert [e["ok"] for e in got] == [True] * len(STEPS)
    assert [e["type"] for e in got] == [t for t, _ in STEPS]
    assert got[7]["source"] == UID and got[7]["balance_before"] == 1000
    assert got[8]["source_kind"] == "command" and got[8]["reason"] == "prices v3 (was v2)"
    assert got[10]["left_s"] == 1800 and got[10]["program"] == "dry"
    assert not got[11]["clock_ok"] and got[1]["amount"] == 100


@pytest.mark.parametrize(("kw", "why"), [
    ({"rtype": "coinz"}, "unknown record type 'coinz'"),
    ({"rtype": "coin", "state": "spinning"}, "unknown vend state 'spinning'"),
    ({"rtype": "coin", "amount": 2**31}, "amount 2147483648 does not fit"),
])
def test_an_event_that_does_not_fit_a_record_is_refused(kw, why):
    with pytest.raises(SealError, match=why):
        pack_body(**kw)


def test_backoff_is_the_boards():
    # link.py: attempt n waits between a quarter of the limit and the limit
    import random

    b = Backoff(1000, 60000, rng=random.Random(1))
    waits = [b.next_ms() for _ in range(10)]
    limits = [min(60000, 1000 << n) for n in range(10)]
    assert all(lim // 4 <= w <= lim for w, lim in zip(waits, limits, strict=True))
    b.reset()
    assert b.next_ms() <= 1000


# ---- a small fleet against the real broker and server
N = 20


@pytest.fixture
def rig(tmp_path):
    ids = device_ids(N)
    broker = make_broker(tmp_path / "broker", ids).start()
    url = f"mqtt://127.0.0.1:{broker.port}"
    srv = Server(f"sqlite:///{tmp_path}/ledger.db", SITE_KEY, url, log=lambda *a: None).start()
    try:
        yield srv, url, ids
    finally:
        srv.stop()
        broker.stop()


def _ledger(store):
    rows = store.query("SELECT device, seq, raw, verified FROM records ORDER BY device, seq")
    out = {}
    for dev, seq, raw, verified in rows:
        assert verified == 1, (dev, seq)
        assert (dev, seq) not in out, f"{dev} {seq} stored twice"
        out[dev, seq] = bytes(raw)
    return out


def test_a_small_fleet_is_stored_exactly_once_and_acknowledged(rig):
    srv, url, ids = rig

    async def scenario():
        fleet = Fleet(SITE_KEY, url, ids, settings={"backoff_min_ms": 100,
                                                     "backoff_max_ms": 500,
                                                     "ack_timeout_ms": 2000}, seed=7)
        fleet.backlog(40)  # every board offline with 40 records
        await fleet.start(network=False)
        fleet.set_network(True)  # back at once
        await fleet.drained(timeout=60)
        # the network drops with sales going on, and comes back: resends, no loss
        trade = asyncio.create_task(fleet.trade(rate=100, duration=1.5))
        await asyncio.sleep(0.5)
        fleet.set_network(False)
        await asyncio.sleep(0.3)
        fleet.set_network(True)
        await trade
        await fleet.drained(timeout=60)
        # commands: a status to one board, a clock to another, a forged one to a third
        replies = {}
        srv.on_result = lambda r: replies.setdefault(r["device"], r)
        status, _ = C.build(SITE_KEY, ids[0], "status", command_id=bytes(range(8)))
        clock, _ = C.build(SITE_KEY, ids[1], "clock", command_id=bytes(range(1, 9)))
        forged = bytearray(C.build(SITE_KEY, ids[2], "status")[0])
        forged[-1] ^= 1
        srv.send_command(ids[0], bytes(range(8)).hex(), "status", status)
        srv.send_command(ids[1], bytes(range(1, 9)).hex(), "clock", clock)
        srv.client.publish(f"wp/{ids[2]}/cmd", bytes(forged), qos=1)
        await fleet.wait(lambda: len(replies) == 3, 30, "three command replies")
        await fleet.drained(timeout=60)  # the command records too
        await fleet.stop()
        return fleet, replies

    fleet, replies = asyncio.run(scenario())
    assert replies[ids[0]]["result"] == "done" and "status" in replies[ids[0]]
    assert replies[ids[0]]["cmd"] == bytes(range(8)).hex()
    assert replies[ids[1]]["result"] == "done" and "offset_s" in replies[ids[1]]
    assert replies[ids[2]]["result"] == "invalid" and replies[ids[2]]["reason"] == "bad tag"
    with srv.lock:
        ledger = _ledger(srv.store)
        devices = dict(srv.store.query("SELECT device, high_seq FROM devices"))
        problems = srv.store.query("SELECT device, kind, seq FROM problems")
    assert problems == []
    want = {(b.id, s): raw for b in fleet.boards for s, raw in enumerate(b.journal.records, 1)}
    assert ledger == want  # every record, once, as the board sealed it
    for b in fleet.boards:
        # each board's cursor is the server's high-water mark; every ack verified
        assert b.acked == b.journal.last_seq == devices[b.id]
        assert b.bad_acks == 0 and b.acks >= 1
    assert sum(b.connects for b in fleet.boards) >= 2 * N  # everyone came back after the drop
    assert fleet.stats.latency and min(fleet.stats.latency) > 0


def test_a_board_the_broker_does_not_know_is_refused_clearly(rig):
    _, url, _ = rig

    async def scenario():
        fleet = Fleet(SITE_KEY, url, ["stranger-1"], settings={"backoff_min_ms": 50,
                                                              "backoff_max_ms": 100})
        fleet.backlog(3)
        await fleet.start()
        await fleet.wait(lambda: fleet.boards[0].failures >= 2, 20, "two refusals")
        await fleet.stop()
        return fleet.boards[0]

    b = asyncio.run(scenario())
    assert "bad user name or password" in b.last_error or "not authorised" in b.last_error
    assert b.acked == 0 and b.journal.last_seq == 3  # nothing lost


def _washpay(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_fleet_sim_command(rig, tmp_path):
    _, url, _ = rig
    key = tmp_path / "site.key"
    key.write_text(SITE_KEY.hex() + "\n")
    key.chmod(0o600)
    r = _washpay("fleet", "sim", "--devices", "5", "--broker", url, "--site-key", str(key),
                 "--records-each", "30", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["records"] == out["acked"] == 150 and out["bad_acks"] == 0


@pytest.mark.parametrize(("args", "why"), [
    (["--broker", "http://x"], "give mqtt://host[:port]"),
    (["--broker", "mqtts://127.0.0.1:1"], "plain MQTT"),
    (["--broker", "mqtt://127.0.0.1:1", "--devices", "0"], "--devices must be at least 1"),
    (["--broker", "mqtt://127.0.0.1:1", "--prefix", "a/b"], "cannot be an MQTT user"),
])
def test_fleet_sim_refuses_bad_input_in_one_line(args, why, tmp_path):
    key = tmp_path / "site.key"
    key.write_text(SITE_KEY.hex() + "\n")
    key.chmod(0o600)
    argv = ["fleet", "sim", "--site-key", str(key)]
    if "--devices" not in args:
        argv += ["--devices", "2"]
    r = _washpay(*argv, *args)
    assert r.returncode == 2
    assert why in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_fleet_sim_without_a_server_says_what_to_do(rig, tmp_path):
    # a broker that refuses the devices: records stay unacknowledged, exit 2 with the hint
    _, url, _ = rig
    key = tmp_path / "site.key"
    key.write_text(SITE_KEY.hex() + "\n")
    key.chmod(0o600)
    r = _washpay("fleet", "sim", "--devices", "2", "--prefix", "other", "--broker", url,
                 "--site-key", str(key), "--records-each", "2", "--timeout", "2")
    assert r.returncode == 2
    assert "4 records not acknowledged" in r.stderr and "washpay broker init" in r.stderr
    assert "Traceback" not in r.stderr


def test_fleet_bench_refuses_bad_arguments():
    r = _washpay("fleet", "bench", "--rate", "0")
    assert r.returncode == 2 and "--rate and --duration must be positive" in r.stderr


def test_the_simulated_boards_sync_settings_are_the_firmwares():
    """One definition of the board's defaults: the fleet's copy (host code imports no
    firmware module) must not drift from washpay/net/setup.py SETTINGS, read under
    micropython."""
    from conftest import run_micropython

    from host_tools.fleet.board import SETTINGS

    out = run_micropython("import json\nfrom washpay.net.setup import SETTINGS\n"
                          "print(json.dumps(SETTINGS))")[1]
    assert json.loads(out.strip().splitlines()[-1]) == SETTINGS


# ---- the fleet scenarios at test size: a few hundred boards for seconds (the bench runs
# them at thousands: washpay fleet bench, docs/fleet.md)
FAST = {"backoff_min_ms": 100, "backoff_max_ms": 1000, "ack_timeout_ms": 2000}


def _everything_once(store, fleet):
    """Every record of every board stored once, verified, as sealed; every board's cursor
    the ledger's high-water mark, every ack it took authentic."""
    ledger = _ledger(store)
    want = {(b.id, s): raw for b in fleet.boards for s, raw in enumerate(b.journal.records, 1)}
    assert ledger == want
    high = dict(store.query("SELECT device, high_seq FROM devices"))
    for b in fleet.boards:
        assert b.acked == b.journal.last_seq == high[b.id], b.status()
        assert b.bad_acks == 0, b.status()


def test_two_ingest_processes_share_the_fleet_and_store_each_record_once(tmp_path, pg_url):
    # two `server run`s on one PostgreSQL ledger, on the broker's shared subscription
    # ($share/washpay/...): each takes part of the batches, none is stored twice
    n = 200
    ids = device_ids(n)
    broker = make_broker(tmp_path / "broker", ids).start()
    url = f"mqtt://127.0.0.1:{broker.port}"
    servers = []
    try:
        servers = [Server(pg_url, SITE_KEY, url, instance=i, log=lambda *a: None).start()
                   for i in range(2)]

        async def scenario():
            fleet = Fleet(SITE_KEY, url, ids, settings=FAST, seed=3)
            fleet.backlog(24)
            await fleet.start(network=False)
            fleet.set_network(True)
            await fleet.drained(timeout=120)
            await fleet.stop()
            return fleet

        fleet = asyncio.run(scenario())
        with servers[0].lock:
            _everything_once(servers[0].store, fleet)
            problems = servers[0].store.query("SELECT device, kind, seq FROM problems")
        assert problems == []
        took = [s.batches for s in servers]
        assert all(t > 0 for t in took), took  # the broker split the batches between them
    finally:
        for s in servers:
            s.stop()
        broker.stop()


def test_a_server_killed_mid_drain_loses_nothing_and_the_drain_finishes(tmp_path):
    from host_tools.fleet.bench import Rig, kill_server

    n = 200
    rig = Rig(tmp_path, SITE_KEY, device_ids(n), f"sqlite:///{tmp_path}/ledger.db",
              log=lambda *a: None)
    try:
        async def scenario():
            fleet = Fleet(SITE_KEY, rig.url, device_ids(n), settings=FAST, seed=5)
            fleet.backlog(40)
            await fleet.start(network=False)
            fleet.set_network(True)
            figures = {}
            # SIGKILL `washpay server run` with a third of the records acknowledged
            await kill_server(rig, fraction=0.3, down_s=0.5)(fleet, figures)
            await fleet.drained(timeout=120)
            await fleet.stop()
            return fleet, figures

        fleet, figures = asyncio.run(scenario())
        assert figures["killed at records acked"] < fleet.records  # it died mid-drain
        from host_tools.server.store import open_store

        store = open_store(rig.db_url)
        try:
            _everything_once(store, fleet)
            assert store.query("SELECT count(*) FROM problems")[0][0] == 0
        finally:
            store.close()
        assert len(rig.logs) == 2  # the second server is the one that finished the drain
    finally:
        rig.stop()


def test_after_a_broker_restart_every_board_reconnects_and_nothing_is_lost(tmp_path):
    # Mosquitto stopped (it saves its sessions) and started on the same ports under a
    # trading fleet: every board reconnects with its backoff, the server too, and the sales
    # made while the broker was away reach the ledger once
    n = 200
    ids = device_ids(n)
    broker = make_broker(tmp_path / "broker", ids).start()
    url = f"mqtt://127.0.0.1:{broker.port}"
    srv = Server(f"sqlite:///{tmp_path}/ledger.db", SITE_KEY, url, log=lambda *a: None).start()

    def restart():
        broker.stop()
        time.sleep(1.0)
        at = time.monotonic()
        broker.start()
        return at

    async def scenario():
        fleet = Fleet(SITE_KEY, url, ids, settings=FAST, seed=9)
        fleet.backlog(5)
        await fleet.start(network=True)
        await fleet.drained(timeout=60)
        trade = asyncio.create_task(fleet.trade(rate=40, duration=3.0))
        await asyncio.sleep(0.5)
        back = await asyncio.to_thread(restart)
        sales = await trade
        await fleet.drained(timeout=60)
        await fleet.stop()
        return fleet, sales, back

    try:
        fleet, sales, back = asyncio.run(scenario())
        assert sales > 20
        assert all(b.connects >= 2 for b in fleet.boards)  # every board came back
        assert len([t for t in fleet.stats.connect_times if t >= back]) >= n
        assert sum(fleet.stats.failures.values()) >= n  # each met the broker gone
        with srv.lock:
            _everything_once(srv.store, fleet)
    finally:
        srv.stop()
        broker.stop()
