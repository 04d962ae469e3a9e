"""`washpay journal`: copy a board's transaction journal off it, decode it and verify it.

This is a second, independent implementation of docs/journal-format.md on `cryptography`;
it never imports the firmware. It reads:

- a journal directory as `washpay journal pull` copies it (segments
  `seg/GGGG/XXXXXXXX.seg`, the open segment's `stage/NN` records, `head`), or loose files
  from one;
- a raw dump of the board's `vfs` partition (`esptool read-flash 0x200000 0x200000 vfs.bin`)
  or of the whole flash, through littlefs-python, so a dead board's journal is recoverable;
  a dump whose volume does not mount (cut short, superblocks overwritten) is read from its
  raw blocks (scan_raw), with a note that says so.

Verification checks every tag (AES-256-CTR, then HMAC-SHA256 over the previous tag, the
header and the ciphertext), the chain from record to record and across segments, sequence
gaps, records out of place, copies that disagree, truncated files and the sync cursor.
"""

import csv
import io
import json
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from host_tools import keys as K

# ---- the format (docs/journal-format.md)
VERSION = 2
RECORD_SIZE = 128
HEADER_SIZE = 16
BODY_SIZE = 96
TAG_SIZE = 16
MAC_END = HEADER_SIZE + BODY_SIZE
SEGMENT_MAGIC = b"WPJS"
SEGMENT_HEADER_SIZE = 32
SEGMENT_RECORDS = 31
SEGMENT_SIZE = SEGMENT_HEADER_SIZE + SEGMENT_RECORDS * RECORD_SIZE
STAGE_SLOTS = SEGMENT_RECORDS - 1
HEAD_MAGIC = b"WPJH"
KEY_CHECK_TEXT = b"washpay/v1/journal key check"
BODY = struct.Struct(">BBBBIIiiiiiI3sBBBB16s10sH25s")
assert BODY.size == BODY_SIZE

TYPES = {
    1: "boot", 2: "coin", 3: "coin_rejected", 4: "vend_start", 5: "vend_running",
    6: "vend_done", 7: "start_failed", 8: "fault", 9: "card_debit", 10: "token_redeem",
    11: "remote_start", 12: "refund", 13: "card_topup", 14: "card_refused", 15: "card_fraud",
    16: "card_cancel", 17: "card_unresolved", 18: "card_settled",
    19: "token_refused", 20: "command_refused", 21: "command_done", 22: "not_collected",
    23: "vend_extend", 24: "ota_refused", 25: "ota_done", 26: "ota_rollback",
}
STATES = {0: "idle", 1: "credit", 2: "starting", 3: "running", 4: "done", 5: "out_of_order"}
REASONS = {
    1: "power on", 2: "hard reset", 3: "watchdog", 4: "soft reset", 5: "other",
    6: "washer did not confirm start", 7: "power lost before the washer confirmed",
}
SOURCE_KINDS = {0: "", 1: "card", 2: "token", 3: "command"}
FLAG_CLOCK_UNTRUSTED = 1
FLAG_RECOVERED = 2

COLUMNS = [
    "seq", "time", "clock_ok", "boot", "type", "amount", "currency", "credit", "state",
    "program", "price", "pulses", "attempt", "source_kind", "source", "balance_before",
    "balance_after", "card_counter", "reason", "recovered", "where", "status",
]


class JournalInputError(Exception):
    """An input cannot be read as a journal; the message says which and why."""


SEGMENTS_PER_GROUP = 32


def segment_path(first):
    """Where the board keeps the segment starting at `first`, relative to /journal."""
    group = (first - 1) // (SEGMENT_RECORDS * SEGMENTS_PER_GROUP)
    return f"seg/{group:04x}/{first:08x}.seg"


# ---- records
@dataclass
class Record:
    seq: int
    raw: bytes
    where: str  # "00000020.seg #4" or "stage/05", prefixed by the input for several inputs
    anchor: bytes | None = None  # the segment's anchor if this is a segment's first record
    status: str = "unchecked"  # ok | bad tag | chain break | unverifiable; ", conflict"
    fields: dict = field(default_factory=dict)
    computed_tag: bytes = b""
    conflict: str = ""  # another copy of this seq with other content: where it is

    def mark_conflict(self, other_where):
        self.conflict = self.conflict or other_where
        if self.status != "unchecked" and "conflict" not in self.status:
            self.status = "conflict" if self.status == "ok" else self.status + ", conflict"

    @property
    def tag(self):
        return self.raw[MAC_END:]


@dataclass
class Problem:
    kind: str  # bad_tag, chain_break, gap, misplaced, truncated, conflict, key, unreadable
    message: str
    seq: int | None = None
    failure: bool = True


@dataclass
class Report:
    records: list = field(default_factory=list)  # Record, in sequence order
    problems: list = field(default_factory=list)
    torn: list = field(default_factory=list)  # interrupted writes, normal after a power cut
    notes: list = field(default_factory=list)
    cursor: int | None = None
    keys_confirmed: bool = False  # a segment's key check matched the keys given

    @property
    def ok(self):
        return not any(p.failure for p in self.problems)

    @property
    def verified_any(self):
        """Whether any record's tag verified (a conflict between copies is not a key
        problem)."""
        return any(r.status in ("ok", "conflict") for r in self.records)

    def count(self, kind):
        return sum(1 for p in self.problems if p.kind == kind)

    def gaps(self):
        return [p for p in self.problems if p.kind == "gap"]

    def summary(self):
        seqs = [r.seq for r in self.records]
        return {
            "ok": self.ok,
            "records": len(self.records),
            "first_seq": min(seqs) if seqs else None,
            "last_seq": max(seqs) if seqs else None,
            "gaps": [p.message for p in self.gaps()],
            "chain_breaks": self.count("chain_break"),
            "bad_tags": self.count("bad_tag"),
            "problems": [{"kind": p.kind, "seq": p.seq, "message": p.message}
                         for p in self.problems],
            "torn_tail": list(self.torn),
            "cursor": self.cursor,
            "notes": list(self.notes),
        }


class Keys:
    """A board's journal keys, from the site key and its device id."""

    def __init__(self, site_key, device_id):
        self.enc, self.mac = K.journal_keys(K.device_secret(site_key, device_id))
        self.key_check = self.hmac(KEY_CHECK_TEXT)[:4]

    def hmac(self, *parts):
        h = hmac.HMAC(self.mac, hashes.SHA256())
        for p in parts:
            h.update(p)
        return h.finalize()

    def tag(self, prev_tag, raw):
        return self.hmac(prev_tag, raw[:MAC_END])[:TAG_SIZE]

    def decrypt(self, raw):
        counter = raw[8:16] + raw[4:8] + bytes(4)  # nonce | seq | block counter
        d = Cipher(algorithms.AES(self.enc), modes.CTR(counter)).decryptor()
        return d.update(raw[HEADER_SIZE:MAC_END]) + d.finalize()


def _text(b):
    return b.rstrip(b"\0").decode("utf-8", "replace")


def decode_body(seq, body):
    (code, flags, scode, rcode, t, boot, amount, credit, price, bal_before, bal_after, counter,
     currency, pulses, attempt, kind, slen, source, program, left, text) = BODY.unpack(body)
    return {
        "seq": seq,
        "type": TYPES.get(code, f"type{code}"),
        "boot": boot,
        "t": t,
        "time": datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "clock_ok": not flags & FLAG_CLOCK_UNTRUSTED,
        "credit": credit,
        "state": STATES.get(scode, f"state{scode}"),
        "amount": amount,
        "price": price,
        "currency": _text(currency),
        "program": _text(program),
        "pulses": pulses,
        "attempt": attempt,
        "reason": REASONS.get(rcode, f"reason{rcode}") if rcode else _text(text),
        "recovered": bool(flags & FLAG_RECOVERED),
        "source_kind": SOURCE_KINDS.get(kind, str(kind)),
        "source": source[: min(slen, 16)].hex(),
        "balance_before": bal_before,
        "balance_after": bal_after,
        "card_counter": counter,
        "left_s": left,
    }


# ---- inputs
@dataclass
class Snapshot:
    """The files of one journal directory at one time: {relative path: content}."""

    name: str
    files: dict
    note: str = ""  # how the files were found, when not in a volume that mounted


def _is_littlefs(data, offset=0):
    return any(data[offset + b + 8 : offset + b + 16] == b"littlefs" for b in (0, 4096))


def read_dump(data, name, offset=None, root="/journal"):
    """The journal directory inside a raw LittleFS image of the vfs partition."""
    from littlefs import LittleFS, LittleFSError

    if offset is None:
        offset = 0
        if not _is_littlefs(data) and len(data) >= 0x400000 and _is_littlefs(data, 0x200000):
            offset = 0x200000  # a whole-flash dump of the stock 4 MiB layout
    image = data[offset:]
    if not _is_littlefs(image):
        return _raw_snapshot(image, name, f"no LittleFS volume at offset {offset:#x}")
    # the volume's geometry is in its superblock (docs/journal-format.md, "In a flash
    # dump"): a whole-flash dump goes on past the vfs partition's end
    sb = 0 if image[8:16] == b"littlefs" else 4096
    block_size, block_count = struct.unpack_from("<II", image, sb + 24)
    if block_size != 4096 or not block_count:
        return _raw_snapshot(image, name, f"the LittleFS volume does not mount (its "
                             f"superblock says {block_count} blocks of {block_size} bytes; "
                             "a board's blocks are 4096 bytes)")
    if len(image) < block_size * block_count:
        return _raw_snapshot(image, name, f"the dump ends {len(image) // block_size} blocks "
                             f"into a volume of {block_count} (dump the whole vfs partition)")
    image = image[: block_size * block_count]
    fs = LittleFS(block_size=block_size, block_count=block_count, mount=False)
    fs.context.buffer = bytearray(image)
    try:
        fs.mount()
    except LittleFSError as e:
        return _raw_snapshot(image, name, f"the LittleFS volume does not mount ({e})")
    files = {}
    try:
        for top, _dirs, names in fs.walk(root):
            for n in names:
                path = f"{top.rstrip('/')}/{n}"
                with fs.open(path, "rb") as f:
                    files[path[len(root) + 1 :]] = f.read()
    except LittleFSError as e:
        raise JournalInputError(f"{name}: no {root} directory in the image ({e})") from None
    return Snapshot(name, files)


def _raw_snapshot(image, name, why):
    """A dump whose volume cannot be read as a file system (cut short, overwritten, its
    superblocks gone): its journal, found in the raw bytes. Every record still goes through
    verification; what the scan cannot see shows there as a gap."""
    files = scan_raw(image)
    if not files:
        raise JournalInputError(f"{name}: {why}, and its raw blocks hold no journal segment "
                                "or staged record")
    return Snapshot(name, files, note=(
        f"{name}: {why}: the journal was read from its raw blocks ({len(files)} files: "
        "segments by their header, staged records by their sequence number)"))


def scan_raw(image):
    """{journal path: bytes} found without LittleFS. A segment file is one flash block of its
    own (4000 bytes: LittleFS puts a new file's data at the start of a block), so it starts
    with its magic at a block boundary; the open segment's staged records are 128-byte files
    stored inline in LittleFS's metadata, found by their first 8 bytes (version 2, three zero
    bytes, a sequence number after the newest segment's). A copy of a block LittleFS has let
    go of may be found too: copies of a record must agree, which verification checks."""
    files = {}
    newest = 0
    for off in range(0, len(image) - SEGMENT_SIZE + 1, 4096):
        if image[off : off + 4] == SEGMENT_MAGIC:
            first = struct.unpack_from(">I", image, off + 8)[0]
            files.setdefault(segment_path(first), bytes(image[off : off + SEGMENT_SIZE]))
            newest = max(newest, first)
    start = newest + SEGMENT_RECORDS if newest else 1
    for j in range(STAGE_SLOTS):
        pattern = struct.pack(">I", start + j)
        i = image.find(pattern)
        while i != -1:
            at = i - 4
            if (at >= 0 and image[at : at + 4] == bytes((VERSION, 0, 0, 0))
                    and at + RECORD_SIZE <= len(image)):
                files[f"stage/{j:02d}"] = bytes(image[at : at + RECORD_SIZE])
                break
            i = image.find(pattern, i + 1)
    return files


def _read_dir(path):
    root = path / "journal" if (path / "journal").is_dir() else path
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            files[p.relative_to(root).as_posix()] = p.read_bytes()
    return Snapshot(str(path), files)


def load_inputs(paths, offset=None):
    """Snapshots from the command line's FILE arguments; loose files of one directory make
    one snapshot."""
    snaps = []
    loose = {}
    for p in map(Path, paths):
        if p.is_dir():
            snaps.append(_read_dir(p))
            continue
        try:
            data = p.read_bytes()
        except OSError as e:
            raise JournalInputError(f"cannot read {p}: {e.strerror}") from None
        if len(data) >= 8192:  # a dump (journal files are at most a block), whole or not
            snaps.append(read_dump(data, str(p), offset))
            continue
        if p.parent.name == "stage":
            key, rel = p.parent.parent, f"stage/{p.name}"
        elif p.parent.parent.name == "seg":
            key, rel = p.parent.parent.parent, f"seg/{p.parent.name}/{p.name}"
        else:
            key, rel = p.parent, p.name
        loose.setdefault(key, {})[rel] = data
    for key, files in loose.items():
        snaps.append(Snapshot(str(key), files))
    return snaps


# ---- verification
class _Analysis:
    def __init__(self, snap, keys, report, prefix=""):
        self.snap = snap
        self.keys = keys
        self.report = report
        self.prefix = prefix
        self.by_seq = {}  # seq -> Record

    def problem(self, kind, message, seq=None, failure=True):
        self.report.problems.append(Problem(kind, self.prefix + message, seq, failure))

    def add(self, rec):
        have = self.by_seq.get(rec.seq)
        if have is None:
            self.by_seq[rec.seq] = rec
        elif have.raw != rec.raw:
            have.mark_conflict(rec.where)
            self.problem("conflict", f"seq {rec.seq} is stored twice with different content "
                         f"({have.where} and {rec.where})", rec.seq)

    def run(self):
        files = self.snap.files
        segs = {}
        for name in sorted(files):
            data = files[name]
            if name.startswith("stage/") or name == "head":
                continue
            if name.endswith(".seg") or data[:4] == SEGMENT_MAGIC:
                first = self.segment(name, data)
                if first is not None:
                    segs[first] = name
            else:
                self.report.notes.append(f"{self.prefix}ignored {name} (not a journal file)")
        known = [n for n in files if n == "head" or n.startswith("stage/") or n.endswith(
            ".seg") or files[n][:4] == SEGMENT_MAGIC]
        if files and not known:
            self.problem("unreadable", f"{self.snap.name}: no journal files here "
                         f"({', '.join(sorted(files)[:3])}...)")
        newest = max(segs) if segs else 0
        self.stage(newest + SEGMENT_RECORDS if newest else 1)
        if "head" in files:
            self.head(files["head"])
        return self.by_seq

    def segment(self, name, data):
        where = self.prefix + name
        if not data:
            self.report.torn.append(f"{where}: empty segment (its write was cut off; the "
                                    "records are still in the stage)")
            return None
        if len(data) < SEGMENT_HEADER_SIZE or data[:4] != SEGMENT_MAGIC:
            self.problem("unreadable", f"{name}: not a journal segment (bad header)")
            return None
        version, nrec, recsize, first = struct.unpack_from(">BBHI", data, 4)
        kcv, anchor = data[12:16], data[16:32]
        if version != VERSION or nrec != SEGMENT_RECORDS or recsize != RECORD_SIZE:
            self.problem("unreadable", f"{name}: format version {version}, {nrec} records of "
                         f"{recsize} bytes; this decoder reads version {VERSION}")
            return None
        if kcv == self.keys.key_check:
            self.report.keys_confirmed = True
        else:
            self.problem("key", f"{name}: sealed with other keys: wrong --site-key or "
                         "--device, or a segment from another board")
        expected = segment_path(first)
        if name != expected and ("/" in name or name != expected.rsplit("/", 1)[1]):
            self.problem("misplaced", f"{name}: holds the segment starting at seq {first}, "
                         f"which the board stores as {expected}", first)
        if (first - 1) % SEGMENT_RECORDS:
            self.problem("misplaced", f"{name}: starts at seq {first}, not a segment boundary",
                         first)
        body = data[SEGMENT_HEADER_SIZE:]
        n, rest = divmod(len(body), RECORD_SIZE)
        if rest:
            self.problem("truncated", f"{name}: ends {rest} bytes into record {n + 1} "
                         f"(file truncated to {len(data)} bytes)", first + n)
        if n < SEGMENT_RECORDS:
            self.problem("truncated", f"{name}: holds {n} of {SEGMENT_RECORDS} records "
                         f"(seq {first + n}-{first + SEGMENT_RECORDS - 1} cut off)", first + n)
        elif n > SEGMENT_RECORDS:
            self.problem("unreadable", f"{name}: {n - SEGMENT_RECORDS} records too many")
        for i in range(min(n, SEGMENT_RECORDS)):
            raw = body[i * RECORD_SIZE : (i + 1) * RECORD_SIZE]
            seq = struct.unpack_from(">I", raw, 4)[0]
            if seq != first + i:
                self.problem("misplaced", f"{name} record {i + 1}: holds seq {seq}, expected "
                             f"{first + i} (records moved or swapped)", seq)
            rec = Record(seq, raw, f"{where} #{i + 1}")
            if i == 0 and seq == first:
                rec.anchor = anchor
            self.add(rec)
        return first

    def stage(self, start):
        """The stage files. `start` is the open segment's first seq as the segment files
        say (the one after the newest); a stage record at its place in a later segment
        moves it on: the newer segment files are missing (a damaged or edited dump), and
        the records staged after them are shown, not dropped (docs/journal-format.md)."""
        files = self.snap.files
        staged = []
        for j in range(STAGE_SLOTS):
            name = f"stage/{j:02d}"
            if name not in files:
                continue
            data = files[name]
            where = self.prefix + name
            if not data:
                self.report.torn.append(f"{where}: empty (its first write was cut off)")
                continue
            if len(data) != RECORD_SIZE:
                self.problem("truncated", f"{name}: {len(data)} bytes, a record is "
                             f"{RECORD_SIZE}")
                continue
            seq = struct.unpack_from(">I", data, 4)[0]
            staged.append((j, name, data, seq))
            first = seq - j
            if first > start and (first - 1) % SEGMENT_RECORDS == 0:
                start = first
        for j, name, data, seq in staged:
            where = self.prefix + name
            if seq == start + j:
                self.add(Record(seq, data, where))
            elif start > 1 and seq == start - SEGMENT_RECORDS + j:
                # the previous segment's record, already copied into it: must be identical;
                # with that segment file missing, this copy is the only one left
                have = self.by_seq.get(seq)
                if have is None:
                    self.add(Record(seq, data, where))
                elif have.raw != data:
                    have.mark_conflict(where)
                    self.problem("conflict", f"{name}: seq {seq} differs from its copy in "
                                 f"{have.where}", seq)
            else:
                self.problem("misplaced", f"{name}: holds seq {seq}; slot {j} of the open "
                             f"segment holds seq {start + j}", seq)

    def head(self, data):
        if len(data) < 20 or data[:4] != HEAD_MAGIC:
            self.problem("unreadable", "head: not a journal head file", failure=False)
            return
        _oldest, _newest, cursor, _limit = struct.unpack_from(">IIII", data, 4)
        if self.report.cursor is None or cursor > self.report.cursor:
            self.report.cursor = cursor


def _verify_chain(by_seq, keys, report, prefix=""):
    """Check every tag, in sequence order; fill in status, fields and problems."""
    zero = bytes(TAG_SIZE)
    for seq in sorted(by_seq):
        rec = by_seq[seq]
        prev = by_seq.get(seq - 1)
        tries = []
        if prev is not None:
            tries.append(("prev", prev.tag))
            if prev.computed_tag and prev.computed_tag != prev.tag:
                tries.append(("prev", prev.computed_tag))  # prev's own tag was altered
        if rec.anchor is not None:
            tries.append(("anchor", rec.anchor))
        if seq == 1:
            tries.append(("genesis", zero))
        matched = None
        for kind, t in tries:
            if keys.tag(t, rec.raw) == rec.tag:
                matched = kind
                break
        rec.computed_tag = keys.tag(tries[0][1], rec.raw) if tries else b""
        if rec.raw[0] != VERSION:
            rec.status = "bad tag"
            report.problems.append(Problem("bad_tag", f"{prefix}seq {seq} ({rec.where}): "
                                           f"format version {rec.raw[0]}", seq))
        elif matched in ("prev", "genesis") or (matched == "anchor" and prev is None):
            rec.status = "ok"
        elif matched == "anchor":
            rec.status = "chain break"
            report.problems.append(Problem(
                "chain_break", f"{prefix}seq {seq} ({rec.where}): authentic, but its segment "
                f"does not follow seq {seq - 1} ({prev.where}): segment spliced in", seq))
        elif not tries:
            rec.status = "unverifiable"
            report.problems.append(Problem(
                "chain_break", f"{prefix}seq {seq} ({rec.where}): cannot be verified: the "
                f"record before it (seq {seq - 1}) is missing", seq))
        else:
            rec.status = "bad tag"
            report.problems.append(Problem(
                "bad_tag", f"{prefix}seq {seq} ({rec.where}): bad tag: altered, or not sealed "
                "by this board after the record before it", seq))
        if rec.status == "ok" and rec.anchor is not None and prev is not None and (
            rec.anchor != prev.tag
        ):
            rec.status = "chain break"
            report.problems.append(Problem(
                "chain_break", f"{prefix}seq {seq} ({rec.where}): its segment's anchor is not "
                f"the tag of seq {seq - 1}: segment header altered or spliced", seq))
        if rec.conflict:
            conflict, rec.conflict = rec.conflict, ""
            rec.mark_conflict(conflict)
        try:
            rec.fields = decode_body(seq, keys.decrypt(rec.raw))
        except (ValueError, OverflowError, OSError):
            rec.fields = {"seq": seq}


def verify(snapshots, keys):
    """Decode and verify one or more snapshots of one board's journal -> Report."""
    report = Report()
    merged = {}
    several = len(snapshots) > 1
    for snap in snapshots:
        prefix = f"{snap.name}: " if several else ""
        if snap.note:
            report.notes.append(snap.note)
        a = _Analysis(snap, keys, report, prefix)
        by_seq = a.run()
        _verify_chain(by_seq, keys, report, prefix)
        if by_seq:
            seqs = sorted(by_seq)
            lo, hi = seqs[0], seqs[-1]
            for a, b in zip(seqs, seqs[1:], strict=False):
                if b > a + 1:
                    r = f"{a + 1}" if b == a + 2 else f"{a + 1}-{b - 1}"
                    report.problems.append(Problem("gap", f"{prefix}seq {r} missing", a + 1))
            cursor = report.cursor
            if cursor is not None and cursor + 1 < lo:
                report.problems.append(Problem(
                    "gap", f"{prefix}seq {cursor + 1}-{lo - 1} missing but never acknowledged "
                    f"(sync cursor {cursor})", cursor + 1))
            if cursor is not None and cursor > hi:
                report.problems.append(Problem(
                    "gap", f"{prefix}the sync cursor ({cursor}) is past the newest record "
                    f"({hi}): records were removed or the journal rolled back", hi + 1))
            if lo > 1 and (cursor is None or cursor + 1 >= lo):
                report.notes.append(f"{prefix}starts at seq {lo}: earlier records were "
                                    "acknowledged and deleted")
        for seq, rec in by_seq.items():
            have = merged.get(seq)
            if have is None or (have.status != "ok" and rec.status == "ok"):
                if have is not None and have.raw != rec.raw:
                    _conflict(report, have, rec)
                merged[seq] = rec
            elif have.raw != rec.raw:
                _conflict(report, have, rec)
    report.records = [merged[s] for s in sorted(merged)]
    return report


def _conflict(report, a, b):
    a.mark_conflict(b.where)
    b.mark_conflict(a.where)
    report.problems.append(Problem(
        "conflict", f"seq {a.seq} differs between {a.where} and {b.where}: the journal was "
        "rolled back or a sequence number reused", a.seq))


# ---- output
def _row(rec):
    f = dict(rec.fields)
    f["where"] = rec.where
    f["status"] = rec.status
    return {c: f.get(c, "") for c in COLUMNS}


MONEY_COLUMNS = ("amount", "credit", "price")  # of the table; jsonl/csv keep minor units


def format_table(report, out):
    cols = ["seq", "time", "boot", "type", "amount", "credit", "state", "program", "price",
            "source", "reason", "status"]
    from host_tools.money import major, money

    # amounts in major units; one currency (the usual case) is named once, in the header
    currencies = {rec.fields.get("currency") or "" for rec in report.records}
    one = currencies.pop() if len(currencies) == 1 else None
    rows = []
    for rec in report.records:
        r = _row(rec)
        for c in MONEY_COLUMNS:
            r[c] = (major if one is not None else money)(r[c], r["currency"] or None)
        if r["time"] and not r["clock_ok"]:
            r["time"] += "?"
        if r["source_kind"] in ("token", "command") and r["source"]:
            text = bytes.fromhex(r["source"]).decode("ascii", "replace")
            if text.isprintable():
                r["source"] = text  # ids made of text read better as text; card UIDs in hex
        rows.append([str(r[c]) for c in cols])
    head = [f"{c} {one}" if one and c in MONEY_COLUMNS else c for c in cols]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(head)]
    out.write("  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip() + "\n")
    for row in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                  + "\n")
    if any(not r.fields.get("clock_ok", True) for r in report.records):
        out.write("(? = the board's clock was not set from a trusted source)\n")


def format_jsonl(report, out):
    for rec in report.records:
        out.write(json.dumps(_row(rec)) + "\n")


def format_csv(report, out):
    w = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for rec in report.records:
        w.writerow(_row(rec))


def format_summary(report, device, out):
    s = report.summary()
    if s["records"]:
        rng = f"seq {s['first_seq']}-{s['last_seq']}"
    else:
        rng = "no records"
    out.write(f"journal of {device}: {s['records']} records, {rng}\n")
    out.write(f"  gaps:         {', '.join(s['gaps']) or 'none'}\n")
    out.write(f"  chain breaks: {s['chain_breaks']}\n")
    out.write(f"  bad tags:     {s['bad_tags']}\n")
    out.write(f"  torn tail:    {'; '.join(s['torn_tail']) or 'none'}\n")
    if report.cursor is not None:
        unsynced = (s["last_seq"] or 0) - report.cursor
        out.write(f"  sync cursor:  {report.cursor} ({max(0, unsynced)} records not yet "
                  "acknowledged)\n")
    for n in report.notes:
        out.write(f"  note: {n}\n")
    for p in report.problems:
        out.write(f"  {'FAIL' if p.failure else 'warn'}: {p.message}\n")
    failures = sum(1 for p in report.problems if p.failure)
    out.write("verification: OK\n" if report.ok else f"verification: FAILED ({failures} "
              "problems)\n")


def decode_command(paths, site_key_path, device_id, fmt="table", offset=None, out=None,
                   err=None):
    """`washpay journal decode`: exit status 0 if everything verifies, 1 if not, 2 on bad
    input."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        from host_tools import site  # --site-key, else $WASHPAY_SITE_KEY, else the default

        keys = Keys(site.load(site_key_path)[0], device_id)
        snaps = load_inputs(paths, offset)
    except (K.KeyFileError, JournalInputError) as e:
        err.write(f"washpay journal decode: {e}\n")
        return 2
    report = verify(snaps, keys)
    if report.records and not report.verified_any and not report.keys_confirmed:
        # nothing authenticates: every body is the keystream of other keys over the data,
        # and printing it would show garbage as if it were money
        err.write("washpay journal decode: no record verifies with this key and device id: "
                  f"wrong site key or --device? ({len(report.records)} records read, "
                  f"device {device_id})\n")
        return 2
    if fmt == "json":
        fmt = "jsonl"
    if fmt == "table":
        format_table(report, out)
        out.write("\n")
        format_summary(report, device_id, out)
    else:
        {"jsonl": format_jsonl, "csv": format_csv}[fmt](report, out)
        format_summary(report, device_id, err)
    return 0 if report.ok else 1


# ---- pull
def mpremote_command():
    return [sys.executable, "-m", "mpremote"]


def pull(port, out_dir, root="/journal", reset=True, timeout=120):
    """Copy the board's journal directory into out_dir/journal with mpremote -> file count.

    mpremote interrupts the firmware to reach the raw REPL, so nothing is written while the
    files are copied; `reset` restarts the firmware afterwards (boot recovery runs as after
    any reset).
    """
    out = Path(out_dir)
    dest = out / "journal"
    # refused before the board is touched: mpremote would stop the firmware and reset it
    if out.exists() and not out.is_dir():
        raise JournalInputError(f"{out} is a file: give a directory to pull into")
    if dest.exists():
        raise JournalInputError(f"{dest} already exists: pull into an empty directory "
                                "(nothing was read from the board)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JournalInputError(f"cannot create {out}: {e.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="washpay-pull-") as tmp:
        cmd = [*mpremote_command(), "connect", port, "fs", "cp", "-r", ":" + root, tmp + "/"]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
        if reset:  # and back up before the next command comes (not `mpremote reset`)
            from host_tools.console import ConsoleError, restart

            try:
                restart(port, timeout)
            except ConsoleError as e:
                if proc.returncode == 0:  # else the copy's own error says more, below
                    raise JournalInputError(f"the board did not come back after its "
                                            f"restart: {e}") from None
        got = Path(tmp) / root.strip("/").split("/")[-1]
        if proc.returncode != 0 or not got.is_dir():
            why = (proc.stderr or proc.stdout).strip().splitlines()
            last = why[-1] if why else f"exit status {proc.returncode}"
            if "may be in use" in last:
                from host_tools.console import mpremote_failure

                raise JournalInputError(mpremote_failure(port, last))
            raise JournalInputError(f"mpremote could not copy {root} from {port}: {last}")
        if dest.exists():  # made while mpremote ran
            raise JournalInputError(f"{dest} already exists: pull into an empty directory")
        n = 0
        for p in sorted(got.rglob("*")):
            target = dest / p.relative_to(got)
            if p.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(p.read_bytes())
                n += 1
        dest.mkdir(parents=True, exist_ok=True)
    return n


def pull_command(port, out_dir, reset=True, out=None, err=None):
    from host_tools.console import port_missing

    out = out or sys.stdout
    err = err or sys.stderr
    if port_missing(port):  # before anything is made or the board touched
        err.write(f"washpay journal pull: {port_missing(port)}\n")
        return 2
    try:
        n = pull(port, out_dir, reset=reset)
    except (JournalInputError, subprocess.TimeoutExpired) as e:
        err.write(f"washpay journal pull: {e}\n")
        return 2
    out.write(f"pulled {n} files into {Path(out_dir) / 'journal'}; decode with: washpay "
              f"journal decode {Path(out_dir) / 'journal'} --site-key KEY --device ID\n")
    return 0


def render(report, fmt="table"):
    """The decoded records as text in one of the output formats (for tests and scripts)."""
    buf = io.StringIO()
    {"table": format_table, "jsonl": format_jsonl, "csv": format_csv}[fmt](report, buf)
    return buf.getvalue()
