# QR tokens and remote starts, as the board keeps them between payments: the counters, the
# key and the single-use cache (replay.py) of each. Their checks and payment code (token.py,
# remote.py: about 5 KiB of heap even as bytecode in place) are loaded for each scan or
# command and dropped after it is answered (washpay.use); a board takes a few a day.
import asyncio

from washpay import use

_TOKEN = ("washpay.payments.token",)
_REMOTE = ("washpay.payments.remote", "washpay.payments.token")


def _quiet(*a):
    pass


class TokenPayments:
    """The QR payment source (payments/token.py): scanned lines in, vends or refusals out."""

    def __init__(self, engine, journal, key, device_id, cache, log=None):
        self.engine = engine
        self.journal = journal
        self.key = key  # the token key (docs/keys.md)
        self.device_id = device_id
        self.cache = cache
        self.log = log or _quiet
        self.accepted = 0
        self.recovered = 0  # redemptions put into the replay cache by boot recovery
        self.refused = {}  # code -> count
        self.last = None  # last outcome word, for status
        self.last_refusal = None  # (token id, code): the same refusal is journaled once
        self.last_tid = None  # the token that started the current wash
        self.repeats = 0
        self._gen = 0

    def recover(self, last):
        return use(_TOKEN, "recover", self, last)

    # the scanner's callbacks (gm65.py)
    def on_line(self, line):
        use(_TOKEN, "on_line", self, line)

    def on_error(self, kind):
        use(_TOKEN, "on_error", self, kind)

    def show(self, line1, line2):
        # a refusal stays on the display for 2.5 s; the task is here, not in token.py,
        # so that it does not hold token.py's code after the scan
        self.engine.show(line1, line2)
        self._gen += 1
        asyncio.create_task(self._restore(self._gen))

    async def _restore(self, gen):
        await asyncio.sleep_ms(2500)
        if gen == self._gen and not self.engine.busy:
            self.engine.show()

    def status(self):
        return {"accepted": self.accepted, "refused": dict(self.refused), "last": self.last,
                "recovered": self.recovered, "repeats": self.repeats,
                "cache": self.cache.status()}


class RemoteStart:
    """Remote starts from the server (payments/remote.py): commands in, JSON replies out."""

    def __init__(self, engine, journal, key, device_id, cache, log=None):
        self.engine = engine
        self.journal = journal
        self.key = key  # the command key (docs/keys.md)
        self.device_id = device_id
        self.cache = cache
        self.log = log or _quiet
        self.started = 0
        self.recovered = 0
        self.refused = {}
        self.replies = []  # the last few replies, newest last (status)

    def recover(self, last):
        """As TokenPayments.recover, for a remote start journaled just before a power cut."""
        return use(_REMOTE, "recover", self, last)

    def on_command(self, payload):
        """Verify and execute one command; the reply (JSON bytes) says what happened. Never
        raises; the journal record is durable before it returns."""
        return use(_REMOTE, "on_command", self, payload)

    async def serve(self, port):
        """Take commands from a port (the simulator's control channel, until the sync link
        carries them): port.flag is set when port.inbox has payloads."""
        while True:
            await port.flag.wait()
            while port.inbox:
                self.on_command(port.inbox.pop(0))

    def status(self):
        return {"started": self.started, "refused": dict(self.refused),
                "recovered": self.recovered, "replies": list(self.replies),
                "cache": self.cache.status()}
