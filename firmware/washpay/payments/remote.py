# Remote start: after an app payment clears, the server tells the machine to start. The
# command is signed under this board's command key, names the board, expires, carries a
# nonce, and is executed at most once: its id is kept in flash (replay.py) until it expires.
# docs/remote-start.md is the format and the reply; host_tools/token.py builds commands.
#
#   body = 0x12 | command id (8) | nonce (8) | device hash (4) | issued (u32) | expires (u32)
#          | action (1: start) | amount (u24) | program length (1) | program (1..10)
#   tag  = HMAC-SHA256(command key, body)[:16]
#
#   remote = RemoteStart(engine, journal, key, device_id, cache)   (payments/signed.py)
#   reply = remote.on_command(payload)    JSON bytes for the server; never raises
#
# This module is the check and the start: loaded for one command and dropped after
# (washpay.use), while the RemoteStart in signed.py keeps the counters and the cache.
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


# The remote start itself, run on a RemoteStart (payments/signed.py: the counters, key and
# replay cache, which stay loaded) and loaded for each command only (washpay.use): rs is
# that RemoteStart.


def recover(rs, last):
    """As token.recover: a remote start journaled just before a power cut whose id did
    not reach the replay cache is added before anything else happens."""
    from washpay.replay import MAX_VALIDITY_S

    if not last or last.get("type") != R.REMOTE_START:
        return False
    cid = last.get("source") or b""
    if len(cid) != ID_LEN or rs.cache.used(cid):
        return False
    t = max(last.get("t", 0), rs.cache.now())
    rs.recovered += 1
    try:
        rs.cache.add(cid, 0, t + MAX_VALIDITY_S)
    except Exception as e:  # noqa: BLE001
        rs.log("command replay cache:", e)
    return True


def _reply(rs, cmd, result, reason=None, seq=None):
    r = {"result": result}
    if cmd is not None:
        r["cmd"] = hexlify(cmd.cid).decode()
    if reason:
        r["reason"] = reason
    if seq is not None:
        r["seq"] = seq
    out = json.dumps(r).encode()
    rs.replies.append(r)
    if len(rs.replies) > _REPLIES:
        rs.replies.pop(0)
    return out


def on_command(rs, payload):
    """Verify and execute one command; the reply (JSON bytes) says what happened."""
    try:
        return _execute(rs, bytes(payload))
    except Refused as e:
        return _refused(rs, e)
    except Exception as e:  # noqa: BLE001 - a command must never stop the board
        rs.log("remote start: unexpected error", repr(e))
        return _reply(rs, None, "error", repr(e)[:60])


def _execute(rs, payload):
    from washpay.replay import CacheFull

    eng = rs.engine
    cmd = CommandVerifier(rs.key, rs.device_id, rs.cache).check(payload)
    p = eng.program_named(cmd.program)
    if p is None:
        raise Refused("program", cmd)
    if cmd.amount and cmd.amount < eng.price_of(p):
        raise Refused("amount", cmd)
    why = eng.refuse_reason()
    if why:
        # not executed and not used up: the server may send it again or refund
        _count(rs, "busy")
        _journal_refusal(rs, cmd, why.lower())
        eng.show(why, "remote start")
        return _reply(rs, cmd, "refused", why.lower())
    if not rs.journal.accepts_payments:
        raise Refused("journal", cmd)
    if not rs.cache.room():
        raise Refused("full", cmd)
    price = cmd.amount or eng.price_of(p)
    try:
        seq = eng.commit_vend(R.REMOTE_START, price, program=p, amount=price, source=cmd.cid)
    except JournalError as e:
        rs.log("remote start not executed:", e)
        raise Refused("journal", cmd)
    try:
        rs.cache.add(cmd.cid, cmd.issued, cmd.expires)
    except (OSError, CacheFull) as e:
        rs.log("command replay cache not written:", e)
    rs.started += 1
    asyncio.create_task(eng.drive())
    return _reply(rs, cmd, "started", seq=seq)


def _count(rs, code):
    rs.refused[code] = rs.refused.get(code, 0) + 1


def _refused(rs, e):
    code = e.code
    _count(rs, code)
    cmd = e.token
    reason = REASONS.get(code, code)
    if code == "used":
        # a second delivery of a command already executed: the server's answer is that
        # it ran (the journal has its remote_start record); nothing new to journal
        return _reply(rs, cmd, "duplicate", reason)
    if cmd is None:
        rs.log("remote start refused:", reason)
        return _reply(rs, None, "invalid", reason)
    if code != "journal":
        _journal_refusal(rs, cmd, reason)
    return _reply(rs, cmd, "refused", reason)


def _journal_refusal(rs, cmd, reason):
    try:
        rs.journal.append(R.COMMAND_REFUSED, amount=cmd.amount,
                          program=(cmd.program or "")[:PROGRAM_MAX], source=cmd.cid,
                          source_kind=R.SOURCE_COMMAND, reason=reason)
    except JournalError as e:
        rs.log("command refusal not journaled:", e)
