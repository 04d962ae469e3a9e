"""The server's side of firmware updates (docs/ota.md, "The server"): `washpay server
release publish|status|halt|resume` on SQLite and PostgreSQL, and `server run` offering a
release, serving its chunks and recording each board's reports through a real Mosquitto.
The boards here are host_tools/fleet/update.py's simulated ones speaking docs/ota.md; the
firmware's own update path is tested under micropython (tests/test_ota_*.py)."""

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import wait_until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sync_env import SITE_KEY, make_broker, pg_database

from host_tools import provision as P
from host_tools import release as R
from host_tools.fleet.seal import BoardJournal
from host_tools.fleet.update import MANIFEST, UpdateRefused, UpdatingBoard
from host_tools.server import wire
from host_tools.server.ota import rollout as RO
from host_tools.server.store import open_store

ROOT = P.FIRMWARE_DIR.parent
DEVICES = ("sim-0001", "sim-0002", "dev-1", "dev-2")


def washpay(*args):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WASHPAY_")}
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**clean, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL)


def refused(r, *pieces):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    for p in pieces:
        assert p in line, line
    return line


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A release built and signed by host_tools/release (real mpy-cross) and its key."""
    d = tmp_path_factory.mktemp("release")
    key = Ed25519PrivateKey.generate()
    doc = R.build(P.firmware_version(), d / "rel", key, ["sim"])
    pub = d / "release.pub"
    pub.write_text(R.public_text(R.public_bytes(key)))
    return {"dir": d / "rel", "pub": pub, "doc": doc,
            "manifest": (d / "rel" / "manifest.json").read_bytes()}


def status(db, rollout=None):
    r = washpay("server", "release", "status", *([rollout] if rollout else []), "--db", db,
                "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def states(st):
    return {d["device"]: d["state"] for d in st["devices"]}


# ---- publish, status, halt, resume (the ledger only)
def test_publish_status_halt_and_resume(store_url, release, tmp_path):
    db = store_url if "postgresql" in store_url else str(tmp_path / "ledger.db")
    open_store(db).close()  # the ledger `server run` made
    r = washpay("server", "release", "publish", release["dir"], "--devices",
                "sim-0001,sim-0002", "--devices", "dev-1", "--canary", "1", "--pub",
                release["pub"], "--db", db)
    assert r.returncode == 0, r.stderr
    assert f"rollout 1: release {release['doc']['version']}" in r.stdout
    st = status(db)
    assert st["state"] == "canary" and st["canary"] == 1
    assert [(d["device"], d["canary"], d["state"]) for d in st["devices"]] == [
        ("sim-0001", True, "waiting"), ("sim-0002", False, "waiting"),
        ("dev-1", False, "waiting")]
    assert st["manifest_sha256"] == hashlib.sha256(release["manifest"]).hexdigest()
    assert st["size"] == sum(f["size"] for f in release["doc"]["files"])
    # the ledger holds the release byte for byte: a server elsewhere serves it from there
    store = open_store(db)
    try:
        rel = RO.load_release(store, version=release["doc"]["version"])
    finally:
        store.close()
    assert rel.manifest == release["manifest"]
    assert [p for p, _ in rel.files] == [f["path"] for f in release["doc"]["files"]]
    for path, data in rel.files:
        assert data == (release["dir"] / "files" / path.lstrip("/")).read_bytes()

    # one update at a time per board
    refused(washpay("server", "release", "publish", release["dir"], "--devices", "dev-1,dev-2",
                    "--pub", release["pub"], "--db", db),
            "dev-1 is in unfinished rollout 1", "let it finish, or halt it")
    r = washpay("server", "release", "halt", "--reason", "bad batch of coins", "--db", db)
    assert r.returncode == 0, r.stderr
    st = status(db, 1)
    assert st["state"] == "halted" and st["reason"] == "halted by an operator: bad batch of coins"
    refused(washpay("server", "release", "halt", "1", "--db", db), "rollout 1 is halted")
    r = washpay("server", "release", "resume", "1", "--db", db)
    assert r.returncode == 0 and "rollout 1: release" in r.stdout, r.stderr
    assert status(db)["state"] == "canary"
    refused(washpay("server", "release", "resume", "--db", db), "not halted")
    refused(washpay("server", "release", "status", "7", "--db", db), "no rollout 7")
    # text status and the report show the rollout
    r = washpay("server", "release", "status", "--db", db)
    assert "sim-0001" in r.stdout and "canary" in r.stdout and "waiting" in r.stdout
    r = washpay("server", "report", "--db", db)
    assert r.returncode == 0, r.stderr
    assert "Firmware rollout 1: release" in r.stdout and "sim-0002" in r.stdout
    # a halted rollout's boards may be given another release (here the same, as a test)
    assert washpay("server", "release", "halt", "--db", db).returncode == 0
    r = washpay("server", "release", "publish", release["dir"], "--devices", "dev-1,dev-2",
                "--pub", release["pub"], "--db", db)
    assert r.returncode == 0 and "rollout 2: release" in r.stdout, r.stderr
    assert states(status(db)) == {"dev-1": "waiting", "dev-2": "waiting"}
    assert status(db, 1)["state"] == "halted"


def test_publish_refuses_what_would_not_verify_and_stores_nothing(release, tmp_path):
    db = tmp_path / "ledger.db"
    bad = tmp_path / "bad"
    subprocess.run(["cp", "-r", str(release["dir"]), str(bad)], check=True)
    first = release["doc"]["files"][0]["path"].lstrip("/")
    (bad / "files" / first).write_bytes(b"print('not what was signed')\n")
    refused(washpay("server", "release", "publish", bad, "--devices", "dev-1", "--pub",
                    release["pub"], "--db", db), "differs from the manifest")
    other = tmp_path / "other.pub"
    other.write_text(R.public_text(R.public_bytes(Ed25519PrivateKey.generate())))
    refused(washpay("server", "release", "publish", release["dir"], "--devices", "dev-1",
                    "--pub", other, "--db", db), "bad signature")
    assert not db.exists()  # nothing verified: no ledger made
    refused(washpay("server", "release", "publish", release["dir"], "--devices", "dev-1",
                    "--pub", release["pub"], "--db", db), "no ledger at")
    open_store(db).close()  # an empty ledger, as `server run` makes it
    refused(washpay("server", "release", "publish", release["dir"], "--devices", "dev-1",
                    "--canary", "2", "--pub", release["pub"], "--db", db),
            "--canary 2: give 0 to 1")
    refused(washpay("server", "release", "publish", release["dir"], "--devices", "bad/id",
                    "--pub", release["pub"], "--db", db), "bad/id")
    refused(washpay("server", "release", "publish", release["dir"], "--all", "--pub",
                    release["pub"], "--db", db), "--all", "heard from no board")
    refused(washpay("server", "release", "status", "--db", db), "no rollout yet")
    store = open_store(db)
    try:
        assert store.query("SELECT count(*) FROM releases")[0][0] == 0
    finally:
        store.close()


def test_the_same_version_with_another_manifest_is_refused(release, tmp_path):
    store = open_store(tmp_path / "ledger.db")
    try:
        RO.ensure_schema(store)
        RO.store_release(store, release["dir"], release["doc"])
        assert RO.store_release(store, release["dir"], release["doc"])  # again: the same
        key = Ed25519PrivateKey.generate()
        again = R.build(P.firmware_version(), tmp_path / "again", key, ["sim"],
                        now=release["doc"]["created"] + 5)
        with pytest.raises(RO.RolloutError, match="already published with another manifest"):
            RO.store_release(store, tmp_path / "again", again)
    finally:
        store.close()


# ---- the running server, a real broker, simulated boards
@contextlib.contextmanager
def rig(tmp, release, devices, canary=0, max_downloads=8, store_url=None, max_failures=3):
    from host_tools.server.service import Server

    broker = make_broker(tmp / "broker", DEVICES).start()
    db = store_url or f"sqlite:///{tmp}/ledger.db"
    logs = []
    server = Server(db, SITE_KEY, broker.url(), log=logs.append, max_downloads=max_downloads,
                    ota_options={"poll_s": 0.1, "stall_s": 30.0}).start()
    store = open_store(db)
    RO.ensure_schema(store)
    RO.store_release(store, release["dir"], release["doc"])

    def publish():
        # once the boards are subscribed: an offer to a board that never connected has no
        # session in the broker to wait in (a real board's session outlives its absence)
        if not RO.latest(store):
            RO.create(store, release["doc"]["version"], devices, canary=canary,
                      max_failures=max_failures)

    try:
        yield {"server": server, "store": store, "port": broker.port, "logs": logs,
               "db": db, "publish": publish}
    finally:
        store.close()
        server.stop()
        broker.stop()


def run(coro):
    return asyncio.run(coro)


async def boards(r, *devices):
    """The simulated boards, connected and subscribed; then the rollout is published."""
    out = [await UpdatingBoard(d, SITE_KEY).connect("127.0.0.1", r["port"]) for d in devices]
    r["publish"]()
    return out


async def no_offer(board, wait=1.0):
    with pytest.raises(TimeoutError):
        await board.offer(timeout=wait)


def test_a_board_is_offered_the_release_downloads_it_and_reports_each_state(release,
                                                                              tmp_path):
    with rig(tmp_path, release, ["sim-0001"]) as r:
        async def scenario():
            (b,) = await boards(r, "sim-0001")
            offer = await b.offer()
            assert offer["version"] == release["doc"]["version"]
            assert offer["sha256"] == hashlib.sha256(release["manifest"]).digest()
            assert bytes(offer["signature"]).hex() + "\n" == \
                (release["dir"] / "manifest.sig").read_text()
            assert offer["size"] == len(release["manifest"])
            got = await b.download(offer)
            wait_until(lambda: states(RO.status(r["store"]))["sim-0001"] == "staged",
                       what="staged")
            await b.report(offer, "switched")
            wait_until(lambda: states(RO.status(r["store"]))["sim-0001"] == "switched",
                       what="switched")
            await b.report(offer, "healthy")
            b.close()
            return got

        got = run(scenario())
        # every byte the board got is the release's
        assert got.pop("/manifest.json") == release["manifest"]
        assert set(got) == {f["path"] for f in release["doc"]["files"]}
        for path, data in got.items():
            assert data == (release["dir"] / "files" / path.lstrip("/")).read_bytes()
        st = wait_until(lambda: (s := RO.status(r["store"]))["state"] == "done" and s, what="done")
        assert st["devices"][0]["state"] == "healthy" and st["devices"][0]["progress"] == 100
        # the offer went out as a command and the board's reply is kept with it
        row = r["store"].query("SELECT kind, status FROM commands WHERE device = 'sim-0001'")
        assert [tuple(x) for x in row] == [("update", "done")]
        assert "sim-0001: rollout 1 staged -> switched" in "\n".join(r["logs"])


def test_progress_is_recorded_while_a_board_downloads(release, tmp_path):
    with rig(tmp_path, release, ["sim-0001"]) as r:
        async def scenario():
            (b,) = await boards(r, "sim-0001")
            offer = await b.offer()
            await b.fetch_file(offer["id"], MANIFEST, offer["size"])
            await b.report(offer, "downloading", pct=40, bytes=1000, total=2500)
            wait_until(lambda: RO.status(r["store"])["devices"][0]["progress"] == 40, what="40%")
            b.close()

        run(scenario())
        st = RO.status(r["store"])
        assert RO.state_text(st["devices"][0]) == "downloading 40%"


def test_canaries_first_and_the_rest_once_they_are_healthy(release, tmp_path):
    with rig(tmp_path, release, ["sim-0001", "sim-0002", "dev-1"], canary=1) as r:
        async def scenario():
            canary, b2, b3 = await boards(r, "sim-0001", "sim-0002", "dev-1")
            offer = await canary.offer()
            await no_offer(b2)  # not before the canary is healthy
            await canary.download(offer)
            await canary.report(offer, "switched")
            await no_offer(b3, 0.5)
            await canary.report(offer, "healthy")
            o2, o3 = await b2.offer(), await b3.offer()
            assert o2["id"] == o3["id"] == offer["id"]
            for b in (canary, b2, b3):
                b.close()

        run(scenario())
        st = RO.status(r["store"])
        assert st["state"] == "open" and st["reason"] == "all 1 canaries healthy"


def test_a_canary_that_rolls_back_halts_the_rollout(release, tmp_path):
    with rig(tmp_path, release, ["sim-0001", "sim-0002"], canary=1) as r:
        async def scenario():
            canary, other = await boards(r, "sim-0001", "sim-0002")
            offer = await canary.offer()
            await canary.download(offer)
            await canary.report(offer, "switched")
            await canary.report(offer, "rolled_back", reason="import failed: ImportError")
            wait_until(lambda: RO.status(r["store"])["state"] == "halted", what="the halt")
            await no_offer(other, 1.5)
            # a halted rollout serves no chunk (the board asks again: a resume goes on)
            canary.timeout_s = 0.5
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.2):
                    await canary.fetch(offer["id"], 0, 0, 100)
            for b in (canary, other):
                b.close()

        run(scenario())
        st = RO.status(r["store"])
        assert st["reason"] == ("canary sim-0001 rolled back: import failed: ImportError")
        assert states(st) == {"sim-0001": "rolled_back", "sim-0002": "waiting"}
        assert st["devices"][0]["reason"] == "import failed: ImportError"
        text = washpay("server", "report", "--db", r["db"].removeprefix("sqlite:///")).stdout
        assert "halted (canary sim-0001 rolled back: import failed" in text


def test_refusals_are_recorded_with_their_reason(release, tmp_path):
    with rig(tmp_path, release, ["sim-0001", "sim-0002", "dev-1"]) as r:
        async def scenario():
            b1, b2, b3 = await boards(r, "sim-0001", "sim-0002", "dev-1")
            o1 = await b1.offer()
            await b1.report(o1, "refused", reason="release for board esp32-devkitc, not sim")
            # a board that refuses the offer command itself
            o2 = await b2.offer(answer=False)
            await b2.send("res", {"result": "refused", "cmd": o2["cmd"],
                                  "reason": "no release key: provision /release.pub"})
            # a "not now" refusal leaves the board offered: the offer is made again later
            o3 = await b3.offer(answer=False)
            await b3.send("res", {"result": "refused", "cmd": o3["cmd"],
                                  "reason": "update 0.0.9 on trial: wait for it to be healthy"})
            for b in (b1, b2, b3):
                b.close()

        run(scenario())
        st = wait_until(lambda: (s := RO.status(r["store"]))["counts"].get("refused") == 2
                      and s, what="two refusals")
        by = {d["device"]: d for d in st["devices"]}
        assert by["sim-0001"]["reason"] == "release for board esp32-devkitc, not sim"
        assert by["sim-0002"]["reason"] == ("offer refused: no release key: provision "
                                            "/release.pub")
        assert by["dev-1"]["state"] == "offered"
        assert st["state"] == "open"  # no canary: a refusal does not halt


def test_chunks_are_the_release_bytes_and_bad_ranges_are_refused(release, tmp_path):
    files = release["doc"]["files"]
    big = max(range(len(files)), key=lambda i: files[i]["size"])
    data = (release["dir"] / "files" / files[big]["path"].lstrip("/")).read_bytes()
    with rig(tmp_path, release, ["sim-0001"]) as r:
        async def scenario():
            b, stranger = await boards(r, "sim-0001", "sim-0002")
            offer = await b.offer()
            rid = offer["id"]
            # any range inside a file, the last one short at the end of the file
            assert await b.fetch(rid, big, 1000, 960) == (0, data[1000:1960])
            assert await b.fetch(rid, big, len(data) - 7, 960) == (0, data[-7:])
            assert await b.fetch(rid, MANIFEST, 0, 20) == (0, release["manifest"][:20])
            # out of range: status 2, no data
            assert await b.fetch(rid, len(files), 0, 100) == (2, b"")
            assert await b.fetch(rid, big, len(data), 100) == (2, b"")
            assert await b.fetch(rid, big, 0, 0) == (2, b"")
            assert await b.fetch(rid, big, 0, 961) == (2, b"")
            # a release the server does not have, and a board not in the rollout: status 1
            assert await b.fetch(b"\x01" * 8, 0, 0, 100) == (1, b"")
            assert await stranger.fetch(rid, 0, 0, 100) == (1, b"")
            with pytest.raises(UpdateRefused, match="server refused range file 999"):
                await b.fetch_file(rid, 999, 10)
            for x in (b, stranger):
                x.close()

        run(scenario())
        logs = "\n".join(r["logs"])
        assert f"chunk request out of range: file {len(files)} offset 0 length 100" in logs
        assert "which no rollout gives sim-0002" in logs


def test_malformed_update_messages_are_problems_and_change_nothing(release, tmp_path):
    with rig(tmp_path, release, ["sim-0001"]) as r:
        async def scenario():
            (b,) = await boards(r, "sim-0001")
            offer = await b.offer()
            for junk in (b"not json", b"[1, 2]", b'{"id": "00", "state": "healthy"}',
                         b'{"id": "%s", "state": "exploded"}' % offer["id"].hex().encode(),
                         b'{"state": "healthy"}', b"x" * 2000,
                         b'{"id": "%s", "state": "downloading", "pct": 400}'
                         % offer["id"].hex().encode()):
                await b.send("fws", junk)
            await b.send("fwq", b"\x01" * 7, qos=0)
            await b.send("fwq", b"\x02" + bytes(19), qos=0)
            # the server goes on: the board still updates
            await b.download(offer)
            b.close()

        run(scenario())
        wait_until(lambda: states(RO.status(r["store"]))["sim-0001"] == "staged", what="staged")
        # one problem per board, counted each time, showing the latest; the log has each
        rows = r["store"].query("SELECT kind, count, state, detail FROM problems "
                                "WHERE device = 'sim-0001'")
        assert [tuple(x) for x in rows] == [
            ("ota_message", 9, "open", "chunk request version 2, this server reads 1")]
        details = [line for line in r["logs"] if "update message refused" in line]
        assert len(details) == 9, details
        for piece in ("is not JSON", "is not a JSON object", "is not a release id",
                      "unknown state 'exploded'", "names neither", "2000 bytes",
                      "pct 400", "chunk request of 7 bytes", "chunk request version 2"):
            assert any(piece in d for d in details), (piece, details)
        text = washpay("server", "report", "--db", r["db"].removeprefix("sqlite:///")).stdout
        assert "ota_message" in text
        assert r["server"].errors == 0


def test_downloads_at_once_are_limited(release, tmp_path):
    with rig(tmp_path, release, list(DEVICES), max_downloads=2) as r:
        async def scenario():
            bs = await boards(r, *DEVICES)
            first = [await bs[0].offer(), await bs[1].offer()]
            await no_offer(bs[2], 1.0)  # two slots, both taken
            await bs[0].download(first[0])  # staged: its slot is free
            await bs[2].offer()
            await no_offer(bs[3], 0.5)
            for b in bs:
                b.close()

        run(scenario())
        st = RO.status(r["store"])
        assert states(st) == {"sim-0001": "staged", "sim-0002": "offered", "dev-1": "offered",
                              "dev-2": "waiting"}


def test_a_busy_update_worker_does_not_hold_up_journal_ingest(release, tmp_path):
    """The update traffic has a worker of its own: while it is stuck, batches are still
    stored and acknowledged."""
    import threading

    with rig(tmp_path, release, ["sim-0001"]) as r:
        gate = threading.Event()
        real = r["server"].ota.message
        r["server"].ota.message = lambda *a: (gate.wait(20), real(*a))
        journal = BoardJournal(SITE_KEY, "sim-0002")
        raws = [journal.append("coin", amount=100, credit=100 * (i + 1), state="credit",
                               t=1_780_000_000 + i) for i in range(3)]

        r["server"].ota.queue_size = 5

        async def scenario():
            b, up = await boards(r, "sim-0001", "sim-0002")
            offer = await b.offer(answer=False)
            for i in range(20):
                await b.send("fwq", bytes([1, 0, 0, 0]) + i.to_bytes(4, "big")
                             + bytes([0, 100, 0, 0]) + offer["id"], qos=0)
            await b.report(offer, "downloading", pct=55)  # a report is never dropped
            acks = asyncio.Queue()
            up.client.on_message = lambda t, p, ret: acks.put_nowait(bytes(p))
            await up.client.subscribe("wp/sim-0002/ack", 1)
            await up.send("j", wire.build_batch(raws, 3))
            ack = await asyncio.wait_for(acks.get(), 5)
            assert wire.parse_ack(wire.ack_key(SITE_KEY, "sim-0002"), "sim-0002", ack) == 3
            # the requests wait, those beyond the queue's 5 dropped (the board asks again)
            assert r["server"].ota.counts["dropped"] in (14, 15)  # 1 may be in the worker
            assert r["server"].ota.inbox.qsize() >= 5
            gate.set()
            b.close()
            up.close()

        run(scenario())
        assert r["store"].query("SELECT count(*) FROM records")[0][0] == 3
        wait_until(lambda: RO.status(r["store"])["devices"][0]["progress"] == 55,
                   what="the report")


def test_a_canary_refusal_halts_the_rollout(release, tmp_path, store_url):
    with rig(tmp_path, release, ["sim-0001", "sim-0002"], canary=1, store_url=store_url) as r:
        async def scenario():
            canary, other = await boards(r, "sim-0001", "sim-0002")
            offer = await canary.offer()
            await canary.download(offer)
            await canary.report(offer, "refused", reason="release expired on 2026-01-01")
            wait_until(lambda: RO.status(r["store"])["state"] == "halted", what="halt")
            await no_offer(other, 1.0)
            for b in (canary, other):
                b.close()

        run(scenario())
        st = RO.status(r["store"])
        assert st["reason"] == ("canary sim-0001 refused the release: release expired on "
                                "2026-01-01")


def test_a_silent_board_gives_its_slot_up_and_is_offered_again_less_and_less(release,
                                                                             store_url):
    """The download limit over time (RO.to_offer with the server's clock given): a board
    that never answers holds its slot for stall_s, then the next board gets it; the silent
    one is offered again after stall_s, then after 2 x stall_s, ... (at most 32 x)."""
    store = open_store(store_url)
    try:
        RO.ensure_schema(store)
        RO.store_release(store, release["dir"], release["doc"])
        RO.create(store, release["doc"]["version"], ["dev-1", "dev-2", "sim-0001"], now=0)

        def offer(t):
            return [dev for _, dev, _ in RO.to_offer(store, limit=1, stall_s=100, now=t)]

        assert offer(1) == ["dev-1"]
        assert offer(50) == []  # its slot is taken
        RO.report(store, "dev-1", 1, "downloading", 10, now=60)
        assert offer(150) == []  # heard from at 60: still its slot
        assert offer(161) == ["dev-2"]  # silent 100 s: the slot goes to a board not offered yet
        assert offer(262) == ["sim-0001"]  # dev-2 silent too
        RO.report(store, "sim-0001", 1, "refused", reason="flash full", now=263)
        assert offer(264) == ["dev-1"]  # offered again (its first wait: 100 s)
        RO.report(store, "dev-1", 1, "staged", now=265)
        assert offer(300) == ["dev-2"]  # offered again: next time after 200 s
        assert offer(399) == []  # heard of at 300: its slot
        assert offer(401) == []  # silent, but not due before 500
        assert offer(501) == ["dev-2"]
        st = RO.status(store)
        assert [(d["device"], d["offers"]) for d in st["devices"]] == [
            ("dev-1", 2), ("dev-2", 3), ("sim-0001", 1)]
    finally:
        store.close()


# ---- the failure budget (docs/ota.md, "The failure budget")
# the board's own texts (firmware/washpay/ota/release.py) for a release not meant for it
NOT_FOR_IT = ("release 0.2.0 is for boards esp32-devkitc, not sim",
              "release 0.2.0 is not newer than the running 0.3.0 (and not a signed downgrade)",
              "release 0.2.0 is compiled for .mpy v6; this board loads v7",
              "release 0.2.0 reads journal formats 1, not this board's format 2",
              "release 0.2.0 updates from 0.1.5 or later; this board runs 0.1.0")


def test_the_not_eligible_texts_are_the_boards_own():
    """RO.NOT_ELIGIBLE names the board's refusals by pieces of their text: each piece is
    in exactly one of the firmware's refusal texts, and the examples above match."""
    source = (P.FIRMWARE_DIR / "washpay" / "ota" / "release.py").read_text()
    refusals = [line for line in source.splitlines() if "Refused(" in line]
    for piece in RO.NOT_ELIGIBLE:
        assert sum(piece in line for line in refusals) == 1, piece
    for text in NOT_FOR_IT:
        assert not RO.is_fault("refused", text), text
    for text in ("bad signature: not signed by this board's release key",
                 "release 0.2.0 expired (at 1, now 2)", "flash: [Errno 28] ENOSPC (3 KiB free)",
                 "file /washpay/app.mpy: SHA-256 differs from the manifest",
                 "truncated chunk: file 3 offset 960 got 10 of 960 bytes",
                 "offer refused: no release public key in /release.pub: provision the board "
                 "with one", None):
        assert RO.is_fault("refused", text), text
    assert RO.is_fault("rolled_back", "import failed: ImportError")
    assert not RO.is_fault("healthy", None)


def test_failures_off_the_canaries_halt_the_rollout_at_the_budget(release, store_url):
    """The ledger's side on SQLite and PostgreSQL: boards that are not eligible do not
    count; the Nth fault halts (no offers, a late report still recorded); a resume starts
    the budget again, with a new size if given; a halt by the last board resumes to done."""
    store = open_store(store_url)
    devices = [f"dev-{i}" for i in range(8)]
    try:
        RO.ensure_schema(store)
        RO.store_release(store, release["dir"], release["doc"])
        rid = RO.create(store, release["doc"]["version"], devices, max_failures=2, now=0)
        offered = [d for _, d, _ in RO.to_offer(store, limit=8, stall_s=100, now=1)]
        assert offered == devices
        RO.report(store, "dev-0", rid, "refused", reason=NOT_FOR_IT[0], now=2)
        RO.report(store, "dev-1", rid, "refused", reason=NOT_FOR_IT[1], now=3)
        out = RO.report(store, "dev-2", rid, "rolled_back", reason="import failed: "
                        "ImportError", now=4)
        assert "rollout" not in out
        st = RO.status(store, rid)
        assert (st["state"], st["failures"], st["max_failures"], st["not_eligible"]) == \
            ("open", 1, 2, 2)
        assert [d["fault"] for d in st["devices"][:4]] == [False, False, True, None]
        RO.report(store, "dev-3", rid, "downloading", 40, now=5)
        out = RO.report(store, "dev-4", rid, "refused",
                        reason="file /washpay/app.mpy: SHA-256 differs from the manifest",
                        now=6)
        why = ("failure budget used up: 2 board(s) failed (--max-failures 2), the last "
               "dev-4 refused the release: file /washpay/app.mpy: SHA-256 differs from the "
               "manifest")
        assert out["rollout"] == ("halted", why)
        st = RO.status(store, rid)
        assert (st["state"], st["reason"], st["failures"]) == ("halted", why, 2)
        assert "failure budget 2 of 2 used (2 not eligible, not counted)" in RO.summary(st)
        # halted: nobody is offered it, silent boards included; reports are still recorded
        assert RO.to_offer(store, limit=8, stall_s=100, now=500) == []
        assert RO.report(store, "dev-3", rid, "staged", now=7)["new"] == "staged"
        assert "rollout" not in RO.report(store, "dev-5", rid, "rolled_back",
                                          reason="not healthy after 3 boots", now=8)
        assert RO.status(store, rid)["state"] == "halted"
        # a resume starts the budget again (the faults so far stay in the status)
        assert RO.resume(store, rid, now=9) == "open"
        st = RO.status(store, rid)
        assert (st["failures"], st["faults"], st["max_failures"]) == (0, 3, 2)
        RO.report(store, "dev-6", rid, "rolled_back", reason="import failed", now=10)
        assert RO.status(store, rid)["state"] == "open"  # 1 of 2 since the resume
        with pytest.raises(RO.RolloutError, match="give 1 or more"):
            RO.resume(store, rid, max_failures=0)
        RO.halt(store, rid, now=11)
        RO.resume(store, rid, max_failures=1, now=12)  # a new size: the next fault halts
        out = RO.report(store, "dev-7", rid, "rolled_back", reason="import failed", now=13)
        assert out["rollout"][0] == "halted" and "the last dev-7 rolled back" in \
            out["rollout"][1]
        # the last board halted it: every board has ended but dev-3 (staged) ...
        RO.report(store, "dev-3", rid, "rolled_back", reason="not healthy", now=14)
        assert RO.resume(store, rid, now=15) == "done"  # ... so a resume has nothing to offer
        assert RO.status(store, rid)["reason"] == "every board reached an end state"
    finally:
        store.close()


def test_publish_takes_a_failure_budget_and_status_and_report_show_it(release, store_url,
                                                                      tmp_path):
    db = store_url if "postgresql" in store_url else str(tmp_path / "ledger.db")
    open_store(db).close()
    args = ("server", "release", "publish", release["dir"], "--pub", release["pub"],
            "--db", db)
    for bad in ("0", "-2", "many", "0%", "101%", "2.5"):
        refused(washpay(*args, "--devices", "dev-1,dev-2", "--max-failures", bad),
                f"--max-failures {bad}: give a number of boards")
    store = open_store(db)
    try:
        RO.ensure_schema(store)
        assert store.query("SELECT count(*) FROM rollouts")[0][0] == 0  # nothing stored
    finally:
        store.close()
    r = washpay(*args, "--devices", "dev-1,dev-2,sim-0001", "--max-failures", "50%")
    assert r.returncode == 0, r.stderr
    assert "halts at the 2nd board that fails" in r.stdout
    st = status(db)
    assert (st["max_failures"], st["failures"]) == (2, 0)
    store = open_store(db)
    try:
        RO.to_offer(store, limit=8, stall_s=100)
        RO.report(store, "dev-1", 1, "refused", reason=NOT_FOR_IT[0])
        RO.report(store, "dev-2", 1, "rolled_back", reason="import failed: ImportError")
        RO.report(store, "sim-0001", 1, "refused", reason="bad signature: not signed by "
                  "this board's release key")
    finally:
        store.close()
    r = washpay("server", "release", "status", "--db", db)
    assert r.returncode == 0, r.stderr
    assert "halted (failure budget used up: 2 board(s) failed (--max-failures 2), the last " \
           "sim-0001 refused the release: bad signature" in r.stdout
    assert "failure budget 2 of 2 used (1 not eligible, not counted)" in r.stdout
    assert "(not eligible: not counted as a failure)" in \
        [line for line in r.stdout.splitlines() if "dev-1" in line][0]
    if "postgresql" not in db:  # `server report` reads the ledger file
        text = washpay("server", "report", "--db", db).stdout
        assert "halted (failure budget used up: 2 board(s) failed" in text
        assert "failure budget 2 of 2 used" in text
    refused(washpay("server", "release", "resume", "--max-failures", "0", "--db", db),
            "--max-failures 0")
    assert status(db)["state"] == "halted"  # a refused resume changes nothing
    r = washpay("server", "release", "resume", "--max-failures", "5", "--db", db)
    assert r.returncode == 0, r.stderr
    assert "done" in r.stdout  # every board ended: nothing left to offer
    st = status(db)
    assert (st["state"], st["max_failures"], st["failures"]) == ("done", 5, 0)


def test_failures_off_the_canaries_halt_a_running_rollout(release, tmp_path, store_url):
    """Through `server run` and a real broker: two boards fail (max 2), the rollout halts,
    the board that was downloading is served no more chunks and the waiting one is not
    offered; `release resume` goes on where it stopped."""
    with rig(tmp_path, release, list(DEVICES), max_downloads=3, store_url=store_url,
             max_failures=2) as r:
        async def scenario():
            b1, b2, b3, b4 = await boards(r, *DEVICES)
            o1, o2, o3 = await b1.offer(), await b2.offer(), await b3.offer()
            await no_offer(b4, 0.5)  # three slots
            await b3.fetch_file(o3["id"], MANIFEST, o3["size"])  # b3 is downloading
            await b1.report(o1, "refused", reason=NOT_FOR_IT[0])  # not counted
            b1.close()  # its slot goes to b4
            o4 = await b4.offer()
            await b2.report(o2, "rolled_back", reason="import failed: ImportError")
            wait_until(lambda: RO.status(r["store"])["failures"] == 1, what="one failure")
            assert RO.status(r["store"])["state"] == "open"
            await b4.report(o4, "refused", reason="flash: [Errno 28] ENOSPC (2 KiB free)")
            wait_until(lambda: RO.status(r["store"])["state"] == "halted", what="the halt")
            # b3 mid-download stops: its requests get no answer until a resume
            b3.timeout_s = 0.5
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.2):
                    await b3.fetch(o3["id"], 0, 0, 100)
            res = washpay("server", "release", "resume", "--db",
                          r["db"].removeprefix("sqlite:///"))
            assert res.returncode == 0, res.stderr
            b3.timeout_s = 5.0
            await b3.download(o3)
            for b in (b2, b3, b4):
                b.close()

        run(scenario())
        st = wait_until(lambda: (s := RO.status(r["store"]))["devices"][2]["state"] == "staged"
                      and s, what="b3 staged")
        assert st["state"] == "open" and st["failures"] == 0 and st["faults"] == 2
        assert st["reason"] == "resumed by an operator"
        assert states(st) == {"sim-0001": "refused", "sim-0002": "rolled_back",
                              "dev-1": "staged", "dev-2": "refused"}
        logs = "\n".join(r["logs"])
        assert "rollout 1 halted: failure budget used up: 2 board(s) failed" in logs


# ---- two server processes on one PostgreSQL: the download slots (docs/ota.md, "Offers")
FLEET = tuple(f"dev-{i:02d}" for i in range(12))


def test_two_servers_on_one_postgresql_never_hand_out_more_slots_than_the_limit(release,
                                                                                pg_url,
                                                                                tmp_path):
    """Two `server run`s (Server instances, each with its own connections) on one
    PostgreSQL ledger and one broker, whose shared subscriptions split the boards' messages
    between them; 12 boards, 3 download slots. A board holds its slot from the offer it
    receives until it reports staged. At no moment do more than 3 boards hold one, across
    both servers; no board is offered the release twice; both servers make offers; every
    board stages. The advisory lock in RO.to_offer is what makes this hold: without it both
    servers count the same free slots (docs/ota.md)."""
    import threading

    from host_tools.server.service import Server

    limit = 3
    db = pg_database(pg_url)
    broker = make_broker(tmp_path / "broker", FLEET).start()
    logs = []
    servers = []
    try:
        for i in range(2):
            servers.append(Server(db, SITE_KEY, broker.url(), instance=i, log=logs.append,
                                  max_downloads=limit,
                                  ota_options={"poll_s": 0.05, "stall_s": 300.0}).start())
        store = open_store(db)
        RO.ensure_schema(store)
        RO.store_release(store, release["dir"], release["doc"])
        # the ledger's own count, sampled on a connection of its own while it runs
        seen = {"max": 0}
        done = threading.Event()

        def sample():
            watch = open_store(db)
            try:
                while not done.is_set():
                    n = watch.query("SELECT count(*) FROM rollout_devices WHERE state IN "
                                    "('offered', 'downloading')")[0][0]
                    seen["max"] = max(seen["max"], n)
                    time.sleep(0.005)
            finally:
                watch.close()

        holding, peak, offered = set(), [], []

        async def board(b):
            real = b.report

            async def report(offer, state, **fields):
                if state == "staged":  # the slot is given back with this report
                    holding.discard(b.device)
                await real(offer, state, **fields)

            b.report = report
            offer = await b.offer(timeout=120)
            assert b.device not in holding
            holding.add(b.device)
            offered.append(b.device)
            peak.append(len(holding))
            await b.download(offer)
            with pytest.raises(TimeoutError):  # offered once only
                await b.offer(timeout=0.5)

        async def scenario():
            bs = [await UpdatingBoard(d, SITE_KEY).connect("127.0.0.1", broker.port)
                  for d in FLEET]
            RO.create(store, release["doc"]["version"], list(FLEET))
            try:
                await asyncio.gather(*(board(b) for b in bs))
            finally:
                for b in bs:
                    b.close()

        watcher = threading.Thread(target=sample)
        watcher.start()
        try:
            run(scenario())
        finally:
            done.set()
            watcher.join()
        st = wait_until(lambda: (s := RO.status(store))["counts"].get("staged") == len(FLEET)
                      and s, what="every board staged")
        store.close()
        print(f"\nholders at each offer: {peak}; ledger's most at once: {seen['max']}; "
              f"offers by server: {[s.ota.counts['offers'] for s in servers]}")
        assert sorted(offered) == sorted(FLEET)
        assert max(peak) <= limit and seen["max"] <= limit
        assert max(peak) == limit  # the limit was reached: the boards did compete for slots
        assert all(s.ota.counts["offers"] for s in servers)  # both handed slots out
        assert sum(s.ota.counts["offers"] for s in servers) == len(FLEET)
        assert sum(s.ota.counts["chunks"] for s in servers) >= len(FLEET) * (
            1 + len(release["doc"]["files"]))
        assert all(d["offers"] == 1 for d in st["devices"])
        assert not [line for line in logs if "update: " in line and "Error" in line]
    finally:
        for s in servers:
            s.stop()
        broker.stop()


def test_two_update_workers_on_separate_connections_share_the_slots(release, pg_url):
    """The same limit at its sharpest: two OtaService workers, each on its own PostgreSQL
    connection, hand out slots at the same instant (a barrier before every round) while
    boards stage one or two at a time between rounds. Offers only add holders within a
    round, so checking after each round checks every moment: never more than the limit,
    and never an offer to a board that holds a slot."""
    import random
    import threading

    from host_tools.server.ota.serve import OtaService

    limit, fleet = 4, [f"dev-{i:02d}" for i in range(40)]
    db = pg_database(pg_url)
    store = open_store(db)
    RO.ensure_schema(store)
    RO.store_release(store, release["dir"], release["doc"])
    rid = RO.create(store, release["doc"]["version"], fleet, max_failures=None)
    offers = []  # (worker, device), in the order published
    workers = [OtaService(db, SITE_KEY, lambda t, p, q, w=w: offers.append(
        (w, t.split("/")[1])), log=lambda *a: None, max_downloads=limit, stall_s=3600.0)
        for w in range(2)]
    gate = threading.Barrier(3)
    rounds, taken, holding, staged, errors = 0, 0, set(), set(), []

    def worker(svc):
        while True:
            gate.wait()
            if len(staged) == len(fleet):
                return
            try:
                svc.offer_due()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
            gate.wait()

    threads = [threading.Thread(target=worker, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    pick = random.Random(14)
    try:
        while len(staged) < len(fleet) and rounds < 200:
            gate.wait()  # go
            gate.wait()  # both rounds' transactions committed
            rounds += 1
            new = [d for _, d in offers[taken:]]
            taken = len(offers)
            assert not errors, errors
            assert len(set(new)) == len(new), (rounds, new)  # not twice in one round
            assert not (set(new) & (holding | staged)), (rounds, new, holding)
            holding |= set(new)
            assert len(holding) <= limit, (rounds, holding)
            for d in pick.sample(sorted(holding), min(len(holding), pick.choice((1, 2)))):
                RO.report(store, d, rid, "staged")
                holding.discard(d)
                staged.add(d)
    finally:
        staged.update(fleet)  # let the workers end, whatever happened
        gate.wait()
        for t in threads:
            t.join()
        for w in workers:
            w.stop()
    st = RO.status(store)
    store.close()
    by = {w: sum(1 for x, _ in offers if x == w) for w in (0, 1)}
    print(f"\n{rounds} rounds; offers by worker: {by}")
    assert sorted(d for _, d in offers) == sorted(fleet)  # each board once
    assert st["counts"] == {"staged": len(fleet)}


def test_a_ledger_from_before_the_failure_budget_is_brought_up_to_date(release, store_url):
    """A rollouts table made before the budget existed gets its columns when the ledger is
    opened; its rollouts have no budget (never halted by one), new ones do."""
    store = open_store(store_url)
    try:
        with store.transaction() as tx:  # the table as the first version made it
            tx.execute("CREATE TABLE rollouts (id " + (
                "BIGSERIAL PRIMARY KEY" if store.dialect == "postgresql" else
                "INTEGER PRIMARY KEY") + ", version TEXT NOT NULL, canary BIGINT NOT NULL "
                "DEFAULT 0, state TEXT NOT NULL, reason TEXT, created REAL, changed REAL)")
            tx.execute("INSERT INTO rollouts (version, canary, state) VALUES (?, 0, 'open')",
                       (release["doc"]["version"],))
        RO.ensure_schema(store)
        RO.store_release(store, release["dir"], release["doc"])
        with store.transaction() as tx:
            tx.execute("INSERT INTO rollout_devices (rollout, device, position) "
                       "VALUES (1, 'dev-1', 0)")
        old = RO.status(store, 1)
        assert (old["max_failures"], old["failures"]) == (None, 0)
        assert "failure budget" not in RO.summary(old)
        RO.to_offer(store, limit=8, stall_s=100)
        RO.report(store, "dev-1", 1, "rolled_back", reason="import failed")
        assert RO.status(store, 1)["state"] == "done"  # no budget: not halted
        rid = RO.create(store, release["doc"]["version"], ["dev-2"])
        assert RO.status(store, rid)["max_failures"] == int(RO.MAX_FAILURES)
    finally:
        store.close()
