"""The card wallet of docs/wallet-format.md, on the host: keys, header, copies, trailer.

An independent implementation of that page with `cryptography`; it never imports the
firmware. `washpay card` builds what it writes to a card with it and verifies what it reads
back; tests pin it and the firmware's washpay/payments/wallet.py to the page's vector.
"""

import hmac as _hmac
import os
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as chmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECTOR = 1
HEADER_BLOCK = 4
COPY_BLOCKS = (5, 6)
TRAILER_BLOCK = 7
MAGIC = b"WP"
VERSION = 1
TIER_LEN = 8
ACCESS = bytes.fromhex("78778800")  # data 100, trailer 011, general purpose byte 0
TRANSPORT_KEY = b"\xff" * 6
TRANSPORT_ACCESS = bytes.fromhex("ff078069")
COUNTER_MAX = 0xFFFFFF
BALANCE_MAX = 0x7FFFFFFF
CARD_SALT = b"washpay/v1/card"
READ_SALT = b"washpay/v1/card-read"


class WalletError(ValueError):
    """A card's wallet cannot be used; the message says why in words an operator can act on."""


def _hkdf(ikm, salt, info, length=32):
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _hmac_sha256(key, data):
    h = chmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def site_card_key(site_key):
    """The card key material every board of the site holds (/secrets.json "card_key")."""
    return _hkdf(site_key, CARD_SALT, b"card/site-card-key")


def site_id(card_key):
    return _hkdf(card_key, CARD_SALT, b"card/site-id")[:4]


def key_a(uid):
    """The public read key of a card's wallet sector."""
    return _hkdf(bytes(uid), READ_SALT, b"card/key-a")[:6]


def key_b(card_key, uid):
    return _hkdf(card_key, CARD_SALT, b"card/key-b/" + bytes(uid))[:6]


def mac_key(card_key, uid):
    return _hkdf(card_key, CARD_SALT, b"card/wallet-mac/" + bytes(uid))


def header(card_key, tier="", flags=0):
    t = tier.encode("ascii")
    if len(t) > TIER_LEN:
        raise WalletError(f"tier name {tier!r} is longer than {TIER_LEN} characters")
    return MAGIC + bytes((VERSION, flags)) + site_id(card_key) + t.ljust(TIER_LEN, b"\0")


def trailer(card_key, uid):
    return key_a(uid) + ACCESS + key_b(card_key, uid)


def copy_mac(card_key, uid, block, head, body8):
    return _hmac_sha256(mac_key(card_key, uid), bytes((block,)) + head + body8)[:8]


def copy(card_key, uid, block, head, balance, counter, tag):
    if not -0x80000000 <= balance <= BALANCE_MAX:
        raise WalletError(f"balance {balance} does not fit a card")
    if not 0 <= counter <= COUNTER_MAX:
        raise WalletError("the card's counter is exhausted: reissue the card")
    body = struct.pack(">i", balance) + counter.to_bytes(3, "big") + bytes((tag & 0xFF,))
    return body + copy_mac(card_key, uid, block, head, body)


@dataclass
class Copy:
    block: int
    balance: int
    counter: int
    tag: int
    raw: bytes


@dataclass
class Wallet:
    """What a card's sector 1 says, after verification with the site card key."""

    uid: bytes
    head: bytes  # block 4 as read
    tier: str
    flags: int
    site: bytes
    copies: list  # Copy or None (not valid), for blocks 5 and 6
    current: Copy | None

    @property
    def balance(self):
        return self.current.balance if self.current else None

    @property
    def counter(self):
        return self.current.counter if self.current else None

    @property
    def target(self):
        """The block the next write goes to: the one not holding the current copy."""
        return COPY_BLOCKS[1] if self.current.block == COPY_BLOCKS[0] else COPY_BLOCKS[0]

    def next_copy(self, card_key, balance, tag=None):
        """(block, 16 bytes) of the next write: counter + 1 into the other block."""
        if self.current is None:
            raise WalletError("the card has no valid balance copy")
        if tag is None:
            tag = os.urandom(1)[0]
        return self.target, copy(card_key, self.uid, self.target, self.head, balance,
                                 self.current.counter + 1, tag)


def parse_header(head):
    """(flags, site id, tier) from block 4, or WalletError."""
    head = bytes(head)
    if len(head) != 16 or head[:2] != MAGIC:
        raise WalletError("not a washpay card (no wallet header in block 4)")
    if head[2] != VERSION:
        raise WalletError(f"wallet format version {head[2]} is unknown to this tool")
    try:
        tier = head[8:16].rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError:
        raise WalletError("the card's tier name is not ASCII") from None
    return head[3], head[4:8], tier


def check_copy(card_key, uid, block, head, raw):
    raw = bytes(raw)
    want = copy_mac(card_key, uid, block, head, raw[:8])
    if not _hmac.compare_digest(want, raw[8:16]):
        return None
    balance = struct.unpack(">i", raw[:4])[0]
    return Copy(block, balance, int.from_bytes(raw[4:7], "big"), raw[7], raw)


def current_of(copies):
    """The current copy: highest counter among the valid ones, block 5 on a tie."""
    best = None
    for c in copies:
        if c is not None and (best is None or c.counter > best.counter):
            best = c
    return best


def read_wallet(card_key, uid, blocks):
    """Verify sector 1 as read from a card: `blocks` maps 4, 5, 6 to 16 bytes each."""
    head = bytes(blocks[HEADER_BLOCK])
    flags, site, tier = parse_header(head)
    if site != site_id(card_key):
        raise WalletError(f"card of another site (site id {site.hex()})")
    copies = [check_copy(card_key, uid, b, head, blocks[b]) for b in COPY_BLOCKS]
    return Wallet(bytes(uid), head, tier, flags, site, copies, current_of(copies))


def issue_blocks(card_key, uid, balance, tier="", flags=0):
    """What issuing writes: {block: 16 bytes} for blocks 4, 5, 6 and the trailer 7."""
    head = header(card_key, tier, flags)
    out = {HEADER_BLOCK: head}
    for b in COPY_BLOCKS:
        out[b] = copy(card_key, uid, b, head, balance, 0, 0)
    out[TRAILER_BLOCK] = trailer(card_key, uid)
    return out
