"""`washpay server run`: the ingest process on a real broker (paho-mqtt).

    srv = Server(store_url, site_key, "mqtt://127.0.0.1:1883").start()
    ...
    srv.stop()

It signs in as the server user (password from the site key, host_tools/broker.py) with a
persistent session, so what boards send while it is down waits in the broker. Journal
batches and command results come through MQTT shared subscriptions ($share/washpay/...):
several ingest processes on one database split the fleet's traffic between them, and the
database's row lock per board keeps each record exactly once whoever gets it. A batch is
acknowledged to the board (retained, so a board that reconnects learns at once how far the
server got) only after its transaction committed; the broker's copy is acknowledged only
after that, so a server killed mid-batch gets the batch again.

Two threads: paho's network thread reads the broker and answers its keepalive, and never
waits for the database; one ingest worker takes journal batches, command results and
state messages from a bounded queue in the order the broker delivered them (one worker:
a board's batches stay in order) and stores them. The client acknowledges the broker's
QoS 1 copy itself (paho `manual_ack`), after the worker stored the message, on the
connection that brought it. Backpressure: the broker keeps at most its
`max_inflight_messages` unacknowledged messages out to this client (seen to hold at 300
boards; at 5,000 the queue was seen fuller than that); with the queue at its bound the
network thread waits for room, for a third of the keepalive at most, and then queues the
message anyway: nothing is dropped, and the broker does not drop the server.
"""

import contextlib
import json
import queue
import socket
import ssl
import sys
import threading
import time
from urllib.parse import urlparse

from host_tools import broker as B
from host_tools.server import wire
from host_tools.server.ingest import Ingest
from host_tools.server.ota import wire as OW
from host_tools.server.ota.serve import OtaService
from host_tools.server.store import open_store

GROUP = "washpay"
# messages waiting for the ingest worker before the network thread waits for room: more
# than the broker's in-flight window to this client (host_tools/broker.py:
# max_inflight_messages 64)
INBOX = 256
SWITCH_S = 0.0005  # the interpreter's thread switch interval in a server process
STORED = (wire.JOURNAL, wire.STATE, wire.RESULTS)  # what the ingest worker takes


class ServiceError(Exception):
    pass


def parse_url(url):
    u = urlparse(url)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise ServiceError(f"broker {url!r}: give mqtt://host[:port] or mqtts://host[:port]")
    tls = u.scheme == "mqtts"
    return u.hostname, u.port or (8883 if tls else 1883), tls


def parse_urls(urls):
    """"mqtt://a:1,mqtt://b:2" (a broker cluster's nodes): [(host, port)], tls."""
    nodes = [parse_url(u.strip()) for u in urls.split(",")]
    if len({tls for _, _, tls in nodes}) > 1:
        raise ServiceError(f"broker {urls!r}: give every node as mqtt:// or every node as "
                           "mqtts://, not both")
    return [(h, p) for h, p, _ in nodes], nodes[0][2]


class Server:
    def __init__(self, store_url, site_key, broker_url, ca=None, instance=0, log=print,
                 shared=True, alerts=None, max_downloads=8, ota_options=None,
                 covered_fast=True, keepalive=30, inbox=INBOX, ingest_options=None):
        """`alerts`: the parsed "alerts" config (host_tools/server/alerts/config.py) to run
        the alerts engine and the notices courier in this process; None: neither.
        `ingest_options`: keywords for Ingest (rollback_after_s)."""
        import paho.mqtt.client as mqtt

        self.store = open_store(store_url)
        self.store_url = store_url
        self.alerts_cfg = alerts
        self.alerts = None
        self.ingest = Ingest(self.store, site_key, covered_fast=covered_fast,
                             **(ingest_options or {}))
        self.site_key = site_key
        # several nodes (a cluster): a connection lost or refused moves to the next one
        self.nodes, self.tls = parse_urls(broker_url)
        self.node = 0
        self.host, self.port = self.nodes[0]
        self.log = log
        self.lock = threading.Lock()  # the store's connection is used from two threads
        self.client_id = f"washpay-server-{instance}"
        prefix = f"$share/{GROUP}/" if shared else ""
        self.subscriptions = [
            (prefix + "wp/+/" + wire.JOURNAL, 1),
            (prefix + "wp/+/" + wire.RESULTS, 1),
            ("wp/+/" + wire.STATE, 1),
            (prefix + "wp/+/" + OW.REQUESTS, 1),
            (prefix + "wp/+/" + OW.REPORTS, 1),
        ]
        # manual_ack: the broker's copy is acknowledged once the worker stored it (_settle)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        clean_session=False, manual_ack=True)
        c.username_pw_set(B.SERVER_USER, B.server_password(site_key))
        if self.tls:
            if not ca:
                raise ServiceError("an mqtts:// broker needs --ca (the site CA, PEM)")
            c.tls_set(ca_certs=str(ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.on_connect = self._connected
        c.on_message = self._message
        c.on_disconnect = self._disconnected
        c.on_connect_fail = lambda client, userdata: self._next_node()
        c.reconnect_delay_set(min_delay=1, max_delay=8)
        c.max_inflight_messages_set(64)
        self.client = c
        # firmware updates (docs/ota.md): a worker of their own, so that boards downloading
        # never delay a journal batch on this client's network thread
        self.ota = OtaService(store_url, site_key, lambda t, p, q: c.publish(t, p, qos=q),
                              log=log, max_downloads=max_downloads, **(ota_options or {}))
        self.keepalive = keepalive
        self.connected = threading.Event()
        self.connection = 0  # connections so far: a PUBACK goes out on the one that brought
        self.disconnects = 0
        # the bound is the network thread's: it waits for room, but never longer than a
        # third of the keepalive (_queue)
        self.inbox = queue.Queue()
        self.inbox_max = inbox
        self._room = threading.Condition()
        self.waited = 0  # messages the network thread had to wait to queue (a full inbox)
        self.overflowed = 0  # queued past the bound, the worker stalled for that long
        self.requeued = 0  # queued messages dropped at a reconnect (the broker resends them)
        self._halt = threading.Event()  # the worker takes nothing more
        self._dead = False  # crashed: nothing more goes to the broker
        self.worker = threading.Thread(target=self._work, name=f"washpay-ingest-{instance}",
                                       daemon=True)
        self.batches = 0
        self.stale = 0  # batches published before records the ledger already held
        self.errors = 0
        self.results = []  # command results seen (for `server command --wait`)
        self.on_result = None

    # ---- lifecycle
    def start(self, timeout=10.0):
        try:
            self.client.connect(self.host, self.port, keepalive=self.keepalive)
        except OSError as e:
            self.store.close()
            self.ota.store.close()
            raise ServiceError(f"no connection to the broker at {self.host}:{self.port}: "
                               f"{e.strerror or e}") from None
        # the worker runs Python (verify, decode) most of the time: at the default 5 ms
        # switch interval the network thread waited that long for the GIL at each wake-up
        # and fed the worker too slowly (the outage drained 30 % slower than inline)
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_S))
        self.worker.start()
        self.client.loop_start()
        self.ota.start()
        if not self.connected.wait(timeout):
            self.stop()
            raise ServiceError(f"no connection to the broker at {self.host}:{self.port} "
                               f"within {timeout:.0f} s")
        if self.alerts_cfg is not None:
            from host_tools.server.alerts.service import AlertService

            self.alerts = AlertService(self.store_url, self.alerts_cfg, log=self.log).start()
        return self

    def _stop_alerts(self):
        if self.alerts:
            self.alerts.stop()
            self.alerts = None

    def _stop_worker(self, wait_s):
        self._halt.set()
        self.inbox.put_nowait(None)  # wakes it if idle
        with self._room:
            self._room.notify_all()
        if self.worker.is_alive() and wait_s:
            self.worker.join(wait_s)

    def stop(self):
        # the message in the worker's hands is finished and acknowledged; those queued
        # behind it are not: the broker sends them again to the next server
        self._stop_worker(30)
        self._stop_alerts()
        self.ota.stop()
        self.client.loop_stop()
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001, S110 - stopping anyway
            pass
        self.store.close()

    def crash(self):
        """Stop as if killed: no DISCONNECT, nothing flushed, no PUBACK for anything the
        worker holds (for the fault tests)."""
        self._dead = True
        self._stop_worker(0)
        self._stop_alerts()
        self.ota.stop()
        self.client.loop_stop()
        try:
            self.client.socket().close()
        except Exception:  # noqa: BLE001, S110
            pass
        self.store.close()

    def _connected(self, client, userdata, flags, rc, props=None):
        if rc != 0:
            self.log(f"server: the broker refused the connection: {rc}")
            return
        sock = client.socket()
        with contextlib.suppress(OSError, AttributeError):
            # acks are small: without this each waits for the broker's delayed ACK (Nagle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection += 1
        self._forget_queued()
        client.subscribe(self.subscriptions)
        self.connected.set()
        self.log(f"server: connected to {self.host}:{self.port} as {self.client_id}")

    def _disconnected(self, client, userdata, flags, rc, props=None):
        self.connected.clear()
        self.disconnects += 1
        self._next_node()
        self.log(f"server: disconnected ({rc}); reconnecting to {self.host}:{self.port}")

    def _next_node(self):
        if len(self.nodes) < 2:
            return
        self.node = (self.node + 1) % len(self.nodes)
        self.host, self.port = self.nodes[self.node]
        # paho's reconnect() dials _host/_port; its public setters refuse while the client
        # is disconnecting or reconnecting, which is exactly when this runs
        self.client._host, self.client._port = self.host, self.port

    # ---- messages: paho's network thread
    def _message(self, client, userdata, msg):
        """Queue what the database takes for the worker; the rest (update messages, to
        the OTA service's own queue) is handled here. Never waits for the database."""
        try:
            device, kind = wire.parse_topic(msg.topic)
            if kind in STORED:
                self._queue((self.connection, msg, device, kind))
                return
            if kind in (OW.REQUESTS, OW.REPORTS):
                self.ota.handle(device, kind, msg.payload)
        except Exception as e:  # noqa: BLE001 - one bad message must not stop the server
            self.errors += 1
            self.log(f"server: {msg.topic}: {type(e).__name__}: {e}")
        self._settle(self.connection, msg)

    def _queue(self, item):
        """Backpressure: with the queue full this thread stops reading (the broker holds
        the rest), but for a third of the keepalive at most; then the message is queued
        past the bound and the thread goes back to the broker, or its keepalive would
        lapse and the broker drop the server (the worker stalled on the database)."""
        if self.inbox.qsize() >= self.inbox_max:
            self.waited += 1
            with self._room:
                room = self._room.wait_for(
                    lambda: self.inbox.qsize() < self.inbox_max or self._halt.is_set(),
                    timeout=self.keepalive / 3)
            if not room:
                self.overflowed += 1
        self.inbox.put_nowait(item)

    def _forget_queued(self):
        """Drop what the last connection queued and the worker has not begun: none of it
        was acknowledged, so the broker sends it all again on this connection. Without
        this the queue would hold the old connection's messages beside the new ones (the
        broker's window of 64 each time), fill after a few reconnects, and hold the
        network thread, whose keepalive then lapses: the server dropped again."""
        dropped = 0
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
            if item is None:  # stopping: leave the worker its signal
                self.inbox.put_nowait(None)
                break
            dropped += 1
        self.requeued += dropped

    def _settle(self, connection, msg):
        """PUBACK the broker's copy, on the connection it came on: a message id means
        nothing on another one (the broker sends an unacknowledged message again after a
        reconnect)."""
        if msg.qos and not self._dead and connection == self.connection:
            self.client.ack(msg.mid, msg.qos)

    # ---- messages: the ingest worker
    def _work(self):
        while not self._halt.is_set():
            item = self.inbox.get()
            with self._room:
                self._room.notify()
            if item is None or self._halt.is_set():
                return
            connection, msg, device, kind = item
            if connection != self.connection:
                continue  # not acknowledged: the broker sends it again on the new connection
            try:
                if kind == wire.JOURNAL:
                    self._batch(device, msg.payload)
                elif kind == wire.STATE:
                    with self.lock:
                        self.ingest.state(device, msg.payload)
                    if self.alerts:
                        self.alerts.poke()
                else:
                    self._result(device, msg.payload)
            except Exception as e:  # noqa: BLE001 - one bad message must not stop the server
                # stored nothing and no ack to the board: the board sends the batch again
                self.errors += 1
                self.log(f"server: {msg.topic}: {type(e).__name__}: {e}")
            self._settle(connection, msg)

    def _batch(self, device, payload):
        with self.lock:
            out = self.ingest.batch(device, payload)
        self.batches += 1
        for kind, seq, detail in out.problems:
            self.log(f"server: {device}: {kind} at {seq}: {detail}")
        if out.stale:
            self.stale += 1
            self.log(f"server: {device}: stale batch (sent before records the ledger holds "
                     f"up to {out.ack}): counted, not a problem")
        self.client.publish(wire.topic(device, wire.ACKS),
                            self.ingest.ack_message(device, out.ack), qos=1, retain=True)
        if self.alerts and (out.stored or out.problems):
            self.alerts.poke()  # the engine looks on its own thread: ingest goes on

    def _result(self, device, payload):
        try:
            res = json.loads(bytes(payload))
        except ValueError:
            res = {"raw": bytes(payload).hex()}
        res["device"] = device
        res["at"] = time.time()
        cid = res.get("cmd")
        if cid:
            # started / done / duplicate / refused / invalid / error (docs/sync.md)
            with self.lock, self.store.transaction() as tx:
                tx.execute(
                    "UPDATE commands SET status = ?, result = ?, done_at = ? WHERE id = ?",
                    (res.get("result", "?"), json.dumps(res), res["at"], cid),
                )
        if cid:
            self.ota.handle(device, "reply", res)  # an update offer's reply, maybe
        self.results.append(res)
        if self.alerts and cid:
            self.alerts.poke()  # a status reply may say the journal is filling
        if self.on_result:
            self.on_result(res)

    def result_for(self, cid, after=0, timeout=10.0):
        """Wait for the board's reply to command `cid` (hex) among the replies that came
        after index `after` (what send_command returned); None if none came."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.results[after:]:
                if cid is None or r.get("cmd") == cid:
                    return r
            time.sleep(0.02)
        return None

    # ---- commands
    def send_command(self, device, cid, kind, body, args=None, expires=None):
        """Publish a signed command (bytes) to a board and keep it in the commands table
        (`cid` as hex). Sending the same id again (a retry) keeps one row."""
        now = time.time()
        with self.lock, self.store.transaction() as tx:
            tx.execute(
                "INSERT INTO commands (id, device, kind, args, body, created, expires, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'sent') ON CONFLICT (id) DO UPDATE SET "
                "status = 'sent', body = excluded.body",
                (cid, device, kind, json.dumps(args or {}), body, now, expires),
            )
        mark = len(self.results)
        info = self.client.publish(wire.topic(device, wire.COMMANDS), body, qos=1)
        info.wait_for_publish(timeout=10)
        return mark  # for result_for(cid, after=mark)


def send_command(store_url, site_key, broker_url, device, payload, cid, kind, args=None,
                 ca=None, wait_s=10.0):
    """`washpay server command`: publish one signed command, record it in the ledger's
    commands table, and wait for the board's reply (None if none came in `wait_s`).

    A short-lived client of its own (not the ingest group's): it takes no batches."""
    import os
    import queue

    import paho.mqtt.client as mqtt

    (host, port), tls = parse_urls(broker_url)[0][0], parse_urls(broker_url)[1]
    store = open_store(store_url)
    replies = queue.SimpleQueue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"washpay-cmd-{os.getpid()}",
                    clean_session=True)
    c.username_pw_set(B.SERVER_USER, B.server_password(site_key))
    if tls:
        if not ca:
            raise ServiceError("an mqtts:// broker needs --ca (the site CA, PEM)")
        c.tls_set(ca_certs=str(ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    subscribed = threading.Event()
    c.on_message = lambda cl, u, m: replies.put(bytes(m.payload))
    c.on_subscribe = lambda *a: subscribed.set()
    try:
        c.connect(host, port, keepalive=30)
    except OSError as e:
        store.close()
        raise ServiceError(f"no connection to the broker at {host}:{port}: "
                           f"{e.strerror or e}") from None
    c.loop_start()
    try:
        c.subscribe(wire.topic(device, wire.RESULTS), qos=1)
        subscribed.wait(5)
        now = time.time()
        with store.transaction() as tx:
            tx.execute(
                "INSERT INTO commands (id, device, kind, args, body, created, status) "
                "VALUES (?, ?, ?, ?, ?, ?, 'sent') ON CONFLICT (id) DO UPDATE SET "
                "status = 'sent', body = excluded.body",
                (cid, device, kind, json.dumps(args or {}, default=str), payload, now),
            )
        c.publish(wire.topic(device, wire.COMMANDS), payload, qos=1).wait_for_publish(10)
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                res = json.loads(replies.get(timeout=left))
            except queue.Empty:
                return None
            except ValueError:
                continue
            if res.get("cmd") in (cid, None):
                with store.transaction() as tx:
                    tx.execute("UPDATE commands SET status = ?, result = ?, done_at = ? "
                               "WHERE id = ?",
                               (res.get("result", "?"), json.dumps(res), time.time(), cid))
                return res
    finally:
        c.loop_stop()
        c.disconnect()
        store.close()
