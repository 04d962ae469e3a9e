# One journal record in binary: packing the fields of records.py's layout, and sealing them
# with AES-256-CTR (body) then a chained HMAC-SHA256 tag (encrypt-then-MAC).
#
#   record = header(16: version, 3 x 0, seq, nonce) | E(body, 96) | tag(16)
#   counter block = nonce(8) | seq(4) | 0(4), then +1 per 16 bytes
#   tag = HMAC-SHA256(mac key, previous record's tag | header | encrypted body)[:16]
#
# The nonce is 8 fresh random bytes per write: a record whose write was cut off is written
# again with the same sequence number after the reboot, and must not reuse its keystream.
import os
import struct

from washpay.crypto import AesCtr, MacKey, constant_time_eq
from washpay.journal import records as R

_ZERO_TAG = bytes(R.TAG_SIZE)
_MAC_END = R.HEADER_SIZE + R.BODY_SIZE  # 112: the tag covers everything before it

# the keyword fields Journal.append takes, besides credit/state/t which it always writes
FIELDS = (
    "credit", "state", "t", "amount", "price", "program", "pulses", "attempt", "reason",
    "recovered", "currency", "source", "source_kind", "balance_before", "balance_after",
    "card_counter", "left_s",
)


def _text(value, size):
    """`value` (str or bytes) as at most `size` bytes, cut on a UTF-8 character boundary."""
    if value is None:
        return b""
    if isinstance(value, str):
        b = value.encode()
    elif isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
    else:
        b = str(value).encode()
    if len(b) > size:
        cut = size
        while cut and (b[cut] & 0xC0) == 0x80:
            cut -= 1
        b = b[:cut]
    return b


def _u8(v):
    return 0 if v is None else max(0, min(255, int(v)))


def _i32(v):
    v = 0 if v is None else int(v)
    if not -0x80000000 <= v <= 0x7FFFFFFF:
        raise ValueError("amount %d does not fit a journal record" % v)
    return v


def pack_body(buf, off, code, flags, boot, fields, currency):
    """Write the 96-byte plaintext body at buf[off:]; `fields` are append()'s keywords."""
    get = fields.get
    reason = get("reason")
    rcode = 0
    text = b""
    if reason:
        try:
            rcode = R.REASONS.index(reason)
        except ValueError:
            text = _text(reason, R.REASON_TEXT_LEN)
    state = get("state", R.IDLE)
    try:
        scode = R.STATES.index(state)
    except ValueError:
        raise ValueError("unknown vend state %r" % state)
    kind = get("source_kind", 0)
    if isinstance(kind, str):
        kind = R.SOURCE_KINDS.index(kind)
    source = _text(get("source"), R.SOURCE_LEN)
    if get("recovered"):
        flags |= R.FLAG_RECOVERED
    t = int(get("t", 0))
    if not 0 <= t <= 0xFFFFFFFF:
        t = 0
        flags |= R.FLAG_CLOCK_UNTRUSTED
    struct.pack_into(
        R.BODY_FORMAT, buf, off,
        code, flags, scode, rcode, t, boot & 0xFFFFFFFF,
        _i32(get("amount")), _i32(get("credit")), _i32(get("price")),
        _i32(get("balance_before")), _i32(get("balance_after")),
        int(get("card_counter") or 0) & 0xFFFFFFFF,
        _text(get("currency") or currency, 3),
        _u8(get("pulses")), _u8(get("attempt")), kind, len(source), source,
        _text(get("program"), R.PROGRAM_LEN),
        max(0, min(R.LEFT_MAX, int(get("left_s") or 0))), text,
    )


def _str(b):
    b = bytes(b).rstrip(b"\x00")
    try:
        return b.decode()
    except UnicodeError:  # only an unauthenticated record can hold this
        return repr(b)


def unpack(seq, body):
    """The record as a dict, from its sequence number and 96-byte plaintext body."""
    (code, flags, scode, rcode, t, boot, amount, credit, price, bal_before, bal_after, counter,
     currency, pulses, attempt, kind, slen, source, program, left, text) = struct.unpack_from(
        R.BODY_FORMAT, body, 0)
    return {
        "seq": seq,
        "type": R.RECORD_TYPES[code - 1] if 0 < code <= len(R.RECORD_TYPES) else "type%d" % code,
        "boot": boot,
        "t": t,
        "clock_ok": not flags & R.FLAG_CLOCK_UNTRUSTED,
        "credit": credit,
        "state": R.STATES[scode] if scode < len(R.STATES) else "state%d" % scode,
        "amount": amount,
        "price": price,
        "currency": _str(currency),
        "program": _str(program),
        "pulses": pulses,
        "attempt": attempt,
        "reason": R.REASONS[rcode] if 0 < rcode < len(R.REASONS) else _str(text),
        "recovered": bool(flags & R.FLAG_RECOVERED),
        "source_kind": R.SOURCE_KINDS[kind] if kind < len(R.SOURCE_KINDS) else str(kind),
        "source": bytes(source[:slen]),
        "balance_before": bal_before,
        "balance_after": bal_after,
        "card_counter": counter,
        "left_s": left,
    }


class Sealer:
    """Seals and checks records under one device's journal keys; one per Journal.

    Buffers are made once: sealing allocates only the HMAC's digests and the nonce.
    """

    def __init__(self, enc_key, mac_key):
        self._ctr = AesCtr(enc_key)
        self._mac = MacKey(mac_key)
        self._cb = bytearray(16)
        # identifies the keys in segment headers, so a decoder can say "wrong key"
        self.key_check = self._mac.mac(R.KEY_CHECK_TEXT)[:4]

    def _crypt(self, rec, out):
        mv = memoryview(rec)
        cb = self._cb
        cb[0:8] = mv[8:16]  # nonce
        cb[8:12] = mv[4:8]  # sequence number
        cb[12] = cb[13] = cb[14] = cb[15] = 0
        self._ctr.crypt_into(cb, mv[R.HEADER_SIZE : _MAC_END], out)

    def seal(self, rec, seq, prev_tag):
        """Seal `rec` (128-byte bytearray, plaintext body at 16..112) in place as record `seq`."""
        rec[0] = R.VERSION
        rec[1] = rec[2] = rec[3] = 0
        struct.pack_into(">I", rec, 4, seq)
        rec[8:16] = os.urandom(8)
        mv = memoryview(rec)
        self._crypt(rec, mv[R.HEADER_SIZE : _MAC_END])
        rec[_MAC_END:] = self._mac.mac(prev_tag or _ZERO_TAG, mv[:_MAC_END])[: R.TAG_SIZE]

    def check(self, rec, prev_tag):
        """True if `rec` (128 bytes) is authentic and follows the record whose tag is given."""
        mv = memoryview(rec)
        if rec[0] != R.VERSION:
            return False
        tag = self._mac.mac(prev_tag or _ZERO_TAG, mv[:_MAC_END])
        return constant_time_eq(memoryview(tag)[: R.TAG_SIZE], mv[_MAC_END:])

    def open_into(self, rec, body):
        """Decrypt the body of `rec` into `body` (a 96-byte buffer); check() it first."""
        self._crypt(rec, body)


def seq_of(rec):
    return struct.unpack_from(">I", rec, 4)[0]
