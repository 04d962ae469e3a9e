"""Ed25519 signature verification (RFC 8032), for signed releases: the board checks that the
release key signed a manifest. Verification only; the board never signs.

Points are in extended coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z, over the
field of p = 2**255 - 19 as plain ints. The check is the one OpenSSL (and so the host's
`cryptography`) makes: S < L, A a valid canonical point, and the encoding of [S]B - [k]A
equal to R's bytes, with k = SHA-512(R || A || message) mod L; and one more: A is not of
small order (such a key would accept one signature for every message). Nothing here is
secret, so nothing needs to run in constant time.
"""

from micropython import const

from washpay.ota.sha512 import sha512

_P = const(2**255 - 19)
_L = const(2**252 + 27742317777372353535851937790883648493)  # order of the base point
_D = const(37095705934669439343138083508754565189542113879843219016388785533085940283555)
_SQRT_M1 = const(19681161376707505956807079304988542015446066515923890162744021073123829784752)
_B = b"\x58" + b"\x66" * 31  # the base point: y = 4/5, x even


def _pow(b, e):
    """b**e mod p by square and multiply (no reliance on three-argument pow)."""
    r = 1
    while e:
        if e & 1:
            r = r * b % _P
        b = b * b % _P
        e >>= 1
    return r


def _add(p, q):
    # RFC 8032 5.1.4, with 2*d folded into one constant product
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = 2 * _D * t1 * t2 % _P
    d = 2 * z1 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _double(p):
    x1, y1, z1, _ = p
    a = x1 * x1 % _P
    b = y1 * y1 % _P
    c = 2 * z1 * z1 % _P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1) % _P
    g = a - b
    f = c + g
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _decode(s):
    """The point whose 32-byte encoding is `s`, or None if it is not one (RFC 8032 5.1.3)."""
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None  # not canonical
    yy = y * y % _P
    u = (yy - 1) % _P
    v = (_D * yy + 1) % _P
    # x = sqrt(u/v) = u * v**3 * (u * v**7) ** ((p - 5) / 8)
    v3 = v * v * v % _P
    x = u * v3 * _pow(u * v3 * v3 * v % _P, (_P - 5) // 8) % _P
    vxx = v * x * x % _P
    if vxx != u:
        if vxx != _P - u:
            return None  # u/v has no square root: no point has this y
        x = x * _SQRT_M1 % _P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return (x, y, 1, x * y % _P)


def _encode(p):
    x, y, z, _ = p
    zi = _pow(z, _P - 2)
    x = x * zi % _P
    y = y * zi % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def verify(public_key, message, signature):
    """True if `signature` (64 bytes) is public_key's Ed25519 signature of `message`."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    a = _decode(public_key)
    if a is None:
        return False
    q = _double(_double(_double(a)))
    if q[0] % _P == 0 and (q[1] - q[2]) % _P == 0:
        return False  # a key of small order ([8]A neutral) would verify for any message
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False  # RFC 8032 5.1.7: a non-reduced S is refused (malleability)
    r = signature[:32]
    k = int.from_bytes(sha512(r, public_key, message), "little") % _L
    # [S]B + [k](-A), one shared chain of doublings (Straus): bit by bit from the top
    x, y, z, t = a
    neg_a = (_P - x, y, z, _P - t)
    b = _decode(_B)
    both = _add(b, neg_a)
    q = (0, 1, 1, 0)  # the neutral element
    for i in range(252, -1, -1):  # s and k are below L < 2**253
        q = _double(q)
        bits = (s >> i & 1) | (k >> i & 1) << 1
        if bits:
            q = _add(q, b if bits == 1 else neg_a if bits == 2 else both)
    return _encode(q) == r
