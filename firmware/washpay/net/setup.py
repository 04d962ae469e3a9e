# The sync's set-up (docs/sync.md): building it at boot from config.json and the device
# secret, and the MQTT sign-in each time its link (re)connects. Loaded for that and dropped
# after (washpay.use): a running board does not keep the defaults, the URL parser or the
# CONNECT packet's code in its heap (issue 13).
import asyncio
from binascii import hexlify
from time import ticks_ms

from washpay.keys import derive
from washpay.net.link import Link
from washpay.net.mqtt import MQTTClient, MQTTError, _put_len, _put_str
from washpay.net.uploader import Uploader, batch_bytes

CA_PATH = "/broker_ca.der"  # the site CA, DER, for mqtts:// (provisioned with the config)

SETTINGS = {
    "keepalive_s": 30,
    "connect_timeout_ms": 10000,
    "backoff_min_ms": 1000,
    "backoff_max_ms": 60000,
    "stable_ms": 30000,
    "batch": 8,
    "max_batch": 16,  # the MQTT buffer batches are built in: max_batch * 128 bytes, for ever
    "window": 2,
    "ack_timeout_ms": 15000,
}

CONNACK_ERRORS = (
    "",
    "the broker refused protocol level 4 (MQTT 3.1.1)",
    "the broker refused the client id",
    "the broker is unavailable",
    "bad user name or password",
    "not authorised",
)


def mqtt_password(secret):
    return hexlify(derive(secret, b"mqtt-password")[:16])


def parse_broker(url):
    """{"host", "port", "tls"} from config.json's broker URL (mqtt:// or mqtts://)."""
    scheme, _, rest = url.partition("://")
    rest = rest.rstrip("/")
    tls = scheme == "mqtts"
    if rest.startswith("["):  # [IPv6]:port
        host, _, port = rest[1:].partition("]")
        port = port[1:]
    else:
        host, _, port = rest.partition(":")
    if port and not port.isdigit():
        raise ValueError("broker %r: the port must be a number" % url)
    if not host:
        raise ValueError("broker %r has no host" % url)
    return {"host": host, "port": int(port) if port else (8883 if tls else 1883), "tls": tls}


def tls_context(ca_der):
    """A TLS client context that verifies the broker against the site CA (DER bytes)."""
    import tls

    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = tls.CERT_REQUIRED
    ctx.load_verify_locations(ca_der)  # positional: MicroPython refuses the keyword
    return ctx


def build(sync, wlan, cfg, secret, journal, device_id, wifi_password, log):
    """Sync.__init__: its topics, MQTT client, uploader and link."""
    # not a function of this module's: a board keeps what it builds here, never its code
    from washpay.net import _quiet

    sync.log = log = log or _quiet
    s = dict(SETTINGS)
    s.update(cfg.get("sync") or {})
    dev = device_id.encode()
    sync.device_id = dev
    broker = parse_broker(cfg["broker"])
    broker.update(s)
    sync.t_ack = b"wp/" + dev + b"/ack"
    sync.t_cmd = b"wp/" + dev + b"/cmd"
    sync.t_res = b"wp/" + dev + b"/res"
    sync.t_state = b"wp/" + dev + b"/state"
    # (topic, handler) of an update's chunks while one runs (washpay/ota/update.py)
    sync.chunks = None
    # the receive buffer holds the longest command with its PUBLISH header (topic length,
    # topic, packet id); a longer message is dropped and refused (mqtt.py). The uploader
    # builds its batches in it between packets: one buffer, not two
    from washpay.net import COMMAND_MAX

    sync.client = MQTTClient(dev, user=dev, password=mqtt_password(secret),
                             keepalive=s["keepalive_s"],
                             max_packet=COMMAND_MAX + 4 + len(sync.t_cmd),
                             lend=batch_bytes(s["max_batch"]))
    sync.client.on_message = sync._message
    sync.uploader = Uploader(journal, dev, derive(secret, b"sync-ack"),
                             max_batch=s["max_batch"], first_batch=s["batch"],
                             window=s["window"], ack_timeout_ms=s["ack_timeout_ms"], log=log,
                             borrow=True)
    ssl = None
    sync.disabled = None  # why this board cannot sync at all (status shows it)
    if broker["tls"]:
        path = cfg.get("broker_ca") or CA_PATH
        try:
            with open(path, "rb") as f:
                ssl = tls_context(f.read())
        except OSError:
            sync.disabled = "%s is missing: an mqtts:// broker needs the site CA" % path
        except ValueError as e:
            sync.disabled = "%s is not a DER certificate (%s): provision the site CA" % (
                path, str(e).strip() or "refused")
    wifi = (cfg["wifi"], wifi_password or "") if cfg.get("wifi") else None
    sync.link = Link(wlan, broker, sync.client, sync._session, ssl=ssl, wifi=wifi,
                     will=(sync.t_state, b"offline", True), log=log)
    sync.commands = None  # set by the app: .on_command(payload) -> reply bytes or None
    sync._outbox = []
    sync._task = None
    sync._ready = False


async def connect(c, reader, writer, clean, will, timeout_ms):
    """MQTTClient.connect (mqtt.py says what it does): CONNECT out, CONNACK in."""
    if c._w is not None or c._tasks:
        c._fail("replaced by a new connection")  # its reader must not read on
    c._r = reader
    c.lost = asyncio.Event()
    c.error = None
    c.connack = -1
    flags = 0x02 if clean else 0
    size = 10 + 2 + len(c.client_id)
    if will:
        flags |= 0x04 | 0x08 | (0x20 if will[2] else 0)  # will, QoS 1, retain
        size += 4 + len(will[0]) + len(will[1])
    if c.user is not None:
        flags |= 0x80
        size += 2 + len(c.user)
    if c.password is not None:
        flags |= 0x40
        size += 2 + len(c.password)
    pkt = bytearray(size + 5)
    pkt[0] = 0x10  # CONNECT
    pos = _put_len(pkt, 1, size)
    pos = _put_str(pkt, pos, b"MQTT")
    pkt[pos] = 4  # protocol level: 3.1.1
    pkt[pos + 1] = flags
    pkt[pos + 2] = c.keepalive >> 8
    pkt[pos + 3] = c.keepalive & 0xFF
    pos = _put_str(pkt, pos + 4, c.client_id)
    if will:
        pos = _put_str(pkt, pos, will[0])
        pos = _put_str(pkt, pos, will[1])
    if c.user is not None:
        pos = _put_str(pkt, pos, c.user)
    if c.password is not None:
        pos = _put_str(pkt, pos, c.password)
    c._last_rx = ticks_ms()
    slot = await c._slot(2 << 16)  # mqtt.py's _K_CONNACK
    try:
        try:
            async with c._wlock:
                # the writer is published under the lock, with CONNECT written first: a
                # task waiting to publish can follow CONNECT, never precede it
                c._w = writer
                c._write(slot, (memoryview(pkt)[:pos],))
                await c._drain(writer)
        except (OSError, ValueError) as e:
            # the TLS layer reports a certificate it refuses as ValueError, with the reason
            why = "cannot reach the broker: %s" % (str(e).strip() or type(e).__name__)
            c._fail(why)
            c.error = why
            raise MQTTError(why)
        c._tasks.append(asyncio.create_task(c._reader()))
        await c._wait(slot, timeout_ms, "CONNACK")
    finally:
        c._free(slot)
    code = c.connack & 0xFF
    if code:
        why = "connection refused: " + (
            CONNACK_ERRORS[code] if code < len(CONNACK_ERRORS) else "code %d" % code)
        c._fail(why)
        raise MQTTError(why)
    if c.keepalive:
        c._tasks.append(asyncio.create_task(c._keepalive()))
    return bool(c.connack & 0x100)
