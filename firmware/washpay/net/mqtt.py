# A small MQTT 3.1.1 client on asyncio streams, written for this firmware.
#
# It speaks to any broker over a stream pair the caller opened (plain TCP or TLS: link.py
# opens them), so the protocol knows nothing about Wi-Fi or certificates. QoS 0 and 1 both
# ways (a subscription never asks for QoS 2); keepalive pings, and a connection whose broker
# stays silent for 1.5 keepalive periods is declared half-open and closed.
#
#   c = MQTTClient(b"dev-1", user=b"dev-1", password=b"...", keepalive=30)
#   c.on_message = fn          # fn(topic: bytes, payload: memoryview, retained: bool);
#                              # the payload is valid only during the call: copy to keep;
#                              # None: a message longer than the buffer (read and dropped)
#   present = await c.connect(reader, writer, clean=False, will=(topic, msg, retain))
#   await c.subscribe(b"wp/dev-1/cmd", qos=1)
#   await c.publish(b"wp/dev-1/j", data, qos=1)   # returns once the broker's PUBACK is in
#   await c.lost.wait()        # set when the connection ends, for whatever reason
#   c.close()
#
# Incoming packets land in one buffer made at construction; outgoing headers are built in
# another, so a publish allocates nothing but what the stream layer does. An incoming QoS 1
# message is acknowledged after on_message returns: a handler that journals a command before
# returning gets it again if the board dies first, never loses it.
import asyncio
from time import ticks_diff, ticks_ms

from micropython import const

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)
# waiters look acknowledgements up by kind << 16 | packet id (small ints on a 32-bit port)
_K_CONNACK = const(2)
_K_PUBACK = const(4)
_K_SUBACK = const(9)
_TOPIC_MAX = const(64)  # longest topic this client publishes to
HEADROOM = const(5 + 2 + _TOPIC_MAX + 2)  # the largest PUBLISH header this client writes
_DONE_SLOTS = const(16)  # acknowledgements remembered for waiters
_ACK_WAIT_MS = const(10000)

CONNACK_ERRORS = (
    "",
    "the broker refused protocol level 4 (MQTT 3.1.1)",
    "the broker refused the client id",
    "the broker is unavailable",
    "bad user name or password",
    "not authorised",
)


class MQTTError(Exception):
    pass


def _put_len(buf, pos, n):
    """Encode the remaining length `n` at buf[pos:]; return the position after it."""
    while True:
        b = n & 0x7F
        n >>= 7
        buf[pos] = b | 0x80 if n else b
        pos += 1
        if not n:
            return pos


def _put_str(buf, pos, s):
    n = len(s)
    buf[pos] = n >> 8
    buf[pos + 1] = n & 0xFF
    buf[pos + 2 : pos + 2 + n] = s
    return pos + 2 + n


class MQTTClient:
    def __init__(self, client_id, user=None, password=None, keepalive=60, max_packet=2048):
        self.client_id = client_id
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.on_message = None
        self.lost = asyncio.Event()
        self.error = None  # why the connection ended, for the log and status
        self._buf = bytearray(max_packet)
        self._mv = memoryview(self._buf)
        self._one = bytearray(1)
        self._head = bytearray(HEADROOM)
        self._puback = bytearray(b"\x40\x02\x00\x00")
        self._ping = b"\xc0\x00"
        self._done = [0] * _DONE_SLOTS  # (packet type << 16 | packet id) of recent acks
        self._done_at = 0
        self._event = asyncio.Event()
        self._wlock = asyncio.Lock()
        self._pid = 0
        self._r = self._w = None
        self._tasks = []
        self._last_rx = self._last_tx = 0
        self.connack = -1
        self.sent = self.received = 0  # bytes on the wire, as MQTT sees them

    # ---- connection
    async def connect(self, reader, writer, clean=True, will=None, timeout_ms=_ACK_WAIT_MS):
        """Send CONNECT on an open stream pair; return the broker's session-present flag.

        `will` is (topic, message, retain): published at QoS 1 by the broker if this
        connection dies without a DISCONNECT.
        """
        self._r, self._w = reader, writer
        self.lost = asyncio.Event()
        self.error = None
        self.connack = -1
        for i in range(_DONE_SLOTS):
            self._done[i] = 0
        flags = 0x02 if clean else 0
        size = 10 + 2 + len(self.client_id)
        if will:
            flags |= 0x04 | 0x08 | (0x20 if will[2] else 0)  # will, QoS 1, retain
            size += 4 + len(will[0]) + len(will[1])
        if self.user is not None:
            flags |= 0x80
            size += 2 + len(self.user)
        if self.password is not None:
            flags |= 0x40
            size += 2 + len(self.password)
        pkt = bytearray(size + 5)
        pkt[0] = _CONNECT
        pos = _put_len(pkt, 1, size)
        pos = _put_str(pkt, pos, b"MQTT")
        pkt[pos] = 4  # protocol level: 3.1.1
        pkt[pos + 1] = flags
        pkt[pos + 2] = self.keepalive >> 8
        pkt[pos + 3] = self.keepalive & 0xFF
        pos = _put_str(pkt, pos + 4, self.client_id)
        if will:
            pos = _put_str(pkt, pos, will[0])
            pos = _put_str(pkt, pos, will[1])
        if self.user is not None:
            pos = _put_str(pkt, pos, self.user)
        if self.password is not None:
            pos = _put_str(pkt, pos, self.password)
        self._last_rx = ticks_ms()
        try:
            await self._send(memoryview(pkt)[:pos])
        except (OSError, ValueError) as e:
            # the TLS layer reports a certificate it refuses as ValueError, with the reason
            why = "cannot reach the broker: %s" % (str(e).strip() or type(e).__name__)
            self._fail(why)
            raise MQTTError(why)
        self._tasks.append(asyncio.create_task(self._reader()))
        await self._wait(_K_CONNACK << 16, timeout_ms, "CONNACK")
        code = self.connack & 0xFF
        if code:
            why = CONNACK_ERRORS[code] if code < len(CONNACK_ERRORS) else "code %d" % code
            self._fail("connection refused: " + why)
            raise MQTTError("connection refused: " + why)
        if self.keepalive:
            self._tasks.append(asyncio.create_task(self._keepalive()))
        return bool(self.connack & 0x100)

    def close(self):
        """Drop the connection now (no DISCONNECT): tasks first, then the socket."""
        self._fail(self.error or "closed")

    async def disconnect(self):
        """Say goodbye (the broker then discards the will) and close."""
        self.error = self.error or "disconnected"
        try:
            await asyncio.wait_for_ms(self._send(b"\xe0\x00"), 2000)
        except Exception:  # noqa: S110 - closing anyway
            pass
        self.close()

    @property
    def connected(self):
        return self._w is not None and not self.lost.is_set()

    def _fail(self, why):
        if self.error is None:
            self.error = why
        cur = asyncio.current_task()
        for t in self._tasks:
            if t is not cur:
                t.cancel()
        self._tasks = []
        w = self._w
        if w is not None:
            self._w = None
            try:
                w.s.close()
            except OSError:
                pass
        self.lost.set()
        self._event.set()  # waiters see the loss

    # ---- sending
    async def _send(self, *parts):
        if self._w is None:
            raise MQTTError(self.error or "not connected")
        async with self._wlock:
            w = self._w
            if w is None:
                raise MQTTError(self.error or "not connected")
            for p in parts:
                w.write(p)
                self.sent += len(p)
            await w.drain()
            self._last_tx = ticks_ms()

    def _next_pid(self):
        self._pid = self._pid % 0xFFFF + 1
        return self._pid

    async def publish(self, topic, payload, qos=0, retain=False, wait=True,
                      timeout_ms=_ACK_WAIT_MS, headroom=0):
        """Publish `payload` (bytes-like) to `topic` (bytes); return the packet id (QoS 1)
        or 0. With QoS 1 and wait, return only after the broker's PUBACK.

        With `headroom` (at least HEADROOM), `payload` is a memoryview whose first
        `headroom` bytes are free: the packet header goes there and the whole packet leaves
        in one write (one TCP segment or TLS record, no Nagle stall between header and
        body), with no copy."""
        n = len(topic)
        if n > _TOPIC_MAX:
            raise MQTTError("topic longer than %d bytes" % _TOPIC_MAX)
        h = self._head
        h[0] = _PUBLISH | (qos << 1) | (1 if retain else 0)
        size = 2 + n + len(payload) - headroom + (2 if qos else 0)
        pos = _put_str(h, _put_len(h, 1, size), topic)
        pid = 0
        if qos:
            pid = self._next_pid()
            h[pos] = pid >> 8
            h[pos + 1] = pid & 0xFF
            pos += 2
        if headroom:
            start = headroom - pos
            payload[start:headroom] = memoryview(h)[:pos]
            await self._send(payload[start:])
        else:
            await self._send(memoryview(h)[:pos], payload)
        if qos and wait:
            await self._wait(_K_PUBACK << 16 | pid, timeout_ms, "PUBACK")
        return pid

    async def subscribe(self, topic, qos=1, timeout_ms=_ACK_WAIT_MS):
        pid = self._next_pid()
        h = self._head
        h[0] = _SUBSCRIBE
        pos = _put_len(h, 1, 2 + 2 + len(topic) + 1)
        h[pos] = pid >> 8
        h[pos + 1] = pid & 0xFF
        pos = _put_str(h, pos + 2, topic)
        h[pos] = qos
        await self._send(memoryview(h)[: pos + 1])
        granted = await self._wait(_K_SUBACK << 16 | pid, timeout_ms, "SUBACK")
        if granted & 0x80:
            raise MQTTError("subscription to %s refused by the broker" % topic.decode())
        return granted

    async def wait_puback(self, pid, timeout_ms=_ACK_WAIT_MS):
        await self._wait(_K_PUBACK << 16 | pid, timeout_ms, "PUBACK")

    # ---- waiting for the broker
    async def _wait(self, key, timeout_ms, what):
        try:
            return await asyncio.wait_for_ms(self._until(key), timeout_ms)
        except asyncio.TimeoutError:
            why = "no %s from the broker within %d ms" % (what, timeout_ms)
            self._fail(why)
            raise MQTTError(why)

    async def _until(self, key):
        done = self._done
        while True:
            for i in range(_DONE_SLOTS):
                v = done[i]
                if v >> 8 == key:
                    done[i] = 0
                    return v & 0xFF
            if self.lost.is_set():
                raise MQTTError(self.error or "connection lost")
            # nothing else runs between the check and the wait: no set() can slip between
            self._event.clear()
            await self._event.wait()

    def _ack(self, key, value=0):
        self._done[self._done_at] = key << 8 | value
        self._done_at = (self._done_at + 1) % _DONE_SLOTS
        self._event.set()

    # ---- receiving
    async def _read_into(self, mv):
        r = self._r
        got = 0
        n = len(mv)
        while got < n:
            k = await r.readinto(mv[got:] if got else mv)
            if k is None:
                continue  # TLS: a record is still incomplete
            if not k:
                raise MQTTError("the broker closed the connection")
            got += k
        self.received += n

    async def _reader(self):
        one = self._one
        buf = self._buf
        mv = self._mv
        try:
            while True:
                await self._read_into(one)
                first = one[0]
                n = 0
                shift = 0
                while True:
                    await self._read_into(one)
                    n |= (one[0] & 0x7F) << shift
                    if not one[0] & 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise MQTTError("malformed remaining length from the broker")
                kind = first & 0xF0
                if n > len(buf) and kind != _PUBLISH:
                    raise MQTTError("a %d-byte packet does not fit the %d-byte buffer"
                                    % (n, len(buf)))
                if n:
                    await self._read_into(mv[: min(n, len(buf))])  # a longer PUBLISH: its start
                self._last_rx = ticks_ms()
                if kind == _PUBLISH:
                    await self._incoming(first, n)
                elif kind == _PUBACK:
                    self._ack(_K_PUBACK << 16 | buf[0] << 8 | buf[1])
                elif kind == _SUBACK:
                    self._ack(_K_SUBACK << 16 | buf[0] << 8 | buf[1], buf[2])
                elif kind == _CONNACK:
                    self.connack = (buf[0] & 1) << 8 | buf[1]
                    self._ack(_K_CONNACK << 16)
                # PINGRESP only refreshes _last_rx; anything else is ignored
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the connection is gone, whatever broke it
            self._fail(str(e) or type(e).__name__)

    async def _incoming(self, first, n):
        buf = self._buf
        qos = (first >> 1) & 3
        if qos == 2:
            raise MQTTError("the broker sent QoS 2, which this client never asks for")
        tl = buf[0] << 8 | buf[1]
        pos = 2 + tl
        pid = 0
        if qos:
            if pos + 2 > len(buf):
                raise MQTTError("a %d-byte topic does not fit the buffer" % tl)
            pid = buf[pos] << 8 | buf[pos + 1]
            pos += 2
        topic = bytes(self._mv[2 : 2 + tl])
        payload = self._mv[pos:n]
        if n > len(buf):
            # longer than the buffer (a command over its size limit): read the rest and drop
            # it, and acknowledge it like any other. Left unacknowledged it would come again
            # on every connection (the session is persistent) and take the link down each
            # time; the handler hears of it (payload None) and can refuse it.
            left = n - len(buf)
            while left:
                k = min(left, len(buf))
                await self._read_into(self._mv[:k])
                left -= k
            payload = None
        cb = self.on_message
        if cb is not None:
            try:
                cb(topic, payload, bool(first & 1))
            except Exception as e:  # noqa: BLE001 - a handler's bug must not drop the link
                print("mqtt: message handler failed:", repr(e))
        if qos:
            a = self._puback
            a[2] = pid >> 8
            a[3] = pid & 0xFF
            await self._send(a)

    async def _keepalive(self):
        ka = self.keepalive * 1000
        while True:
            await asyncio.sleep_ms(ka // 4)
            now = ticks_ms()
            if ticks_diff(now, self._last_rx) > ka + ka // 2:
                self._fail("no answer from the broker for %d s: connection half-open"
                           % (ticks_diff(now, self._last_rx) // 1000))
                return
            # a blocked writer holds the lock: then the silence check above ends it
            quiet = ka // 2
            if (
                ticks_diff(now, self._last_tx) >= quiet or ticks_diff(now, self._last_rx) >= quiet
            ) and not self._wlock.locked():
                try:
                    await self._send(self._ping)
                except Exception as e:  # noqa: BLE001
                    self._fail(str(e) or type(e).__name__)
                    return
