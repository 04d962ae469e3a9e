# Journal records (journal/seal.py): a record sealed from random fields checks under its
# predecessor's tag and opens to the same fields; any change of its 128 bytes, or another
# predecessor, fails the check; unpack() of any 96-byte body (what a bug or the wrong key
# would decrypt to) never raises.

from fzlib import below, chance, mutate, name, pick, rbytes, rnd
from washpay.journal import records as R
from washpay.journal.seal import Sealer, pack_body, unpack

STATS = {"valid": 0, "forged": 0, "bodies": 0}


def _fields():
    return {"state": pick(R.STATES), "t": rnd(32), "amount": rnd(24) - (1 << 23),
            "credit": rnd(16), "price": rnd(16), "program": name(), "pulses": below(300),
            "source": rbytes(below(17)), "source_kind": below(len(R.SOURCE_KINDS)),
            "reason": pick(("", "expired", name(25), pick(R.REASONS[1:]))),
            "card_counter": rnd(24), "left_s": rnd(16)}


def run(req, count, found):
    s = Sealer(rbytes(32), rbytes(32))  # seal() still draws its nonces from os.urandom
    rec = bytearray(128)
    body = bytearray(96)
    prev = rbytes(16)
    for _ in range(count):
        mode = below(4)
        if mode == 0:  # any body, decrypted: unpack must hold
            STATS["bodies"] += 1
            b = rbytes(96)
            try:
                unpack(rnd(32), b)
            except Exception as e:  # noqa: BLE001
                found.add("unpack " + type(e).__name__, b, repr(e))
            continue
        f = _fields()
        code = 1 + below(len(R.RECORD_TYPES))
        pack_body(rec, R.HEADER_SIZE, code, 0, rnd(32), f, "EUR")
        seq = rnd(32)
        s.seal(rec, seq, prev)
        sealed = bytes(rec)
        if mode == 1:
            STATS["valid"] += 1
            if not s.check(rec, prev):
                found.add("valid fails its check", sealed)
                continue
            s.open_into(rec, body)
            got = unpack(seq, body)
            if (got["program"], got["amount"], got["source"], got["t"]) != (
                    f["program"], f["amount"], f["source"], f["t"]):
                found.add("opens to other fields", sealed, got)
            prev = sealed[112:]
            continue
        STATS["forged"] += 1
        other = prev
        bad = mutate(sealed)
        if chance(4):
            bad, other = sealed, rbytes(16)
        if bad == sealed and other == prev:
            continue
        try:
            if len(bad) == 128 and s.check(bytearray(bad), other):
                found.add("forged record checks", bad)
        except Exception as e:  # noqa: BLE001
            found.add("check " + type(e).__name__, bad, repr(e))
    return count
