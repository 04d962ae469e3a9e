"""The QR token format (docs/token-format.md) on both sides: the host's issuer/decoder
(`cryptography`) and the firmware's parser and replay cache run under CPython with the
shims, against the page's vectors and under hypothesis; the fuzz corpus is then replayed
through the same firmware code under the real micropython, which must agree input for
input."""

import json
import struct

import pytest
import token_env as E  # first: puts the shims and firmware/ on sys.path
from conftest import run_micropython
from hypothesis import given, settings
from hypothesis import strategies as st
from washpay import keys as FK
from washpay.payments import token as FT
from washpay.replay import ReplayCache

from host_tools import cli
from host_tools import token as T

T0 = 1767225600  # 2026-01-01, the vectors' issue time
B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
QR_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"


def verifier(tmp_path, clock=T0 + 60, device=E.DEVICE, key=None, name="used", trusted=None):
    cache = ReplayCache(str(tmp_path / name), 64, clock=lambda: clock, trusted=trusted)
    return FT.TokenVerifier(key or E.token_key(device), device, cache)


# ---- keys and vectors
def test_token_and_command_keys_match_keys_md():
    assert E.token_key() == E.doc_key("token key")
    assert E.command_key() == E.doc_key("command key")
    # the firmware's own HKDF derives the same
    assert FK.token_key(E.secret()) == E.doc_key("token key")
    assert FK.command_key(E.secret()) == E.doc_key("command key")
    assert E.doc_key("token key") != E.doc_key("command key")


@pytest.mark.parametrize("row", E.doc_token_vectors(), ids=lambda r: r[4])
def test_host_issues_the_documented_tokens(row):
    tid, issued, expires, amount, program, text = row
    assert T.encode_token(E.token_key(), E.DEVICE, program, issued, expires, amount, tid) == text
    info = T.decode_token(text, E.token_key(), E.DEVICE)
    assert info["tag_ok"] and info["device_ok"]
    assert (info["token_id"], info["issued"], info["expires"], info["amount"],
            info["program"]) == (tid.hex(), issued, expires, amount, program)
    assert info["device_hash"] == "3d683453"


@pytest.mark.parametrize("row", E.doc_token_vectors(), ids=lambda r: r[4])
def test_firmware_accepts_the_documented_tokens(tmp_path, row):
    tid, issued, expires, amount, program, text = row
    tok = verifier(tmp_path).check(text)
    assert (tok.tid, tok.issued, tok.expires, tok.amount, tok.program) == (
        tid, issued, expires, amount, program)


def test_longest_token_fits_a_version_4_qr_code():
    text = T.encode_token(E.token_key(), E.DEVICE, "x" * 10, T0, T0 + T.MAX_VALIDITY_S,
                          T.AMOUNT_MAX, b"\xff" * 8)
    assert len(text) == FT.TEXT_MAX == 79
    qr = T.qr_code(text)
    assert qr.mode == "alphanumeric" and qr.version <= 4
    assert set(text) <= set(QR_ALNUM)


# ---- round trips and tampering
programs = st.text(min_size=1, max_size=10).filter(lambda s: 1 <= len(s.encode()) <= 10)


@given(tid=st.binary(min_size=8, max_size=8), program=programs,
       amount=st.integers(0, T.AMOUNT_MAX), issued=st.integers(0, 2**32 - 2),
       ttl=st.integers(1, T.MAX_VALIDITY_S))
def test_issued_tokens_parse_in_the_firmware(tmp_path_factory, tid, program, amount, issued,
                                             ttl):
    expires = min(issued + ttl, 2**32 - 1)
    text = T.encode_token(E.token_key(), E.DEVICE, program, issued, expires, amount, tid)
    assert len(text) <= FT.TEXT_MAX
    v = verifier(tmp_path_factory.mktemp("c"))
    tok = v.parse(text)
    assert (tok.tid, tok.issued, tok.expires, tok.amount, tok.program) == (
        tid, issued, expires, amount, program)


def test_every_one_character_change_is_refused(tmp_path):
    v = verifier(tmp_path)
    for *_, text in E.doc_token_vectors():
        assert FT.outcome(v, text) == "ok"
        seen = set()
        for i in range(len(text)):
            for c in QR_ALNUM + "abcz01":
                if c == text[i]:
                    continue
                bad = text[:i] + c + text[i + 1:]
                code = FT.outcome(v, bad)
                assert code != "ok", bad
                seen.add(code)
        # the prefix, the encoding, the binding byte and the tag all catch something
        assert {"foreign", "malformed", "other_device", "bad_tag"} <= seen


def test_base32_is_strict():
    out = bytearray(64)
    ok = "MFRGG"  # "abc"
    assert FT.b32decode_into(ok.encode(), 0, 5, out) == 3 and out[:3] == b"abc"
    assert FT.b32decode_into(b"MFRGH", 0, 5, out) == -1  # non-zero unused bit
    assert FT.b32decode_into(b"MFRG", 0, 4, out) == -1 or out[:2] == b"ab"
    assert FT.b32decode_into(b"MFR", 0, 3, out) == -1  # a length base32 never makes
    assert FT.b32decode_into(b"mfrgg", 0, 5, out) == -1  # lower case
    assert FT.b32decode_into(b"MFRG1", 0, 5, out) == -1  # not in the alphabet


def _raw_token(issued, expires, program=b"quick", device=E.DEVICE, amount=0, tid=b"\x01" * 8):
    # built by hand: the host's issuer refuses what these tests need the board to refuse
    body = T.TOKEN_HEAD.pack(0x11, tid, T.device_hash(device), issued, expires,
                             amount.to_bytes(3, "big"), len(program)) + program
    raw = body + T._tag(E.token_key(device), body, 12)
    import base64

    return "WP:" + base64.b32encode(raw).decode().rstrip("=")


def test_refusals(tmp_path):
    v = verifier(tmp_path)
    other = T.encode_token(E.token_key("sim-0002"), "sim-0002", "quick", T0, T0 + 600)
    assert FT.outcome(v, other) == "other_device"
    forged = T.encode_token(E.token_key(site_key=b"\x01" * 32), E.DEVICE, "quick", T0, T0 + 600)
    assert FT.outcome(v, forged) == "bad_tag"
    assert FT.outcome(v, T.encode_token(E.token_key(), E.DEVICE, "quick", T0 - 600, T0)) == (
        "expired")
    assert FT.outcome(v, _raw_token(T0, T0 + 8 * 86400)) == "window"
    assert FT.outcome(v, _raw_token(T0, T0)) == "window"
    assert FT.outcome(v, _raw_token(T0 + 7200, T0 + 9000)) == "future"
    assert FT.outcome(v, _raw_token(T0, T0 + 600, program=b"\xff\xfe")) == "program"
    assert FT.outcome(v, "HELLO") == "foreign"
    assert FT.outcome(v, "WP:") == "malformed"
    assert FT.outcome(v, "WP:" + "A" * 200) == "malformed"
    ok = T.encode_token(E.token_key(), E.DEVICE, "quick", T0, T0 + 600, token_id=b"\x02" * 8)
    tok = v.check(ok)
    v.cache.add(tok.tid, tok.issued, tok.expires)
    assert FT.outcome(v, ok) == "used"
    with pytest.raises(FT.Refused) as e:
        v.check(ok)
    assert e.value.token.tid == b"\x02" * 8  # authentic: the refusal is journaled


# ---- the clock and the replay cache
def test_never_synced_clock_uses_the_newest_authenticated_issue_time(tmp_path):
    v = verifier(tmp_path, clock=1000)  # 1970: the clock was never set
    assert not v.cache.clock_trusted()
    old = T.encode_token(E.token_key(), E.DEVICE, "quick", T0, T0 + 1800, token_id=b"\x03" * 8)
    tok = v.check(old)  # nothing says it is late: accepted on its tag
    v.cache.add(tok.tid, tok.issued, tok.expires)
    later = T0 + 86400
    newer = T.encode_token(E.token_key(), E.DEVICE, "quick", later, later + 600,
                           token_id=b"\x04" * 8)
    tok = v.check(newer)
    v.cache.add(tok.tid, tok.issued, tok.expires)
    assert v.cache.now() == later  # the floor moved to the newest issue time
    # a token that expired before that floor is refused, even on a clock stuck in 1970
    stale = T.encode_token(E.token_key(), E.DEVICE, "quick", T0 + 3600, T0 + 5400,
                           token_id=b"\x05" * 8)
    assert FT.outcome(v, stale) == "expired"
    # a future issue time is no refusal on an untrusted clock: it moves the floor
    assert FT.outcome(v, _raw_token(later + 7200, later + 9000)) == "ok"


def test_journal_flag_decides_trust(tmp_path):
    v = verifier(tmp_path, clock=T0, trusted=lambda: False)
    assert not v.cache.clock_trusted() and v.cache.now() == 0
    v = verifier(tmp_path, clock=1000, trusted=lambda: True)
    assert v.cache.clock_trusted()


def test_replay_cache_persists_prunes_and_makes_room(tmp_path):
    path = str(tmp_path / "used")
    t = [T0]
    c = ReplayCache(path, 3, clock=lambda: t[0])
    c.add(b"A" * 8, T0, T0 + 100)
    c.add(b"B" * 8, T0, T0 + 200)
    c.add(b"C" * 8, T0, T0 + 300)
    c2 = ReplayCache(path, 3, clock=lambda: t[0])  # after a reboot
    assert [c2.used(x * 8) for x in (b"A", b"B", b"C", b"D")] == [True, True, True, False]
    assert c2.floor == T0 and not c2.damaged
    assert c2.room()  # a full cache never refuses
    c2.add(b"D" * 8, T0, T0 + 400)  # A, the first to expire, goes: its expiry is the floor
    assert c2.check_time(T0, T0 + 100) == "expired"  # A can never run again
    assert c2.check_time(T0, T0 + 101) is None and c2.used(b"B" * 8)
    c2.add(b"E" * 8, T0, T0 + 50)  # expires before every id held: the floor covers it
    assert c2.check_time(T0, T0 + 50) == "expired" and c2.used(b"D" * 8)
    t[0] = T0 + 250  # B expired: pruned when a slot is needed
    c2.add(b"F" * 8, T0, T0 + 500)
    c3 = ReplayCache(path, 3, clock=lambda: t[0])
    assert [c3.used(x * 8) for x in (b"C", b"D", b"F")] == [True, True, True]
    assert c3.count == 3 and c3.expired_to[0] == T0 + 100


def test_operator_commands_never_take_a_payments_room(tmp_path):
    path = str(tmp_path / "used")
    c = ReplayCache(path, 2, admin=2, clock=lambda: T0)
    c.add(b"P" * 8, T0, T0 + 600)
    for i in range(10):  # an operator's busy afternoon
        c.add(bytes([i]) * 8, T0, T0 + 300 + i, 1)
    assert c.used(b"P" * 8) and c.n == [1, 2]
    assert c.check_time(T0, T0 + 307, 1) == "expired"  # dropped admin ids stay refused
    assert c.check_time(T0, T0 + 307) is None  # ... and payments are not touched
    c2 = ReplayCache(path, 2, admin=2, clock=lambda: T0)
    assert c2.used(b"P" * 8) and c2.used(bytes([9]) * 8) and not c2.used(bytes([0]) * 8)
    assert c2.check_time(T0, T0 + 307, 1) == "expired"


def test_a_version_1_replay_file_is_read(tmp_path):
    import binascii

    path = tmp_path / "used"
    entries = b"".join(bytes([i]) * 8 + struct.pack(">I", T0 + 100 + i) for i in range(4))
    head = b"WPRC\x01\x08\x20\x04" + struct.pack(">I", T0)
    crc = binascii.crc32(entries, binascii.crc32(head))
    path.write_bytes(head + struct.pack(">I", crc) + entries)
    c = ReplayCache(str(path), 3, admin=2, clock=lambda: T0)
    assert not c.damaged and c.floor == T0
    # four ids into three payment slots: the first to expire is dropped, and refused
    assert [c.used(bytes([i]) * 8) for i in range(4)] == [False, True, True, True]
    assert c.check_time(T0, T0 + 100) == "expired"


def test_damaged_replay_cache_starts_empty_and_says_so(tmp_path):
    path = tmp_path / "used"
    c = ReplayCache(str(path), 8, clock=lambda: T0)
    c.add(b"A" * 8, T0, T0 + 100)
    data = bytearray(path.read_bytes())
    data[20] ^= 0x40
    path.write_bytes(bytes(data))
    c2 = ReplayCache(str(path), 8, clock=lambda: T0)
    assert c2.damaged and c2.count == 0
    path.write_bytes(b"WPRC")  # short
    assert ReplayCache(str(path), 8, clock=lambda: T0).damaged


def test_replay_file_layout_matches_the_page(tmp_path):
    import binascii

    path = tmp_path / "used"
    c = ReplayCache(str(path), 64, admin=3, clock=lambda: T0)
    c.add(bytes(range(8)), T0 - 5, T0 + 100)
    c.add(bytes(range(1, 9)), T0 - 7, T0 + 200, 1)
    c.expired_to = [T0 + 1, T0 + 2]
    c.add(bytes(range(2, 10)), T0 - 9, T0 + 300, 1)
    data = path.read_bytes()
    assert data[:8] == b"WPRC\x02\x08\x40\x03"
    assert struct.unpack(">I", data[8:12])[0] == T0 - 5  # the time floor
    crc = binascii.crc32(data[16:], binascii.crc32(data[:12]))
    assert struct.unpack(">I", data[12:16])[0] == crc
    assert data[16:20] == b"\x01\x02\x00\x00"  # ids held per pool, reserved
    assert struct.unpack(">II", data[20:28]) == (T0 + 1, T0 + 2)  # expiry floors
    assert data[28:] == (bytes(range(8)) + struct.pack(">I", T0 + 100)
                         + bytes(range(1, 9)) + struct.pack(">I", T0 + 200)
                         + bytes(range(2, 10)) + struct.pack(">I", T0 + 300))


# ---- fuzz under CPython, then the same corpus under micropython
valid = [row[5] for row in E.doc_token_vectors()]
texts = st.one_of(
    st.text(max_size=120),
    st.binary(max_size=140),
    st.builds(lambda b: "WP:" + "".join(b), st.lists(st.sampled_from(B32), max_size=90)),
    st.builds(lambda t, i, c: t[:i] + c + t[i + 1:], st.sampled_from(valid),
              st.integers(0, 80), st.sampled_from(QR_ALNUM + "\x00\r\x7f")),
    st.builds(lambda t, i: t[:i], st.sampled_from(valid), st.integers(0, 80)),
    st.builds(lambda t, s: t + s, st.sampled_from(valid), st.text(max_size=10)),
)


def test_fuzzed_parser_agrees_under_micropython(tmp_path):
    corpus = []
    v = verifier(tmp_path)

    @settings(max_examples=2000, database=None, deadline=None)
    @given(texts)
    def fuzz(text):
        data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        code = FT.outcome(v, data)  # anything but Refused would fail here
        assert code in FT.MESSAGES or code == "ok"
        corpus.append((data.hex(), code))

    fuzz()
    corpus += [(t.encode().hex(), "ok") for t in valid]
    assert {"ok", "foreign", "malformed", "bad_tag"} <= {c for _, c in corpus}
    (tmp_path / "corpus.json").write_text(json.dumps([h for h, _ in corpus]))
    code = f"""
import json
from binascii import unhexlify
from washpay.payments.token import TokenVerifier, outcome
from washpay.replay import ReplayCache
cache = ReplayCache({str(tmp_path / 'mpy-used')!r}, 64, clock=lambda: {T0 + 60})
v = TokenVerifier(unhexlify({E.token_key().hex()!r}), {E.DEVICE!r}, cache)
with open({str(tmp_path / 'corpus.json')!r}) as f:
    corpus = json.load(f)
print(json.dumps([outcome(v, unhexlify(h)) for h in corpus]))
"""
    out = run_micropython(code, timeout=120)[1]
    got = json.loads(out.strip().splitlines()[-1])
    assert got == [c for _, c in corpus]


# ---- the command line
def test_token_issue_and_decode_commands(tmp_path, capsys):
    key = tmp_path / "site.key"
    key.write_text(E.SITE_KEY.hex() + "\n")
    key.chmod(0o600)
    png = tmp_path / "t.png"
    rc = cli.main(["token", "issue", "--device", E.DEVICE, "--program", "standard",
                   "--amount", "350", "--ttl", "30m", "--png", str(png), "--site-key", str(key)])
    out, err = capsys.readouterr()
    assert rc == 0
    text = out.strip()
    assert text.startswith("WP:") and "\n" not in text
    assert "QR version 4-M (alphanumeric)" in err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = T.decode_token(text, E.token_key(), E.DEVICE)
    assert info["tag_ok"] and info["amount"] == 350 and info["program"] == "standard"
    assert info["expires"] - info["issued"] == 1800
    assert cli.main(["token", "decode", text, "--device", E.DEVICE, "--site-key", str(key)]) == 0
    assert json.loads(capsys.readouterr().out)["tag_ok"] is True
    assert cli.main(["token", "decode", text, "--device", "sim-0002",
                     "--site-key", str(key)]) == 1
    assert "does NOT verify" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--ttl", "8d"], "at most 7d"),
    (["--ttl", "soon"], "use seconds or a number"),
    (["--program", "much-too-long"], "1 to 10 bytes"),
    (["--amount", "-1"], "amount must be"),
    (["--site-key", "/nonexistent/site.key"], "no site key"),
])
def test_token_issue_refuses_bad_input(tmp_path, capsys, args, message):
    key = tmp_path / "site.key"
    key.write_text(E.SITE_KEY.hex() + "\n")
    base = {"--device": E.DEVICE, "--program": "quick", "--ttl": "30m", "--site-key": str(key)}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    argv = ["token", "issue"] + [x for kv in base.items() for x in kv]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err


def test_token_decode_of_garbage_is_a_clear_error(capsys):
    assert cli.main(["token", "decode", "WP:abc"]) == 2
    assert "base32" in capsys.readouterr().err
    assert cli.main(["token", "decode", "hello"]) == 2
    assert "no WP: prefix" in capsys.readouterr().err
