"""washpay.crypto under the real MicroPython: published vectors, and agreement with
`cryptography` on random inputs, so the host can verify what the board writes.

Every case runs in one micropython process (inputs as hex literals, outputs printed as hex);
each case is still its own pytest test so a failure names the vector.
"""

import random

import pytest
from conftest import run_micropython
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# RFC 4231 section 4, HMAC-SHA-256: (test case, key, data, expected). Case 5 publishes only
# the first 128 bits of the output, so only those are compared.
RFC4231 = [
    (1, "0b" * 20, b"Hi There".hex(),
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (2, b"Jefe".hex(), b"what do ya want for nothing?".hex(),
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (3, "aa" * 20, "dd" * 50,
     "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (4, bytes(range(1, 26)).hex(), "cd" * 50,
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (5, "0c" * 20, b"Test With Truncation".hex(),
     "a3b6167473100ee06e0c796c2955552b"),
    (6, "aa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First".hex(),
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (7, "aa" * 131,
     b"This is a test using a larger than block-size key and a larger than block-size data."
     b" The key needs to be hashed before being used by the HMAC algorithm.".hex(),
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]

# RFC 5869 appendix A.1-A.3, HKDF-SHA256: (test case, ikm, salt, info, L, prk, okm).
RFC5869 = [
    (1, "0b" * 22, bytes(range(0x0D)).hex(), bytes(range(0xF0, 0xFA)).hex(), 42,
     "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
     "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
    (2, bytes(range(0x50)).hex(), bytes(range(0x60, 0xB0)).hex(),
     bytes(range(0xB0, 0x100)).hex(), 82,
     "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
     "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
     "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
     "cc30c58179ec3e87c14c01d5c1f3434f1d87"),
    (3, "0b" * 22, "", "", 42,
     "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
     "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
]

# FIPS-197 appendix C.3, AES-256 single block.
FIPS197_KEY = bytes(range(32)).hex()
FIPS197_PLAIN = "00112233445566778899aabbccddeeff"
FIPS197_CIPHER = "8ea2b7ca516745bfeafc49904b496089"

# NIST SP 800-38A: the AES-256 key and plaintext shared by F.1.5 (ECB) and F.5.5 (CTR).
SP800_KEY = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"
SP800_PLAIN = (
    "6bc1bee22e409f96e93d7e117393172a" "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef" "f69f2445df4f9b17ad2b417be66c3710"
)
SP800_ECB = (  # F.1.5 ECB-AES256.Encrypt
    "f3eed1bdb5d2a03c064b5a7e3db181f8" "591ccb10d410ed26dc5ba74a31362870"
    "b6ed21b99ca6f4f9f153e7b1beafed1d" "23304b7a39f9f3ff067d8d8f9e24ecc7"
)
SP800_CTR_BLOCK = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"  # F.5.5 initial counter block
SP800_CTR = (  # F.5.5 CTR-AES256.Encrypt
    "601ec313775789a5b7a7f504bbf3d228" "f443e3ca4d62b59aca84e990cacaf5c5"
    "2b0930daa23de94ce87017ba2d84988d" "dfc9c58db67aada613c2dd08457941a6"
)

# name -> (MicroPython expression giving bytes, expected hex)
CASES = {}


def case(name, expr, expected):
    assert name not in CASES, name
    CASES[name] = (expr, expected)


def h(hex_text):
    """A MicroPython expression for the bytes with this hex."""
    return f"u('{hex_text}')"


for n, key, data, mac in RFC4231:
    case(f"rfc4231-{n}", f"MacKey({h(key)}).mac({h(data)})[:{len(mac) // 2}]", mac)

for n, ikm, salt, info, length, prk, okm in RFC5869:
    case(f"rfc5869-{n}", f"hkdf_sha256({h(ikm)}, {h(salt)}, {h(info)}, {length})", okm)
    case(f"rfc5869-{n}-extract", f"hkdf_extract({h(salt)}, {h(ikm)})", prk)
    case(f"rfc5869-{n}-expand", f"hkdf_expand({h(prk)}, {h(info)}, {length})", okm)
# RFC 5869 2.2: "not provided" salt is the same as the empty salt of test case 3.
case("rfc5869-3-salt-none", f"hkdf_sha256({h('0b' * 22)}, None, b'', 42)", RFC5869[2][6])

case("fips197-c3-aes256", f"aes({h(FIPS197_KEY)}, 1).encrypt({h(FIPS197_PLAIN)})", FIPS197_CIPHER)
case("sp800-38a-f15-ecb-aes256-encrypt",
     f"aes({h(SP800_KEY)}, 1).encrypt({h(SP800_PLAIN)})", SP800_ECB)
case("sp800-38a-f16-ecb-aes256-decrypt",
     f"aes({h(SP800_KEY)}, 1).decrypt({h(SP800_ECB)})", SP800_PLAIN)
case("sp800-38a-f55-ctr-aes256-encrypt",
     f"AesCtr({h(SP800_KEY)}).crypt({h(SP800_CTR_BLOCK)}, {h(SP800_PLAIN)})", SP800_CTR)
case("sp800-38a-f56-ctr-aes256-decrypt",
     f"AesCtr({h(SP800_KEY)}).crypt({h(SP800_CTR_BLOCK)}, {h(SP800_CTR)})", SP800_PLAIN)
# A partial last block uses the head of that block's keystream.
case("sp800-38a-f55-ctr-partial-37",
     f"AesCtr({h(SP800_KEY)}).crypt({h(SP800_CTR_BLOCK)}, {h(SP800_PLAIN[:74])})",
     SP800_CTR[:74])


# Interop with `cryptography` on random inputs. A fixed seed keeps failures reproducible.
rng = random.Random(0x3A5B)


def rand_bytes(n):
    return bytes(rng.getrandbits(8) for _ in range(n))


def ref_ctr(key, block, data):
    return Cipher(algorithms.AES(key), modes.CTR(block)).encryptor().update(data)


def ref_hmac(key, data):
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def ref_hkdf(ikm, salt, info, length):
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


ctr_inputs = [(n, rand_bytes(16)) for n in (0, 1, 15, 16, 17, 100)]
ctr_inputs += [(rng.randrange(2, 400), rand_bytes(16)) for _ in range(6)]
# Counter blocks that carry: out of the low 32 bits (where a 32-bit-counter CTR would wrap
# instead), out of the low 64 bits, and the wrap of the whole block to zero.
ctr_inputs += [
    (100, rand_bytes(12) + b"\xff" * 4),
    (33, rand_bytes(8) + b"\xff" * 8),
    (48, b"\xff" * 16),
    (64, rand_bytes(15) + b"\xfe"),
]
for i, (n, block) in enumerate(ctr_inputs):
    key, data = rand_bytes(32), rand_bytes(n)
    case(f"interop-ctr-{i}-len{n}-{block[-4:].hex()}",
         f"AesCtr({h(key.hex())}).crypt({h(block.hex())}, {h(data.hex())})",
         ref_ctr(key, block, data).hex())

for key_len in (0, 1, 20, 32, 63, 64, 65, 131, 200):
    key, data = rand_bytes(key_len), rand_bytes(rng.randrange(0, 300))
    expected = ref_hmac(key, data).hex()
    case(f"interop-hmac-key{key_len}", f"MacKey({h(key.hex())}).mac({h(data.hex())})", expected)
    # The same MAC fed in uneven pieces.
    cuts = sorted(rng.randrange(0, len(data) + 1) for _ in range(3))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    parts = ", ".join(h(p.hex()) for p in pieces)
    case(f"interop-hmac-key{key_len}-parts", f"MacKey({h(key.hex())}).mac({parts})", expected)

for length in (1, 31, 32, 33, 64, 100, 255, 1000):
    ikm = rand_bytes(rng.randrange(1, 80))
    salt = rand_bytes(rng.randrange(0, 80))
    info = rand_bytes(rng.randrange(0, 80))
    case(f"interop-hkdf-len{length}",
         f"hkdf_sha256({h(ikm.hex())}, {h(salt.hex())}, {h(info.hex())}, {length})",
         ref_hkdf(ikm, salt, info, length).hex())

PRELUDE = """\
from binascii import hexlify, unhexlify as u
from cryptolib import aes
from washpay.crypto import AesCtr, MacKey, hkdf_sha256, hkdf_extract, hkdf_expand

def out(name, value):
    print(name, hexlify(value).decode())
"""


@pytest.fixture(scope="module")
def mp_results():
    body = "".join(f"out({name!r}, {expr})\n" for name, (expr, _) in CASES.items())
    _, stdout, _ = run_micropython(PRELUDE + body)
    results = {}
    for line in stdout.splitlines():
        name, _, value = line.partition(" ")
        results[name] = value
    return results


@pytest.mark.device
@pytest.mark.parametrize("name", list(CASES))
def test_vector(mp_results, name):
    assert mp_results.get(name) == CASES[name][1]


@pytest.mark.device
def test_ctr_allocates_nothing_per_call(mpy):
    # crypt_into on a caller's buffer must run with the heap locked: any allocation in the
    # block loop would raise MemoryError here. In place (out is data) is the journal's use.
    out = mpy(
        """
import micropython
from washpay.crypto import AesCtr
ctr = AesCtr(bytes(range(32)))
block = bytes(16)
buf = bytearray(range(200))
ref = ctr.crypt(block, buf)
micropython.heap_lock()
try:
    ctr.crypt_into(block, buf, buf)
finally:
    micropython.heap_unlock()
print(buf == ref)
"""
    )
    assert out.split() == ["True"]


@pytest.mark.device
def test_runs_in_a_small_heap(mpy):
    # Import plus one of each operation must fit far below the ESP32's ~112 KB GC heap.
    # Most of the 32 KB goes to compiling the source; from .mpy it runs in 16 KB.
    out = mpy(
        """
from washpay.crypto import AesCtr, MacKey, hkdf_sha256
k = hkdf_sha256(b'ikm', b'salt', b'journal', 32)
print(len(AesCtr(k).crypt(bytes(16), bytes(64))), len(MacKey(k).mac(b'x', b'y')))
""",
        heap="32k",
    )
    assert out.split() == ["64", "32"]


@pytest.mark.device
def test_errors_and_compare(mpy):
    out = mpy(
        """
from washpay.crypto import AesCtr, constant_time_eq, hkdf_expand

def attempt(f):
    try:
        f()
        print('accepted')
    except ValueError as e:
        print('ValueError:', e)

attempt(lambda: AesCtr(bytes(16)))
attempt(lambda: AesCtr(bytes(32)).crypt(bytes(12), b'x'))
attempt(lambda: AesCtr(bytes(32)).crypt_into(bytes(16), bytes(5), bytearray(4)))
attempt(lambda: hkdf_expand(bytes(32), b'', 8161))
print(len(hkdf_expand(bytes(32), b'', 8160)))
print(constant_time_eq(b'abc', b'abc'), constant_time_eq(b'abc', b'abd'),
      constant_time_eq(b'abc', b'ab'), constant_time_eq(b'', b''),
      constant_time_eq(bytearray(b'\\x80'), b'\\x80'))
"""
    )
    assert out.splitlines() == [
        "ValueError: AES-256 key must be 32 bytes",
        "ValueError: CTR counter block must be 16 bytes",
        "ValueError: CTR output buffer too small",
        "ValueError: HKDF output must be 0..8160 bytes",
        "8160",
        "True False False True True",
    ]
