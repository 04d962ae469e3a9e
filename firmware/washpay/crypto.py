"""Crypto primitives of the firmware, written once and tested against RFC/NIST vectors.

- HMAC-SHA256 (`MacKey`; its mac() takes the message in parts): authenticates journal
  records (encrypt-then-MAC), card wallet blocks and QR/command token tags.
- HKDF-SHA256 (`hkdf_sha256`, `hkdf_extract`, `hkdf_expand`): derives the journal, MAC and
  token keys and the per-card keys from provisioned key material.
- AES-256-CTR (`AesCtr`): encrypts journal record payloads. Stock ESP32 MicroPython has only
  cryptolib ECB and CBC, so CTR is built here on ECB.
- `constant_time_eq`: compares MACs and tags without stopping at the first differing byte.

The host tools never import this module: they decode and verify with the `cryptography`
package, an independent implementation, and the tests check that the two agree.
"""

from hashlib import sha256

from cryptolib import aes
from micropython import const

_BLOCK = const(64)  # SHA-256 input block: the size of the HMAC pad blocks
_HASH_LEN = const(32)
_AES_BLOCK = const(16)
_AES_ECB = const(1)  # cryptolib has no mode constants; 1 is ECB on every port
_HKDF_MAX = const(8160)  # RFC 5869: at most 255 blocks of HashLen


class MacKey:
    """An HMAC-SHA256 key whose inner and outer pad blocks are computed once.

    MicroPython's sha256 cannot copy() a hash state, so the best reuse available is keeping
    the two 64-byte pad blocks; a key object pays the pad setup once for many MACs.
    """

    def __init__(self, key):
        # RFC 2104: a key longer than the block is replaced by its hash; a shorter one is
        # padded with zeros (so an empty key equals 64 zero bytes).
        if len(key) > _BLOCK:
            key = sha256(key).digest()
        n = len(key)
        ipad = bytearray(_BLOCK)
        opad = bytearray(_BLOCK)
        for i in range(_BLOCK):
            k = key[i] if i < n else 0
            ipad[i] = k ^ 0x36
            opad[i] = k ^ 0x5C
        self._ipad = ipad
        self._opad = opad

    def mac(self, *parts):
        """HMAC-SHA256 of the concatenation of `parts`, without building the concatenation."""
        inner = sha256(self._ipad)
        for part in parts:
            inner.update(part)
        outer = sha256(self._opad)
        outer.update(inner.digest())
        return outer.digest()


def hkdf_extract(salt, ikm):
    """RFC 5869 HKDF-Extract -> 32-byte PRK.

    A missing salt means HashLen zero bytes; HMAC zero-pads short keys, so None, b"" and
    32 zero bytes all give the same PRK.
    """
    return MacKey(salt or b"").mac(ikm)


def hkdf_expand(prk, info, length):
    """RFC 5869 HKDF-Expand -> `length` bytes; one PRK can feed several expands."""
    if not 0 <= length <= _HKDF_MAX:
        raise ValueError("HKDF output must be 0..8160 bytes")
    key = MacKey(prk)
    info = info or b""
    out = bytearray(length)
    counter = bytearray(1)
    block = b""
    pos = 0
    while pos < length:
        counter[0] += 1
        block = key.mac(block, info, counter)
        n = min(_HASH_LEN, length - pos)
        out[pos : pos + n] = block if n == _HASH_LEN else block[:n]
        pos += n
    return bytes(out)


def hkdf_sha256(ikm, salt, info, length):
    """RFC 5869 HKDF-SHA256 (extract then expand) -> `length` bytes."""
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)


class AesCtr:
    """AES-256 in counter mode (NIST SP 800-38A) on cryptolib's ECB.

    The counter block given to crypt() is used for the first 16 bytes and then incremented
    as one 128-bit big-endian number (wrapping at 2**128), exactly like `cryptography`'s
    modes.CTR, so the host decodes with a stock library. CTR is its own inverse: crypt()
    both encrypts and decrypts. Never reuse a counter block range under the same key.

    One ECB object and two 16-byte buffers are made per key; crypt_into() allocates
    nothing, so a caller with its own buffer can encrypt in place with a locked heap.
    Not reentrant: one object must not be shared by code that can interleave calls.
    """

    def __init__(self, key):
        if len(key) != 32:
            raise ValueError("AES-256 key must be 32 bytes")
        # ECB only ever encrypts here (CTR needs the forward cipher alone), which keeps
        # cryptolib's one-direction-per-object rule.
        self._encrypt_block = aes(key, _AES_ECB).encrypt
        self._counter = bytearray(_AES_BLOCK)
        self._stream = bytearray(_AES_BLOCK)

    def crypt(self, counter_block, data):
        """Encrypt or decrypt `data` (any length) starting at `counter_block` -> bytes."""
        out = bytearray(len(data))
        self.crypt_into(counter_block, data, out)
        return bytes(out)

    def crypt_into(self, counter_block, data, out):
        """Like crypt() but writes into `out` (at least len(data) bytes; may be `data`)."""
        if len(counter_block) != _AES_BLOCK:
            raise ValueError("CTR counter block must be 16 bytes")
        n = len(data)
        if len(out) < n:
            raise ValueError("CTR output buffer too small")
        counter = self._counter
        stream = self._stream
        encrypt_block = self._encrypt_block
        counter[:] = counter_block
        pos = 0
        while pos < n:
            encrypt_block(counter, stream)
            end = min(pos + _AES_BLOCK, n)
            # Each data byte is read before the same index of out is written, so in-place
            # operation (out is data) is safe.
            for i in range(pos, end):
                out[i] = data[i] ^ stream[i - pos]
            pos = end
            # Full 128-bit big-endian increment: carry ripples up through every byte.
            i = _AES_BLOCK - 1
            while i >= 0:
                c = (counter[i] + 1) & 0xFF
                counter[i] = c
                if c:
                    break
                i -= 1


def constant_time_eq(a, b):
    """True if a == b, taking the same time wherever they differ (lengths are not secret)."""
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0
