"""The board's card lists (docs/blacklist-format.md): one implementation
(firmware/washpay/cardlists/__init__.py) behind the blacklist and the tier overrides.
The firmware's lists under CPython (with the shims, for hypothesis) and under MicroPython,
against the
host's independent reader and writer (host_tools/card.py) and a model of the list: the
blacklist's file stays byte for byte what the host writes, the tier list merges, stays
sorted, refuses what it cannot hold and changes nothing then."""

import os
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_micropython
from hypothesis import given, settings
from hypothesis import strategies as st

from host_tools import card as C

HERE = Path(__file__).resolve().parent
for _path in (HERE / "shims", ROOT / "firmware"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from washpay.cardlists import CardListError  # noqa: E402
from washpay.cardlists.blacklist import Blacklist  # noqa: E402
from washpay.cardlists.tierlist import LIMIT, TierList  # noqa: E402

UID = bytes.fromhex("04a1b2c3")
uids = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=7, max_size=7),
                 st.binary(min_size=1, max_size=10))
tiers = st.sampled_from(["late", "watch", "student", "staff", "x", "12345678"])


def order(uid):
    return (len(uid), uid)


# ---- the blacklist: the same bytes as before the lists shared their code
@settings(max_examples=40, deadline=None)
@given(first=st.lists(st.tuples(uids, st.integers(0, 4), st.integers(0, 2**32 - 1)),
                      max_size=20),
       add=st.lists(st.tuples(uids, st.integers(0, 4), st.integers(0, 2**32 - 1)),
                    max_size=10),
       remove=st.lists(uids, max_size=10))
def test_blacklist_file_is_what_the_host_writes(tmp_path_factory, first, add, remove):
    path = tmp_path_factory.mktemp("bl") / "blacklist.bin"
    path.write_bytes(C.build_blacklist(3, first))
    bl = Blacklist(str(path))
    model = {bytes(u): (r, s) for u, r, s in first}
    bl.update(add=add, remove=remove)
    for u in remove:
        model.pop(bytes(u), None)
    for u, r, s in add:
        model[bytes(u)] = (r, s)
    want = C.build_blacklist(4, [(u, r, s) for u, (r, s) in model.items()])
    assert path.read_bytes() == want
    assert bl.count == len(model) and bl.generation == 4
    assert not (path.parent / "blacklist.bin.new").exists()


# ---- the tier list
@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.lists(st.tuples(uids, tiers), max_size=8),
                                st.lists(uids, max_size=4)), min_size=1, max_size=6),
       probe=uids)
def test_tier_list_merges_like_a_dictionary(tmp_path_factory, steps, probe):
    path = tmp_path_factory.mktemp("tl") / "tiers.bin"
    tl = TierList(str(path))
    assert (tl.count, tl.generation, tl.error) == (0, 0, None)
    model = {}
    for gen, (add, remove) in enumerate(steps, 1):
        n = tl.update(add=add, remove=remove)
        for u in remove:
            model.pop(bytes(u), None)
        for u, t in add:
            model[bytes(u)] = t
        assert n == tl.count == len(model) and tl.generation == gen
    assert list(tl.entries()) == sorted(model.items(), key=lambda e: order(e[0]))
    for u, t in model.items():
        assert tl.lookup(u) == t
    assert tl.lookup(probe) == model.get(probe)
    # the host reads what the board wrote, and the board what the host writes
    gen, entries = C.parse_tier_list(path.read_bytes())
    assert gen == len(steps) and entries == list(tl.entries())
    path.write_bytes(C.build_tier_list(9, list(model.items())))
    again = TierList(str(path))
    assert again.generation == 9 and list(again.entries()) == list(tl.entries())


def test_tier_list_refuses_what_it_cannot_hold_and_changes_nothing(tmp_path):
    path = tmp_path / "tiers.bin"
    tl = TierList(str(path))
    tl.update(add=[(UID, "late")])
    before = path.read_bytes()
    for add, why in (([(b"\x01" * 4, "")], "1 to 8 bytes"),
                     ([(b"\x01" * 4, "ninechars")], "1 to 8 bytes"),
                     ([(b"\x01" * 4, "la te")], "printable ASCII"),
                     ([(b"\x01" * 4, "l\u00e4te")], "printable ASCII"),
                     ([(b"", "late")], "1 to 10 bytes"),
                     ([(b"\x01" * 11, "late")], "1 to 10 bytes")):
        with pytest.raises(CardListError, match=why):
            tl.update(add=add)
        assert path.read_bytes() == before and tl.generation == 1
    # the bound: LIMIT cards, not one more (a change past it is refused whole)
    many = [(i.to_bytes(4, "big"), "watch") for i in range(LIMIT - 1)]
    assert tl.update(add=many) == LIMIT
    full = path.read_bytes()
    with pytest.raises(CardListError, match=f"tier list full: at most {LIMIT} cards"):
        tl.update(add=[(b"\xff" * 7, "late"), (b"\xfe" * 7, "late")])
    assert path.read_bytes() == full and tl.count == LIMIT and tl.generation == 2
    assert not (tmp_path / "tiers.bin.new").exists()
    # replacing and removing within a full list is fine
    assert tl.update(add=[(UID, "watch"), (b"\xff" * 7, "late")], remove=[bytes(4)]) == LIMIT
    assert tl.lookup(UID) == "watch" and tl.lookup(bytes(4)) is None
    assert len(full) == 16 + 19 * LIMIT


def test_damaged_tier_list_is_reported_and_not_used(tmp_path):
    path = tmp_path / "tiers.bin"
    path.write_bytes(C.build_tier_list(2, [(UID, "late")])[:-1])
    tl = TierList(str(path))
    assert tl.count == 0 and tl.lookup(UID) is None
    assert tl.error == "tiers.bin is 34 bytes, its header says 1 entries"
    path.write_bytes(C.build_blacklist(1, [(UID, 1, 0)]))  # the other list's file
    assert TierList(str(path)).error == "tiers.bin is not a version-1 tier list"
    assert Blacklist(str(path)).error is None
    # the next change starts the list again from that change
    tl = TierList(str(path))
    assert tl.update(add=[(UID, "watch")]) == 1
    assert C.parse_tier_list(path.read_bytes()) == (1, [(UID, "watch")])
    with pytest.raises(C.CardToolError, match="not a version-1 tier list"):
        C.parse_tier_list(C.build_blacklist(1, []))


def test_tier_list_under_micropython(tmp_path):
    path = tmp_path / "tiers.bin"
    path.write_bytes(C.build_tier_list(5, [(UID, "late"), (b"\x04" * 7, "watch")]))
    out = run_micropython(
        "from washpay.cardlists.tierlist import TierList\n"
        f"tl = TierList({str(path)!r})\n"
        f"print(tl.lookup({UID!r}), tl.lookup(b'\\x04' * 7), tl.lookup(b'\\x05' * 4))\n"
        f"print(tl.update(add=[(b'\\x05' * 4, b'staff')], remove=[{UID!r}]), tl.generation)\n"
        "try:\n"
        "    tl.update(add=[(b'\\x06' * 4, b'a b')])\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n",
        heap="64k",
    )[1].split("\n")
    assert out[0] == "late watch None"
    assert out[1] == "2 6"
    assert out[2] == "CardListError a tier name is printable ASCII"
    assert C.parse_tier_list(path.read_bytes()) == (6, [(b"\x05" * 4, "staff"),
                                                        (b"\x04" * 7, "watch")])
    assert not os.path.exists(str(path) + ".new")
