# The card wallet on a MIFARE Classic 1K card: per-card keys, the header, the two balance
# copies and which one is current. docs/wallet-format.md is the one definition;
# host_tools/wallet.py is an independent implementation, and tests pin both to the page's
# vector. Pure logic: no reader, no journal, so it also runs under CPython for hypothesis.
import struct

from micropython import const

from washpay.crypto import MacKey, constant_time_eq, hkdf_extract

# the site's card keys and the wallet's error are card_state.py's: the board keeps them
# between taps, and this module only for a tap (payments/card.py)
from washpay.payments.card_state import CARD_SALT, CardKeys, WalletError  # noqa: F401

SECTOR = const(1)
HEADER_BLOCK = const(4)
COPY_A = const(5)
COPY_B = const(6)
TRAILER_BLOCK = const(7)
MAGIC = b"WP"
VERSION = const(1)
TIER_LEN = const(8)
COUNTER_MAX = const(0xFFFFFF)
# key A (public read key), access bits 78 77 88 (data: read A|B, write B; trailer: written
# with B), general purpose byte 0, key B
ACCESS = b"\x78\x77\x88\x00"
TRANSPORT_KEY = b"\xff\xff\xff\xff\xff\xff"
READ_SALT = b"washpay/v1/card-read"

# outcome of a payment whose write was torn, once the card is read again
LANDED = const(1)  # the new copy is on the card: the card paid
NOT_LANDED = const(0)  # the card is where it was before: it did not pay
UNKNOWN = const(2)  # the card moved on since (paid elsewhere twice): the server settles

_ONE = b"\x01"


def key_a(uid):
    """The public read key of a card's wallet sector."""
    return MacKey(hkdf_extract(READ_SALT, uid)).mac(b"card/key-a", _ONE)[:6]


def load_card_key(secrets):
    """The site card key from the parsed /secrets.json ("card_key", 64 hex), or None."""
    from washpay.keys import load_secret

    return load_secret(secrets, "card_key")


def parse_header(head):
    """(flags, site id, tier) of block 4; WalletError if it is no washpay wallet."""
    if bytes(head[0:2]) != MAGIC:
        raise WalletError("not a washpay card")
    if head[2] != VERSION:
        raise WalletError("wallet format %d is unknown" % head[2])
    tier = bytes(head[8:16])
    end = tier.find(b"\x00")
    if end >= 0:
        tier = tier[:end]
    try:
        tier = tier.decode()
    except UnicodeError:
        raise WalletError("the card's tier is not text")
    return head[3], bytes(head[4:8]), tier


def copy_mac(mac_key, block, head, copy):
    return mac_key.mac(bytes((block,)), head, bytes(copy[0:8]))[:8]


def check_copy(mac_key, block, head, copy):
    """(balance, counter, tag) if the copy in `block` verifies, else None."""
    if not constant_time_eq(copy_mac(mac_key, block, head, copy), copy[8:16]):
        return None
    balance = struct.unpack_from(">i", copy, 0)[0]
    return balance, (copy[4] << 16) | (copy[5] << 8) | copy[6], copy[7]


def pack_copy(out, mac_key, block, head, balance, counter, tag):
    """Write the 16-byte copy (balance, counter, writer tag, MAC) into `out`."""
    if not 0 <= counter <= COUNTER_MAX:
        raise WalletError("card counter exhausted: reissue the card")
    struct.pack_into(">i", out, 0, balance)
    out[4] = (counter >> 16) & 0xFF
    out[5] = (counter >> 8) & 0xFF
    out[6] = counter & 0xFF
    out[7] = tag & 0xFF
    out[8:16] = copy_mac(mac_key, block, head, out)


def current(a, b):
    """Index (0: block 5, 1: block 6) of the current copy among two check_copy() results:
    the highest counter, block 5 on a tie; -1 if neither is valid."""
    if a is None:
        return -1 if b is None else 1
    if b is None or a[1] >= b[1]:
        return 0
    return 1


def settle(a, b, counter, balance, tag):
    """Did a torn write of the copy (balance, counter, tag) land? `a`, `b`: check_copy()
    of blocks 5 and 6 now. Writes alternate between the blocks: a landed copy is next to
    the one write after it, and the write after that (even a torn one) covers it. So if our
    copy is not there and the card went no further than `counter`, it never landed; once
    the card has moved past it, nothing on the card can tell (the server settles)."""
    want = (balance, counter, tag)
    if want in (a, b):
        return LANDED
    top = -1
    for c in (a, b):
        if c is not None and c[1] > top:
            top = c[1]
    if top > counter:
        return UNKNOWN
    return NOT_LANDED
