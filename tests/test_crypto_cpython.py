"""washpay.crypto under CPython (with the micropython/cryptolib shims): hypothesis properties
against `cryptography`, many more inputs than the MicroPython run can afford.
"""

import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
for _path in (HERE / "shims", HERE.parent / "firmware"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from washpay import crypto  # noqa: E402 - needs the shims on sys.path first


def ref_hmac(key, data):
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def ref_ctr(key, block, data):
    return Cipher(algorithms.AES(key), modes.CTR(block)).encryptor().update(data)


keys32 = st.binary(min_size=32, max_size=32)
blocks = st.binary(min_size=16, max_size=16)
# Counter blocks near a carry or the 2**128 wrap are rare among random blocks: add them.
carry_blocks = st.builds(
    lambda head, n_ff: head[: 16 - n_ff] + b"\xff" * n_ff,
    st.binary(min_size=16, max_size=16),
    st.integers(0, 16),
)
messages = st.binary(max_size=600)
# HMAC keys past the 64-byte block are hashed first; plain binary() rarely draws them.
hmac_keys = st.one_of(st.binary(max_size=64), st.binary(min_size=65, max_size=200))


@given(key=hmac_keys, data=messages)
def test_hmac_matches_cryptography(key, data):
    assert crypto.MacKey(key).mac(data) == ref_hmac(key, data)


@given(key=hmac_keys, data=messages, cuts=st.lists(st.integers(0, 600)))
def test_incremental_forms_match_one_shot(key, data, cuts):
    bounds = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    expected = ref_hmac(key, data)
    mac_key = crypto.MacKey(key)
    assert mac_key.mac(*pieces) == expected
    # A MacKey is reusable: a second MAC under it is unaffected by the first.
    assert mac_key.mac(data) == expected


@given(
    ikm=st.binary(max_size=100),
    salt=hmac_keys,
    info=st.binary(max_size=100),
    length=st.integers(1, 600),
)
def test_hkdf_matches_cryptography(ikm, salt, info, length):
    expected = HKDF(hashes.SHA256(), length, salt, info).derive(ikm)
    assert crypto.hkdf_sha256(ikm, salt, info, length) == expected


def test_hkdf_longest_output_and_limit():
    expected = HKDF(hashes.SHA256(), 8160, b"salt", b"info").derive(b"ikm")
    assert crypto.hkdf_sha256(b"ikm", b"salt", b"info", 8160) == expected
    with pytest.raises(ValueError):
        crypto.hkdf_sha256(b"ikm", b"salt", b"info", 8161)


@given(key=keys32, block=st.one_of(blocks, carry_blocks), data=messages)
def test_ctr_matches_cryptography_and_round_trips(key, block, data):
    ctr = crypto.AesCtr(key)
    sealed = ctr.crypt(block, data)
    assert sealed == ref_ctr(key, block, data)
    assert ctr.crypt(block, sealed) == data
    # In place, into the caller's buffer, gives the same bytes.
    buf = bytearray(data)
    ctr.crypt_into(block, buf, buf)
    assert buf == sealed


@given(key=keys32, block=blocks, data=st.binary(min_size=1, max_size=100), split=st.data())
def test_ctr_continues_across_calls(key, block, data, split):
    # Encrypting the tail separately with the advanced counter equals one call: what a
    # record split over two buffers relies on.
    blocks_done = split.draw(st.integers(0, len(data) // 16))
    head_len = blocks_done * 16
    next_block = ((int.from_bytes(block, "big") + blocks_done) % (1 << 128)).to_bytes(16, "big")
    ctr = crypto.AesCtr(key)
    joined = ctr.crypt(block, data[:head_len]) + ctr.crypt(next_block, data[head_len:])
    assert joined == ref_ctr(key, block, data)


@given(a=st.binary(max_size=40), b=st.binary(max_size=40))
def test_constant_time_eq_is_equality(a, b):
    assert crypto.constant_time_eq(a, b) is (a == b)
    assert crypto.constant_time_eq(a, bytearray(a)) is True


def test_ctr_rejects_bad_sizes():
    with pytest.raises(ValueError, match="32 bytes"):
        crypto.AesCtr(bytes(16))
    with pytest.raises(ValueError, match="16 bytes"):
        crypto.AesCtr(bytes(32)).crypt(bytes(8), b"x")
