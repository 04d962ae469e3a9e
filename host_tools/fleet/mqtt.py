"""A minimal asyncio MQTT 3.1.1 client: what a board uses of MQTT, for thousands of boards
in one process (one socket and one reader task each, no thread).

paho-mqtt runs a network thread per client (loop_start) or needs an external select loop
per client; a fleet of thousands wants neither. A board needs only this: CONNECT with user,
password, keepalive, a persistent session and a will; SUBSCRIBE at QoS 1; PUBLISH at QoS 0
and 1 (PUBACK awaited or not); incoming PUBLISH at QoS 0 and 1, acknowledged only after
the handler returned (as the firmware's mqtt.py: a command is journaled before the broker
drops its copy); PINGREQ when idle.

    c = MQTTClient("laundry-7", user="laundry-7", password=pw, keepalive=30)
    present = await c.connect("127.0.0.1", 1883, clean=False, will=(topic, b"offline", True))
    await c.subscribe("wp/laundry-7/ack", 1)
    await c.publish("wp/laundry-7/j", batch, qos=1, wait=False)
    ...
    c.close()
"""

import asyncio
import socket
import struct
import time

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
_REFUSED = {1: "protocol version refused", 2: "client id refused", 3: "server unavailable",
            4: "bad user name or password", 5: "not authorised"}


class MQTTError(OSError):
    """The broker refused us, or the connection broke; the text says which."""


def _length(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s):
    b = s.encode() if isinstance(s, str) else bytes(s)
    return struct.pack(">H", len(b)) + b


def packet(kind, flags, body):
    return bytes([kind << 4 | flags]) + _length(len(body)) + body


class MQTTClient:
    def __init__(self, client_id, user=None, password=None, keepalive=30):
        self.client_id = client_id
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.on_message = None  # fn(topic str, payload bytes, retained bool), synchronous
        self.error = None  # why the connection ended (None while it lives)
        self.lost = asyncio.Event()
        self._reader = self._writer = None
        self._task = None
        self._pid = 0
        self._waiting = {}  # packet id -> future (PUBACK, SUBACK)
        self._sent_at = 0.0

    # ---- connection
    async def connect(self, host, port, clean=False, will=None, timeout=10.0):
        """Open the socket and sign in; returns the broker's session-present flag."""
        self.error = None
        self.lost = asyncio.Event()
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), timeout)
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            # batches then a wait for the ack: no Nagle delay on the round trip
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flags = 0 if not clean else 0x02
        payload = _str(self.client_id)
        if will:
            topic, message, retain = will
            flags |= 0x04 | (0x08) | (0x20 if retain else 0)  # will, QoS 1, retain
            payload += _str(topic) + _str(message)
        if self.user is not None:
            flags |= 0x80
            payload += _str(self.user)
        if self.password is not None:
            flags |= 0x40
            payload += _str(self.password)
        body = _str("MQTT") + bytes([4, flags]) + struct.pack(">H", self.keepalive) + payload
        self._send(packet(CONNECT, 0, body))
        try:
            kind, _, data = await asyncio.wait_for(self._read_packet(), timeout)
        except asyncio.TimeoutError:
            self.close()
            raise MQTTError(f"no CONNACK within {timeout:.0f} s") from None
        except (OSError, asyncio.IncompleteReadError) as e:
            self.close()
            raise MQTTError(f"connection lost at sign-in: {e}") from None
        if kind != CONNACK or len(data) != 2:
            self.close()
            raise MQTTError("the broker did not answer CONNECT with a CONNACK")
        if data[1]:
            self.close()
            raise MQTTError(f"broker refused the connection: "
                            f"{_REFUSED.get(data[1], data[1])}")
        self._task = asyncio.create_task(self._read_loop())
        return bool(data[0] & 1)

    def close(self, why=None):
        if self.error is None:
            self.error = why or "closed"
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(MQTTError(self.error))
        self._waiting.clear()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._task = None
        self.lost.set()

    async def disconnect(self):
        if self._writer is not None:
            self._send(packet(DISCONNECT, 0, b""))
            await self._writer.drain()
        self.close("disconnected")

    # ---- sending
    def _send(self, data):
        if self._writer is None:
            raise MQTTError(self.error or "not connected")
        self._writer.write(data)
        self._sent_at = time.monotonic()

    def _next_pid(self):
        self._pid = self._pid % 0xFFFF + 1
        return self._pid

    async def publish(self, topic, payload, qos=0, retain=False, wait=True):
        body = _str(topic)
        fut = None
        if qos:
            pid = self._next_pid()
            body += struct.pack(">H", pid)
            if wait:
                fut = asyncio.get_running_loop().create_future()
                self._waiting[pid] = fut
        self._send(packet(PUBLISH, (qos << 1) | (1 if retain else 0), body + bytes(payload)))
        await self._writer.drain()
        if fut is not None:
            await fut

    async def subscribe(self, topic, qos=1):
        pid = self._next_pid()
        fut = asyncio.get_running_loop().create_future()
        self._waiting[pid] = fut
        self._send(packet(SUBSCRIBE, 2, struct.pack(">H", pid) + _str(topic) + bytes([qos])))
        granted = await fut
        if granted == 0x80:
            raise MQTTError(f"the broker refused the subscription to {topic}")
        return granted

    # ---- receiving
    async def _read_packet(self):
        r = self._reader
        first = (await r.readexactly(1))[0]
        n = shift = 0
        while True:
            b = (await r.readexactly(1))[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
            if shift > 21:
                raise MQTTError("malformed remaining length")
        data = await r.readexactly(n) if n else b""
        return first >> 4, first & 0x0F, data

    async def _read_loop(self):
        pinger = asyncio.create_task(self._ping())
        try:
            while True:
                kind, flags, data = await self._read_packet()
                if kind == PUBLISH:
                    self._publish_in(flags, data)
                elif kind in (PUBACK, SUBACK):
                    pid = struct.unpack_from(">H", data)[0]
                    fut = self._waiting.pop(pid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(data[2] if kind == SUBACK else None)
                # PINGRESP: the read itself is the proof of life
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.IncompleteReadError, MQTTError) as e:
            self.close(f"connection lost: {e or type(e).__name__}")
        except Exception as e:  # noqa: BLE001 - a handler's fault ends this session, as on a board
            self.close(f"session: {e!r}")
        finally:
            pinger.cancel()

    def _publish_in(self, flags, data):
        tlen = struct.unpack_from(">H", data)[0]
        topic = data[2 : 2 + tlen].decode()
        pos = 2 + tlen
        qos = (flags >> 1) & 3
        pid = None
        if qos:
            pid = struct.unpack_from(">H", data, pos)[0]
            pos += 2
        if self.on_message:
            self.on_message(topic, data[pos:], bool(flags & 1))
        if qos == 1:  # acknowledged only once handled
            self._send(packet(PUBACK, 0, struct.pack(">H", pid)))

    async def _ping(self):
        period = max(1.0, self.keepalive / 2)
        while True:
            await asyncio.sleep(period)
            if time.monotonic() - self._sent_at >= period and self._writer is not None:
                self._send(packet(PINGREQ, 0, b""))
