# Remote start: after an app payment clears, the server tells the machine to start. The
# command is signed under this board's command key, names the board, expires, carries a
# nonce, and is executed at most once: its id is kept in flash (replay.py) until it expires.
# docs/remote-start.md is the format and the reply; host_tools/token.py builds commands.
#
#   body = 0x12 | command id (8) | nonce (8) | device hash (4) | issued (u32) | expires (u32)
#          | action (1: start) | amount (u24) | program length (1) | program (1..10)
#   tag  = HMAC-SHA256(command key, body)[:16]
#
#   remote = RemoteStart(engine, journal, key, device_id, cache)
#   reply = remote.on_command(payload)    JSON bytes for the server; never raises
#
# on_command() runs to the end without awaiting: the journal record is durable before it
# returns, so the transport may acknowledge the message only after it returns.
import asyncio
import json
import struct
from binascii import hexlify

from micropython import const

from washpay.crypto import MacKey
from washpay.journal import JournalError
from washpay.journal import records as R
from washpay.payments.token import (
    KIND_COMMAND,
    PROGRAM_MAX,
    VERSION,
    Refused,
    authentic,
    device_hash,
    program_name,
)

ID_LEN = const(8)
NONCE_LEN = const(8)
TAG_LEN = const(16)
ACTION_START = const(1)
_FIXED = const(34)  # bytes before the program name
COMMAND_MIN = const(51)
COMMAND_MAX = const(60)
_REPLIES = const(8)

# reason code -> text for the reply and the journal (the journal keeps 25 bytes)
REASONS = {
    "malformed": "malformed command",
    "other_device": "command for another device",
    "bad_tag": "bad tag",
    "action": "unknown action",
    "program": "unknown program",
    "window": "validity window refused",
    "future": "issued in the future",
    "expired": "expired",
    "used": "already executed",
    "amount": "amount below price",
    "full": "replay cache full",
    "journal": "journal full: sync required",
}


class Command:
    __slots__ = ("cid", "nonce", "issued", "expires", "action", "amount", "program")

    def __init__(self, cid, nonce, issued, expires, action, amount, program):
        self.cid = cid
        self.nonce = nonce
        self.issued = issued
        self.expires = expires
        self.action = action
        self.amount = amount
        self.program = program


class CommandVerifier:
    def __init__(self, key, device_id, cache):
        self._mac = MacKey(key)
        self.device = device_hash(device_id)
        self.cache = cache

    def parse(self, payload):
        """Authenticate `payload` (bytes): a Command, or Refused."""
        n = len(payload)
        if not COMMAND_MIN <= n <= COMMAND_MAX or payload[0] != (VERSION << 4 | KIND_COMMAND):
            raise Refused("malformed")
        plen = payload[33]
        if not 1 <= plen <= PROGRAM_MAX or n != _FIXED + plen + TAG_LEN:
            raise Refused("malformed")
        if payload[17:21] != self.device:
            raise Refused("other_device")
        if not authentic(self._mac, payload, _FIXED + plen, TAG_LEN):
            raise Refused("bad_tag")
        mv = memoryview(payload)
        issued, expires = struct.unpack_from(">II", payload, 21)
        amount = (payload[30] << 16) | (payload[31] << 8) | payload[32]
        cmd = Command(bytes(mv[1:9]), bytes(mv[9:17]), issued, expires, payload[29], amount,
                      program_name(mv[34 : 34 + plen]))
        if cmd.action != ACTION_START:
            raise Refused("action", cmd)
        if cmd.program is None:
            raise Refused("program", cmd)
        return cmd

    def check(self, payload):
        cmd = self.parse(payload)
        why = self.cache.check_time(cmd.issued, cmd.expires)
        if why:
            raise Refused(why, cmd)
        if self.cache.used(cmd.cid):
            raise Refused("used", cmd)
        return cmd


class RemoteStart:
    def __init__(self, engine, journal, key, device_id, cache, log=None):
        self.engine = engine
        self.journal = journal
        self.verifier = CommandVerifier(key, device_id, cache)
        self.cache = cache
        self.log = log or (lambda *a: None)
        self.started = 0
        self.recovered = 0
        self.refused = {}
        self.replies = []  # the last few replies, newest last (status)

    def recover(self, last):
        """As TokenPayments.recover: a remote start journaled just before a power cut
        whose id did not reach the replay cache is added before anything else happens."""
        from washpay.replay import MAX_VALIDITY_S

        if not last or last.get("type") != R.REMOTE_START:
            return False
        cid = last.get("source") or b""
        if len(cid) != ID_LEN or self.cache.used(cid):
            return False
        t = max(last.get("t", 0), self.cache.now())
        self.recovered += 1
        try:
            self.cache.add(cid, 0, t + MAX_VALIDITY_S)
        except Exception as e:  # noqa: BLE001
            self.log("command replay cache:", e)
        return True

    def _reply(self, cmd, result, reason=None, seq=None):
        r = {"result": result}
        if cmd is not None:
            r["cmd"] = hexlify(cmd.cid).decode()
        if reason:
            r["reason"] = reason
        if seq is not None:
            r["seq"] = seq
        out = json.dumps(r).encode()
        self.replies.append(r)
        if len(self.replies) > _REPLIES:
            self.replies.pop(0)
        return out

    def on_command(self, payload):
        """Verify and execute one command; the reply (JSON bytes) says what happened."""
        try:
            return self._execute(bytes(payload))
        except Refused as e:
            return self._refused(e)
        except Exception as e:  # noqa: BLE001 - a command must never stop the board
            self.log("remote start: unexpected error", repr(e))
            return self._reply(None, "error", repr(e)[:60])

    def _execute(self, payload):
        from washpay.replay import CacheFull

        eng = self.engine
        cmd = self.verifier.check(payload)
        p = None
        for prog in eng.programs:
            if prog["name"] == cmd.program:
                p = prog
        if p is None:
            raise Refused("program", cmd)
        if cmd.amount and cmd.amount < eng.price_of(p):
            raise Refused("amount", cmd)
        why = eng.refuse_reason()
        if why:
            # not executed and not used up: the server may send it again or refund
            self._count("busy")
            self._journal_refusal(cmd, why.lower())
            eng.show(why, "remote start")
            return self._reply(cmd, "refused", why.lower())
        if not self.journal.accepts_payments:
            raise Refused("journal", cmd)
        if not self.cache.room():
            raise Refused("full", cmd)
        price = cmd.amount or eng.price_of(p)
        try:
            seq = eng.commit_vend(R.REMOTE_START, price, program=p, amount=price,
                                  source=cmd.cid)
        except JournalError as e:
            self.log("remote start not executed:", e)
            raise Refused("journal", cmd)
        try:
            self.cache.add(cmd.cid, cmd.issued, cmd.expires)
        except (OSError, CacheFull) as e:
            self.log("command replay cache not written:", e)
        self.started += 1
        asyncio.create_task(eng.drive())
        return self._reply(cmd, "started", seq=seq)

    def _count(self, code):
        self.refused[code] = self.refused.get(code, 0) + 1

    def _refused(self, e):
        code = e.code
        self._count(code)
        cmd = e.token
        reason = REASONS.get(code, code)
        if code == "used":
            # a second delivery of a command already executed: the server's answer is that
            # it ran (the journal has its remote_start record); nothing new to journal
            return self._reply(cmd, "duplicate", reason)
        if cmd is None:
            self.log("remote start refused:", reason)
            return self._reply(None, "invalid", reason)
        if code != "journal":
            self._journal_refusal(cmd, reason)
        return self._reply(cmd, "refused", reason)

    def _journal_refusal(self, cmd, reason):
        try:
            self.journal.append(R.COMMAND_REFUSED, amount=cmd.amount,
                                program=(cmd.program or "")[:PROGRAM_MAX], source=cmd.cid,
                                source_kind=R.SOURCE_COMMAND, reason=reason)
        except JournalError as e:
            self.log("command refusal not journaled:", e)

    async def serve(self, port):
        """Take commands from a port (the simulator's control channel, until the sync link
        carries them): port.flag is set when port.inbox has payloads."""
        while True:
            await port.flag.wait()
            while port.inbox:
                self.on_command(port.inbox.pop(0))

    def status(self):
        return {"started": self.started, "refused": dict(self.refused),
                "recovered": self.recovered,
                "replies": list(self.replies), "cache": self.cache.status()}
