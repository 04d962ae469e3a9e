"""The server's two threads (host_tools/server/service.py) and its rollback rule on a real
Mosquitto, with SQLite and PostgreSQL: the network thread keeps the broker's keepalive
while ingest is held up, the broker's copy of a batch is acknowledged only once it is
stored, a stale batch the broker delivers again after newer ones is no rollback, and a
board whose flash really went back is one."""

import asyncio
import queue
import socket
import threading
import time

import pytest
from conftest import wait_until
from sync_env import SITE_KEY, make_broker

from host_tools import broker as B
from host_tools.fleet.fleet import Fleet, device_ids, sale
from host_tools.fleet.seal import BoardJournal
from host_tools.server import wire
from host_tools.server.service import Server

DEVICE = "sim-0001"


@pytest.fixture
def broker(tmp_path):
    b = make_broker(tmp_path / "broker", (DEVICE, *device_ids(4))).start()
    yield b
    b.stop()


class Board:
    """A board's side of the broker, by hand: publishes batches as the board does, reads
    its acks (paho, the board's own credentials)."""

    def __init__(self, broker, device=DEVICE):
        import paho.mqtt.client as mqtt

        self.device = device
        self.key = wire.ack_key(SITE_KEY, device)
        self.acks = queue.SimpleQueue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device,
                             clean_session=True)
        self.c.username_pw_set(device, B.device_password(SITE_KEY, device))
        self.c.on_message = lambda c, u, m: self.acks.put(
            wire.parse_ack(self.key, device, bytes(m.payload)))
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.c.subscribe(wire.topic(device, wire.ACKS), qos=1)
        assert subscribed.wait(10)
        self.journal = BoardJournal(SITE_KEY, device)
        for i in range(40):
            self.journal.append("coin", amount=100, credit=100 * (i + 1), state="credit")

    def send(self, first, last, reported):
        payload = wire.build_batch(self.journal.records[first - 1:last], reported)
        self.c.publish(wire.topic(self.device, wire.JOURNAL), payload,
                       qos=1).wait_for_publish(10)

    def ack(self, want, timeout=30):
        """Wait for an ack of `want` (older ones, the retained one, are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            seq = self.acks.get(timeout=max(0.01, deadline - time.monotonic()))
            if seq == want:
                return seq

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def _ledger(store_url):
    from host_tools.server.store import open_store

    store = open_store(store_url)
    try:
        recs = store.query("SELECT device, seq, raw FROM records ORDER BY device, seq")
        problems = store.query("SELECT device, kind, seq, state FROM problems "
                               "ORDER BY device, kind, seq")
        devices = dict(store.query("SELECT device, high_seq FROM devices"))
        dups = dict(store.query("SELECT device, duplicates FROM devices"))
    finally:
        store.close()
    return [(d, s, bytes(r)) for d, s, r in recs], problems, devices, dups


def assert_stored_once_in_order(store_url, board, last):
    """The ledger holds every record of `board`'s journal once, in order, up to `last`,
    and no problem."""
    recs, problems, devices, _ = _ledger(store_url)
    assert [(s, r) for _, s, r in recs] == list(enumerate(board.journal.records, 1))
    assert problems == [] and devices[DEVICE] == last


def test_the_network_thread_keeps_the_keepalive_while_ingest_is_held_up(broker, tmp_path):
    # keepalive 1 s: Mosquitto drops a client silent for 1.5 s (2.0.11 looks every few
    # seconds: it dropped a silent one after 6 s here). Ingest is held up for 10 s (the
    # ledger's lock taken, as a slow database would): with ingest on paho's network thread
    # no PINGREQ went out and the broker dropped the server (the old service.py did)
    store_url = f"sqlite:///{tmp_path}/ledger.db"  # the network thread, not the database
    srv = Server(store_url, SITE_KEY, broker.url(), keepalive=1, log=lambda *a: None).start()
    board = Board(broker)
    try:
        with srv.lock:
            board.send(1, 16, 40)
            wait_until(lambda: srv.inbox.empty() and srv.batches == 0,
                       what="the worker took it", interval=0.02)
            time.sleep(10.0)
        assert board.ack(16) == 16
        assert srv.disconnects == 0 and srv.connection == 1
        board.send(17, 40, 40)
        assert board.ack(40) == 40
    finally:
        board.close()
        srv.stop()
    assert_stored_once_in_order(store_url, board, 40)


def test_a_full_queue_holds_the_network_thread_back_and_drops_nothing(broker, tmp_path):
    # a queue of 2 and the worker held up: the third batch waits in the network thread
    # (and the rest in the broker), none is dropped, all are stored in order once it goes on
    store_url = f"sqlite:///{tmp_path}/ledger.db"
    srv = Server(store_url, SITE_KEY, broker.url(), inbox=2, log=lambda *a: None).start()
    board = Board(broker)
    try:
        with srv.lock:
            for first in range(1, 41, 8):
                board.send(first, first + 7, 40)
            wait_until(lambda: srv.waited >= 1,
                       what="the network thread waiting for room", interval=0.02)
            assert srv.batches == 0
        assert board.ack(40) == 40
        assert srv.errors == 0
    finally:
        board.close()
        srv.stop()
    assert_stored_once_in_order(store_url, board, 40)


def test_a_full_queue_never_holds_the_network_thread_past_the_keepalive(broker, tmp_path):
    # keepalive 1 s, a queue of 2 and the worker held up for 10 s with 5 batches: the
    # network thread waits for room a third of the keepalive at a time and then queues
    # anyway (waiting for as long as the worker, it would miss the keepalive: the broker
    # drops a silent client after about 6 s here)
    store_url = f"sqlite:///{tmp_path}/ledger.db"
    srv = Server(store_url, SITE_KEY, broker.url(), keepalive=1, inbox=2,
                 log=lambda *a: None).start()
    board = Board(broker)
    try:
        with srv.lock:
            for first in range(1, 41, 8):
                board.send(first, first + 7, 40)
            wait_until(lambda: srv.overflowed >= 1,
                       what="a message queued past the bound", interval=0.02)
            time.sleep(10.0)
        assert board.ack(40) == 40
        assert srv.disconnects == 0 and srv.errors == 0
    finally:
        board.close()
        srv.stop()
    recs, problems, _, _ = _ledger(store_url)
    assert [(s, r) for _, s, r in recs] == list(enumerate(board.journal.records, 1))
    assert problems == []


def test_a_reconnect_drops_what_the_last_connection_queued(broker, tmp_path):
    # the worker held up with batches queued, and the connection lost: what was queued is
    # dropped (the broker sends it again: it was never acknowledged), so the queue never
    # holds two connections' windows; everything is stored once in the end
    store_url = f"sqlite:///{tmp_path}/ledger.db"
    srv = Server(store_url, SITE_KEY, broker.url(), log=lambda *a: None).start()
    board = Board(broker)
    try:
        with srv.lock:
            for first in range(1, 41, 8):
                board.send(first, first + 7, 40)
            wait_until(lambda: srv.inbox.qsize() == 4,
                       what="4 queued, 1 in the worker's hands", interval=0.02)
            srv.client.socket().shutdown(socket.SHUT_RDWR)
            wait_until(lambda: srv.connection == 2, what="the server back", interval=0.02)
            assert srv.requeued == 4
        assert board.ack(40) == 40
        assert srv.errors == 0
    finally:
        board.close()
        srv.stop()
    assert_stored_once_in_order(store_url, board, 40)


def test_the_brokers_copy_is_acknowledged_only_once_stored(broker, store_url):
    # the server is killed after the batch reached it, before it was stored: had it
    # acknowledged the broker's copy on receipt (paho's default) the batch would be gone;
    # the broker sends it again to the next server, which stores it
    srv = Server(store_url, SITE_KEY, broker.url(), log=lambda *a: None).start()
    got, release = threading.Event(), threading.Event()
    real = srv.ingest.batch

    def held(device, payload):
        got.set()
        release.wait(30)
        raise RuntimeError("killed")  # the process is gone: nothing is stored

    srv.ingest.batch = held
    board = Board(broker)
    try:
        board.send(1, 16, 16)
        assert got.wait(30)
        srv.crash()
        release.set()
        assert real is not None
        again = Server(store_url, SITE_KEY, broker.url(), log=lambda *a: None).start()
        try:
            assert board.ack(16) == 16  # the broker's copy, delivered again, is stored
            assert again.batches == 1 and again.errors == 0
        finally:
            again.stop()
    finally:
        board.close()
    recs, problems, devices, _ = _ledger(store_url)
    assert [s for _, s, _ in recs] == list(range(1, 17)) and problems == []


def test_a_stale_batch_the_broker_delivers_again_after_newer_ones_is_no_rollback(
        broker, store_url):
    # the server stores batch A (board: "my newest record is 16") and then B (".. is 40")
    # but A's PUBACK never reaches the broker (the connection dies): the broker delivers A
    # again, after B, to the next server. Not a rollback: stored once, counted, acked 40
    logs = []
    srv = Server(store_url, SITE_KEY, broker.url(), log=logs.append).start()
    settle = srv._settle
    lost = []

    def lose_the_first(connection, msg):
        if msg.topic.endswith("/j") and not lost:
            lost.append(msg.mid)
            return
        settle(connection, msg)

    srv._settle = lose_the_first
    board = Board(broker)
    try:
        board.send(1, 16, 16)
        assert board.ack(16) == 16
        board.send(17, 40, 40)
        assert board.ack(40) == 40
        srv.crash()
        again = Server(store_url, SITE_KEY, broker.url(), log=logs.append).start()
        try:
            # (B's PUBACK may not have left before the crash either: then B comes again too)
            wait_until(lambda: again.stale >= 1,
                       what="the broker's copy of A again", interval=0.02)
            assert board.ack(40) == 40
            assert again.stale == 1 and again.errors == 0
        finally:
            again.stop()  # the worker finishes the message in its hands
        again_b = again.batches - 1  # B again (its PUBACK lost in the crash too), or not
    finally:
        board.close()
    recs, problems, devices, dups = _ledger(store_url)
    assert problems == []
    assert [(s, r) for _, s, r in recs] == list(enumerate(board.journal.records, 1))
    assert devices[DEVICE] == 40 and dups[DEVICE] == 16 + 24 * again_b
    assert any("stale batch" in line for line in logs)
    assert not any("rollback" in line for line in logs)


FAST = {"backoff_min_ms": 100, "backoff_max_ms": 1000, "ack_timeout_ms": 1000}


@pytest.mark.parametrize("lag", ["synced image", "unsynced image"])
def test_a_board_whose_flash_went_back_is_a_rollback(broker, store_url, lag):
    # a board's flash written back with an older image, then booted (the fleet generator's
    # restore): with the image synced, its boot record lands on a sequence number the
    # ledger holds (a fork, and a rollback at once); with an image older than the board's
    # first sync, it resends old records for ever and never gets to the new one: a rollback
    # once it has done so for rollback_after_s. The other boards: nothing
    ids = device_ids(4)
    srv = Server(store_url, SITE_KEY, broker.url(), log=lambda *a: None,
                 ingest_options={"rollback_after_s": 2.0}).start()

    async def scenario():
        fleet = Fleet(SITE_KEY, broker.url(), ids, settings=FAST, seed=11)
        fleet.backlog(30)
        b = fleet.boards[0]
        image = b.flash_image() if lag == "unsynced image" else None
        await fleet.start(network=True)
        await fleet.drained(timeout=60)
        if image is None:
            image = b.flash_image()
        for i in range(10):
            sale(b, 1_790_000_000 + i * 10)
        await fleet.drained(timeout=60)
        original = list(b.journal.records)
        fleet.set_network(False)
        await asyncio.sleep(0.2)
        b.restore(image)
        fleet.set_network(True)

        def flagged():
            with srv.lock:
                return srv.store.query("SELECT count(*) FROM problems "
                                       "WHERE kind = 'rollback'")[0][0]

        await fleet.wait(flagged, 60, "a rollback problem")
        await fleet.stop()
        return fleet, original

    try:
        fleet, original = asyncio.run(scenario())
    finally:
        srv.stop()
    recs, problems, devices, _ = _ledger(store_url)
    b = fleet.boards[0]
    assert devices[b.id] == 50 and b.bad_acks >= 1  # it refused the acks for 50
    assert [r for d, _, r in recs if d == b.id] == original  # the first copy stands
    kinds = {(d, k) for d, k, _, _ in problems}
    if lag == "synced image":
        assert kinds == {(b.id, "fork"), (b.id, "rollback")}
        assert (b.id, "fork", 31, "open") in problems
    else:
        assert kinds == {(b.id, "rollback")}
    for other in fleet.boards[1:]:
        assert other.acked == other.journal.last_seq == devices[other.id]
