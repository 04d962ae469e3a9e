# Sync: the board's way to its operator's server (docs/sync.md).
#
#   sync = Sync(board.wlan(), cfg, secret, journal, device_id)
#   sync.commands = Commands(...)  # optional: server commands (below; net/commands.py)
#   sync.start()                   # one task; the payment path never waits on it
#
# It wires the connectivity manager (link.py), the MQTT client (mqtt.py) and the uploader
# (uploader.py) together: on every connection it subscribes to the board's ack and command
# topics, says "online" (the broker says "offline" for it if it vanishes), and uploads.
# Credentials come from the board's device secret: user = device id, password = 128 bits
# of HKDF(device secret, "mqtt-password") as hex; the host derives the same from the site
# key to write the broker's password file.
import asyncio
import time
from binascii import hexlify

from micropython import const

from washpay import use
from washpay.keys import derive
from washpay.net.link import Link, tls_context
from washpay.net.mqtt import MQTTClient
from washpay.net.uploader import Uploader, batch_bytes

CA_PATH = "/broker_ca.der"  # the site CA, DER, for mqtts:// (provisioned with the config)
_OUTBOX = const(8)  # replies waiting for the link; older ones are dropped first
# the longest command from the server, bytes (commands.py; docs/sync.md, "Commands"): a
# price table of 4 rules and 4 tiers is about 520 bytes of its 976-byte body
COMMAND_MAX = const(1024)

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


class Sync:
    def __init__(self, wlan, cfg, secret, journal, device_id, wifi_password=None, log=None):
        self.log = log or (lambda *a: None)
        s = dict(SETTINGS)
        s.update(cfg.get("sync") or {})
        self.settings = s
        dev = device_id.encode()
        self.device_id = dev
        broker = parse_broker(cfg["broker"])
        broker.update(s)
        self.t_ack = b"wp/" + dev + b"/ack"
        self.t_cmd = b"wp/" + dev + b"/cmd"
        self.t_res = b"wp/" + dev + b"/res"
        self.t_state = b"wp/" + dev + b"/state"
        # (topic, handler) of an update's chunks while one runs (washpay/ota/update.py)
        self.chunks = None
        # the receive buffer holds the longest command with its PUBLISH header (topic
        # length, topic, packet id); a longer message is dropped and refused (mqtt.py). The
        # uploader builds its batches in it between packets: one buffer, not two
        self.client = MQTTClient(dev, user=dev, password=mqtt_password(secret),
                                 keepalive=s["keepalive_s"],
                                 max_packet=COMMAND_MAX + 4 + len(self.t_cmd),
                                 lend=batch_bytes(s["max_batch"]))
        self.client.on_message = self._message
        self.uploader = Uploader(journal, dev, derive(secret, b"sync-ack"),
                                 max_batch=s["max_batch"], first_batch=s["batch"],
                                 window=s["window"], ack_timeout_ms=s["ack_timeout_ms"],
                                 log=self.log, borrow=True)
        ssl = None
        self.disabled = None  # why this board cannot sync at all (status shows it)
        if broker["tls"]:
            path = cfg.get("broker_ca") or CA_PATH
            try:
                with open(path, "rb") as f:
                    ssl = tls_context(f.read())
            except OSError:
                self.disabled = "%s is missing: an mqtts:// broker needs the site CA" % path
            except ValueError as e:
                self.disabled = "%s is not a DER certificate (%s): provision the site CA" % (
                    path, str(e).strip() or "refused")
        wifi = (cfg["wifi"], wifi_password or "") if cfg.get("wifi") else None
        self.link = Link(wlan, broker, self.client, self._session, ssl=ssl, wifi=wifi,
                         will=(self.t_state, b"offline", True), log=self.log)
        self.commands = None  # set by the app: .on_command(payload) -> reply bytes or None
        self._outbox = []
        self._task = None
        self._ready = False

    def start(self):
        if self.disabled:
            self.log("sync disabled:", self.disabled)
            return None
        self._task = asyncio.create_task(self.link.run())
        return self._task

    def status(self):
        st = self.uploader.status()
        link = self.link.state
        if link == "up" and not self._ready:
            link = "subscribing"  # "up" once the board can hear its acks and commands
        st["link"] = "disabled" if self.disabled else link
        st["connects"] = self.link.connects
        st["link_error"] = self.disabled or self.link.last_error
        cmds = self.commands
        if cmds is not None and hasattr(cmds, "status"):
            st["commands"] = cmds.status()
        return st

    def reply(self, payload, topic=None):
        """Queue a message for the server (wp/<id>/res, or `topic`); sent when the link is
        up."""
        if len(self._outbox) >= _OUTBOX:
            self._outbox.pop(0)
        self._outbox.append((topic or self.t_res, payload))

    def ready(self):
        """Connected and subscribed: a message published now reaches the server."""
        return self._ready and self.link.state == "up"

    def _message(self, topic, payload, retained):
        # payload None: a message too long for the buffer, dropped by mqtt.py
        if topic == self.t_ack:
            if payload is not None:
                self.uploader.on_ack(payload)
        elif topic == self.t_cmd and self.commands is not None:
            # executed and journaled before this returns: the broker's copy is acknowledged
            # only then, so a power cut here means the command comes again (and its nonce
            # makes the second delivery a no-op); a too long one is refused and journaled
            out = self.commands.on_command(None if payload is None else bytes(payload))
            if out is not None:
                self.reply(out)
        elif self.chunks is not None and topic == self.chunks[0] and payload is not None:
            self.chunks[1](payload)  # written to flash before this returns: no copy kept

    async def _session(self, client, present):
        await client.subscribe(self.t_ack, 1)
        await client.subscribe(self.t_cmd, 1)
        await client.publish(self.t_state, b"online", qos=1, retain=True)
        self._ready = True
        replies = asyncio.create_task(self._replies(client))
        try:
            await self.uploader.session(client)
        finally:
            self._ready = False
            replies.cancel()

    async def _replies(self, client):
        box = self._outbox
        while True:
            while box:
                await client.publish(box[0][0], box[0][1], qos=1)
                box.pop(0)
            await asyncio.sleep_ms(100)


class Commands:
    """The board's command topic (docs/sync.md, "Commands"): remote start is `remote`'s
    (payments/signed.py), the operator's commands (prices, blacklist, tiers, clock, status)
    are net/commands.py's. That code is loaded for each command and dropped after it is
    answered (washpay.use); this keeps what outlives a command: the counters and wiring."""

    def __init__(self, remote, engine, journal, key, device_id, blacklist=None, board=None,
                 status=None, config_path="/config.json", clock=time.time, log=None,
                 tiers=None, update=None):
        self.remote = remote  # payments/signed.py RemoteStart, and its single-use cache
        self.cache = remote.cache
        self.key = key  # the command key (keys.md), as remote start's
        self.device_id = device_id
        self.engine = engine
        self.journal = journal
        self.blacklist = blacklist  # cardlists/blacklist.py Blacklist (the card reader's own)
        self.tiers = tiers  # cardlists/tierlist.py TierList (the card reader's own)
        # update(digest, sig, size, version) -> None (taken) or why not: the app's
        self.update = update
        self.board = board
        self.status_fn = status
        self.config_path = config_path
        self.clock = clock
        self.log = log or (lambda *a: None)
        self.done = 0
        self.refused = {}
        self.forged_at = None  # when a forged command was last journaled (at most 1/min)
        self.forged_quiet = 0  # forged commands since, not journaled

    def on_command(self, payload):
        """Verify and execute one command; return the JSON reply (bytes). Never raises.
        `payload` None: a message too long for the MQTT buffer, which mqtt.py dropped."""
        return use(_COMMANDS, "on_command", self, payload)

    def status(self):
        return {"done": self.done, "refused": dict(self.refused)}


_COMMANDS = ("washpay.net.commands", "washpay.payments.token")
