# What every fuzz target shares, under micropython: the seeded generator, byte mutations,
# and how a finding is reported (one line with the input in hex, so it can be replayed).
import random

rnd = random.getrandbits
_B32 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
# characters of program names: ASCII, and 2-, 3- and 4-byte UTF-8
_NAME_CHARS = ("a", "q", "Z", "0", "-", " ", "\u00e9", "\u00df", "\u20ac", "\u4e2d",
               "\ud7ff", "\ue000", "\U0001f600", "\U0010ffff")
# names that are not well-formed UTF-8 though MicroPython's str() takes most of them:
# surrogates, overlong forms, past U+10FFFF, cut short, stray bytes
NOT_UTF8 = (b"\xed\xa0\x80", b"\xc1\xb1uick", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf",
            b"\xf4\x90\x80\x80", b"q\xc3", b"\xc3q", b"\xff", b"\x80", b"\xed\xbf\xbfx")
INTERESTING = (0x00, 0x01, 0x02, 0x7F, 0x80, 0xC0, 0xC1, 0xED, 0xF4, 0xF5, 0xFE, 0xFF)


class Findings:
    """Counts findings per kind; prints the first few of each in full."""

    def __init__(self, show=5):
        self.count = 0
        self.kinds = {}
        self.show = show

    def add(self, kind, data, detail=""):
        self.count += 1
        n = self.kinds.get(kind, 0)
        self.kinds[kind] = n + 1
        if n < self.show:
            if isinstance(data, str):
                data = data.encode()
            print("FINDING", kind, bytes(data).hex(), str(detail)[:200])


def below(n):
    return rnd(16) % n if n < 0x8000 else random.randrange(n)


def chance(one_in):
    return below(one_in) == 0


def pick(seq):
    return seq[below(len(seq))]


def rbytes(n):
    return bytes(rnd(8) for _ in range(n))


def name(maxlen=10):
    """A program name of 1..maxlen bytes of well-formed UTF-8."""
    out = ""
    size = 0
    want = 1 + below(maxlen)
    while True:
        c = pick(_NAME_CHARS)
        k = len(c.encode())
        if size + k > want:
            if out:
                return out
            continue
        out += c
        size += k


def mutate(data, others=None):
    """1 to 4 random changes of `data` (bytes): flipped bits, new or interesting bytes,
    bytes inserted, deleted, cut, appended, a slice repeated, or spliced from `others`."""
    b = bytes(data)
    for _ in range(1 + below(4)):
        op = below(10)
        n = len(b)
        i = below(n + 1)
        if op < 3 and n:
            i = below(n)
            if op == 0:
                x = b[i] ^ (1 << below(8))
            elif op == 1:
                x = rnd(8)
            else:
                x = pick(INTERESTING)
            b = b[:i] + bytes((x,)) + b[i + 1 :]
        elif op == 3:
            b = b[:i] + bytes((rnd(8),)) + b[i:]
        elif op == 4 and n:
            b = b[:i] + b[i + 1 :]
        elif op == 5:
            b = b[:i]
        elif op == 6:
            b += rbytes(1 + below(8))
        elif op == 7 and n:
            j = i + below(n - i + 1)
            k = below(n + 1)
            b = b[:k] + b[i:j] + b[k:]
        elif op == 8 and others:
            o = pick(others)
            b = b[:i] + o[below(len(o) + 1) :]
        elif n:
            i = below(n)
            b = b[:i] + bytes(((b[i] + pick((1, 255, 16, 240, 128))) & 0xFF,)) + b[i + 1 :]
    return b


def b32encode(raw):
    """RFC 4648 base32, upper case, no padding: as the issuer spells a token."""
    out = bytearray()
    acc = 0
    bits = 0
    for x in raw:
        acc = (acc << 8) | x
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append(_B32[(acc >> bits) & 31])
        acc &= (1 << bits) - 1
    if bits:
        out.append(_B32[(acc << (5 - bits)) & 31])
    return bytes(out)


def utf8_ok(b):
    """Well-formed UTF-8, checked another way than the firmware does: decoded, then each
    character's own encoded length summed (an overlong form is longer than its character)."""
    try:
        s = str(bytes(b), "utf-8")
    except UnicodeError:
        return False
    n = 0
    for c in s:
        o = ord(c)
        if 0xD800 <= o < 0xE000 or o > 0x10FFFF:
            return False
        n += 1 if o < 0x80 else 2 if o < 0x800 else 3 if o < 0x10000 else 4
    return n == len(b)


# ---- JSON-like values: near misses of a valid document
_TEXTS = ("", "mon", "mon-fri", "fri-mon", "sat,sun", "sun-", "-", ",", "00:00", "24:00",
          "23:59", "25:00", "12:60", "1:2:3", "a:b", " 1:05", "quick", "standard", "x" * 40,
          "\u00e9", "\ud800", "mqtt://h", "mqtts://", "EUR", "eu", "1", "-1", "0x10")


def deep(levels):
    v = 1
    for _ in range(levels):
        v = [v] if chance(2) else {"k": v}
    return v


def key():
    """An object's key: text mostly; MicroPython's JSON also reads {1: ..}, {null: ..}."""
    return pick(_TEXTS) if below(8) else pick((1, 0, -1, 1.5, None, True, False))


def value(depth=2):
    """A random JSON value: numbers at the edges, text that nearly parses, small lists and
    objects, now and then one nested hundreds deep."""
    k = below(12)
    if k == 0:
        return pick((0, 1, -1, 2, 7, 24, 59, 60, 100, 101, -101, 255, 840, 841, 65535,
                     2**31, -(2**31), 2**63, 10**30))
    if k == 1:
        return below(3000) - 1000
    if k == 2:
        return pick((0.5, -0.0, 1e300, 3.0))
    if k == 3:
        return pick((True, False, None))
    if k < 7:
        return pick(_TEXTS)
    if k == 7:
        return deep(100 + below(1400)) if chance(16) else [value(depth - 1) for _ in
                                                            range(below(3))]
    if k == 8 and depth > 0:
        return {key(): value(depth - 1) for _ in range(below(3))}
    if k == 9 and depth > 0:
        return [value(depth - 1) for _ in range(below(4))]
    return pick(_TEXTS) + pick(_TEXTS)


def tweak(root, keys=()):
    """Change `root` in place at a random spot: a value replaced by a random one, a key
    added (one of `keys` or any) or taken away."""
    node = root
    while True:
        if isinstance(node, dict) and node:
            k = pick(list(node.keys()))
        elif isinstance(node, list) and node:
            k = below(len(node))
        else:
            return root
        child = node[k]
        if isinstance(child, (dict, list)) and child and chance(2):
            node = child
            continue
        op = below(6)
        if op == 0 and isinstance(node, dict):
            node[pick(keys) if keys and chance(2) else key()] = value()
        elif op == 1 and isinstance(node, dict):
            del node[k]
        else:
            node[k] = value()
        return root


class OpenCache:
    """A replay cache (washpay/replay.py) that refuses nothing: the parsers are fuzzed, not
    the cache."""
    floor = 0

    def check_time(self, issued, expires, pool=0):
        return None

    def used(self, cid):
        return False

    def room(self, pool=0):
        return True

    def add(self, cid, issued, expires, pool=0):
        pass
