# QR token payments: the customer paid in the operator's app, which shows a signed token as
# a QR code; the board checks it with no network at all and starts the washer once.
# docs/token-format.md is the format, the checks and the clock policy; host_tools/token.py
# issues tokens (with `cryptography`), and shared vectors pin both sides.
#
#   text  = "WP:" + base32(body | tag)                    (A-Z 2-7: QR alphanumeric mode)
#   body  = 0x11 | token id (8) | device hash (4) | issued (u32) | expires (u32)
#           | amount (u24) | program length (1) | program (1..10, UTF-8)
#   tag   = HMAC-SHA256(token key, body)[:12]
#
# The parser and the checks are pure logic (CPython runs them under hypothesis); the
# payment source at the end wires them to the scanner, the vend engine and the journal. This
# module is loaded for one scan and dropped after (washpay.use): what stays between scans
# (counters, the key, the replay cache) is TokenPayments, in payments/signed.py.
import asyncio
import struct
from hashlib import sha256

from micropython import const

from washpay.crypto import MacKey, constant_time_eq
from washpay.journal import JournalError
from washpay.journal import records as R

PREFIX = b"WP:"
VERSION = const(1)
KIND_TOKEN = const(1)
KIND_COMMAND = const(2)
ID_LEN = const(8)
DEVICE_HASH_LEN = const(4)
TAG_LEN = const(12)
PROGRAM_MAX = const(10)
AMOUNT_MAX = const(0xFFFFFF)
_FIXED = const(25)  # bytes before the program name
BODY_MIN = const(26)  # _FIXED + 1-byte name
TOKEN_MAX = const(47)  # _FIXED + 10 + TAG_LEN
TEXT_MAX = const(79)  # 3 + 76 base32 characters

# refusal code -> the two display lines (16 columns)
MESSAGES = {
    "unreadable": ("Code unreadable", "scan again"),
    "foreign": ("Not a wash code", ""),
    "malformed": ("Invalid code", "ask staff"),
    "other_device": ("Code is for", "another machine"),
    "bad_tag": ("Invalid code", "ask staff"),
    "program": ("Program unknown", "code not used"),
    "window": ("Invalid code", "bad validity"),
    "future": ("Code not valid", "check the clock"),
    "expired": ("Code expired", "get a new one"),
    "used": ("Already used", "code refused"),
    "amount": ("Price changed", "code not used"),
    "full": ("Try again later", "code not used"),
    "journal": ("Journal full", "sync required"),
}
# refusals of an authentic token: the customer paid for it, so the journal says why it
# did not start a wash (reason text: the journal keeps 25 bytes)
JOURNAL_REASONS = {
    "program": "unknown program",
    "window": "validity window refused",
    "future": "issued in the future",
    "expired": "expired",
    "used": "already used",
    "amount": "amount below price",
    "full": "replay cache full",
}


class Refused(Exception):
    """Why a code does not start a wash: `code` keys MESSAGES; `token` is set (a Token)
    when the code was authentic, so that the refusal concerns money."""

    def __init__(self, code, token=None):
        super().__init__(code)
        self.code = code
        self.token = token


class Token:
    __slots__ = ("tid", "issued", "expires", "amount", "program")

    def __init__(self, tid, issued, expires, amount, program):
        self.tid = tid
        self.issued = issued
        self.expires = expires
        self.amount = amount
        self.program = program


def device_hash(device_id):
    """The 4 bytes that bind a token or command to one board: SHA-256(device id)[:4]."""
    return sha256(device_id.encode()).digest()[:DEVICE_HASH_LEN]


def b32decode_into(src, start, end, out):
    """Strict RFC 4648 base32 (upper case, no padding) of src[start:end] into `out`.

    Only the canonical spelling of a byte string decodes: a character beyond the bytes or
    a non-zero unused bit is refused, so that no two texts carry the same token.
    Returns the number of bytes, or -1.
    """
    nchars = end - start
    nbytes = nchars * 5 // 8
    if (nbytes * 8 + 4) // 5 != nchars or nbytes > len(out):
        return -1
    acc = 0
    bits = 0
    j = 0
    for i in range(start, end):
        c = src[i]
        if 65 <= c <= 90:  # A-Z: 0..25
            v = c - 65
        elif 50 <= c <= 55:  # 2-7: 26..31
            v = c - 24
        else:
            return -1
        acc = ((acc << 5) | v) & 0x1FFF
        bits += 5
        if bits >= 8:
            bits -= 8
            out[j] = (acc >> bits) & 0xFF
            j += 1
    if acc & ((1 << bits) - 1):
        return -1
    return j


def authentic(mac, buf, body_len, tag_len):
    """True if buf[body_len:body_len + tag_len] is the tag of buf[:body_len] under `mac`."""
    mv = memoryview(buf)
    tag = mac.mac(mv[:body_len])
    return constant_time_eq(memoryview(tag)[:tag_len], mv[body_len : body_len + tag_len])


def program_name(mv):
    """The name as text, or None unless it is well-formed UTF-8 (RFC 3629): MicroPython's
    decoder takes surrogates, overlong forms and code points past U+10FFFF as text, so
    the bytes are checked here first, one lead byte and its continuation bytes at a time."""
    i = 0
    n = len(mv)
    while i < n:
        c = mv[i]
        i += 1
        if c < 0x80:
            continue
        if 0xC2 <= c <= 0xDF:
            k, lo, hi = 1, 0x80, 0xBF
        elif 0xE0 <= c <= 0xEF:  # E0: no overlong form; ED: no surrogate
            k, lo, hi = 2, 0xA0 if c == 0xE0 else 0x80, 0x9F if c == 0xED else 0xBF
        elif 0xF0 <= c <= 0xF4:  # F0: no overlong form; F4: nothing past U+10FFFF
            k, lo, hi = 3, 0x90 if c == 0xF0 else 0x80, 0x8F if c == 0xF4 else 0xBF
        else:
            return None
        if i + k > n or not lo <= mv[i] <= hi:
            return None
        for j in range(i + 1, i + k):
            if not 0x80 <= mv[j] <= 0xBF:
                return None
        i += k
    return str(bytes(mv), "utf-8")


class TokenVerifier:
    """Checks scanned text against one board's token key, device id and replay cache."""

    def __init__(self, key, device_id, cache):
        self._mac = MacKey(key)
        self.device = device_hash(device_id)
        self.cache = cache
        self._buf = bytearray(TOKEN_MAX)

    def parse(self, text):
        """Decode and authenticate `text`: a Token, or Refused (never anything else)."""
        if isinstance(text, str):
            try:
                text = text.encode()
            except UnicodeError:
                raise Refused("foreign")
        n = len(text)
        if n < 3 or text[0] != 0x57 or text[1] != 0x50 or text[2] != 0x3A:  # "WP:"
            raise Refused("foreign")
        if n > TEXT_MAX:
            raise Refused("malformed")
        buf = self._buf
        k = b32decode_into(text, 3, n, buf)
        if k < BODY_MIN + TAG_LEN or buf[0] != (VERSION << 4 | KIND_TOKEN):
            raise Refused("malformed")
        plen = buf[24]
        if not 1 <= plen <= PROGRAM_MAX or k != _FIXED + plen + TAG_LEN:
            raise Refused("malformed")
        if buf[9:13] != self.device:
            raise Refused("other_device")
        if not authentic(self._mac, buf, _FIXED + plen, TAG_LEN):
            raise Refused("bad_tag")
        issued, expires = struct.unpack_from(">II", buf, 13)
        amount = (buf[21] << 16) | (buf[22] << 8) | buf[23]
        mv = memoryview(buf)
        tok = Token(bytes(mv[1:9]), issued, expires, amount, program_name(mv[25 : 25 + plen]))
        if tok.program is None:
            raise Refused("program", tok)
        return tok

    def check(self, text):
        """parse() plus the validity window, the clock and single use."""
        tok = self.parse(text)
        why = self.cache.check_time(tok.issued, tok.expires)
        if why:
            raise Refused(why, tok)
        if self.cache.used(tok.tid):
            raise Refused("used", tok)
        return tok


def outcome(verifier, text):
    """The check's result as a short word ("ok" or a refusal code): what the fuzz tests
    compare between CPython and MicroPython."""
    try:
        verifier.check(text)
        return "ok"
    except Refused as e:
        return e.code


# ---- the QR payment source: scanned lines in, vends (or a clear refusal) out. Run on a
# TokenPayments (payments/signed.py: the counters, key and replay cache, which stay loaded)
# and loaded for each scan only (washpay.use): tp is that TokenPayments.


def recover(tp, last):
    """Before boot recovery journals anything: if the newest record redeems a token that
    the replay cache does not hold (power lost between the two writes), add it."""
    from washpay.replay import MAX_VALIDITY_S

    if not last or last.get("type") != R.TOKEN_REDEEM:
        return False
    tid = last.get("source") or b""
    if len(tid) != ID_LEN or tp.cache.used(tid):
        return False
    t = max(last.get("t", 0), tp.cache.now())
    tp.recovered += 1
    try:
        tp.cache.add(tid, 0, t + MAX_VALIDITY_S)
    except Exception as e:  # noqa: BLE001 - a full cache must not stop the boot
        tp.log("token replay cache:", e)
    return True


# scanner callbacks (run in the scanner's task; nothing here awaits)
def on_error(tp, kind):
    _refuse(tp, Refused("unreadable"), note=kind)


def on_line(tp, line):
    try:
        redeem(tp, line)
    except Refused as e:
        _refuse(tp, e)
    except Exception as e:  # noqa: BLE001 - the scanner task must outlive any bug
        tp.log("QR code: unexpected error", repr(e))
        _refuse(tp, Refused("malformed"), note="internal error")


def redeem(tp, line):
    from washpay.replay import CacheFull

    eng = tp.engine
    tok = TokenVerifier(tp.key, tp.device_id, tp.cache).check(line)
    p = eng.program_named(tok.program)
    if p is None:
        raise Refused("program", tok)
    if tok.amount and tok.amount < eng.price_of(p):
        raise Refused("amount", tok)
    why = eng.refuse_reason()
    if why:  # nothing happened to the token: the customer scans it again
        tp.show(why, "then scan again")
        tp.last = "busy"
        return False
    if not tp.journal.accepts_payments:
        raise Refused("journal")
    if not tp.cache.room():
        raise Refused("full", tok)
    price = tok.amount or eng.price_of(p)
    try:
        # durable first: from this record on, the money is the customer's credit if
        # the washer does not start (boot recovery or the engine gives it back)
        eng.commit_vend(R.TOKEN_REDEEM, price, program=p, amount=price, source=tok.tid)
    except JournalError as e:
        # the record is not in flash: the token is not used; the engine has taken the
        # machine out of order and says so on the display
        tp.log("token not redeemed:", e)
        tp.refused["journal"] = tp.refused.get("journal", 0) + 1
        tp.last = "journal"
        return False
    try:
        tp.cache.add(tok.tid, tok.issued, tok.expires)
    except (OSError, CacheFull) as e:
        # the journal has the redemption: the id stays used in RAM, and the next
        # boot takes it from the journal if this was the last record
        tp.log("token replay cache not written:", e)
    tp.last_refusal = None
    tp.last_tid = tok.tid
    tp.accepted += 1
    tp.last = "ok"
    asyncio.create_task(eng.drive())
    return True


def _refuse(tp, e, note=None):
    code = e.code
    tok = e.token
    if (code == "used" and tok is not None and tok.tid == tp.last_tid
            and tp.engine.state in (R.STARTING, R.RUNNING)):
        # the phone is still held up after its code started this wash: not an error
        tp.repeats += 1
        return
    tp.refused[code] = tp.refused.get(code, 0) + 1
    tp.last = code
    if tok is not None and code in JOURNAL_REASONS:
        _journal_refusal(tp, code, tok)
    tp.log("QR code refused:", code, note or "")
    line1, line2 = MESSAGES.get(code, ("Code refused", ""))
    tp.show(line1, line2)


def _journal_refusal(tp, code, tok):
    key = (tok.tid, code)
    if key == tp.last_refusal:
        return  # the scanner reads a code again while it is held up: one record
    tp.last_refusal = key
    try:
        tp.journal.append(R.TOKEN_REFUSED, amount=tok.amount,
                          program=(tok.program or "")[:PROGRAM_MAX], source=tok.tid,
                          source_kind=R.SOURCE_TOKEN, reason=JOURNAL_REASONS[code])
    except JournalError as e:
        tp.log("token refusal not journaled:", e)
