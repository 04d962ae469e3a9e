"""A board's journal records, sealed as a board seals them (docs/journal-format.md).

An independent CPython sealer on `cryptography`, written from the format page (the layout
constants are host_tools/journal.py's, the host's one reading of that page). Tests check
it from both sides: the host decoder and the firmware's own reader under micropython accept
what it seals, and given the same nonce it seals byte for byte what the firmware's Journal
seals for the same event (the format is deterministic but for the nonce, 8 fresh random
bytes per write).

    j = BoardJournal(site_key, "laundry-7")
    raw = j.append("coin", amount=100, credit=100, state="credit", t=1780000000)
"""

import os
import struct

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from host_tools import journal as J
from host_tools import keys as K

MIN_TRUSTED_T = 1_704_067_200  # 2024-01-01: a board treats an earlier clock as never set
ZERO_TAG = bytes(J.TAG_SIZE)
_CODES = {name: code for code, name in J.TYPES.items()}
_STATE_CODES = {name: code for code, name in J.STATES.items()}
_REASON_CODES = {text: code for code, text in J.REASONS.items()}
_KIND_CODES = {name: code for code, name in J.SOURCE_KINDS.items() if name}
# the source kind of a record given a source and no kind, as the firmware's Journal.append
_SOURCE_OF = {"card_debit": "card", "token_redeem": "token", "remote_start": "command"}
SOURCE_LEN = 16
PROGRAM_LEN = 10
REASON_TEXT_LEN = 25


class SealError(ValueError):
    """An event that does not fit a journal record; the text says which field."""


def _text(value, size):
    """UTF-8 bytes of `value`, cut to at most `size` on a character boundary."""
    b = value.encode() if isinstance(value, str) else bytes(value or b"")
    if len(b) > size:
        cut = size
        while cut and (b[cut] & 0xC0) == 0x80:  # never split a character
            cut -= 1
        b = b[:cut]
    return b


def _i32(name, v):
    v = int(v or 0)
    if not -0x8000_0000 <= v <= 0x7FFF_FFFF:
        raise SealError(f"{name} {v} does not fit a journal record")
    return v


def pack_body(rtype, boot=1, t=0, credit=0, state="idle", amount=0, price=0,
              balance_before=0, balance_after=0, card_counter=0, currency="EUR", pulses=0,
              attempt=0, source=b"", source_kind=None, program="", left_s=0, reason="",
              recovered=False, clock_ok=None):
    """The 96-byte plaintext body of one event (the table "Body" of the format page)."""
    if rtype not in _CODES:
        raise SealError(f"unknown record type {rtype!r}")
    if state not in _STATE_CODES:
        raise SealError(f"unknown vend state {state!r}")
    flags = 0
    t = int(t or 0)
    if not 0 <= t <= 0xFFFF_FFFF:
        t, clock_ok = 0, False
    if clock_ok is None:
        clock_ok = t >= MIN_TRUSTED_T
    if not clock_ok:
        flags |= J.FLAG_CLOCK_UNTRUSTED
    if recovered:
        flags |= J.FLAG_RECOVERED
    rcode, text = _REASON_CODES.get(reason, 0), b""
    if reason and not rcode:
        text = _text(reason, REASON_TEXT_LEN)
    source = _text(source, SOURCE_LEN)
    if source_kind is None:  # the format page's source kinds: a card_* record's is the UID
        source_kind = _SOURCE_OF.get(rtype, "card" if rtype.startswith("card_") else "")
        source_kind = source_kind if source else ""
    kind = source_kind if isinstance(source_kind, int) else _KIND_CODES.get(source_kind, 0)
    return J.BODY.pack(
        _CODES[rtype], flags, _STATE_CODES[state], rcode, t, boot & 0xFFFF_FFFF,
        _i32("amount", amount), _i32("credit", credit), _i32("price", price),
        _i32("balance before", balance_before), _i32("balance after", balance_after),
        int(card_counter or 0) & 0xFFFF_FFFF, _text(currency, 3),
        max(0, min(255, int(pulses or 0))), max(0, min(255, int(attempt or 0))), kind,
        len(source), source, _text(program, PROGRAM_LEN), max(0, min(0xFFFF, int(left_s or 0))),
        text,
    )


class Sealer:
    """One board's journal keys: seal a body as record `seq` after the tag `prev_tag`."""

    def __init__(self, site_key, device_id):
        self.enc, self.mac = K.journal_keys(K.device_secret(site_key, device_id))
        self._aes = algorithms.AES(self.enc)

    def seal(self, seq, body, prev_tag=ZERO_TAG, nonce=None):
        if len(body) != J.BODY_SIZE:
            raise SealError(f"a record body is {J.BODY_SIZE} bytes, not {len(body)}")
        nonce = os.urandom(8) if nonce is None else bytes(nonce)
        header = struct.pack(">B3xI", J.VERSION, seq) + nonce
        # counter block: nonce | seq | 0, one 128-bit big-endian counter per 16 bytes
        enc = Cipher(self._aes, modes.CTR(nonce + header[4:8] + bytes(4))).encryptor()
        sealed = header + enc.update(body) + enc.finalize()
        h = hmac.HMAC(self.mac, hashes.SHA256())
        h.update(prev_tag)
        h.update(sealed)
        return sealed + h.finalize()[: J.TAG_SIZE]


class BoardJournal:
    """A board's journal in memory: sequence numbers from 1, the tag chain, the boot
    counter, and the credit and vend state carried from record to record as the firmware's
    Journal.append does. `records[i]` is record i + 1, sealed."""

    def __init__(self, site_key, device_id, boot=1, currency="EUR"):
        self.sealer = Sealer(site_key, device_id)
        self.boot = boot
        self.currency = currency
        self.records = []
        self.prev_tag = ZERO_TAG
        self.credit = 0
        self.state = "idle"

    @property
    def last_seq(self):
        return len(self.records)

    def append(self, rtype, nonce=None, **fields):
        """Seal and keep one record; returns it (128 bytes)."""
        fields.setdefault("credit", self.credit)
        fields.setdefault("state", self.state)
        fields.setdefault("currency", self.currency)
        body = pack_body(rtype, boot=self.boot, **fields)
        raw = self.sealer.seal(len(self.records) + 1, body, self.prev_tag, nonce)
        self.records.append(raw)
        self.prev_tag = raw[-J.TAG_SIZE:]
        self.credit, self.state = fields["credit"], fields["state"]
        return raw

    def image(self):
        """The journal as a copy of the board's flash holds it (to write back later)."""
        return list(self.records), self.prev_tag, self.boot, self.credit, self.state

    def restore(self, image):
        """The flash written back with an older `image`: the journal is what it was then."""
        records, self.prev_tag, self.boot, self.credit, self.state = image
        self.records = list(records)

    def sealed(self, after, limit):
        """Up to `limit` records after seq `after`, as (seq, raw)."""
        return [(s + 1, self.records[s]) for s in range(after, min(after + limit,
                                                                    len(self.records)))]
