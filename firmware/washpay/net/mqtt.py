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
#   c = MQTTClient(..., max_packet=1043, lend=2129)  # the buffer, lent between packets:
#   mv = await c.borrow()      # waits while the reader is inside a packet
#   try: ...fill mv, await c.publish(topic, mv[:n], headroom=HEADROOM)...
#   finally: c.give_back()     # the reader waits for it before it reads a packet's body
#
# Incoming packets land in one buffer made at construction; outgoing headers are built in
# another, so a publish allocates nothing but what the stream layer does. The uploader's
# batches are built in the same buffer (issue 13: one buffer of the two, about 1 KiB of
# heap less): a batch needs it from filling to the end of its publish, a packet from its
# body's first byte to the end of its handling, and `borrow` keeps the two apart. An incoming QoS 1
# message is acknowledged after on_message returns: a handler that journals a command before
# returning gets it again if the board dies first, never loses it.
#
# Any number of tasks may publish at once. What they share is guarded: a header is built
# and written while its task holds the write lock (a frame leaves whole, never one task's
# header with another's payload); the read buffers belong to the one reader task of the
# connection; a task that waits for an acknowledgement holds one of _WAITERS slots, taken
# before its packet leaves (so the ack cannot come first), and a connection that ends wakes
# every waiter with the loss. A packet from the broker that MQTT 3.1.1 does not allow here
# (wrong length, reserved flags, a type a client never receives) ends the connection with
# the reason; nothing in it is acted on.
import asyncio
from time import ticks_diff, ticks_ms

from micropython import const

from washpay import use

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
_WAITERS = const(8)  # tasks waiting for an acknowledgement at once; more wait for a slot
_PENDING = const(-1)  # a waiter slot's value until its acknowledgement comes
_LOST = const(-2)  # ... or its connection ends
_ACK_WAIT_MS = const(10000)
_SETUP = ("washpay.net.setup",)

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
    def __init__(self, client_id, user=None, password=None, keepalive=60, max_packet=2048,
                 lend=0):
        self.client_id = client_id
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.on_message = None
        self.lost = asyncio.Event()
        self.error = None  # why the connection ended, for the log and status
        # a packet longer than max_packet is refused (a PUBLISH: dropped) whatever the size
        # of the buffer, which is `lend` bytes when a borrower wants more
        self.max_packet = max_packet
        self._buf = bytearray(max(max_packet, lend))
        self._mv = memoryview(self._buf)
        self._lent = False  # a borrower has the buffer
        self._in_packet = False  # the reader has the buffer
        self._one = bytearray(1)
        self._head = bytearray(HEADROOM)
        self._puback = bytearray(b"\x40\x02\x00\x00")
        self._want = [0] * _WAITERS  # kind << 16 | packet id awaited in each slot; 0: free
        self._got = [0] * _WAITERS  # its acknowledgement's value, _PENDING or _LOST
        self._event = asyncio.Event()
        self._wlock = asyncio.Lock()
        self._pid = 0
        self._r = self._w = None
        self._tasks = []
        self._last_rx = self._last_tx = 0
        self.connack = -1
        self.sent = self.received = 0  # bytes on the wire, as MQTT sees them

    # ---- connection
    def connect(self, reader, writer, clean=True, will=None, timeout_ms=_ACK_WAIT_MS):
        """Send CONNECT on an open stream pair; return (await) the broker's session-present
        flag. `will` is (topic, message, retain): published at QoS 1 by the broker if this
        connection dies without a DISCONNECT. The sign-in's code is net/setup.py's, loaded
        for each connection and dropped after it (washpay.use)."""
        return use(_SETUP, "connect", self, reader, writer, clean, will, timeout_ms)

    def close(self):
        """Drop the connection now (no DISCONNECT): tasks first, then the socket."""
        self._fail(self.error or "closed")

    async def disconnect(self):
        """Say goodbye (the broker then discards the will) and close."""
        self.error = self.error or "disconnected"
        try:
            await asyncio.wait_for_ms(self._send(-1, b"\xe0\x00"), 2000)
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
        got = self._got
        for i in range(_WAITERS):
            if self._want[i] and got[i] == _PENDING:
                got[i] = _LOST  # its packet went out on this connection: no ack will come
        self.lost.set()
        self._event.set()  # waiters see the loss

    # ---- sending
    async def _send(self, slot, *parts):
        """Write one packet (`parts` in order) under the write lock. `slot` (or -1) is the
        waiter slot of its acknowledgement: armed here, for the connection it leaves on."""
        async with self._wlock:
            w = self._w
            if w is None:
                raise MQTTError(self.error or "not connected")
            self._write(slot, parts)
            await self._drain(w)

    def _write(self, slot, parts):
        # call with the write lock held; synchronous, so a frame goes to the stream whole
        if slot >= 0:
            self._got[slot] = _PENDING
        w = self._w
        try:
            for p in parts:
                w.write(p)  # the stream sends or copies it: the buffer is free again after
                self.sent += len(p)
        except OSError as e:
            self._broken(w, e)
            raise

    async def _drain(self, w):
        try:
            await w.drain()
        except OSError as e:
            self._broken(w, e)
            raise
        self._last_tx = ticks_ms()

    def _broken(self, w, e):
        # part of a frame may be out: this connection cannot carry another one
        if w is self._w:
            self._fail("write failed: %s" % (str(e) or type(e).__name__))

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
        pid = self._next_pid() if qos else 0
        slot = await self._slot(_K_PUBACK << 16 | pid) if qos and wait else -1
        try:
            async with self._wlock:
                w = self._w
                if w is None:
                    raise MQTTError(self.error or "not connected")
                # the shared header is filled only now, with the lock held, up to the write
                h = self._head
                h[0] = _PUBLISH | (qos << 1) | (1 if retain else 0)
                size = 2 + n + len(payload) - headroom + (2 if qos else 0)
                pos = _put_str(h, _put_len(h, 1, size), topic)
                if qos:
                    h[pos] = pid >> 8
                    h[pos + 1] = pid & 0xFF
                    pos += 2
                if headroom:
                    start = headroom - pos
                    payload[start:headroom] = memoryview(h)[:pos]
                    self._write(slot, (payload[start:],))
                else:
                    self._write(slot, (memoryview(h)[:pos], payload))
                await self._drain(w)
            if slot >= 0:
                await self._wait(slot, timeout_ms, "PUBACK")
        finally:
            self._free(slot)
        return pid

    async def subscribe(self, topic, qos=1, timeout_ms=_ACK_WAIT_MS):
        pid = self._next_pid()
        slot = await self._slot(_K_SUBACK << 16 | pid)
        try:
            async with self._wlock:
                w = self._w
                if w is None:
                    raise MQTTError(self.error or "not connected")
                h = self._head
                h[0] = _SUBSCRIBE
                pos = _put_len(h, 1, 2 + 2 + len(topic) + 1)
                h[pos] = pid >> 8
                h[pos + 1] = pid & 0xFF
                pos = _put_str(h, pos + 2, topic)
                h[pos] = qos
                self._write(slot, (memoryview(h)[: pos + 1],))
                await self._drain(w)
            granted = await self._wait(slot, timeout_ms, "SUBACK")
        finally:
            self._free(slot)
        if granted & 0x80:
            raise MQTTError("subscription to %s refused by the broker" % topic.decode())
        return granted

    # ---- waiting for the broker
    async def _slot(self, key):
        """Take a waiter slot for the acknowledgement `key`, waiting while all are taken."""
        want = self._want
        while True:
            for i in range(_WAITERS):
                if not want[i]:
                    want[i] = key
                    self._got[i] = _PENDING
                    return i
            self._event.clear()
            await self._event.wait()

    def _free(self, slot):
        if slot >= 0:
            self._want[slot] = 0
            self._event.set()  # a task waiting for a slot may take it

    async def _wait(self, slot, timeout_ms, what):
        try:
            return await asyncio.wait_for_ms(self._until(slot), timeout_ms)
        except asyncio.TimeoutError:
            why = "no %s from the broker within %d ms" % (what, timeout_ms)
            self._fail(why)
            raise MQTTError(why)

    async def _until(self, slot):
        got = self._got
        while True:
            v = got[slot]
            if v == _LOST:
                raise MQTTError(self.error or "connection lost")
            if v != _PENDING:
                return v
            # nothing else runs between the check and the wait: no set() can slip between
            self._event.clear()
            await self._event.wait()

    def _ack(self, key, value=0):
        # an ack nobody waits for (a publish without wait) is dropped
        want = self._want
        for i in range(_WAITERS):
            if want[i] == key and self._got[i] == _PENDING:
                self._got[i] = value
                self._event.set()
                return

    # ---- the buffer, lent between packets
    async def borrow(self):
        """The whole buffer (a memoryview), once the reader is between packets; the
        reader then waits before reading a packet's body until give_back()."""
        while self._in_packet or self._lent:
            self._event.clear()  # nothing runs between the check and the wait
            await self._event.wait()
        self._lent = True
        return self._mv

    def give_back(self):
        self._lent = False
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
        size = self.max_packet
        try:
            while True:
                if self._in_packet:  # the last packet is handled: a borrower may have it
                    self._in_packet = False
                    self._event.set()
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
                if kind != _PUBLISH:
                    _check_fixed(first, n)  # before reading: nothing of it is used if wrong
                if self.connack < 0 and kind != _CONNACK:
                    raise MQTTError("the broker sent packet type %d before CONNACK" % (first >> 4))
                if n > size and kind != _PUBLISH:
                    raise MQTTError("a %d-byte packet does not fit the %d-byte buffer"
                                    % (n, size))
                while self._lent:  # a batch being built or sent: wait for it
                    self._event.clear()
                    await self._event.wait()
                self._in_packet = True
                if n:
                    await self._read_into(mv[: min(n, size)])  # a longer PUBLISH: its start
                self._last_rx = ticks_ms()
                if kind == _PUBLISH:
                    await self._incoming(first, n)
                elif kind == _PUBACK:
                    self._ack(_K_PUBACK << 16 | buf[0] << 8 | buf[1])
                elif kind == _SUBACK:
                    if buf[2] not in (0, 1, 2, 0x80):
                        raise MQTTError("malformed SUBACK from the broker: return code %d"
                                        % buf[2])
                    self._ack(_K_SUBACK << 16 | buf[0] << 8 | buf[1], buf[2])
                elif kind == _CONNACK:
                    if self.connack >= 0 or buf[0] & 0xFE:
                        raise MQTTError("malformed CONNACK from the broker")
                    self.connack = (buf[0] & 1) << 8 | buf[1]
                    self._ack(_K_CONNACK << 16)
                # PINGRESP only refreshes _last_rx
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the connection is gone, whatever broke it
            self._fail(str(e) or type(e).__name__)
        finally:
            if self._in_packet:  # cancelled or failed inside a packet: a borrower may go on
                self._in_packet = False
                self._event.set()

    async def _incoming(self, first, n):
        buf = self._buf
        size = self.max_packet
        qos = (first >> 1) & 3
        if qos == 3:
            raise MQTTError("malformed PUBLISH from the broker: QoS 3")
        if qos == 2:
            raise MQTTError("the broker sent QoS 2, which this client never asks for")
        # what the topic length and packet id claim must lie inside this packet: bytes past
        # its end are an earlier packet's
        tl = buf[0] << 8 | buf[1] if n >= 2 else 0
        pos = 2 + tl + (2 if qos else 0)
        if not tl or pos > n:
            raise MQTTError("malformed PUBLISH from the broker: %d bytes, topic length %d%s"
                            % (n, tl, " and packet id" if qos else ""))
        if pos > size:
            raise MQTTError("a %d-byte topic does not fit the buffer" % tl)
        pid = 0
        if qos:
            pid = buf[pos - 2] << 8 | buf[pos - 1]
            if not pid:
                raise MQTTError("malformed PUBLISH from the broker: packet id 0")
        topic = bytes(self._mv[2 : 2 + tl])
        payload = self._mv[pos:n]
        if n > size:
            # longer than the buffer (a command over its size limit): read the rest and drop
            # it, and acknowledge it like any other. Left unacknowledged it would come again
            # on every connection (the session is persistent) and take the link down each
            # time; the handler hears of it (payload None) and can refuse it.
            left = n - size
            while left:
                k = min(left, size)
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
            a = self._puback  # the reader's own: only this task fills it
            a[2] = pid >> 8
            a[3] = pid & 0xFF
            await self._send(-1, a)

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
                    await self._send(-1, b"\xc0\x00")  # PINGREQ
                except Exception as e:  # noqa: BLE001
                    self._fail(str(e) or type(e).__name__)
                    return


def _check_fixed(first, n):
    """Refuse a packet other than PUBLISH unless MQTT 3.1.1 allows it to a client with
    exactly this length and zero flags (a SUBACK answers one topic: this client's)."""
    kind = first & 0xF0
    if kind == _CONNACK:
        what, want = "CONNACK", 2
    elif kind == _PUBACK:
        what, want = "PUBACK", 2
    elif kind == _SUBACK:
        what, want = "SUBACK", 3
    elif kind == _PINGRESP:
        what, want = "PINGRESP", 0
    else:
        raise MQTTError("the broker sent packet type %d, which a client never receives"
                        % (first >> 4))
    if n != want or first & 0x0F:
        raise MQTTError("malformed %s from the broker: %d bytes, flags %d (MQTT 3.1.1: %d, 0)"
                        % (what, n, first & 0x0F, want))
