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

from micropython import const

from washpay import use

_OUTBOX = const(8)  # replies waiting for the link; older ones are dropped first
# the longest command from the server, bytes (commands.py; docs/sync.md, "Commands"): a
# price table of 4 rules and 4 tiers is about 520 bytes of its 976-byte body
COMMAND_MAX = const(1024)
# what runs only when the sync is built (at boot) and when its link (re)connects: the
# defaults, the broker URL, the MQTT password, the TLS context and the MQTT sign-in; loaded
# for that and dropped after (washpay.use)
_SETUP = ("washpay.net.setup",)


def _quiet(*a):
    pass


class Sync:
    def __init__(self, wlan, cfg, secret, journal, device_id, wifi_password=None, log=None):
        # its parts (MQTT client, uploader, link) are built by net/setup.py's build()
        use(_SETUP, "build", self, wlan, cfg, secret, journal, device_id, wifi_password, log)

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
