"""One simulated board of the fleet: journal, link, uploader and commands, as the firmware
does them (firmware/washpay/net/: link.py, uploader.py, commands.py; docs/sync.md).

- Link: a persistent MQTT session (clean=False) signed in with the board's own derived
  credentials and its will ("offline", retained); every failed attempt waits the board's
  exponential backoff with full jitter (uniform between a quarter of the limit and the
  limit); a session that held `stable_ms` resets it, and so does the network coming back
  (the first try after that is immediate, as on a board).
- Uploader: batches of `batch` records (8) that double up to `max_batch` (32) while acks
  come back within half the ack timeout, at most `window` (2) batches in flight, each
  carrying the board's newest seq; every connection starts again from the acknowledged
  cursor; a batch not acknowledged within `ack_timeout_ms` is sent again in half the size,
  and each timeout in a row doubles the next wait (up to 8x; an ack in good time or a new
  connection resets it).
  The cursor moves only on an ack whose tag verifies, and never beyond the newest record.
- Commands: the tag, device binding, validity window and single-use check of the operator's
  commands; `status` and `clock` are executed, journaled (`command_done`) and answered as a
  board answers them; the other actions are answered `refused` and journaled
  (`command_refused`): a fleet board has no vend engine, price table or card list.

A board polls its journal for new records every 250 ms while nothing is in flight; here a
record appended wakes the uploader at the board's next 250 ms tick instead, which gives the
same latency without thousands of idle wake-ups a second.
"""

import asyncio
import hmac
import json
import random
import struct
import time
from hashlib import sha256

from host_tools import broker as B
from host_tools import keys as K
from host_tools.fleet.mqtt import MQTTClient
from host_tools.fleet.seal import BoardJournal
from host_tools.server import wire

# docs/sync.md, settings: the firmware's defaults (washpay/net/setup.py SETTINGS; host
# code does not import firmware modules: tests/test_fleet.py holds the two equal)
SETTINGS = {
    "keepalive_s": 30,
    "connect_timeout_ms": 10000,
    "backoff_min_ms": 1000,
    "backoff_max_ms": 60000,
    "stable_ms": 30000,
    "batch": 8,
    "max_batch": 16,
    "window": 2,
    "ack_timeout_ms": 15000,
}
POLL_S = 0.25  # the uploader's look for new records while idle
OUTBOX = 8  # command replies waiting for the link; older ones are dropped first
COMMAND_KIND = 0x12
COMMAND_HEAD = 32
COMMAND_TAG = 16
COMMAND_MAX = 1024
STATUS, CLOCK = 6, 5


class Backoff:
    """The board's backoff (link.py): attempt n waits between limit/4 and limit, where
    limit = min(cap, base * 2^n)."""

    def __init__(self, base_ms, cap_ms, rng=random):
        self.base_ms = base_ms
        self.cap_ms = cap_ms
        self.attempt = 0
        self.rng = rng

    def next_ms(self):
        limit = min(self.cap_ms, self.base_ms << min(self.attempt, 16))
        self.attempt += 1
        return limit // 4 + self.rng.getrandbits(16) * (limit - limit // 4) // 65535

    def reset(self):
        self.attempt = 0


class Board:
    def __init__(self, fleet, device_id, site_key, settings=None, node=0):
        self.fleet = fleet  # nodes [(host, port)], network (an asyncio.Event), stats
        self.node = node  # the broker node it tries next
        self.id = device_id
        self.settings = s = {**SETTINGS, **(settings or {})}
        self.journal = BoardJournal(site_key, device_id)
        secret = K.device_secret(site_key, device_id)
        self.password = B.device_password(site_key, device_id)
        self.ack_key = wire.ack_key(site_key, device_id)
        self.command_key = K.command_key(secret)
        self.device_hash = sha256(device_id.encode()).digest()[:4]
        self.t_ack = wire.topic(device_id, wire.ACKS)
        self.t_cmd = wire.topic(device_id, wire.COMMANDS)
        self.t_res = wire.topic(device_id, wire.RESULTS)
        self.t_state = wire.topic(device_id, wire.STATE)
        self.t_j = wire.topic(device_id, wire.JOURNAL)
        self.backoff = Backoff(s["backoff_min_ms"], s["backoff_max_ms"])
        self.max_batch = max(1, min(s["max_batch"], 255))
        self.batch = max(1, min(s["batch"], self.max_batch))
        self.acked = 0
        self.wait_ms = s["ack_timeout_ms"]  # doubles with each timeout in a row, up to 8x
        self.sent_seq = 0
        self.flight = []  # [last seq, sent at] oldest first
        self.appended_at = {}  # seq -> monotonic time it was sealed (for ack latency)
        self.wake = asyncio.Event()
        self.poll_phase = random.uniform(0, POLL_S)
        self.outbox = []
        self.used_commands = set()
        self.client = None
        self.state = "down"
        self.connects = self.failures = self.batches = self.records_sent = 0
        self.resends = self.acks = self.bad_acks = self.commands_done = 0
        self.last_error = None

    # ---- the board's trade
    def append(self, rtype, **fields):
        """Journal one event (sealed at once, as on a board); the uploader sends it."""
        self.journal.append(rtype, **fields)
        self.appended_at[self.journal.last_seq] = time.monotonic()
        if not self.flight:
            # the board's idle poll finds it at its next 250 ms tick (each board its phase)
            now = time.monotonic()
            asyncio.get_running_loop().call_later(
                POLL_S - (now - self.poll_phase) % POLL_S, self.wake.set)

    def flash_image(self):
        """A dump of the board's flash: its journal and sync cursor."""
        return self.journal.image(), self.acked

    def restore(self, image):
        """The flash written back with `image` (flash_image()) and the board booted again:
        journal and cursor are the image's, the uploader starts afresh, and the boot is
        journaled as every boot is (vend/boot.py). A rollback the server is to catch;
        call it while the board's network is down (a reboot drops the link)."""
        journal, self.acked = image
        self.journal.restore(journal)
        self.journal.boot += 1
        self.sent_seq = self.acked
        self.flight.clear()
        self.appended_at.clear()
        self.batch = max(1, min(self.settings["batch"], self.max_batch))
        self.wait_ms = self.settings["ack_timeout_ms"]
        self.append("boot", reason="power on")

    def status(self):
        return {"link": self.state, "acked": self.acked, "sent": self.sent_seq,
                "backlog": self.journal.last_seq - self.acked, "batch": self.batch,
                "batches": self.batches, "records_sent": self.records_sent,
                "resends": self.resends, "acks": self.acks, "bad_acks": self.bad_acks,
                "connects": self.connects, "error": self.last_error}

    # ---- link (link.py)
    async def run(self):
        net = self.fleet.network
        while True:
            if not net.is_set():
                self.state = "down"
                await net.wait()
                self.backoff.reset()  # a network that just came back: a prompt first try
            started = time.monotonic()
            try:
                await self._once()
            except asyncio.CancelledError:
                if self.client:
                    self.client.close("stopped")
                raise
            except Exception as e:  # noqa: BLE001 - every failure backs off the same way
                self.failures += 1
                self.node = (self.node + 1) % len(self.fleet.nodes)  # a cluster: the next
                self.last_error = str(e) or type(e).__name__
                self.fleet.stats.failure(self.last_error)
            held = time.monotonic() - started
            if self.state == "up" and held >= self.settings["stable_ms"] / 1000:
                self.backoff.reset()  # a session that held is not a failing one
            if not net.is_set():
                continue
            self.state = "backoff"
            await asyncio.sleep(self.backoff.next_ms() / 1000)

    async def _once(self):
        self.state = "connecting"
        s = self.settings
        c = MQTTClient(self.id, user=self.id, password=self.password, keepalive=s["keepalive_s"])
        c.on_message = self._message
        self.client = c
        t0 = time.monotonic()
        host, port = self.fleet.nodes[self.node]
        try:
            await c.connect(host, port, clean=False, will=(self.t_state, b"offline", True),
                            timeout=s["connect_timeout_ms"] / 1000)
        except asyncio.TimeoutError:
            c.close()
            raise OSError(f"no TCP connection to {host}:{port} within "
                          f"{s['connect_timeout_ms']} ms") from None
        self.state = "up"
        self.connects += 1
        self.fleet.stats.connected(time.monotonic(), time.monotonic() - t0)
        session = asyncio.create_task(self._session(c))
        lost = asyncio.create_task(c.lost.wait())
        down = asyncio.create_task(self.fleet.network_down.wait())
        try:
            await asyncio.wait([session, lost, down], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (session, lost, down):
                t.cancel()
            if not c.error and self.fleet.network_down.is_set():
                c.error = "network down"
            if session.done() and not session.cancelled() and session.exception():
                c.close(f"session: {session.exception()}")
            c.close()
        self.last_error = c.error

    # ---- session: subscribe, say online, upload, replies (net/__init__.py)
    async def _session(self, c):
        await c.subscribe(self.t_ack, 1)
        await c.subscribe(self.t_cmd, 1)
        await c.publish(self.t_state, b"online", qos=1, retain=True)
        self.fleet.stats.ready += 1
        replies = asyncio.create_task(self._replies(c))
        try:
            await self._upload(c)
        finally:
            replies.cancel()

    async def _replies(self, c):
        while True:
            while self.outbox:
                await c.publish(self.t_res, self.outbox[0], qos=1)
                self.outbox.pop(0)
            await asyncio.sleep(0.1)

    # ---- uploader (uploader.py)
    async def _upload(self, c):
        s = self.settings
        j = self.journal
        window = max(1, s["window"])
        self.sent_seq = self.acked  # whatever the last connection left in flight goes again
        self.wait_ms = s["ack_timeout_ms"]  # a new link starts from the board's setting
        fl = self.flight
        fl.clear()
        while True:
            self.wake.clear()
            while len(fl) < window and j.last_seq > self.sent_seq:
                recs = j.sealed(self.sent_seq, self.batch)
                last = recs[-1][0]
                await c.publish(self.t_j, wire.build_batch([r for _, r in recs], j.last_seq),
                                qos=1, wait=False)
                fl.append([last, time.monotonic()])
                self.sent_seq = last
                self.batches += 1
                self.records_sent += len(recs)
            if fl and time.monotonic() - fl[0][1] > self.wait_ms / 1000:
                self.resends += 1
                self.batch = max(1, self.batch // 2)
                self.last_error = f"no ack for records up to {fl[0][0]} within " \
                                  f"{self.wait_ms} ms"
                self.wait_ms = min(self.wait_ms * 2, s["ack_timeout_ms"] * 8)
                fl.clear()
                self.sent_seq = self.acked
                continue
            if not fl:
                await self.wake.wait()  # a new record, at the board's next poll tick
                continue
            try:
                await asyncio.wait_for(self.wake.wait(), 0.1)  # woken at once by an ack
            except asyncio.TimeoutError:
                pass

    def _on_ack(self, payload):
        try:
            seq = wire.parse_ack(self.ack_key, self.id, payload)
        except wire.WireError as e:
            self.bad_acks += 1
            self.last_error = f"ack refused: {e}"
            return
        if seq > self.journal.last_seq:
            self.bad_acks += 1
            self.last_error = (f"server acknowledges {seq}, but the newest record is "
                               f"{self.journal.last_seq}")
            return
        self.acks += 1
        if seq > self.acked:
            now = time.monotonic()
            lat = self.fleet.stats.latency
            for q in range(self.acked + 1, seq + 1):
                t = self.appended_at.pop(q, None)
                if t is not None:
                    lat.append(now - t)
            self.fleet.stats.acked += seq - self.acked
            fl = self.flight
            if fl and fl[0][0] <= seq and now - fl[0][1] < self.settings["ack_timeout_ms"] / 2000:
                self.batch = min(self.max_batch, self.batch * 2)
                self.wait_ms = self.settings["ack_timeout_ms"]
            while fl and fl[0][0] <= seq:
                self.fleet.stats.round_trip.append(now - fl.pop(0)[1])
            self.acked = seq
        self.sent_seq = max(self.sent_seq, self.acked)
        self.wake.set()

    def _message(self, topic, payload, retained):
        if topic == self.t_ack:
            self._on_ack(payload)
        elif topic == self.t_cmd:
            out = self.on_command(bytes(payload))
            if len(self.outbox) >= OUTBOX:
                self.outbox.pop(0)
            self.outbox.append(out)

    # ---- commands (commands.py): verify, execute what a fleet board can, journal, reply
    def on_command(self, p):
        def reply(result, cid=None, reason=None, **extra):
            r = {"result": result}
            if cid is not None:
                r["cmd"] = cid.hex()
            if reason:
                r["reason"] = reason
            r.update(extra)
            return json.dumps(r).encode()

        if len(p) > COMMAND_MAX:
            return reply("invalid", reason="command too long")
        if len(p) < COMMAND_HEAD + COMMAND_TAG or p[0] != COMMAND_KIND:
            return reply("invalid", reason="malformed command")
        m = struct.unpack_from(">H", p, 30)[0]
        if len(p) != COMMAND_HEAD + m + COMMAND_TAG:
            return reply("invalid", reason="malformed command")
        if p[17:21] != self.device_hash:
            return reply("invalid", reason="command for another device")
        tag = hmac.new(self.command_key, p[: COMMAND_HEAD + m], sha256).digest()[:COMMAND_TAG]
        if not hmac.compare_digest(tag, p[COMMAND_HEAD + m:]):
            return reply("invalid", reason="bad tag")
        cid = bytes(p[1:9])
        issued, expires = struct.unpack_from(">II", p, 21)
        action = p[29]
        body = p[COMMAND_HEAD : COMMAND_HEAD + m]
        now = int(time.time())
        why = None
        if cid in self.used_commands:
            why = "replayed: already executed"
        elif now > expires:
            why = "expired"
        elif issued > now + 300:
            why = "issued in the future"
        elif action not in (STATUS, CLOCK):
            why = f"action {action} not simulated (fleet board)"
        elif action == CLOCK and len(body) != 4:
            why = "malformed body"
        if why:
            self.append("command_refused", source=cid, source_kind="command", reason=why,
                        t=now)
            return reply("refused", cid, why)
        extra = {}
        if action == CLOCK:
            offset = struct.unpack(">I", body)[0] - now
            what, extra = f"clock {offset:+d} s", {"offset_s": offset}
        else:
            what, extra = "status", {"status": self.status()}
        self.append("command_done", source=cid, source_kind="command", reason=what, t=now)
        self.used_commands.add(cid)
        self.commands_done += 1
        return reply("done", cid, what, seq=self.journal.last_seq, **extra)
