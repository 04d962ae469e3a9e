"""The card wallet format of docs/wallet-format.md, both sides: the host's host_tools/wallet.py
(`cryptography`) and the firmware's washpay/payments/wallet.py (under CPython with the shims
for hypothesis, and under MicroPython for the vector) agree with each other and with the
page; the current copy, tear settlement, the blacklist file and the board's card state."""

import re
import struct
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import ROOT, run_micropython
from hypothesis import given, settings
from hypothesis import strategies as st

from host_tools import card as C
from host_tools import wallet as W

HERE = Path(__file__).resolve().parent
for _path in (HERE / "shims", ROOT / "firmware"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from washpay import config  # noqa: E402
from washpay.cardlists.blacklist import Blacklist, civil_date  # noqa: E402
from washpay.payments import wallet as F  # noqa: E402
from washpay.payments.card_state import PendingPayments, SeenCounters  # noqa: E402

DOC = (ROOT / "docs" / "wallet-format.md").read_text()
SITE = bytes(range(32))
UID = bytes.fromhex("04a1b2c3")


def doc_vector():
    """The test vector table of docs/wallet-format.md: row label -> hex value."""
    section = DOC[DOC.index("## Test vector"):]
    rows = re.findall(r"^\| ([^|]+?) \| `([0-9a-f]+)` \|$", section, re.M)
    return dict(rows)


VEC = doc_vector()


def test_doc_vector_has_every_row():
    for label in ("site card key", "site id", "key A", "key B", "wallet MAC key", "trailer",
                  "header: flags 0, tier `student`",
                  "copy in block 5: balance 1250, counter 7, tag 0x2a"):
        assert label in VEC, label


def test_host_matches_the_doc_vector():
    ck = W.site_card_key(SITE)
    assert ck.hex() == VEC["site card key"]
    assert W.site_id(ck).hex() == VEC["site id"]
    assert W.key_a(UID).hex() == VEC["key A"]
    assert W.key_b(ck, UID).hex() == VEC["key B"]
    assert W.mac_key(ck, UID).hex() == VEC["wallet MAC key"]
    head = W.header(ck, "student")
    assert head.hex() == VEC["header: flags 0, tier `student`"]
    assert W.copy(ck, UID, 5, head, 1250, 7, 0x2A).hex() == \
        VEC["copy in block 5: balance 1250, counter 7, tag 0x2a"]
    assert W.trailer(ck, UID).hex() == VEC["trailer"]
    assert VEC["site card key"] in (ROOT / "docs" / "keys.md").read_text()


def test_firmware_matches_the_doc_vector_under_micropython():
    head = VEC["header: flags 0, tier `student`"]
    out = run_micropython(
        "from binascii import hexlify, unhexlify\n"
        "from washpay.payments import wallet as W\n"
        f"k = W.CardKeys(unhexlify({VEC['site card key']!r}))\n"
        f"uid = unhexlify({UID.hex()!r})\n"
        f"head = unhexlify({head!r})\n"
        "out = bytearray(16)\n"
        "W.pack_copy(out, k.mac_key(uid), 5, head, 1250, 7, 0x2a)\n"
        "for v in (k.site_id, W.key_a(uid), k.key_b(uid), out):\n"
        "    print(hexlify(v).decode())\n"
        "print(W.parse_header(head))\n"
        "print(W.check_copy(k.mac_key(uid), 5, head, out))\n"
        "print(W.check_copy(k.mac_key(uid), 6, head, out))\n"
        "print(W.load_card_key({'card_key': 'zz'}), W.load_card_key({}))\n",
        heap="128k",
    )[1].split("\n")
    assert out[:4] == [VEC["site id"], VEC["key A"], VEC["key B"],
                       VEC["copy in block 5: balance 1250, counter 7, tag 0x2a"]]
    assert out[4] == "(0, b'\\xae=q\\xdd', 'student')"
    assert out[5] == "(1250, 7, 42)"
    assert out[6] == "None"  # moved to the other block: its MAC no longer holds
    assert out[7] == "None None"


uids = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=7, max_size=7))
tiers = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", max_size=8)
keys32 = st.binary(min_size=32, max_size=32)


@settings(max_examples=60, deadline=None)
@given(ck=keys32, uid=uids, tier=tiers, flags=st.integers(0, 255),
       balance=st.integers(-(2**31), 2**31 - 1), counter=st.integers(0, W.COUNTER_MAX),
       tag=st.integers(0, 255), block=st.sampled_from(W.COPY_BLOCKS))
def test_encode_decode_agree_both_sides(ck, uid, tier, flags, balance, counter, tag, block):
    head = W.header(ck, tier, flags)
    host = W.copy(ck, uid, block, head, balance, counter, tag)
    keys = F.CardKeys(ck)
    fw = bytearray(16)
    F.pack_copy(fw, keys.mac_key(uid), block, head, balance, counter, tag)
    assert bytes(fw) == host
    assert keys.key_b(uid) == W.key_b(ck, uid) and keys.site_id == W.site_id(ck)
    assert F.key_a(uid) == W.key_a(uid)
    assert F.parse_header(head) == (flags, W.site_id(ck), tier)
    assert F.check_copy(keys.mac_key(uid), block, head, host) == (balance, counter, tag)
    c = W.check_copy(ck, uid, block, head, bytes(fw))
    assert (c.balance, c.counter, c.tag) == (balance, counter, tag)


@settings(max_examples=60, deadline=None)
@given(ck=keys32, uid=uids, balance=st.integers(0, 10**6), counter=st.integers(0, 1000),
       bit=st.integers(0, 8 * 32 - 1))
def test_any_flipped_bit_fails_the_mac(ck, uid, balance, counter, bit):
    """An edited balance, counter, tag, MAC or header byte: the copy no longer verifies."""
    head = bytearray(W.header(ck, "staff"))
    copy = bytearray(W.copy(ck, uid, 5, bytes(head), balance, counter, 1))
    target = head if bit < 128 else copy
    target[(bit % 128) // 8] ^= 1 << (bit % 8)
    mac = F.CardKeys(ck).mac_key(uid)
    assert F.check_copy(mac, 5, bytes(head), copy) is None
    assert W.check_copy(ck, uid, 5, bytes(head), bytes(copy)) is None


def test_copy_limits_are_refused():
    ck = W.site_card_key(SITE)
    head = W.header(ck)
    with pytest.raises(W.WalletError, match="reissue"):
        W.copy(ck, UID, 5, head, 0, W.COUNTER_MAX + 1, 0)
    with pytest.raises(F.WalletError, match="reissue"):
        F.pack_copy(bytearray(16), F.CardKeys(ck).mac_key(UID), 5, head, 0, 1 << 24, 0)
    with pytest.raises(W.WalletError, match="longer than 8"):
        W.header(ck, "staffmember")
    with pytest.raises(F.WalletError, match="not a washpay card"):
        F.parse_header(bytes(16))
    with pytest.raises(F.WalletError, match="format 2"):
        F.parse_header(b"WP\x02" + bytes(13))
    with pytest.raises(W.WalletError, match="another site"):
        W.read_wallet(ck, UID, {4: W.header(W.site_card_key(b"x" * 32)), 5: bytes(16),
                                6: bytes(16)})


copies = st.one_of(st.none(), st.tuples(st.integers(-5, 2000), st.integers(0, 20),
                                        st.integers(0, 255)))


@given(a=copies, b=copies)
def test_current_copy_is_the_highest_counter_block_5_on_a_tie(a, b):
    i = F.current(a, b)
    if a is None and b is None:
        assert i == -1
        return
    chosen = (a, b)[i]
    assert chosen is not None
    for other in (a, b):
        if other is not None:
            assert chosen[1] >= other[1]
    if a is not None and b is not None and a[1] == b[1]:
        assert i == 0
    # the host picks the same one
    hc = [None if c is None else W.Copy(5 + n, c[0], c[1], c[2], b"") for n, c in
          enumerate((a, b))]
    assert W.current_of(hc).block == 5 + i


@given(n=st.integers(0, 1000), balance=st.integers(0, 5000), price=st.integers(1, 500),
       tag=st.integers(0, 255), other_tag=st.integers(0, 255),
       history=st.lists(st.sampled_from(["ours", "torn", "theirs", "theirs-torn"]),
                        min_size=1, max_size=5))
def test_settle_tells_whether_a_torn_write_landed(n, balance, price, tag, other_tag, history):
    """Play a card's history from counter n: our write (landed or torn) first, then writes
    by other machines. settle() must say LANDED exactly when our copy reached the card, and
    may only say UNKNOWN when the history made it impossible to tell."""
    slots = [(balance, n, 0), None]  # block 5 current, block 6 empty/garbage
    ours = (balance - price, n + 1, tag)
    landed = history[0] == "ours"
    for i, step in enumerate(history):
        cur = F.current(*slots)
        if cur < 0:
            break
        target = 1 - cur
        c = slots[cur]
        if i == 0:
            slots[target] = ours if step == "ours" else None
            continue
        theirs = (c[0] - price, c[1] + 1, other_tag)
        slots[target] = None if step.endswith("torn") else theirs
    got = F.settle(slots[0], slots[1], ours[1], ours[0], ours[2])
    if got == F.LANDED:
        assert landed or ours in slots  # a byte-identical copy by another writer: 1 in 256
    elif got == F.NOT_LANDED:
        assert not landed
    else:
        assert got == F.UNKNOWN
        top = max(c[1] for c in slots if c is not None)
        assert top >= n + 2  # a write after ours: the next one (even torn) covers ours


# ---- the blacklist file: host writer, firmware reader
def _entries(draw_uids):
    return [(u, i % 5, 1_700_000_000 + i * 86400) for i, u in enumerate(draw_uids)]


@settings(max_examples=40, deadline=None)
@given(listed=st.lists(uids, max_size=30, unique=True), probe=uids)
def test_blacklist_host_file_firmware_lookup(tmp_path_factory, listed, probe):
    path = tmp_path_factory.mktemp("bl") / "blacklist.bin"
    entries = _entries(listed)
    path.write_bytes(C.build_blacklist(7, entries))
    bl = Blacklist(str(path))
    assert bl.error is None and bl.count == len(entries) and bl.generation == 7
    for uid, reason, since in entries:
        assert bl.lookup(uid) == (Blacklist_reason(reason), since)
    if probe not in listed:
        assert bl.lookup(probe) is None
    assert list(bl.entries()) == sorted(entries, key=lambda e: (len(e[0]), e[0]))


def Blacklist_reason(code):
    return C.BLACKLIST_REASONS[code]


def test_blacklist_firmware_update_is_read_by_the_host(tmp_path):
    path = tmp_path / "blacklist.bin"
    path.write_bytes(C.build_blacklist(1, [(UID, 1, 100), (b"\x01\x02\x03\x04", 2, 200)]))
    bl = Blacklist(str(path))
    n = bl.update(add=[(b"\x09" * 7, 4, 300), (UID, 2, 400)], remove=[b"\x01\x02\x03\x04"])
    assert n == 2 and bl.generation == 2
    gen, entries = C.parse_blacklist(path.read_bytes())
    assert gen == 2 and entries == [(UID, 2, 400), (b"\x09" * 7, 4, 300)]
    assert bl.lookup(UID) == ("stolen", 400)
    assert bl.lookup(b"\x01\x02\x03\x04") is None


def test_damaged_blacklist_is_reported_not_used(tmp_path):
    path = tmp_path / "blacklist.bin"
    data = C.build_blacklist(1, [(UID, 1, 100)])
    path.write_bytes(data[:-3])  # cut short
    bl = Blacklist(str(path))
    assert bl.count == 0 and "header says 1 entries" in bl.error
    assert bl.lookup(UID) is None
    path.write_bytes(b"not a list at all")
    assert "not a version-1" in Blacklist(str(path)).error
    assert Blacklist(str(tmp_path / "none.bin")).error is None  # none provisioned: fine
    with pytest.raises(C.CardToolError, match="not a version-1"):
        C.parse_blacklist(b"junk" * 8)


@given(t=st.integers(0, 2**32 - 1))
def test_civil_date_matches_the_calendar(t):
    assert civil_date(t) == datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d")


def test_blacklist_under_micropython(tmp_path):
    path = tmp_path / "blacklist.bin"
    path.write_bytes(C.build_blacklist(3, [(UID, 1, 1772323200), (b"\x04" * 7, 2, 0)]))
    out = run_micropython(
        "from washpay.cardlists.blacklist import Blacklist\n"
        f"bl = Blacklist({str(path)!r})\n"
        f"e = bl.lookup({UID!r})\n"
        "print(e, bl.describe(e), bl.lookup(b'\\x04' * 7), bl.lookup(b'\\x05' * 4))\n"
        "print(bl.update(remove=[b'\\x04' * 7]), bl.generation)\n",
        heap="64k",
    )[1].split("\n")
    assert out[0] == "('lost', 1772323200) lost 2026-03-01 ('stolen', 0) None"
    assert out[1] == "1 4"
    assert C.parse_blacklist(path.read_bytes()) == (4, [(UID, 1, 1772323200)])


# ---- what the board remembers about cards
def test_pending_payments_keep_four_and_drop_the_oldest(tmp_path):
    p = PendingPayments(str(tmp_path / "card_pending"))
    assert len(p) == 0 and p.find(UID) == -1
    for i in range(5):
        p.put(bytes([4, i, 0, 0]), 10 + i, i, 1000, 750, 250, 100 + i)
    assert len(p) == 4 and p.find(bytes([4, 0, 0, 0])) == -1  # the oldest went
    again = PendingPayments(str(tmp_path / "card_pending"))
    slot = again.find(bytes([4, 3, 0, 0]))
    assert again.get(slot) == (13, 3, 1000, 750, 250, 103)
    again.drop(slot)
    assert PendingPayments(str(tmp_path / "card_pending")).find(bytes([4, 3, 0, 0])) == -1
    assert (tmp_path / "card_pending").stat().st_size == 128  # a LittleFS inline file


def test_seen_counters_remember_the_highest_of_the_most_recent(tmp_path):
    s = SeenCounters(str(tmp_path / "card_seen"))
    assert s.get(UID) == -1
    s.note(UID, 5)
    s.note(UID, 3)  # lower: the highest stays
    for i in range(15):
        s.note(bytes([i, 1, 2, 3]), i)
    assert s.get(UID) == 5
    s.note(bytes([99, 1, 2, 3]), 1)  # a 17th card pushes out the least recent: UID
    assert s.get(UID) == -1
    s.save()
    assert SeenCounters(str(tmp_path / "card_seen")).get(bytes([99, 1, 2, 3])) == 1
    assert (tmp_path / "card_seen").stat().st_size == 128


def test_card_config_is_checked():
    assert config.validate({})["card"] == {"poll_ms": 150, "repeat_ms": 5000,
                                           "retap_ms": 30000, "low_balance": 500}
    cfg = config.validate({"card": {"low_balance": 0}})
    assert cfg["card"]["low_balance"] == 0 and cfg["card"]["poll_ms"] == 150
    with pytest.raises(config.ConfigError, match="unknown card setting 'wait'"):
        config.validate({"card": {"wait": 1}})
    with pytest.raises(config.ConfigError, match="card.retap_ms must be an integer"):
        config.validate({"card": {"retap_ms": 10}})
    with pytest.raises(config.ConfigError, match="card must be an object"):
        config.validate({"card": 5})


def test_raw_dump_and_json_images_load(tmp_path):
    from card_helpers import issued_blocks

    raw = tmp_path / "card.mfd"
    raw.write_bytes(bytes(issued_blocks(UID, 500)))
    img = C.load_card_image(raw)
    assert img["uid"] == UID.hex() and img["sak"] == 8 and len(img["blocks"]) == 64
    seven = bytes.fromhex("04112233445566")
    raw.write_bytes(bytes(issued_blocks(seven, 500)))
    assert C.load_card_image(raw)["uid"] == seven.hex()
    js = tmp_path / "card.json"
    js.write_text('{"ok": true, "image": ' + __import__("json").dumps(img) + "}")
    assert C.load_card_image(js) == img
    js.write_text("{}")
    with pytest.raises(ValueError, match="not a card image"):
        C.load_card_image(js)
    assert struct.calcsize(">i") == 4
