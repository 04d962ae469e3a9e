"""`washpay card`: issue, top up, read and blacklist stored-value cards through a board's reader.

The board is a real one (its serial port) or a simulated one (STATE/console). Over mpremote
the board runs its own RF code (washpay/payments/cardtool.py) step by step; everything that
matters is computed here with host_tools/wallet.py, an implementation of
docs/wallet-format.md independent of the firmware: keys, header, copies, MACs, and the check
of what the card holds afterwards. Amounts are in minor units (cents), as everywhere in
washpay. Top-ups (and the opening balance of an issued card) are journaled on the board, by
the board's own journal, before the card is written; a write the card may not have taken is
resolved while the operator holds the card again.

This module also reads card image files for `washpay sim ctl card tap FILE` and writes the
board's blacklist file (docs/blacklist-format.md), again with its own code, and reads the
board's tier overrides (/tiers.bin, the same page).
"""

import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from host_tools import wallet as W

RESULT_MARK = "WPCARD "
BLACKLIST_PATH = "/blacklist.bin"
BLACKLIST_MAGIC = b"WPBL"
BLACKLIST_REASONS = ("blocked", "lost", "stolen", "replaced", "fraud")
TIERS_PATH = "/tiers.bin"
TIERS_MAGIC = b"WPTL"
TEAR_MODES = ("old", "new", "mixed")


class CardToolError(Exception):
    """The operation did not complete; the message says what happened and what to do."""


# ---- `washpay sim ctl card ...`
def _option(words, name, convert=str, choices=None):
    if name not in words:
        return None
    i = words.index(name)
    if i + 1 >= len(words):
        raise ValueError(f"{name} needs a value")
    value = words.pop(i + 1)
    words.pop(i)
    if choices and value not in choices:
        raise ValueError(f"{name} takes {', '.join(choices)}")
    if convert is int:
        return _count(value, name)
    return convert(value)


def _count(word, what):
    if not word.isdigit():
        raise ValueError(f"{what} takes a whole number, not {word!r}")
    return int(word)


def _tap_uid(word):
    """The UID of `card tap WORD` when WORD is no file: 4 or 7 bytes in hex."""
    try:
        uid = bytes.fromhex(word)
    except ValueError:
        uid = None
    if uid is None or len(uid) not in (4, 7):
        if "/" in word or word.endswith((".json", ".mfd", ".bin")):
            raise ValueError(f"no card image file {word}: give a file of `card dump` (or a "
                             "1024-byte .mfd dump), or a card UID in hex (e.g. 04a1b2c3)")
        raise ValueError(f"{word!r} is neither a card image file nor a card UID (4 or 7 "
                         "bytes in hex, e.g. 04a1b2c3)")
    return uid.hex()


def sim_ctl_request(words):
    """The control-channel request for `washpay sim ctl card <words>`."""
    words = list(words)
    usage = ("usage: washpay sim ctl card tap <uid|image file> [--second] [--remove-after K] "
             "[--torn old|new|mixed] | remove [--after-exchanges K | --during-write "
             "command|data [--after-writes N]] [--torn MODE] | dump [uid] | noise [n] | "
             "status")
    if not words:
        raise ValueError(usage)
    action = words.pop(0)
    if action == "tap":
        after = _option(words, "--remove-after", int)
        torn = _option(words, "--torn", choices=TEAR_MODES)
        second = "--second" in words
        if second:
            words.remove("--second")
        if len(words) != 1:
            raise ValueError(usage)
        req = {"op": "card", "action": "tap"}
        if second:
            req["second"] = True
        what = words[0]
        if os.path.exists(what):
            req["image"] = load_card_image(what)
        else:
            req["uid"] = _tap_uid(what)
        if after is not None:
            req["remove_after"] = after
            req["torn"] = torn or "mixed"
        return req
    if action == "remove":
        after = _option(words, "--after-exchanges", int)
        torn = _option(words, "--torn", choices=TEAR_MODES)
        during = _option(words, "--during-write", choices=("command", "data"))
        writes = _option(words, "--after-writes", int)
        req = {"op": "card", "action": "remove"}
        if after is not None:
            req["after_exchanges"] = after
        if during is not None:
            req["during_write"] = during
            req["after_writes"] = writes or 0
        if after is not None or during is not None:
            req["torn"] = torn or "mixed"
        return req
    if action == "dump":
        req = {"op": "card", "action": "dump"}
        if words:
            req["uid"] = words[0].lower()
        return req
    if action == "noise":
        return {"op": "card", "action": "noise",
                "count": _count(words[0], "card noise") if words else 1}
    if action == "status":
        return {"op": "card", "action": "status"}
    raise ValueError(usage)


def load_card_image(path):
    """A card image: the JSON of `card dump` (bare or as its whole reply), or a raw 1024-byte
    MIFARE Classic 1K dump (.mfd/.bin). A ValueError says what is wrong with the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read card image {path}: {e.strerror}") from None
    if len(data) == 1024:
        b0 = data[:16]
        if b0[0] ^ b0[1] ^ b0[2] ^ b0[3] == b0[4]:
            uid, sak, atqa = b0[:4], b0[5], b0[6:8]
        else:
            uid, sak, atqa = b0[:7], 0x08, b"\x44\x00"
        return {"uid": uid.hex(), "atqa": atqa.hex(), "sak": sak,
                "blocks": [data[i : i + 16].hex() for i in range(0, 1024, 16)]}
    try:
        doc = json.loads(data)
    except ValueError:
        raise ValueError(f"{path} is neither a card image (JSON) nor a 1024-byte dump") from None
    image = doc.get("image", doc) if isinstance(doc, dict) else None
    if not isinstance(image, dict) or "uid" not in image or len(image.get("blocks", ())) != 64:
        raise ValueError(f"{path} is not a card image: it needs a uid and 64 blocks")
    _check_image(path, image)
    return image


def _check_image(path, image):
    """Every field of a card image as the simulated reader needs it, checked here so that a
    damaged file is named as such (and which field), before anything reaches the board."""
    def hexbytes(value, what, sizes):
        try:
            b = bytes.fromhex(value) if isinstance(value, str) else None
        except ValueError:
            b = None
        if b is None or len(b) not in sizes:
            want = " or ".join(str(n) for n in sizes)
            raise ValueError(f"{path} is not a valid card image: {what} must be {want} bytes "
                             f"in hex, not {str(value)[:40]!r}")
        return b

    hexbytes(image["uid"], "the uid", (4, 7))
    if "atqa" in image:
        hexbytes(image["atqa"], "atqa", (2,))
    if "sak" in image and not (isinstance(image["sak"], int) and 0 <= image["sak"] < 256):
        raise ValueError(f"{path} is not a valid card image: sak must be a number 0-255")
    for i, block in enumerate(image["blocks"]):
        hexbytes(block, f"block {i}", (16,))


# ---- the board's blacklist file (docs/blacklist-format.md), written here independently
def _parse_card_list(data, magic, size, what):
    """(generation, [entry bytes]) of a card list file (/blacklist.bin, /tiers.bin: a
    16-byte header, then `size`-byte entries; docs/blacklist-format.md)."""
    if not data:
        return 0, []
    name = "/tiers.bin" if magic == TIERS_MAGIC else "/blacklist.bin"
    if len(data) < 16 or data[:4] != magic or data[4] != 1:
        raise CardToolError(f"the board's {name} is not a version-1 {what}")
    generation, count = struct.unpack(">II", data[8:16])
    if len(data) != 16 + size * count:
        raise CardToolError(f"{name} is {len(data)} bytes, its header says {count} "
                            "entries: it will be rewritten from what can be read")
    return generation, [data[16 + size * i : 16 + size * (i + 1)] for i in range(count)]


def parse_blacklist(data):
    """(generation, [(uid bytes, reason code, since)]) from /blacklist.bin's bytes."""
    generation, raw = _parse_card_list(data, BLACKLIST_MAGIC, 16, "card blacklist")
    return generation, [(e[1 : 1 + e[0]], e[11], struct.unpack(">I", e[12:16])[0])
                        for e in raw]


def build_blacklist(generation, entries):
    """The bytes of /blacklist.bin: entries sorted by (UID length, UID), each UID once."""
    by_uid = {}
    for uid, reason, since in entries:
        if not 0 < len(uid) <= 10:
            raise CardToolError(f"UID {uid.hex()} must have 1 to 10 bytes")
        by_uid[bytes(uid)] = (reason, since)
    out = bytearray(BLACKLIST_MAGIC + bytes((1, 0, 0, 0)))
    out += struct.pack(">II", generation, len(by_uid))
    for uid in sorted(by_uid, key=lambda u: (len(u), u)):
        reason, since = by_uid[uid]
        out += bytes((len(uid),)) + uid.ljust(10, b"\0") + bytes((reason,))
        out += struct.pack(">I", since)
    return bytes(out)


def parse_tier_list(data):
    """(generation, [(uid bytes, tier name)]) from /tiers.bin's bytes (19-byte entries)."""
    generation, raw = _parse_card_list(data, TIERS_MAGIC, 19, "tier list")
    return generation, [(e[1 : 1 + e[0]], e[11:19].rstrip(b"\0").decode("ascii")) for e in raw]


def build_tier_list(generation, entries):
    """The bytes of /tiers.bin: [(uid bytes, tier name)], sorted by (UID length, UID)."""
    by_uid = {bytes(uid): tier for uid, tier in entries}
    out = bytearray(TIERS_MAGIC + bytes((1, 0, 0, 0)))
    out += struct.pack(">II", generation, len(by_uid))
    for uid in sorted(by_uid, key=lambda u: (len(u), u)):
        name = by_uid[uid].encode("ascii")
        if not 0 < len(uid) <= 10 or not 0 < len(name) <= 8:
            raise CardToolError(f"{uid.hex()}={by_uid[uid]}: a UID of 1 to 10 bytes, a tier "
                                "of 1 to 8 characters")
        out += bytes((len(uid),)) + uid.ljust(10, b"\0") + name.ljust(8, b"\0")
    return bytes(out)


# ---- the board, over mpremote
class BoardLink:
    """Runs card steps on a board through mpremote. The first command interrupts the
    firmware (as mpremote does); `finish()` restarts it unless told not to."""

    def __init__(self, port, timeout=60):
        self.port = str(port)
        self.timeout = timeout
        self.used = False  # the firmware was stopped: restart it when done

    def _mpremote(self, *args, timeout=None):
        self.used = True
        cmd = [sys.executable, "-m", "mpremote", "connect", self.port, *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=timeout or self.timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CardToolError(f"the board on {self.port} did not answer in time") from None

    def run(self, steps, wait_s=0):
        code = ("from washpay.payments.cardtool import run\n"
                f"run({steps!r})\n")
        # resume: no soft reset between steps (the first one still stops the firmware)
        r = self._mpremote("resume", "exec", code, timeout=self.timeout + wait_s)
        for line in r.stdout.splitlines():
            if line.startswith(RESULT_MARK):
                return json.loads(line[len(RESULT_MARK):])
        why = (r.stderr or r.stdout).strip().splitlines()
        if why and "may be in use" in why[-1]:
            from host_tools.console import mpremote_failure

            raise CardToolError(mpremote_failure(self.port, why[-1]))
        raise CardToolError(f"the board on {self.port} did not run the card step: "
                            f"{why[-1] if why else 'no answer'} (is washpay installed on it?)")

    def get(self, remote, local):
        r = self._mpremote("fs", "cp", ":" + remote, str(local))
        return r.returncode == 0

    def put(self, local, remote):
        r = self._mpremote("fs", "cp", str(local), ":" + remote)
        if r.returncode != 0:
            raise CardToolError(f"could not write {remote} on the board: {r.stderr.strip()}")

    def finish(self, reset=True):
        # restart the firmware and wait until it is up (its boot line), so that the next
        # command never meets a firmware that is still starting
        if reset and self.used:
            from host_tools.console import ConsoleError, restart

            self.used = False
            try:
                restart(self.port, self.timeout)
            except ConsoleError as e:
                raise CardToolError(f"the board did not come back after its restart: {e}") \
                    from None


def _fail(result, what):
    return CardToolError(f"{what}: {result.get('error', 'failed')}")


def _hex(b):
    return bytes(b).hex()


def wait_for_card(link, wait_s, card_key=None):
    """(UID, SAK) of the card on the reader. With `card_key`, the board first checks that
    it is its own card key (the site ids they make agree: nothing secret crosses the line),
    so that a card is never issued or topped up, nor a record journaled, for another site."""
    steps = [["site", W.site_id(card_key).hex()]] if card_key is not None else []
    r = link.run(steps + [["select", None, int(wait_s * 1000)]], wait_s)
    if not r["ok"]:
        if r.get("kind") == "SiteMismatch":
            raise CardToolError(r.get("error", "the site key is not this board's"))
        if r.get("kind") == "NoCard":
            raise CardToolError(f"no card on the reader within {wait_s:g} s: put the card on "
                                "the reader (sim: washpay sim ctl card tap <uid>)")
        raise _fail(r, "cannot read the card")
    return bytes.fromhex(r["uid"]), r.get("sak", 0)


def _read_steps(card_key, uid):
    return [["select", uid.hex(), 2000], ["auth", W.TRAILER_BLOCK, "B", _hex(W.key_b(card_key,
                                                                                      uid))],
            ["read", W.HEADER_BLOCK], ["read", W.COPY_BLOCKS[0]], ["read", W.COPY_BLOCKS[1]]]


def _blocks(result):
    return {int(k): bytes.fromhex(v) for k, v in result["reads"].items()}


def probe_card(link, card_key, uid):
    """What the card on the reader is: ("issued", wallet), ("blank", None), or ("other",
    why), from its wallet sector, tried with key B, the public key A, the transport key."""
    r = link.run(_read_steps(card_key, uid))
    if r["ok"]:
        try:
            return "issued", W.read_wallet(card_key, uid, _blocks(r))
        except W.WalletError as e:
            return "other", f"card {uid.hex()}: {e}"
    if r.get("kind") != "AuthFailed":
        raise _fail(r, f"card {uid.hex()} could not be read")
    # key B did not open sector 1: what is this card?
    r = link.run([["select", uid.hex(), 2000], ["auth", W.TRAILER_BLOCK, "A",
                                                 _hex(W.key_a(uid))], ["read", W.HEADER_BLOCK]])
    if r["ok"]:
        try:
            _, site, _ = W.parse_header(_blocks(r)[W.HEADER_BLOCK])
        except W.WalletError as e:
            return "other", f"card {uid.hex()}: {e}"
        if site != W.site_id(card_key):
            return "other", (f"card {uid.hex()} belongs to another site (site id {site.hex()}):"
                             " check --site-key")
        return "other", (f"card {uid.hex()} says it is of this site but its key does not "
                         "open it: a forged or damaged card")
    r = link.run([["select", uid.hex(), 2000],
                  ["auth", W.TRAILER_BLOCK, "A", _hex(W.TRANSPORT_KEY)]])
    if r["ok"]:
        return "blank", None
    return "other", (f"card {uid.hex()} is not a washpay card (sector 1 opens with none of "
                     "its keys)")


def read_card(link, card_key, uid):
    """The card's verified wallet; CardToolError that says what the card is otherwise."""
    kind, what = probe_card(link, card_key, uid)
    if kind == "issued":
        return what
    if kind == "blank":
        raise CardToolError(f"card {uid.hex()} is blank (not issued): washpay card issue")
    raise CardToolError(what)


def describe(w):
    cur = w.current
    return {
        "uid": w.uid.hex(),
        "tier": w.tier,
        "flags": w.flags,
        "site": w.site.hex(),
        "balance": cur.balance if cur else None,
        "counter": cur.counter if cur else None,
        "copies": ["valid" if c else "invalid" for c in w.copies],
    }


def _journal_step(rtype, uid, **fields):
    return ["journal", rtype, {"source": uid.hex(), **fields}]


def _settle_write(link, card_key, uid, old, block, data, wait_s, journal_unresolved, say):
    """A write that may not have landed: with the card back on the reader, find out, write
    again if the card still holds the old copy. True once the card holds `data`."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        say("the card left during the write: put it back on the reader")
        left = max(1.0, deadline - time.monotonic())
        r = link.run([["select", uid.hex(), int(left * 1000)],
                      ["auth", W.TRAILER_BLOCK, "B", _hex(W.key_b(card_key, uid))],
                      ["read", W.HEADER_BLOCK], ["read", W.COPY_BLOCKS[0]],
                      ["read", W.COPY_BLOCKS[1]]], left)
        if not r["ok"]:
            if r.get("kind") == "NoCard":
                break
            continue
        w = W.read_wallet(card_key, uid, _blocks(r))
        if any(c is not None and c.raw == data for c in w.copies):
            return True
        if w.current is not None and w.current.raw == old.raw and w.target == block:
            r = link.run([["select", uid.hex(), 2000],
                          ["auth", W.TRAILER_BLOCK, "B", _hex(W.key_b(card_key, uid))],
                          ["expect", old.block, _hex(old.raw)], ["write", block, _hex(data)],
                          ["expect", block, _hex(data)]])
            if r["ok"]:
                return True
            continue
        break  # the card changed meanwhile
    r = link.run([journal_unresolved])
    if not r["ok"]:
        say(f"could not journal the unresolved write: {r.get('error')}")
    return False


def topup(link, card_key, amount, wait_s=30, say=print):
    """Add `amount` to the card on the reader; returns its description afterwards."""
    if amount <= 0:
        raise CardToolError("a top-up amount must be a positive number of minor units")
    uid, _ = wait_for_card(link, wait_s, card_key)
    w = read_card(link, card_key, uid)
    cur = w.current
    if cur is None:
        raise CardToolError(f"card {uid.hex()} has no valid balance copy (both fail their MAC): "
                            "it cannot be topped up; see washpay card read")
    new_balance = cur.balance + amount
    if new_balance > W.BALANCE_MAX:
        raise CardToolError(f"a balance of {new_balance} does not fit a card")
    block, data = w.next_copy(card_key, new_balance)
    fields = {"amount": amount, "balance_before": cur.balance, "balance_after": new_balance,
              "card_counter": cur.counter + 1}
    steps = [["select", uid.hex(), 2000],
             ["auth", W.TRAILER_BLOCK, "B", _hex(W.key_b(card_key, uid))],
             ["expect", W.HEADER_BLOCK, _hex(w.head)], ["expect", cur.block, _hex(cur.raw)],
             _journal_step("card_topup", uid, **fields),
             ["write", block, _hex(data)], ["expect", block, _hex(data)]]
    r = link.run(steps)
    if not r["ok"]:
        step = r.get("step", -1)
        if step < 4:
            raise _fail(r, f"nothing was added to card {uid.hex()}")
        if step == 4:
            raise _fail(r, "the top-up could not be journaled on the board; nothing was added")
        if step == 5 and r.get("kind") in ("NoCard", "CardRefused"):
            c = link.run([_journal_step("card_cancel", uid, reason="top-up not written",
                                        **fields)])
            note = "" if c["ok"] else f" (and the cancel was not journaled: {c.get('error')})"
            raise CardToolError(f"the card left before the write: nothing was added{note}; "
                                "run the top-up again")
        unresolved = _journal_step("card_unresolved", uid, reason="top-up not confirmed",
                                   **fields)
        if not _settle_write(link, card_key, uid, cur, block, data, wait_s, unresolved, say):
            raise CardToolError(
                f"the top-up of card {uid.hex()} is journaled but not confirmed on the card "
                "(journal: card_unresolved): put the card on the reader and run washpay card "
                "read; if the balance is the old one, run the top-up again")
    after = read_card(link, card_key, uid)
    if after.current is None or after.current.raw != data:
        raise CardToolError(f"card {uid.hex()} does not hold the new balance after the top-up")
    return describe(after)


def issue(link, card_key, balance=0, tier="", wait_s=30, say=print):
    """Issue the blank card on the reader with an opening balance; returns its description."""
    if not 0 <= balance <= W.BALANCE_MAX:
        raise CardToolError("the opening balance must be 0 or more minor units")
    uid, sak = wait_for_card(link, wait_s, card_key)
    if sak != 0x08:
        raise CardToolError(f"card {uid.hex()} is not a MIFARE Classic 1K (SAK 0x{sak:02x})")
    blocks = W.issue_blocks(card_key, uid, balance, tier)  # checks the tier too
    fields = {"amount": balance, "balance_before": 0, "balance_after": balance,
              "card_counter": 0}
    steps = [["select", uid.hex(), 2000],
             ["auth", W.TRAILER_BLOCK, "A", _hex(W.TRANSPORT_KEY)],
             _journal_step("card_topup", uid, reason="card issued", **fields)]
    steps += [["write", b, _hex(blocks[b])] for b in (4, 5, 6, 7)]
    steps += [["halt"], *_read_steps(card_key, uid)]
    r = link.run(steps)
    if not r["ok"]:
        step = r.get("step", -1)
        if step == 1 and r.get("kind") == "AuthFailed":
            try:
                w = read_card(link, card_key, uid)
            except CardToolError:
                raise CardToolError(f"card {uid.hex()} is not blank: sector 1 does not open "
                                    "with the transport key") from None
            raise CardToolError(f"card {uid.hex()} is already issued (balance {w.balance}): "
                                "use washpay card topup")
        if step < 3:
            raise _fail(r, f"card {uid.hex()} was not issued")
        trailer_step = 6
        if step < trailer_step or (step == trailer_step and r.get("kind") in ("NoCard",
                                                                              "CardRefused")):
            # the trailer was never written: the card still has its transport keys
            _cancel_issue(link, uid, fields)
            raise CardToolError(f"the card left during the issue: card {uid.hex()} was not "
                                "issued (still blank); run the issue again")
        # the trailer went out (or came after): see what the card holds now
        say("the card left during the issue: put it back on the reader")
        got, _ = wait_for_card(link, wait_s)
        if got != uid:
            raise CardToolError(f"another card ({got.hex()}) is on the reader, not {uid.hex()}")
        kind, what = probe_card(link, card_key, uid)
        if kind == "issued" and what.current is not None:
            return describe(what)
        if kind == "blank":
            _cancel_issue(link, uid, fields)
            raise CardToolError(f"card {uid.hex()} was not issued (still blank); run the "
                                "issue again")
        link.run([_journal_step("card_unresolved", uid, reason="issue not completed",
                                **fields)])
        raise CardToolError(f"card {uid.hex()} is unusable after the interrupted issue (its "
                            f"sector trailer was cut off): {what or 'no valid balance'}")
    w = W.read_wallet(card_key, uid, _blocks(r))
    for b in (4, 5, 6):
        if _blocks(r)[b] != blocks[b]:
            raise CardToolError(f"card {uid.hex()}: block {b} does not read back as written")
    return describe(w)


def _cancel_issue(link, uid, fields):
    link.run([_journal_step("card_cancel", uid, reason="issue not completed", **fields)])


def read(link, card_key, wait_s=30):
    uid, _ = wait_for_card(link, wait_s)
    return describe(read_card(link, card_key, uid))


def _parse_uid(text):
    try:
        uid = bytes.fromhex(text)
    except ValueError:
        raise CardToolError(f"{text!r} is not a UID in hex (e.g. 04a1b2c3)") from None
    if len(uid) not in (4, 7, 10):
        raise CardToolError(f"a card UID has 4, 7 or 10 bytes, not {len(uid)}")
    return uid


def blacklist_change(link, add=(), remove=(), reason="lost", since=None):
    """Read the board's blacklist, apply the change, write it back; returns the entries."""
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "blacklist.bin"
        data = local.read_bytes() if link.get(BLACKLIST_PATH, local) else b""
        try:
            generation, entries = parse_blacklist(data)
        except CardToolError:
            generation, entries = 0, []
        if not add and not remove:
            return generation, entries
        code = BLACKLIST_REASONS.index(reason)
        when = since if since is not None else int(time.time())
        drop = {bytes(u) for u in remove} | {bytes(u) for u in add}
        entries = [e for e in entries if bytes(e[0]) not in drop]
        entries += [(bytes(u), code, when) for u in add]
        local.write_bytes(build_blacklist(generation + 1, entries))
        link.put(local, BLACKLIST_PATH)
        return parse_blacklist(local.read_bytes())


# ---- the command line
def _site_card_key(path):
    from host_tools import keys as K
    from host_tools import site

    try:
        return W.site_card_key(site.load(path)[0])  # --site-key, $WASHPAY_SITE_KEY, default
    except K.KeyFileError as e:
        raise CardToolError(str(e)) from None


def _date(text):
    try:
        d = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise CardToolError(f"{text!r} is not a date (YYYY-MM-DD)") from None
    return int(d.timestamp())


def _board_currency(link):
    """(currency, decimals) of the board's config.json: what a card's balance counts in.
    The firmware's defaults when the config does not say."""
    from host_tools import money

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "config.json"
        try:
            cfg = json.loads(local.read_text()) if link.get("/config.json", local) else {}
        except ValueError:
            cfg = {}
    cfg = cfg if isinstance(cfg, dict) else {}
    cur = cfg.get("currency")
    cur = cur if isinstance(cur, str) and cur else money.DEFAULT_CURRENCY
    places = cfg.get("decimals")
    if not (isinstance(places, int) and 0 <= places <= 3):
        places = money.decimals(cur)
    return cur, places


def _print(doc, as_json, currency=None):
    """The card as JSON (balance in minor units, with its currency) or for a person."""
    from host_tools.money import money

    cur, places = currency or (None, None)
    if as_json:
        print(json.dumps({**doc, "currency": cur, "decimals": places} if cur else doc))
        return
    for k, v in doc.items():
        shown = money(v, cur, places) if k == "balance" and cur and v is not None else v
        print(f"{k:>8}: {shown}")


def main(args):
    """`washpay card ...` (argparse namespace from host_tools/cli.py) -> exit status."""
    from host_tools.console import port_missing

    if port_missing(args.port):
        print(f"washpay card: {port_missing(args.port)}", file=sys.stderr)
        return 2
    key = None
    if args.card_command != "blacklist":  # no key, no card: refused before the board stops
        try:
            key = _site_card_key(args.site_key)
        except CardToolError as e:
            print(f"washpay card: {e}", file=sys.stderr)
            return 2
    link = BoardLink(args.port)

    def say(msg):
        print(f"washpay card: {msg}", file=sys.stderr)

    try:
        try:
            if args.card_command == "blacklist":
                add = [_parse_uid(u) for u in args.add or ()]
                remove = [_parse_uid(u) for u in args.remove or ()]
                since = _date(args.since) if args.since else None
                gen, entries = blacklist_change(link, add, remove, args.reason, since)
                rows = [{"uid": u.hex(), "reason": BLACKLIST_REASONS[r]
                         if r < len(BLACKLIST_REASONS) else str(r),
                         "since": datetime.fromtimestamp(s, timezone.utc).strftime("%Y-%m-%d")
                         if s else ""} for u, r, s in entries]
                if args.json:
                    print(json.dumps({"generation": gen, "entries": rows}))
                else:
                    print(f"blacklist generation {gen}, {len(rows)} card(s)")
                    for row in rows:
                        print(f"  {row['uid']}  {row['reason']:<8} {row['since']}")
                return 0
            if args.card_command == "read":
                doc = read(link, key, args.wait)
            elif args.card_command == "issue":
                doc = issue(link, key, args.balance, args.tier, args.wait, say)
            elif args.card_command == "topup":
                doc = topup(link, key, args.amount, args.wait, say)
            else:
                raise CardToolError(f"unknown card command {args.card_command}")
            _print(doc, args.json, _board_currency(link))
            return 0
        finally:
            link.finish(reset=not args.no_reset)
    except (CardToolError, W.WalletError) as e:
        print(f"washpay card: {e}", file=sys.stderr)
        return 2
