"""The token parser, the clock policy and the replay cache under the real micropython, with
a capped heap: the documented vectors verify, single use survives a restart, the cache
refuses rather than evicts when full, and checking a token allocates little."""

import json

import token_env as E  # first: puts the shims and firmware/ on sys.path
from conftest import run_micropython

from host_tools import token as T

T0 = 1767225600


def run(code, tmp_path, heap="128k"):
    # a test with the vend engine imports it first, as app.py does at boot (the engine is
    # imported with the app, the token payments later): on a capped heap the order decides
    # how fragmented the heap is when the larger module is compiled
    first = "from washpay.vend.engine import VendEngine\n" if "VendEngine(" in code else ""
    prelude = f"""
{first}import json
from binascii import unhexlify
from washpay.payments.token import TokenVerifier, outcome, Refused
from washpay.replay import ReplayCache, CacheFull
KEY = unhexlify({E.token_key().hex()!r})
DIR = {str(tmp_path)!r}
out = {{}}
"""
    stdout = run_micropython(prelude + code + "\nprint('RESULT', json.dumps(out))\n",
                             heap=heap)[1]
    return json.loads([x for x in stdout.splitlines() if x.startswith("RESULT ")][-1][7:])


def test_vectors_verify_under_micropython(tmp_path):
    rows = E.doc_token_vectors()
    out = run(f"""
cache = ReplayCache(DIR + "/used", 64, clock=lambda: {T0 + 60})
v = TokenVerifier(KEY, {E.DEVICE!r}, cache)
out["tokens"] = []
for text in {[r[5] for r in rows]!r}:
    t = v.check(text.encode())
    out["tokens"].append([t.tid.hex(), t.issued, t.expires, t.amount, t.program])
other = TokenVerifier(KEY, "sim-0002", cache)
out["other"] = outcome(other, {rows[0][5]!r}.encode())
""", tmp_path)
    assert out["tokens"] == [[r[0].hex(), r[1], r[2], r[3], r[4]] for r in rows]
    assert out["other"] == "other_device"


def test_single_use_survives_a_restart_and_a_full_cache_makes_room(tmp_path):
    toks = [T.encode_token(E.token_key(), E.DEVICE, "quick", T0, T0 + 600 + i,
                           token_id=bytes([i]) * 8) for i in range(4)]
    out = run(f"""
toks = {toks!r}
t = [{T0 + 10}]
cache = ReplayCache(DIR + "/used", 3, clock=lambda: t[0])
v = TokenVerifier(KEY, {E.DEVICE!r}, cache)
for text in toks[:3]:
    tok = v.check(text)
    cache.add(tok.tid, tok.issued, tok.expires)
# a reboot: a new cache object over the same file
cache = ReplayCache(DIR + "/used", 3, clock=lambda: t[0])
v = TokenVerifier(KEY, {E.DEVICE!r}, cache)
out["again"] = [outcome(v, x) for x in toks[:3]]
tok = v.check(toks[3])
out["room"] = cache.room()
cache.add(tok.tid, tok.issued, tok.expires)   # full: the first to expire makes room
cache = ReplayCache(DIR + "/used", 3, clock=lambda: t[0])   # and a power cut
v = TokenVerifier(KEY, {E.DEVICE!r}, cache)
out["now"] = [outcome(v, x) for x in toks]
""", tmp_path)
    assert out["again"] == ["used", "used", "used"]
    assert out["room"] is True
    # the first token's id was dropped: it counts as expired, never as unused
    assert out["now"] == ["expired", "used", "used", "used"]


def test_clock_that_was_never_set(tmp_path):
    a = T.encode_token(E.token_key(), E.DEVICE, "quick", T0, T0 + 1800, token_id=b"A" * 8)
    b = T.encode_token(E.token_key(), E.DEVICE, "quick", T0 + 86400, T0 + 87000,
                       token_id=b"B" * 8)
    c = T.encode_token(E.token_key(), E.DEVICE, "quick", T0 + 600, T0 + 2400,
                       token_id=b"C" * 8)
    out = run(f"""
cache = ReplayCache(DIR + "/used", 8, clock=lambda: 946684800)   # 2000-01-01: never set
v = TokenVerifier(KEY, {E.DEVICE!r}, cache)
out["trusted"] = cache.clock_trusted()
res = []
for text in ({a!r}, {b!r}, {c!r}):
    code = outcome(v, text)
    res.append(code)
    if code == "ok":
        tok = v.check(text)
        cache.add(tok.tid, tok.issued, tok.expires)
out["res"] = res
out["floor"] = ReplayCache(DIR + "/used", 8, clock=lambda: 946684800).floor
""", tmp_path)
    assert out["trusted"] is False
    # a: accepted on its tag; b: accepted, and proves it is at least T0 + 1 day; c expired
    # before that: refused although the board's own clock says 2000
    assert out["res"] == ["ok", "ok", "expired"]
    assert out["floor"] == T0 + 86400  # kept in flash


def test_checking_a_token_allocates_little(tmp_path):
    text = E.doc_token_vectors()[0][5]
    out = run(f"""
import gc
cache = ReplayCache(DIR + "/used", 64, clock=lambda: {T0 + 60})
v = TokenVerifier(KEY, {E.DEVICE!r}, cache)
data = {text!r}.encode()
v.check(data)
gc.collect()
before = gc.mem_free()
for _ in range(10):
    v.check(data)
out["per_check"] = (before - gc.mem_free()) // 10
""", tmp_path, heap="160k")
    print("bytes allocated per token check:", out["per_check"])
    assert out["per_check"] < 2048


# TokenPayments loads token.py for each scan (washpay.use): from source, that is a compile
# per scan, beside the copy this test's prelude holds; a board loads bytecode instead
PER_SCAN_HEAP = "256k"
ENGINE = """
from washpay.vend.engine import VendEngine
from washpay.journal import JournalFull
from washpay.payments.signed import TokenPayments
class Washer:
    mode = "contact"
    def door_closed(self): return True
    def busy(self): return False
class Acceptor:
    inhibited = False
    def inhibit(self, on): self.inhibited = on
class Screen:
    lines = ("", "")
    def show(self, a, b=""): self.lines = (a, b)
    def money(self, v): return "%d.%02d" % (v // 100, v % 100)
class Journal:
    clock_trusted = None
    accepts_payments = True
    level = "ok"
    fail = None
    def __init__(self): self.recs = []
    def append(self, rtype, **f):
        if self.fail: raise self.fail
        self.recs.append([rtype, f.get("source", b"").hex(), f.get("reason"), f.get("price")])
        return len(self.recs)
    def last(self): return None
cfg = {"programs": [{"name": "quick", "price": 250}], "max_credit": 2000, "start_retries": 1,
       "start_confirm_ms": 1000}
j = Journal()
eng = VendEngine(cfg, j, Washer(), Acceptor(), Screen())
cache = ReplayCache(DIR + "/used", 64, clock=lambda: T)
pay = TokenPayments(eng, j, KEY, DEVICE, cache)
"""


def test_a_full_journal_refuses_the_token_and_loses_nothing(tmp_path):
    now = E.now()
    texts = [E.T.encode_token(E.token_key(), E.DEVICE, "quick", now, now + 600,
                              token_id=bytes([i]) * 8) for i in range(2)]
    out = run(f"T = {now + 5}\nDEVICE = {E.DEVICE!r}\n" + ENGINE + f"""
texts = {texts!r}
j.accepts_payments = False          # only the reserve is left
pay.on_line(texts[0].encode())
out["reserve"] = [pay.last, list(eng.screen.lines), eng.state, cache.count, len(j.recs)]
j.accepts_payments = True
j.fail = JournalFull("journal: flash write failed")   # the write itself fails
pay.on_line(texts[0].encode())
out["failed"] = [pay.last, eng.state, list(eng.screen.lines), cache.count, len(j.recs)]
j.fail = None
eng.state = "idle"                  # the operator synced and reset the board
pay.on_line(texts[0].encode())      # the same token: it was not used up
out["ok"] = [pay.last, eng.state, cache.count, j.recs]
""", tmp_path, heap=PER_SCAN_HEAP)
    assert out["reserve"] == ["journal", ["Journal full", "sync required"], "idle", 0, 0]
    # a write that fails: the engine stops taking money (out of order) and the token is
    # not used up
    assert out["failed"] == ["journal", "out_of_order", ["Out of order", "sync required"], 0,
                             0]
    assert out["ok"][:3] == ["ok", "starting", 1]
    assert out["ok"][3] == [["token_redeem", "00" * 8, None, 250]]


def test_a_refusal_is_journaled_once_while_the_code_is_held_up(tmp_path):
    now = E.now()
    expired = E.T.encode_token(E.token_key(), E.DEVICE, "quick", now - 900, now - 300,
                               token_id=b"E" * 8)
    out = run(f"T = {now}\nDEVICE = {E.DEVICE!r}\n" + ENGINE + f"""
for _ in range(3):
    pay.on_line({expired!r}.encode())
out["recs"] = j.recs
out["refused"] = pay.refused
out["lines"] = list(eng.screen.lines)
""", tmp_path, heap=PER_SCAN_HEAP)
    assert out["recs"] == [["token_refused", (b"E" * 8).hex(), "expired", None]]
    assert out["refused"] == {"expired": 3}
    assert out["lines"] == ["Code expired", "get a new one"]
