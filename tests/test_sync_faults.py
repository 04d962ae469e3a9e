"""Sync under faults: the firmware's sync stack (washpay.journal + washpay.net) under the
real micropython, a real Mosquitto, the real `washpay server` ingest, and the fault proxy
between board and broker.

In every case, once the network settles: the server's ledger equals the board's journal,
each record exactly once and verified; the board deleted nothing unacknowledged; payments
(journal appends) went on while the network was away.
"""

import contextlib
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from sync_env import (
    SITE_KEY,
    Observer,
    coin_day,
    device_script,
    firmware_records,
    journal_now,
    journal_state,
    ledger,
    make_broker,
)

from host_tools.server import wire
from host_tools.server.service import Server

pytestmark = pytest.mark.device

QUIET = lambda *a: None  # noqa: E731
SLOW = 60_000  # bytes per second through the proxy: about 450 records a second


@pytest.fixture
def broker(tmp_path):
    b = make_broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path}/ledger.db"


@pytest.fixture
def server(broker, db):
    s = Server(db, SITE_KEY, f"mqtt://127.0.0.1:{broker.port}", log=QUIET).start()
    yield s
    with contextlib.suppress(Exception):
        s.stop()


@pytest.fixture
def proxy(broker):
    p = FaultProxy("127.0.0.1", broker.port).start()
    yield p
    p.stop()


def backlog(tmp_path, n):
    root = tmp_path / "board" / "journal"
    return root, firmware_records(root, [("boot", {})] + coin_day(n))


def settled(dev, store, root, known, extra=0, timeout=90):
    """Wait until the board has everything acknowledged; check ledger == journal."""
    want = len(known) + extra
    st = dev.expect(lambda e: e.get("last_seq") == want and e.get("synced_seq") == want,
                    timeout=timeout, what=f"all {want} records acknowledged")
    dev.kill()
    book = ledger(store)
    assert sorted(book) == list(range(1, want + 1))  # each record exactly once, no gap
    for i, raw in enumerate(known, 1):
        assert book[i] == raw
    left = journal_now(root)
    assert left, "the newest segment and the stage always stay"
    for seq, raw in left.items():
        assert book[seq] == raw  # what the board still holds is what the server has
    return st


def holds_everything_unacknowledged(root, dev=None):
    """The board's journal still has every record after its sync cursor (read from a copy
    taken while the board's process is frozen: a reader's recovery must not touch it)."""
    snap = Path(tempfile.mkdtemp(prefix="washpay-snap-")) / "journal"
    if dev is not None:
        dev.proc.send_signal(signal.SIGSTOP)
    try:
        shutil.copytree(root, snap)
    finally:
        if dev is not None:
            dev.proc.send_signal(signal.SIGCONT)
    try:
        recs, cursor = journal_state(snap)
    finally:
        shutil.rmtree(snap.parent, ignore_errors=True)
    seqs = sorted(recs)
    if not seqs:
        return False
    # everything after the board's cursor is there
    missing = sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs))
    ok = not missing and seqs[0] <= cursor + 1
    if not ok:  # say what is wrong: a hole, or records after the cursor gone
        print(f"journal holds {seqs[0]}..{seqs[-1]} ({len(seqs)}), cursor {cursor}, "
              f"missing {missing[:20]}")
    return ok


def test_backlog_of_thousands_drains_when_the_network_returns(tmp_path, broker, server):
    root, known = backlog(tmp_path, 3000)
    down = tmp_path / "board" / "net.down"
    down.touch()
    dev = device_script(root, f"mqtt://127.0.0.1:{broker.port}", append=30, append_ms=10)
    try:
        # offline: payments keep being journaled, nothing goes out
        st = dev.expect(lambda e: e["last_seq"] == len(known) + 30, what="offline payments")
        assert st["link"] == "down" and st["synced_seq"] == 0 and st["records_sent"] == 0
        down.unlink()
        st = settled(dev, server.store, root, known, extra=30)
        assert st["resends"] == 0
        assert st["count"] <= 31 + 30  # acknowledged segments were deleted
    finally:
        dev.close()


def test_connections_reset_and_dropped_mid_batch(tmp_path, server, proxy):
    root, known = backlog(tmp_path, 1500)
    dev = device_script(root, f"mqtt://127.0.0.1:{proxy.port}", append=40, append_ms=50)
    try:
        for cut in (3000, 9000, 700, 20000):
            # each connection dies after `cut` bytes towards the broker: mid-batch
            proxy.reset_after(cut)
            dev.expect(lambda e: e["records_sent"] > 0, what="upload under way")
            time.sleep(0.6)
        proxy.heal()
        proxy.drop_all()  # and one clean FIN for good measure
        st = settled(dev, server.store, root, known, extra=40)
        assert st["connects"] >= 3
    finally:
        dev.close()
    assert proxy.resets >= 3


def test_slow_link_and_black_hole(tmp_path, server, proxy):
    root, known = backlog(tmp_path, 600)
    dev = device_script(root, f"mqtt://127.0.0.1:{proxy.port}",
                        sync={"keepalive_s": 2, "ack_timeout_ms": 4000, "batch": 4})
    try:
        proxy.set(latency_ms=150, rate=40_000)  # a congested mobile link
        st = dev.expect(lambda e: e["synced_seq"] > 100, what="progress on a slow link")
        assert st["batch"] > 4  # acks came back: batches grew
        proxy.blackhole()  # the path dies silently; only keepalive can tell
        st = dev.expect(lambda e: e["link"] != "up", timeout=30, what="half-open detected")
        assert holds_everything_unacknowledged(root)
        proxy.heal()
        settled(dev, server.store, root, known)
    finally:
        dev.close()


def test_broker_killed_and_restarted_mid_batch(tmp_path, broker, server, proxy):
    root, known = backlog(tmp_path, 2500)
    proxy.set(rate=SLOW)  # loopback drains a backlog in a blink: give the fault a batch to hit
    dev = device_script(root, f"mqtt://127.0.0.1:{proxy.port}", append=20, append_ms=100)
    try:
        dev.expect(lambda e: e["synced_seq"] > 200, what="upload under way")
        broker.stop(kill=True)  # SIGKILL: whatever it had queued in memory is gone
        dev.expect(lambda e: e["link"] != "up", what="the board notices")
        assert holds_everything_unacknowledged(root, dev)
        time.sleep(1.0)  # payments go on meanwhile
        broker.start()
        proxy.heal()
        settled(dev, server.store, root, known, extra=20)
    finally:
        dev.close()


def test_server_restarted_mid_batch(tmp_path, broker, db, proxy):
    root, known = backlog(tmp_path, 2000)
    srv = Server(db, SITE_KEY, f"mqtt://127.0.0.1:{broker.port}", log=QUIET).start()
    proxy.set(rate=SLOW)
    dev = device_script(root, f"mqtt://127.0.0.1:{proxy.port}", sync={"ack_timeout_ms": 2000})
    try:
        dev.expect(lambda e: e["synced_seq"] > 300, what="upload under way")
        srv.crash()  # killed mid-batch: no DISCONNECT, whatever it was doing is lost
        time.sleep(1.5)
        st = dev.expect(lambda e: True)
        assert st["synced_seq"] < len(known)
        assert holds_everything_unacknowledged(root)
        srv = Server(db, SITE_KEY, f"mqtt://127.0.0.1:{broker.port}", log=QUIET).start()
        proxy.heal()
        st = settled(dev, srv.store, root, known)
    finally:
        dev.close()
        srv.stop()


def test_the_ack_wait_doubles_while_no_ack_comes_and_the_drain_still_ends(
        tmp_path, broker, db):
    # the resend storm of docs/fleet.md: a board whose batches go unacknowledged (here no
    # server at all) waits 1, 2, 4, 8 s (up to 8x ack_timeout_ms) before sending them again,
    # not every 1 s; once the server is there everything drains and the wait is back to 1 s
    root, known = backlog(tmp_path, 100)
    dev = device_script(root, f"mqtt://127.0.0.1:{broker.port}", sync={"ack_timeout_ms": 1000})
    srv = None
    try:
        dev.expect(lambda e: e["resends"] >= 3, timeout=30, what="three timeouts")
        waits = [int(line.split("within ")[1].split()[0]) for line in dev.log
                 if "no ack for records" in line]
        assert waits[:3] == [1000, 2000, 4000], dev.log[-10:]
        srv = Server(db, SITE_KEY, f"mqtt://127.0.0.1:{broker.port}", log=QUIET).start()
        settled(dev, srv.store, root, known, timeout=60)
    finally:
        dev.close()
        if srv:
            srv.stop()


def test_power_cut_mid_upload_resumes_from_the_cursor(tmp_path, server, proxy):
    root, known = backlog(tmp_path, 2000)
    proxy.set(rate=SLOW)
    url = f"mqtt://127.0.0.1:{proxy.port}"
    cursor = 0
    for _ in range(3):
        dev = device_script(root, url, sync={"batch": 16})
        try:
            first = dev.expect(lambda e: True)
            assert first["synced_seq"] >= cursor  # the cursor survived the power cut
            st = dev.expect(lambda e: e["records_sent"] > 150, what="upload under way")
            cursor = st["synced_seq"]
        finally:
            dev.close()  # SIGKILL: the board lost power mid-batch
        assert holds_everything_unacknowledged(root)
    proxy.heal()
    dev = device_script(root, url)
    try:
        settled(dev, server.store, root, known)
    finally:
        dev.close()


def test_replayed_batches_change_nothing(tmp_path, broker, server):
    root, known = backlog(tmp_path, 300)
    tap = Observer(broker, topics=("wp/sim-0001/j",), client_id="tap")
    dev = device_script(root, f"mqtt://127.0.0.1:{broker.port}")
    try:
        settled(dev, server.store, root, known)
        batches = []
        with contextlib.suppress(AssertionError):
            while True:
                batches.append(tap.get(timeout=0.5)[1])
        assert batches
        for b in batches:  # every batch delivered a second time
            tap.publish("wp/sim-0001/j", b, qos=1)
        deadline = time.monotonic() + 20
        while server.batches < 2 * len(batches) and time.monotonic() < deadline:
            time.sleep(0.05)
        book = ledger(server.store)
        assert sorted(book) == list(range(1, len(known) + 1))
        dups = server.store.query("SELECT duplicates FROM devices WHERE device = 'sim-0001'")
        assert dups[0][0] >= len(known)
        problems = server.store.query("SELECT kind FROM problems")
        assert problems == []
    finally:
        tap.close()
        dev.close()


def test_forged_acks_delete_nothing(tmp_path, broker):
    # No server: a forger with broker access tells the board everything is acknowledged.
    root, known = backlog(tmp_path, 200)
    forger = Observer(broker, topics=("wp/sim-0001/j",), client_id="forger")
    wrong_key = wire.ack_key(SITE_KEY, "sim-0002")  # another board's ack key
    forger.publish("wp/sim-0001/ack", wire.build_ack(wrong_key, "sim-0001", 201), retain=True)
    dev = device_script(root, f"mqtt://127.0.0.1:{broker.port}")
    try:
        st = dev.expect(lambda e: e["bad_acks"] >= 1, what="the forged ack refused")
        assert "does not verify" in st["error"]
        # a genuine ack for more than the board has is refused too
        genuine = wire.ack_key(SITE_KEY, "sim-0001")
        forger.publish("wp/sim-0001/ack", wire.build_ack(genuine, "sim-0001", 5000))
        st = dev.expect(lambda e: e["bad_acks"] >= 2, what="the impossible ack refused")
        assert "5000" in st["error"]
        assert st["synced_seq"] == 0
    finally:
        dev.close()
        forger.publish("wp/sim-0001/ack", b"", retain=True)  # clear the retained forgery
        forger.close()
    assert sorted(journal_now(root)) == list(range(1, len(known) + 1))


def test_two_ingest_processes_behind_a_shared_subscription(tmp_path, broker):
    # The fleet's scale-out path: several `washpay server run --instance N` on one database
    # (PostgreSQL when the machine has it, else SQLite); the broker's shared subscription
    # splits the batches between them, the database keeps each record once.
    from sync_env import postgres_cluster

    try:
        ctx = postgres_cluster()
        url = ctx.__enter__()
    except pytest.skip.Exception:
        ctx, url = None, f"sqlite:///{tmp_path}/shared.db"
    servers = []
    devs = []
    try:
        servers = [Server(url, SITE_KEY, f"mqtt://127.0.0.1:{broker.port}", instance=i,
                          log=QUIET).start() for i in range(2)]
        boards = []
        for dev_id in ("sim-0001", "sim-0002"):
            root = tmp_path / dev_id / "journal"
            known = firmware_records(root, [("boot", {})] + coin_day(1500), device=dev_id)
            boards.append((dev_id, root, known))
            devs.append(device_script(root, f"mqtt://127.0.0.1:{broker.port}", device=dev_id,
                                      sync={"batch": 4, "max_batch": 8}, append=10))
        for (dev_id, _, known), dev in zip(boards, devs, strict=True):
            want = len(known) + 10
            dev.expect(lambda e, w=want: e["synced_seq"] == w == e["last_seq"], timeout=90,
                       what=f"{dev_id} drained")
            book = ledger(servers[0].store, dev_id)
            assert sorted(book) == list(range(1, want + 1))
            for i, raw in enumerate(known, 1):
                assert book[i] == raw
        assert all(s.batches > 0 for s in servers), [s.batches for s in servers]
        problems = servers[0].store.query("SELECT kind, count(*) FROM problems GROUP BY kind")
        assert problems == []
    finally:
        for d in devs:
            d.close()
        for s in servers:
            with contextlib.suppress(Exception):
                s.stop()
        if ctx is not None:
            ctx.__exit__(None, None, None)
