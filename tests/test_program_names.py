"""Program names that are not well-formed UTF-8 (issue 18): MicroPython's str() takes
surrogates, overlong forms and code points past U+10FFFF as text, so a signed QR token or
remote start carrying one was taken as naming a program. The board refuses them at parse
time ("program", the refusal of an authentic code naming no program it has), under the
64- and the 32-bit interpreter; signed on the host with `cryptography` (host_tools.token)."""

import json

import pytest
import token_env as E  # first: puts the shims and firmware/ on sys.path
from conftest import micropython_i386, run_micropython
from washpay.payments.token import program_name

from host_tools import token as T

T0 = 1767225600
NOT_UTF8 = [
    b"\xed\xa0\x80",  # a surrogate (U+D800)
    b"\xc0\xaf",  # overlong "/"
    b"\xe0\x80\xaf",  # overlong "/" in 3 bytes
    b"\xf0\x80\x80\xaf",  # overlong "/" in 4 bytes
    b"\xf4\x90\x80\x80",  # U+110000, past Unicode
    b"q\xc3",  # cut short
    b"\xc3q",  # a lead byte without its continuation
    b"\xff",
    b"\x80quick",
]
UTF8 = ["quick", "caf\u00e9", "\u20ac5", "\U0001f600wash", "\ud7ff"]


def token_text(name):
    body = T.TOKEN_HEAD.pack(T.VERSION << 4 | T.KIND_TOKEN, bytes(8), T.device_hash(E.DEVICE),
                             T0, T0 + 600, b"\x00\x00\x00", len(name)) + name
    import base64

    raw = body + T._tag(E.token_key(), body, T.TOKEN_TAG_LEN)
    return T.PREFIX + base64.b32encode(raw).decode().rstrip("=")


def command(name):
    body = T.COMMAND_HEAD.pack(T.VERSION << 4 | T.KIND_COMMAND, bytes(8), bytes(8),
                               T.device_hash(E.DEVICE), T0, T0 + 300, 1, b"\x00\x00\x00",
                               len(name)) + name
    return body + T._tag(E.command_key(), body, T.COMMAND_TAG_LEN)


def test_the_validator_agrees_with_cpythons_strict_decoder():
    for b in NOT_UTF8:
        assert program_name(memoryview(b)) is None, b
    for s in UTF8:
        assert program_name(memoryview(s.encode())) == s


@pytest.mark.parametrize("interp", [None] + [x for x in (micropython_i386(),) if x],
                         ids=lambda x: "i386" if x else "micropython")
def test_tokens_and_remote_starts_naming_no_text_are_refused(interp):
    names = NOT_UTF8 + [s.encode() for s in UTF8]
    code = f"""
import json
from binascii import unhexlify
from washpay.payments.token import TokenVerifier, Refused
from washpay.payments.remote import CommandVerifier
class Cache:
    def check_time(self, issued, expires): return None
    def used(self, tid): return False
tv = TokenVerifier(unhexlify({E.token_key().hex()!r}), {E.DEVICE!r}, Cache())
cv = CommandVerifier(unhexlify({E.command_key().hex()!r}), {E.DEVICE!r}, Cache())
def outcome(v, x):
    try:
        return ["ok", v.parse(x).program]
    except Refused as e:
        return [e.code, e.token is not None]
for text, cmd in {[(token_text(n), command(n).hex()) for n in names]!r}:
    print("RESULT", json.dumps([outcome(tv, text.encode()), outcome(cv, unhexlify(cmd))]))
"""
    stdout = run_micropython(code, interpreter=interp)[1]
    got = [json.loads(x[7:]) for x in stdout.splitlines() if x.startswith("RESULT ")]
    # authentic, naming no program: refused, and the refusal carries the token (journaled)
    assert got[: len(NOT_UTF8)] == [[["program", True], ["program", True]]] * len(NOT_UTF8)
    assert got[len(NOT_UTF8):] == [[["ok", s], ["ok", s]] for s in UTF8]
