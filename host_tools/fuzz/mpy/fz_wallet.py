# Card wallets (payments/wallet.py): a copy packed under a card's MAC key checks and gives
# its balance and counter back; any change of the copy, the header, the block number or
# the card (UID) fails; parse_header() of any 16 bytes gives a header or WalletError.
import struct

from fzlib import below, chance, mutate, name, pick, rbytes, rnd
from washpay.payments.wallet import (
    CardKeys,
    WalletError,
    check_copy,
    current,
    pack_copy,
    parse_header,
    settle,
)

STATS = {"valid": 0, "forged": 0, "headers": 0}


def run(req, count, found):
    keys = CardKeys(rbytes(32))
    out = bytearray(16)
    for _ in range(count):
        mode = below(4)
        if mode == 0:
            STATS["headers"] += 1
            head = rbytes(16) if chance(2) else b"WP\x01" + rbytes(5) + \
                (name(8).encode() + bytes(8))[:8]
            if chance(2):
                head = (mutate(head) + rbytes(16))[:16]  # the reader always reads 16
            try:
                flags, site, tier = parse_header(head)
                if not isinstance(tier, str):
                    found.add("tier not text", head)
            except WalletError:
                pass
            except Exception as e:  # noqa: BLE001
                found.add("header " + type(e).__name__, head, repr(e))
            continue
        uid = rbytes(pick((4, 7)))
        mk = keys.mac_key(uid)
        head = b"WP\x01\x00" + keys.site_id + (b"t" + bytes(7))
        block = pick((5, 6))
        balance = rnd(31) - (1 << 30)
        counter = rnd(24)
        pack_copy(out, mk, block, head, balance, counter, rnd(8))
        copy = bytes(out)
        if mode == 1:
            STATS["valid"] += 1
            got = check_copy(mk, block, head, copy)
            if got is None or got[:2] != (balance, counter):
                found.add("valid copy fails", copy, got)
            try:
                current(got, None)
                settle(got, check_copy(mk, block, head, rbytes(16)), counter, balance, got[2])
            except Exception as e:  # noqa: BLE001
                found.add("settle " + type(e).__name__, copy, repr(e))
            continue
        STATS["forged"] += 1
        k = below(4)
        try:
            if k == 0:
                bad = mutate(copy)
                if len(bad) < 16 or bad[:16] == copy:
                    continue
                got = check_copy(mk, block, head, bad[:16])
            elif k == 1:
                got = check_copy(mk, 11 - block, head, copy)
            elif k == 2:
                h2 = mutate(head)
                if h2 == head:
                    continue
                got = check_copy(mk, block, h2, copy)
            else:
                got = check_copy(keys.mac_key(uid[:-1] + bytes(((uid[-1] + 1) & 0xFF,))),
                                 block, head, copy)
            if got is not None:
                found.add("forged copy checks", copy + struct.pack(">B", k), got)
        except Exception as e:  # noqa: BLE001
            found.add("check " + type(e).__name__, copy, repr(e))
    return count
