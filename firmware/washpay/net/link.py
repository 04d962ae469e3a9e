# The connectivity manager: keeps one MQTT session to the broker whenever the network
# allows, and gets out of the way when it does not.
#
#   link = Link(wlan, broker, client, session)
#   asyncio.create_task(link.run())
#
# `wlan` is the board's network interface (network.WLAN on an ESP32, the simulated board's
# network flag on the sim): isconnected(), and connect(ssid, key) if Wi-Fi must be joined.
# `broker` is config.json's "broker" object; `client` an MQTTClient; `session(client,
# present)` a coroutine that does the work while connected (subscribe, upload, commands).
#
# Every step has a time limit: joining Wi-Fi, the TCP connect, the TLS handshake and the
# MQTT sign-in; a failure waits an exponential backoff with full jitter (a random time
# between zero and the current limit, so a fleet that lost its broker does not come back in
# step) before the next try. While connected the link watches the interface and the MQTT
# keepalive: when Wi-Fi drops or the broker goes silent, the socket is closed at once and
# the session task cancelled. Nothing here is awaited by the payment path.
import asyncio
import random
from errno import EINPROGRESS
from time import ticks_diff, ticks_ms

from micropython import const

_WATCH_MS = const(250)
_IPPROTO_TCP = const(6)
_TCP_NODELAY = const(1)

DOWN = "down"  # no network
CONNECTING = "connecting"
UP = "up"
BACKOFF = "backoff"


class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base*2^n))."""

    def __init__(self, base_ms=500, cap_ms=60000):
        self.base_ms = base_ms
        self.cap_ms = cap_ms
        self.attempt = 0

    def limit(self):
        limit = self.base_ms << min(self.attempt, 16)
        return limit if limit < self.cap_ms else self.cap_ms

    def next_ms(self):
        limit = self.limit()
        self.attempt += 1
        # the floor of a quarter keeps a flapping link from hammering the broker
        return limit // 4 + random.getrandbits(16) * (limit - limit // 4) // 65535

    def reset(self):
        self.attempt = 0


class Link:
    def __init__(self, wlan, broker, client, session, ssl=None, wifi=None, will=None, log=None):
        self.wlan = wlan
        self.host = broker["host"]
        self.port = broker["port"]
        self.server_hostname = broker.get("server_hostname") or self.host
        self.connect_ms = broker.get("connect_timeout_ms", 10000)
        self.stable_ms = broker.get("stable_ms", 30000)
        self.backoff = Backoff(broker.get("backoff_min_ms", 500),
                               broker.get("backoff_max_ms", 60000))
        self.client = client
        self.session = session
        self.ssl = ssl
        self.wifi = wifi  # (ssid, key) to join, or None if the interface joins by itself
        self.will = will  # (topic, message, retain) the broker publishes if we vanish
        self.log = log or (lambda *a: None)
        self.state = DOWN
        self.connects = 0  # sessions that reached CONNACK
        self.failures = 0
        self.last_error = None
        self._task = None

    async def run(self):
        while True:
            await self._network()
            started = ticks_ms()
            try:
                await self._once()
            except asyncio.CancelledError:
                self.client.close()
                raise
            except Exception as e:  # noqa: BLE001 - every failure backs off the same way
                self.failures += 1
                self.last_error = str(e) or type(e).__name__
                self.log("link:", self.last_error)
            if self.state == UP and ticks_diff(ticks_ms(), started) >= self.stable_ms:
                self.backoff.reset()  # a session that held is not a failing one
            if not self.wlan.isconnected():
                self.state = DOWN
                continue
            self.state = BACKOFF
            await asyncio.sleep_ms(self.backoff.next_ms())

    async def _network(self):
        """Wait until the interface is up, joining Wi-Fi when it is configured."""
        if self.wlan.isconnected():
            return
        self.state = DOWN
        while not self.wlan.isconnected():
            if self.wifi:
                try:
                    self.wlan.connect(self.wifi[0], self.wifi[1])
                except OSError as e:
                    self.last_error = "wifi: %s" % e
                t0 = ticks_ms()
                while not self.wlan.isconnected() and ticks_diff(ticks_ms(), t0) < self.connect_ms:
                    await asyncio.sleep_ms(_WATCH_MS)
                if self.wlan.isconnected():
                    break
                self.failures += 1
                self.last_error = "wifi: not joined within %d ms" % self.connect_ms
                await asyncio.sleep_ms(self.backoff.next_ms())
            else:
                await asyncio.sleep_ms(_WATCH_MS)
        self.backoff.reset()  # a network that just came back deserves a prompt first try

    async def _open(self):
        # As asyncio.open_connection, plus TCP_NODELAY: an upload is a batch, then a wait
        # for the server's ack; with Nagle's algorithm the next batch would wait for the
        # broker's delayed ACK of our last PUBACK (40 ms on Linux) every round trip.
        # getaddrinfo blocks on a name: configure the broker by address on boards, or
        # accept a short stall per attempt (never on the payment path, which reads coins
        # from the hardware counter). Connection errors surface on the first write.
        import socket

        ai = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0]
        s = socket.socket(ai[0], ai[1], ai[2])
        try:
            s.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
        except (OSError, ValueError):
            pass  # a stack without the option: slower round trips, nothing worse
        s.setblocking(False)
        try:
            s.connect(ai[-1])
        except OSError as e:
            if e.errno != EINPROGRESS:
                s.close()
                raise
        if self.ssl:
            s = self.ssl.wrap_socket(s, server_hostname=self.server_hostname,
                                     do_handshake_on_connect=False)
            s.setblocking(False)
        st = asyncio.StreamReader(s)
        return st, st

    async def _once(self):
        self.state = CONNECTING
        client = self.client
        try:
            reader, writer = await asyncio.wait_for_ms(self._open(), self.connect_ms)
        except asyncio.TimeoutError:
            raise OSError("no TCP connection to %s:%d within %d ms"
                          % (self.host, self.port, self.connect_ms))
        try:
            present = await client.connect(reader, writer, clean=False,
                                           will=self.will,
                                           timeout_ms=self.connect_ms)
        except BaseException:
            client.close()
            try:
                writer.s.close()
            except OSError:
                pass
            raise
        self.state = UP
        self.connects += 1
        self.last_error = None
        self.log("link: connected to %s:%d" % (self.host, self.port))
        task = asyncio.create_task(self._guard(client, present))
        self._task = task
        try:
            while True:
                if not self.wlan.isconnected():
                    client.error = "network down"
                    break
                if client.lost.is_set() or task.done():
                    break
                await asyncio.sleep_ms(_WATCH_MS)
        finally:
            if not task.done():
                task.cancel()
            client.close()
            self._task = None
        why = client.error or "session ended"
        self.last_error = why
        self.log("link: disconnected:", why)

    async def _guard(self, client, present):
        try:
            await self.session(client, present)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a failed session ends this connection
            if client.error is None:
                client.error = "session: %s" % (str(e) or type(e).__name__)
            client.close()
