"""The firmware's MQTT 3.1.1 client (washpay/net/mqtt.py) and connectivity manager
(washpay/net/link.py) under the real micropython, against a real Mosquitto on loopback,
plain and TLS, directly and through the fault proxy."""

import json

import pytest
from faultproxy import FaultProxy
from sync_env import SITE_KEY, MicroPythonScript, Observer, make_broker

from host_tools import broker as B

pytestmark = pytest.mark.device

PRELUDE = """
import asyncio, json
from washpay.net.mqtt import MQTTClient, MQTTError
from washpay.net.link import Link, Backoff
from washpay.net.setup import tls_context
CFG = json.loads(%r)
def ev(**kw):
    print(json.dumps(kw))
def client(user="dev-1", password=None, keepalive=30, cid=None):
    pw = CFG["passwords"].get(user, "") if password is None else password
    return MQTTClient((cid or user).encode(), user=user.encode(), password=pw.encode(),
                      keepalive=keepalive)
async def open_plain(port=None):
    return await asyncio.open_connection("127.0.0.1", port or CFG["port"])
async def open_tls(ca=None, hostname="localhost", port=None):
    ctx = tls_context(open(ca or CFG["ca"], "rb").read())
    return await asyncio.open_connection("127.0.0.1", port or CFG["tls_port"], ssl=ctx,
                                         server_hostname=hostname)
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    d = tmp_path_factory.mktemp("broker")
    b = make_broker(d).start()
    yield b
    b.stop()


@pytest.fixture
def observer(broker):
    o = Observer(broker)
    yield o
    o.close()


def cfg(broker, **extra):
    c = {
        "port": broker.port,
        "tls_port": broker.tls_port,
        "ca": str(broker.dir / "ca.der"),
        "passwords": {d: B.device_password(SITE_KEY, d) for d in ("dev-1", "dev-2")},
    }
    c.update(extra)
    return json.dumps(c)


def script(broker, body, **extra):
    return MicroPythonScript(PRELUDE % cfg(broker, **extra) + body)


def run(broker, body, timeout=60, **extra):
    s = script(broker, body, **extra)
    try:
        rc = s.wait(timeout)
    finally:
        s.close()
    assert rc == 0, s.log
    return s.events


def test_publish_subscribe_both_ways_plain(broker, observer):
    body = """
async def main():
    c = client()
    got = []
    c.on_message = lambda t, p, r: got.append((t.decode(), bytes(p).decode()))
    ev(present=await c.connect(*(await open_plain()), clean=True))
    ev(granted=await c.subscribe(b"wp/dev-1/cmd", qos=1))
    ev(ready=1)
    while not got:
        await asyncio.sleep_ms(20)
    ev(got=got)
    await c.publish(b"wp/dev-1/j", b"q1-" + bytes(range(256)) * 12, qos=1)
    await c.publish(b"wp/dev-1/res", b"q0", qos=0)
    await c.publish(b"wp/dev-1/state", b"online", qos=1, retain=True)
    await c.disconnect()
    ev(done=c.error, sent=c.sent, received=c.received)
asyncio.run(main())
"""
    s = script(broker, body)
    try:
        assert s.expect({"granted": 1})["granted"] == 1
        s.expect({"ready": 1})
        observer.publish("wp/dev-1/cmd", b"remote start", qos=1)
        assert s.expect(lambda e: "got" in e)["got"] == [["wp/dev-1/cmd", "remote start"]]
        t, p, _ = observer.get("wp/dev-1/j")
        assert p == b"q1-" + bytes(range(256)) * 12  # 3 KiB: a multi-byte remaining length
        assert observer.get("wp/dev-1/res")[1] == b"q0"
        t, p, retained = observer.get("wp/dev-1/state")
        assert p == b"online"
        done = s.expect(lambda e: "done" in e)
        assert done["done"] == "disconnected"
        assert done["sent"] > 3072
    finally:
        s.close()


def test_tls_with_the_site_ca(broker, observer):
    events = run(broker, """
async def main():
    c = client()
    ev(present=await c.connect(*(await open_tls()), clean=True))
    await c.publish(b"wp/dev-1/j", b"over tls", qos=1)
    await c.disconnect()
    ev(done=1)
asyncio.run(main())
""")
    assert {"done": 1} in events
    assert observer.get("wp/dev-1/j")[1] == b"over tls"


def test_tls_refuses_a_broker_the_ca_did_not_sign(broker, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    B.make_certificates(other)
    events = run(broker, """
async def main():
    for name, kw in (("foreign CA", {"ca": CFG["other_ca"]}),
                     ("wrong host name", {"hostname": "broker.example"})):
        c = client()
        try:
            await c.connect(*(await open_tls(**kw)), clean=True)
            ev(case=name, connected=True)
        except MQTTError as e:
            ev(case=name, connected=False, error=str(e))
        c.close()
asyncio.run(main())
""", other_ca=str(other / "ca.der"))
    by_case = {e["case"]: e for e in events}
    assert by_case["foreign CA"]["connected"] is False
    assert "not correctly signed by the trusted CA" in by_case["foreign CA"]["error"]
    assert by_case["wrong host name"]["connected"] is False
    assert "CN" in by_case["wrong host name"]["error"]


def test_bad_password_is_refused_with_a_reason(broker):
    events = run(broker, """
async def main():
    c = client(password="0" * 32)
    try:
        await c.connect(*(await open_plain()), clean=True)
        ev(connected=True)
    except MQTTError as e:
        ev(connected=False, error=str(e))
asyncio.run(main())
""")
    (e,) = events
    assert e["connected"] is False
    assert "not authorised" in e["error"] or "bad user name or password" in e["error"]


def test_a_device_reaches_only_its_own_topics(broker, observer):
    body = """
async def main():
    c = client("dev-1")
    got = []
    c.on_message = lambda t, p, r: got.append(t.decode())
    await c.connect(*(await open_plain()), clean=True)
    try:
        g = await c.subscribe(b"wp/dev-2/cmd", qos=1)
    except MQTTError as e:
        g = str(e)
    ev(foreign_sub=g)
    await c.publish(b"wp/dev-2/j", b"forged", qos=1)   # another board's journal topic
    await c.publish(b"wp/dev-1/cmd", b"self-made command", qos=1)  # only the server sends these
    await c.publish(b"wp/dev-1/j", b"mine", qos=1)
    ev(ready=1)
    await asyncio.sleep_ms(1000)
    ev(got=got)
    await c.disconnect()
asyncio.run(main())
"""
    s = script(broker, body)
    try:
        s.expect({"ready": 1})
        observer.publish("wp/dev-2/cmd", b"for dev-2 only")
        got = s.expect(lambda e: "got" in e)["got"]
        assert got == []  # dev-1 never sees dev-2's commands
        # the server sees dev-1's own journal, and neither forgery
        seen = []
        while True:
            try:
                seen.append(observer.get(timeout=1.0)[:2])
            except AssertionError:
                break
        assert ("wp/dev-1/j", b"mine") in seen
        assert all(p not in (b"forged", b"self-made command") for _, p in seen)
    finally:
        s.close()


def test_qos1_message_is_redelivered_if_the_board_dies_in_the_handler(broker, observer):
    # The handler never returns (the board loses power inside it): no PUBACK went out, so
    # the broker delivers the message again to the board's persistent session.
    body = """
import time
async def main():
    c = client("dev-2")
    def handler(t, p, r):
        ev(handled=bytes(p).decode(), mode=CFG["mode"])
        if CFG["mode"] == "die":
            time.sleep(30)   # killed here by the test
    c.on_message = handler
    await c.connect(*(await open_plain()), clean=False)
    await c.subscribe(b"wp/dev-2/cmd", qos=1)
    ev(ready=1)
    await asyncio.sleep_ms(3000)
    await c.disconnect()
asyncio.run(main())
"""
    s = script(broker, body, mode="die")
    try:
        s.expect({"ready": 1})
        observer.publish("wp/dev-2/cmd", b"start quick", qos=1)
        assert s.expect(lambda e: "handled" in e)["handled"] == "start quick"
        s.kill()  # power cut inside the handler
    finally:
        s.close()
    s = script(broker, body, mode="live")
    try:
        assert s.expect(lambda e: "handled" in e)["handled"] == "start quick"
        assert s.wait(20) == 0
    finally:
        s.close()
    # acknowledged this time: a third session gets nothing
    s = script(broker, body, mode="live")
    try:
        s.expect({"ready": 1})
        assert s.wait(20) == 0
        assert not any("handled" in e for e in s.events)
    finally:
        s.close()


def test_keepalive_catches_a_half_open_connection(broker):
    with FaultProxy("127.0.0.1", broker.port) as proxy:
        s = script(broker, """
async def main():
    c = client(keepalive=1)
    await c.connect(*(await open_plain(CFG["proxy"])), clean=True)
    ev(up=1)
    await c.lost.wait()
    ev(lost=c.error)
asyncio.run(main())
""", proxy=proxy.port)
        try:
            s.expect({"up": 1})
            proxy.blackhole()  # the path dies silently: no FIN, no RST, nothing
            lost = s.expect(lambda e: "lost" in e, timeout=20)
            assert "half-open" in lost["lost"]
        finally:
            s.close()


def test_reset_mid_publish_is_an_error_not_a_hang(broker):
    with FaultProxy("127.0.0.1", broker.port) as proxy:
        s = script(broker, """
async def main():
    c = client(keepalive=5)
    await c.connect(*(await open_plain(CFG["proxy"])), clean=True)
    ev(up=1)
    n = 0
    try:
        while True:
            await c.publish(b"wp/dev-1/j", bytes(1024), qos=1)
            n += 1
    except (OSError, MQTTError) as e:
        ev(failed=str(e) or type(e).__name__, published=n, lost=c.lost.is_set())
asyncio.run(main())
""", proxy=proxy.port)
        try:
            s.expect({"up": 1})
            proxy.reset_after(20_000)
            failed = s.expect(lambda e: "failed" in e, timeout=20)
            assert failed["lost"] is True
            assert failed["published"] < 40
        finally:
            s.close()


LINK = """
class FakeWLAN:
    up = True
    def isconnected(self):
        return self.up
wlan = FakeWLAN()
async def session(c, present):
    ev(session=1, present=present)
    await c.subscribe(b"wp/dev-1/cmd")
    while True:
        await asyncio.sleep_ms(100)
"""


def test_link_drops_the_socket_when_wifi_goes_and_comes_back(broker, observer):
    body = LINK + """
async def main():
    c = client(keepalive=30)
    link = Link(wlan, {"host": "127.0.0.1", "port": CFG["port"], "backoff_min_ms": 100,
                       "backoff_max_ms": 400}, c, session,
                will=(b"wp/dev-1/state", b"offline", True), log=lambda *a: None)
    t = asyncio.create_task(link.run())
    while link.connects < 1:
        await asyncio.sleep_ms(20)
    ev(phase="up", state=link.state)
    await asyncio.sleep_ms(300)
    wlan.up = False
    while link.state != "down":
        await asyncio.sleep_ms(20)
    ev(phase="down", error=link.last_error, connected=c.connected)
    await asyncio.sleep_ms(500)
    wlan.up = True
    while link.connects < 2:
        await asyncio.sleep_ms(20)
    ev(phase="back", state=link.state, connects=link.connects)
    t.cancel()
asyncio.run(main())
"""
    s = script(broker, body)
    try:
        s.expect({"phase": "up"})
        down = s.expect({"phase": "down"})
        assert down["error"] == "network down" and down["connected"] is False
        # the socket was closed without DISCONNECT: the broker publishes the will
        _, state, retained = observer.get("wp/dev-1/state")
        while retained:  # what an earlier test left there
            _, state, retained = observer.get("wp/dev-1/state")
        assert state == b"offline"
        back = s.expect({"phase": "back"})
        assert back["state"] == "up" and back["connects"] == 2
        assert sum(1 for e in s.events if e.get("session")) == 2
        # a persistent session: the broker kept the subscription across the outage
        assert [e["present"] for e in s.events if e.get("session")] == [False, True]
    finally:
        s.close()


def test_link_backs_off_while_the_broker_refuses_then_connects(broker):
    with FaultProxy("127.0.0.1", broker.port) as proxy:
        proxy.refuse()
        s = script(broker, LINK + """
async def main():
    c = client()
    link = Link(wlan, {"host": "127.0.0.1", "port": CFG["proxy"], "backoff_min_ms": 50,
                       "backoff_max_ms": 800, "connect_timeout_ms": 2000}, c, session)
    t = asyncio.create_task(link.run())
    limits = []
    while link.failures < 8:
        limits.append(link.backoff.limit())
        await asyncio.sleep_ms(10)
    ev(refused=link.failures, limits=sorted(set(limits)), error=link.last_error)
    while link.connects < 1:
        await asyncio.sleep_ms(20)
    ev(connected=1, state=link.state)
    t.cancel()
asyncio.run(main())
""", proxy=proxy.port)
        try:
            refused = s.expect(lambda e: "refused" in e, timeout=30)
            assert refused["limits"][0] == 50
            assert refused["limits"][-1] == 800  # doubled up to the cap, not beyond
            proxy.heal()
            assert s.expect(lambda e: "connected" in e, timeout=30)["state"] == "up"
        finally:
            s.close()


def test_backoff_jitter_stays_within_its_limits(broker):
    events = run(broker, """
b = Backoff(100, 3000)
out = []
for i in range(400):
    lim = b.limit()
    v = b.next_ms()
    out.append((lim, v))
ev(ok=all(lim // 4 <= v <= lim for lim, v in out), spread=len(set(v for _, v in out)),
   cap=max(lim for lim, _ in out))
b.reset()
ev(after_reset=b.limit())
""")
    assert events[0]["ok"] is True and events[0]["cap"] == 3000
    assert events[0]["spread"] > 50  # jittered, not a fixed schedule
    assert events[1]["after_reset"] == 100


def test_timeouts_are_bounded(broker):
    # a broker that accepts TCP but never answers CONNACK: the sign-in times out
    with FaultProxy("127.0.0.1", broker.port) as proxy:
        proxy.blackhole()
        events = run(broker, """
async def main():
    c = client()
    try:
        await c.connect(*(await open_plain(CFG["proxy"])), clean=True, timeout_ms=700)
        ev(connected=True)
    except MQTTError as e:
        ev(connected=False, error=str(e), lost=c.lost.is_set())
asyncio.run(main())
""", proxy=proxy.port)
        assert events == [{"connected": False, "error": "no CONNACK from the broker within "
                           "700 ms", "lost": True}]


# ---- packets MQTT 3.1.1 does not allow: refused, the connection dropped, nothing acted on
class ScriptedBroker:
    """A TCP peer on loopback that plays a broker from a script, one per connection: hex
    strings are sent as they are, "read" waits for the client's next packet. After the
    script it reads whatever comes until the client closes."""

    def __init__(self, *scripts):
        import socket
        import threading

        self.scripts = list(scripts)
        self.received = []  # (connection number, first byte) of every client packet
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(30)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _packet(self, conn):
        def exact(k):
            out = b""
            while len(out) < k:
                chunk = conn.recv(k - len(out))
                if not chunk:
                    raise EOFError
                out += chunk
            return out

        first = exact(1)[0]
        n, shift = 0, 0
        while True:
            b = exact(1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        exact(n)
        return first

    def _serve(self):
        for number, script in enumerate(self.scripts):
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(30)
                try:
                    self.received.append((number, self._packet(conn)))  # CONNECT
                    for step in script:
                        if step == "read":
                            self.received.append((number, self._packet(conn)))
                        else:
                            conn.sendall(bytes.fromhex(step))
                    while True:
                        self.received.append((number, self._packet(conn)))
                except (EOFError, OSError):
                    pass

    def close(self):
        self.sock.close()
        self.thread.join(5)


MALFORMED = """
async def main():
    c = client()
    got = []
    c.on_message = lambda t, p, r: got.append([t.decode(), None if p is None else bytes(p).hex()])
    try:
        await c.connect(*(await open_plain(CFG["fake"])), clean=True, timeout_ms=5000)
    except MQTTError as e:
        ev(connected=False, error=str(e), got=got)
        return
    ev(connected=True)
    for i in range(CFG["publishes"]):
        try:
            ev(puback=await c.publish(b"wp/dev-1/j", b"x", qos=1, timeout_ms=5000))
        except MQTTError as e:
            ev(publish_failed=str(e))
    if CFG["subscribe"]:
        try:
            ev(granted=await c.subscribe(b"wp/dev-1/cmd", timeout_ms=5000))
        except MQTTError as e:
            ev(subscribe_failed=str(e))
    try:
        await asyncio.wait_for_ms(c.lost.wait(), 3000)
    except asyncio.TimeoutError:
        pass
    ev(lost=c.lost.is_set(), error=c.error, got=got)
asyncio.run(main())
"""

CONNACK_OK = "20020000"
CMD_TOPIC = b"wp/sim-0001/cmd".hex()  # 15 bytes: 00 0f


def _publish_hex(topic_hex, payload=b"", first=0x30):
    body = bytes.fromhex("%04x" % (len(topic_hex) // 2) + topic_hex) + payload
    return bytes([first, len(body)]).hex() + body.hex()


# (name, broker script, publishes, subscribe, the error the client must give,
#  the messages the handler may see)
MALFORMED_CASES = [
    ("connack of 0 bytes", ["2000"], 0, False, "malformed CONNACK", []),
    ("connack of 3 bytes", ["2003000000"], 0, False, "malformed CONNACK", []),
    ("connack with reserved flags set", ["20020200"], 0, False, "malformed CONNACK", []),
    # the 0-byte PUBACK comes after a PUBLISH whose first bytes (00 02) are the id the
    # client waits for: acting on stale bytes would take it as the PUBACK of publish 2
    ("puback of 0 bytes", [CONNACK_OK, "read", "40020001", "read",
                           _publish_hex(b"ab".hex()), "4000"], 2, False,
     "malformed PUBACK", [["ab", ""]]),
    ("puback of 3 bytes", [CONNACK_OK, "read", "4003000100"], 1, False, "malformed PUBACK",
     []),
    ("puback with flags", [CONNACK_OK, "read", "42020001"], 1, False, "malformed PUBACK", []),
    ("suback of 2 bytes", [CONNACK_OK, "read", "90020001"], 0, True, "malformed SUBACK", []),
    ("suback with a bad return code", [CONNACK_OK, "read", "9003000107"], 0, True,
     "malformed SUBACK", []),
    ("publish whose topic runs past its end", [CONNACK_OK, "3003000561"], 0, False,
     "malformed PUBLISH", []),
    ("publish of 1 byte", [CONNACK_OK, "300100"], 0, False, "malformed PUBLISH", []),
    ("publish with an empty topic", [CONNACK_OK, "3003000078"], 0, False, "malformed PUBLISH",
     []),
    ("qos 1 publish whose packet id runs past its end", [CONNACK_OK, "32050003616263"],
     0, False, "malformed PUBLISH", []),
    ("qos 1 publish with packet id 0", [CONNACK_OK, _publish_hex("61", b"\0\0", 0x32)], 0,
     False, "packet id 0", []),
    ("publish with qos 3", [CONNACK_OK, _publish_hex("61", b"x", 0x36)], 0, False, "QoS 3",
     []),
    # the case: a command, then a PUBLISH with a 15-byte topic and no bytes for it
    ("command then a publish with no topic bytes",
     [CONNACK_OK, _publish_hex(CMD_TOPIC, b"go"), "3002000f"], 0, False, "malformed PUBLISH",
     [["wp/sim-0001/cmd", b"go".hex()]]),
    ("pingresp with a body", [CONNACK_OK, "d00100"], 0, False, "malformed PINGRESP", []),
    ("pubrel, never sent to a client that does not use QoS 2", [CONNACK_OK, "62020001"], 0,
     False, "packet type 6", []),
    ("publish before connack", [_publish_hex("61", b"x"), CONNACK_OK], 0, False,
     "before CONNACK", []),
]


@pytest.mark.parametrize(("script_", "publishes", "subscribe", "error", "messages"),
                         [c[1:] for c in MALFORMED_CASES], ids=[c[0] for c in MALFORMED_CASES])
def test_a_packet_mqtt_does_not_allow_drops_the_connection(broker, script_, publishes,
                                                           subscribe, error, messages):
    fake = ScriptedBroker(script_)
    try:
        events = run(broker, MALFORMED, fake=fake.port, publishes=publishes,
                     subscribe=subscribe)
    finally:
        fake.close()
    end = events[-1]
    assert error in end["error"], events
    assert end.get("lost", True) is True, events
    assert end["got"] == messages, events  # nothing from a refused packet reached the handler
    # no acknowledgement was taken from stale bytes: the publish the broker never
    # acknowledged properly failed, those it did acknowledge went through
    assert [e["puback"] for e in events if "puback" in e] == list(range(1, publishes)), events
    assert not any("granted" in e for e in events), events


def test_the_link_reconnects_after_a_malformed_packet(broker):
    # first connection: a 0-byte PUBACK; second: a broker that behaves
    fake = ScriptedBroker([CONNACK_OK, "4000"], [CONNACK_OK])
    try:
        events = run(broker, """
class WLAN:
    def isconnected(self):
        return True
async def session(c, present):
    while True:
        await asyncio.sleep_ms(100)
async def main():
    c = client(keepalive=0)
    link = Link(WLAN(), {"host": "127.0.0.1", "port": CFG["fake"], "backoff_min_ms": 50,
                         "backoff_max_ms": 100}, c, session,
                log=lambda *a: ev(log=" ".join(str(x) for x in a)))
    t = asyncio.create_task(link.run())
    while link.connects < 2:
        await asyncio.sleep_ms(20)
    ev(connects=link.connects, state=link.state)
    t.cancel()
asyncio.run(main())
""", fake=fake.port)
    finally:
        fake.close()
    logs = [e["log"] for e in events if "log" in e]
    assert any("disconnected" in x and "malformed PUBACK" in x for x in logs), logs
    assert events[-1] == {"connects": 2, "state": "up"}


# ---- several tasks publishing at once, under load and across reconnects
CONCURRENT = """
from washpay.net.mqtt import HEADROOM
TOPICS = (b"wp/dev-1/j", b"wp/dev-1/res")
def message(t, i):
    # as expected_message() in the test: "t:i:" then bytes that depend on t, i and position
    size = 20 + (t * 7919 + i * 104729) % CFG["max_size"]
    m = bytearray(size)
    h = b"%d:%d:" % (t, i)
    m[: len(h)] = h
    for k in range(len(h), size):
        m[k] = (t * 31 + i * 17 + k) & 0xFF
    return m
c = client(keepalive=30)
ready = [False]
connects = [0]
losses = []
acked = []
sent = [0]
async def keeper():
    while True:
        try:
            await c.connect(*(await open_plain(CFG["proxy"])), clean=True)
        except Exception as e:
            await asyncio.sleep_ms(50)
            continue
        connects[0] += 1
        ready[0] = True
        ev(connected=connects[0])
        await c.lost.wait()
        ready[0] = False
        losses.append(c.error)
async def publisher(t):
    for i in range(CFG["per_task"]):
        qos = (t + i) % 2
        m = message(t, i)
        while i >= CFG["hold_from"] and connects[0] <= CFG["resets"]:
            await asyncio.sleep_ms(5)  # the last messages wait for the test's cuts
        if t % 3 == 2:  # the uploader's way: the header goes into the payload's headroom
            b = memoryview(bytearray(HEADROOM + len(m)))
            b[HEADROOM:] = m
        while True:
            while not (ready[0] and c.connected):  # a lost connection is not ready either
                await asyncio.sleep_ms(5)
            try:
                if t % 3 == 2:
                    await c.publish(TOPICS[t % 2], b, qos=qos, headroom=HEADROOM)
                else:
                    await c.publish(TOPICS[t % 2], m, qos=qos)
                if qos:
                    acked.append("%d:%d" % (t, i))
                break
            except (MQTTError, OSError):
                if not qos:
                    break  # at most once
        sent[0] += 1
        if sent[0] % CFG["progress_every"] == 0:
            ev(progress=sent[0])
async def main():
    k = asyncio.create_task(keeper())
    await asyncio.gather(*[publisher(t) for t in range(CFG["tasks"])])
    ev(done=1, acked=acked, connects=connects[0], losses=losses)
    k.cancel()
    await c.disconnect()
asyncio.run(main())
"""


def expected_message(t, i, max_size):
    size = 20 + (t * 7919 + i * 104729) % max_size
    head = b"%d:%d:" % (t, i)
    return head + bytes((t * 31 + i * 17 + k) & 0xFF for k in range(len(head), size))


def test_concurrent_publishers_send_whole_frames_under_load_and_across_reconnects(broker):
    tasks, per_task, max_size, resets = 6, 40, 3000, 3
    log = broker.dir / "mosquitto.log"
    log_from = log.stat().st_size if log.exists() else 0
    observer = Observer(broker, topics=("wp/dev-1/j", "wp/dev-1/res"),
                        client_id="concurrency-check")
    with FaultProxy("127.0.0.1", broker.port) as proxy:
        proxy.set(rate=400_000)  # a link slower than the board: writes wait on the socket
        s = script(broker, CONCURRENT, proxy=proxy.port, tasks=tasks, per_task=per_task,
                   max_size=max_size, progress_every=tasks * per_task // (resets + 2),
                   resets=resets, hold_from=per_task - per_task // (resets + 2))
        try:
            s.expect({"connected": 1})
            for r in range(resets):
                # cut every connection while the tasks are publishing: each reconnects on
                # the same client object, with publishes queued behind the write lock
                s.expect(lambda e, r=r: e.get("progress", 0) >= 1, what="progress")
                proxy.reset_all()
                s.expect({"connected": r + 2}, what=f"reconnection {r + 1}")
            done = s.expect(lambda e: "done" in e, timeout=120)
        except AssertionError as e:
            tail = log.read_text()[log_from:][-1500:]
            raise AssertionError(f"{e}\nbroker log: {tail}") from None
        finally:
            s.close()
            proxy.heal()
    try:
        seen = {}
        acked = set(done["acked"])
        while not acked <= set(seen):
            try:
                topic, payload, _ = observer.get(timeout=10)
            except AssertionError:
                break
            t, i = (int(x) for x in payload.split(b":", 2)[:2])
            # byte for byte: the topic and payload the task published, nothing of another's
            assert topic == ("wp/dev-1/j", "wp/dev-1/res")[t % 2], (topic, payload[:20])
            assert payload == expected_message(t, i, max_size), (topic, payload[:20])
            seen[f"{t}:{i}"] = True
        assert acked <= set(seen), sorted(acked - set(seen))[:10]
        assert len(acked) == tasks * per_task // 2  # every QoS 1 message got through
    finally:
        observer.close()
    assert done["connects"] == resets + 1, done  # only the test's cuts ended connections
    text = log.read_text()[log_from:]
    assert "protocol error" not in text and "malformed" not in text.lower(), text[-2000:]


def test_a_publish_queued_across_a_reconnect_never_precedes_connect(broker):
    # A publish waits for the write lock while the connection dies and a new one starts:
    # on the new connection CONNECT must be the first packet (a broker drops a client
    # whose first packet is anything else). Streams in memory: the test needs a write
    # that blocks at a chosen moment.
    events = run(broker, """
class Sock:
    def close(self):
        pass
class Stream:
    def __init__(self, name):
        self.name = name
        self.s = Sock()
        self.out = bytearray()
        self.hold = None
        self.feed = bytearray(b"\\x20\\x02\\x00\\x00")   # CONNACK
        self.more = asyncio.Event()
    def write(self, b):
        self.out += b
    async def drain(self):
        if self.hold is not None:
            await self.hold.wait()
            raise OSError(104)   # the connection was reset under the blocked write
    async def readinto(self, mv):
        while not self.feed:
            self.more.clear()
            await self.more.wait()
        n = min(len(mv), len(self.feed))
        mv[:n] = self.feed[:n]
        self.feed = self.feed[n:]
        return n
async def pub(c, tag):
    try:
        await c.publish(b"wp/dev-1/j", tag, qos=0)
        ev(pub=tag.decode(), ok=True)
    except (MQTTError, OSError) as e:
        ev(pub=tag.decode(), ok=False)
async def main():
    c = client(keepalive=0)
    s1 = Stream("s1")
    await c.connect(s1, s1)
    s1.hold = asyncio.Event()
    a = asyncio.create_task(pub(c, b"A"))   # holds the lock, blocked in its write
    await asyncio.sleep_ms(10)
    b = asyncio.create_task(pub(c, b"B"))   # waits for the lock
    await asyncio.sleep_ms(10)
    c.close()                               # the connection is lost
    s2 = Stream("s2")
    t = asyncio.create_task(c.connect(s2, s2))
    await asyncio.sleep_ms(10)
    s1.hold.set()                           # the blocked write ends
    await t
    await asyncio.gather(a, b)
    ev(first=s2.out[0], connected=c.connected)
asyncio.run(main())
""")
    first = events[-1]
    assert first["first"] == 0x10, events  # CONNECT, not B's PUBLISH
    assert first["connected"] is True
    assert {e["pub"]: e["ok"] for e in events if "pub" in e} == {"A": False, "B": False}


def test_a_lent_buffer_and_incoming_packets_never_overlap(broker, observer):
    # the uploader builds its batches in the client's receive buffer (issue 13): while a
    # borrower fills and publishes, an incoming packet waits before its body is read, and a
    # borrower waits while a packet is being read and handled. Each side checks its bytes.
    body = """
from washpay.net.mqtt import HEADROOM
async def main():
    c = MQTTClient(b"dev-1", user=b"dev-1", password=CFG["passwords"]["dev-1"].encode(),
                   keepalive=30, max_packet=200, lend=2200)
    got = []
    def on_message(t, p, r):
        got.append(None if p is None else bytes(p).decode())
    c.on_message = on_message
    await c.connect(*(await open_plain()), clean=True)
    await c.subscribe(b"wp/dev-1/cmd", qos=1)
    ev(ready=1)
    i = 0
    while len(got) < 21 and i < 400:
        mv = await c.borrow()
        try:
            body = mv[HEADROOM : HEADROOM + 2000]
            for k in range(2000):
                body[k] = (i + k) & 0xFF
            await asyncio.sleep_ms(2)  # the reader gets a turn while the buffer is lent
            await c.publish(b"wp/dev-1/j", mv[: HEADROOM + 2000], qos=1, wait=False,
                            headroom=HEADROOM)
        finally:
            c.give_back()
        i += 1
        await asyncio.sleep_ms(5)
    ev(got=got, sent=i)
    await c.disconnect()
asyncio.run(main())
"""
    s = script(broker, body)
    try:
        s.expect({"ready": 1})
        messages = [f"m{n:02d}-" + "x" * 150 for n in range(20)]
        for n, m in enumerate(messages):
            observer.publish("wp/dev-1/cmd", m.encode(), qos=1)
            if n == 10:  # longer than max_packet (not than the buffer): still dropped
                observer.publish("wp/dev-1/cmd", b"y" * 500, qos=1)
        done = s.expect(lambda e: "got" in e)
        assert done["got"] == messages[:11] + [None] + messages[11:]
        assert done["sent"] >= 1
        for _ in range(done["sent"]):
            t, p, _ = observer.get("wp/dev-1/j")
            i = p[0]
            assert p == bytes((i + k) & 0xFF for k in range(2000))
    finally:
        s.close()
