# The transaction journal: the device's single source of truth for money. Every coin, debit,
# vend, refund and fault is a sealed record (seal.py: AES-256-CTR + chained HMAC tag) in
# flash, durable before anyone acts on it. docs/journal-format.md is the format.
#
#   seq = journal.append(rtype, **fields)   durable when it returns; only then act on it
#   journal.last()                          the newest record (a new dict), or None
#   journal.count, .last_seq, .unsynced     records stored, newest seq, not yet acknowledged
#   journal.ack(seq)                        the server has every record up to seq
#   journal.synced_seq                      the sync cursor: the highest seq acknowledged
#   journal.sealed(after)                   (seq, 128 sealed bytes) after `after`, as stored:
#                                           what net/uploader.py sends (a reused buffer:
#                                           copy it before the next item or any append)
#   recent(journal, limit)                  (journal/recent.py) the newest records as dicts,
#                                           newest first, each verified: what boot looks
#                                           back at (card risk); a module of its own so
#                                           that compiling this one fits a capped heap
#   journal.trusts(t)                       whether a wall time `t` counts as a set clock
#   journal.level, .status()                "ok", "low" or "full", for display and status
#
# Storage on LittleFS, under `root`:
#   stage/00 .. stage/29   the first 30 records of the open segment, one 128-byte file each.
#                          A file that small lives inline in LittleFS's metadata log, so a
#                          staged append costs a few page programs and no block erase.
#   seg/GGGG/XXXXXXXX.seg  a completed segment: header + 31 records, 4000 bytes, one flash
#                          block; written in one go when the 31st record arrives. XXXXXXXX is
#                          its first sequence number, GGGG its group of 32 segments: LittleFS
#                          finds a name by walking its directory, so no directory boot reads
#                          grows with the journal.
#   head                   oldest and newest segment, the sync cursor and how many records
#                          the flash holds: a hint that lets boot go straight to the newest
#                          records.
# LittleFS commits a file on close, atomically: after a power cut each file is either its
# old or its new version, so an append that did not return is the most that can be lost.
import os
import struct
import time

from micropython import const

from washpay.journal import records as R
from washpay.journal.seal import FIELDS, Sealer, pack_body, seq_of, unpack

_STAGE_SLOTS = const(30)  # SEGMENT_RECORDS - 1: the last record completes the segment
_LAST = const(30)
_TAG = const(112)  # offset of the tag in a record
_BODY = const(16)
_MIN_TRUSTED_T = const(1704067200)  # 2024-01-01: an earlier clock was never set
_FLASH_MARGIN_BLOCKS = const(4)  # LittleFS needs a few free blocks to copy on write
_GROUP_RECORDS = const(992)  # 32 segments to a directory: LittleFS looks names up linearly

_SOURCE_OF = {
    R.CARD_DEBIT: R.SOURCE_CARD, R.TOKEN_REDEEM: R.SOURCE_TOKEN, R.REMOTE_START: R.SOURCE_COMMAND,
}

OK = "ok"
LOW = "low"  # warn the operator: sync soon
FULL = "full"  # only the reserve is left: no new payments, only what is already paid


class JournalError(Exception):
    pass


class JournalFull(JournalError):
    pass


class Journal:
    def __init__(self, root="/journal", keys=None, currency="EUR", capacity=6200, warn=None,
                 reserve=None, clock_trusted=None):
        if not keys:
            raise JournalError(
                "no journal keys: /secrets.json has no device_secret (washpay provision)"
            )
        self.root = root
        self.currency = currency
        self.capacity = capacity
        self.warn = capacity // 10 if warn is None else warn
        self.reserve = 2 * R.SEGMENT_RECORDS if reserve is None else reserve
        if not 0 < self.reserve <= self.warn < capacity or capacity < 3 * R.SEGMENT_RECORDS:
            raise JournalError("journal limits must be 0 < reserve <= warn < capacity, "
                               "capacity at least %d" % (3 * R.SEGMENT_RECORDS))
        # None: trust the clock once it shows a plausible date; the network layer sets it
        self.clock_trusted = clock_trusted
        self._sealer = Sealer(keys[0], keys[1])
        self._rec = bytearray(R.RECORD_SIZE)  # the record being written
        self._scratch = bytearray(R.RECORD_SIZE)  # a record being read
        self._hdr = bytearray(R.SEGMENT_HEADER_SIZE)
        self._body = bytearray(R.BODY_SIZE)  # plaintext of the newest record
        self._pending = bytearray(R.BODY_SIZE)
        self._prev_tag = bytearray(R.TAG_SIZE)  # tag of the newest record: the chain link
        self._anchor = bytearray(R.TAG_SIZE)  # tag before the open segment's first record
        self._stage_fmt = root + "/stage/%02d"  # a name made when used: no list of 30 kept
        self._next = 1  # sequence number of the next record
        self._last_ok = 0  # newest record that verified (what last() returns)
        self._oldest = 0  # first seq of the oldest and the newest completed segment
        self._newest = 0
        self.synced_seq = 0
        self.boot = 1
        self.damaged = 0  # records that failed verification at boot (flash corruption)
        self.discarded = 0  # torn writes removed at boot
        self._limit = None  # most records the flash can hold, measured when a segment closes
        for d in (root, root + "/stage", root + "/seg"):
            try:
                os.mkdir(d)
            except OSError:
                pass
        # boot recovery (journal/boot.py): run once here, so its code is not kept
        from washpay import forget
        from washpay.journal import boot

        boot.recover(self)
        del boot
        forget("washpay.journal.boot")

    # ---- what the rest of the firmware reads
    @property
    def last_seq(self):
        return self._next - 1

    @property
    def count(self):
        """Records stored on this board (acknowledged segments are deleted)."""
        return self._next - (self._oldest or 1)

    @property
    def unsynced(self):
        return self.last_seq - self.synced_seq

    @property
    def free(self):
        limit = self.capacity
        if self._limit is not None and self._limit < limit:
            limit = self._limit
        return max(0, limit - self.count)

    @property
    def level(self):
        free = self.free
        if free <= self.reserve:
            return FULL
        if free <= self.warn:
            return LOW
        return OK

    @property
    def accepts_payments(self):
        """False once only the reserve is left: inhibit coins and refuse cashless payments."""
        return self.free > self.reserve

    def message(self):
        level = self.level
        if level == FULL:
            return "journal full: sync required"
        if level == LOW:
            return "journal nearly full: sync required"
        if self.damaged:
            return "journal: %d damaged records" % self.damaged
        return ""

    def status(self):
        return {
            "count": self.count,
            "last_seq": self.last_seq,
            "unsynced": self.unsynced,
            "level": self.level,
            "free": self.free,
            "capacity": self.capacity,
            "message": self.message(),
        }

    def trusts(self, t):
        """Whether records written at wall time `t` now say the clock was set: what the
        network layer decided (clock_trusted), else a plausible date."""
        if self.clock_trusted is None:
            return t >= _MIN_TRUSTED_T
        return self.clock_trusted

    def last(self):
        # a new dict each time, not a cached one: a board would keep ~0.3 KiB for it, and
        # the vend engine's appends do not need it (they give credit and state)
        return unpack(self._last_ok, self._body) if self._last_ok else None

    # ---- paths and small files
    def _group(self, first):
        return "%s/seg/%04x" % (self.root, (first - 1) // _GROUP_RECORDS)

    def _seg(self, first):
        return "%s/seg/%04x/%08x.seg" % (self.root, (first - 1) // _GROUP_RECORDS, first)

    def _size(self, path):
        try:
            return os.stat(path)[6]
        except OSError:
            return None

    def _read_at(self, path, offset, buf):
        """Read len(buf) bytes of `path` at `offset` into buf; True if all were there."""
        try:
            with open(path, "rb") as f:
                if offset:
                    f.seek(offset)
                return f.readinto(buf) == len(buf)
        except OSError:
            return False

    def _write_head(self):
        h = self._scratch
        h[0:4] = R.HEAD_MAGIC
        struct.pack_into(">IIII", h, 4, self._oldest, self._newest, self.synced_seq,
                         self._limit or 0)
        with open(self.root + "/head", "wb") as f:
            f.write(memoryview(h)[: R.HEAD_SIZE])

    # ---- append
    def append(self, rtype, **fields):
        """Seal and store one record; return its sequence number once it is durable."""
        try:
            code = R.RECORD_TYPES.index(rtype) + 1
        except ValueError:
            raise JournalError("unknown record type %r" % rtype)
        for name in fields:
            if name not in FIELDS:
                raise JournalError("a journal record has no field %r" % name)
        free = self.free
        if free <= 0:
            raise JournalFull("journal full: sync required (%d records stored)" % self.count)
        if free <= self.reserve and rtype in R.CASHLESS:
            raise JournalFull("journal full: sync required before cashless payments")
        if "credit" not in fields or "state" not in fields:
            last = self.last()
            if last is not None:  # an event that does not move money keeps credit and state
                if "credit" not in fields:
                    fields["credit"] = last["credit"]
                if "state" not in fields:
                    fields["state"] = last["state"]
        if "source" in fields and "source_kind" not in fields:
            # every card_* record's source is the card's UID (docs/journal-format.md)
            fields["source_kind"] = _SOURCE_OF.get(
                rtype, R.SOURCE_CARD if rtype.startswith("card_") else 0)
        if "t" not in fields:
            fields["t"] = time.time()
        flags = 0
        if not self.trusts(fields["t"]):
            flags = R.FLAG_CLOCK_UNTRUSTED
        seq = self._next
        rec = self._rec
        try:
            pack_body(rec, _BODY, code, flags, self.boot, fields, self.currency)
        except (ValueError, TypeError) as e:
            raise JournalError("cannot record %s: %s" % (rtype, e))
        self._pending[:] = memoryview(rec)[_BODY:_TAG]
        self._sealer.seal(rec, seq, self._prev_tag)
        pos = (seq - 1) % R.SEGMENT_RECORDS
        try:
            if pos < _STAGE_SLOTS:
                with open(self._stage_fmt % pos, "wb") as f:
                    f.write(rec)
            else:
                self._close_segment(seq - _LAST)
        except OSError as e:
            # not durable; nothing in memory moved, so the same seq is written next time
            raise JournalFull("journal: flash write failed (%s): sync required" % e)
        self._next = seq + 1
        self._prev_tag[:] = memoryview(rec)[_TAG:]
        self._body, self._pending = self._pending, self._body
        self._last_ok = seq
        return seq

    def _close_segment(self, first):
        """Write the segment of records first..first+30: the stage plus the record in _rec."""
        path = self._seg(first)
        h = self._hdr
        h[0:4] = R.SEGMENT_MAGIC
        struct.pack_into(">BBHI", h, 4, R.VERSION, R.SEGMENT_RECORDS, R.RECORD_SIZE, first)
        h[12:16] = self._sealer.key_check
        h[16:32] = self._anchor
        rec = self._scratch
        if (first - 1) % _GROUP_RECORDS == 0:
            try:
                os.mkdir(self._group(first))
            except OSError:
                pass  # made before a power cut
        f = open(path, "wb")
        try:
            f.write(h)
            for j in range(_STAGE_SLOTS):
                if not self._read_at(self._stage_fmt % j, 0, rec) or seq_of(rec) != first + j:
                    raise OSError("stage record %d is missing" % (first + j))
                f.write(rec)
            f.write(self._rec)
            f.close()
        except BaseException:
            f.close()
            os.remove(path)  # never leave a partial segment behind
            raise
        self._anchor[:] = memoryview(self._rec)[_TAG:]
        self._newest = first
        if not self._oldest:
            self._oldest = first
        try:
            self._measure_room()
            self._write_head()
        except OSError:
            pass  # the segment is durable; boot finds it without the head

    def _measure_room(self):
        # Other files share the flash: what is free there may be less than the capacity.
        # Deleting acknowledged segments frees a block per 31 records, so this limit on the
        # count stays right until the next measurement; the head keeps it across reboots.
        blocks = os.statvfs(self.root)[3] - _FLASH_MARGIN_BLOCKS
        self._limit = self.count + max(0, blocks) * R.SEGMENT_RECORDS

    # ---- sync
    def ack(self, seq):
        """The server has every record up to `seq`: delete the segments it covers."""
        if seq > self.last_seq:
            raise JournalError("ack of record %d, but the newest is %d" % (seq, self.last_seq))
        prev = self.synced_seq
        if seq <= prev:
            return 0
        old = self._oldest
        oldest = old
        # the newest completed segment stays: the open segment's records chain from it
        while oldest and oldest != self._newest and oldest + _LAST <= seq:
            oldest += R.SEGMENT_RECORDS
        # head first: a cut after it leaves stray files, never a head naming missing ones
        self._oldest, self.synced_seq = oldest, seq
        try:
            self._write_head()
        except OSError:
            self._oldest, self.synced_seq = old, prev
            raise
        deleted = 0
        first = old
        while first and first < self._oldest:
            try:
                os.remove(self._seg(first))
                deleted += 1
            except OSError:
                pass
            first += R.SEGMENT_RECORDS
        # strays below the old oldest, left by a cut during an earlier ack (which deletes
        # from the bottom up, so they sit right below it)
        first = old - R.SEGMENT_RECORDS if old else 0
        while first > 0 and self._size(self._seg(first)) is not None:
            os.remove(self._seg(first))
            first -= R.SEGMENT_RECORDS
        # group directories left empty, newest first until one is gone already
        if old:
            group = (self._oldest - 1) // _GROUP_RECORDS * _GROUP_RECORDS + 1
            while group > _GROUP_RECORDS:
                group -= _GROUP_RECORDS
                try:
                    os.rmdir(self._group(group))
                except OSError:
                    break
        return deleted

    # ---- reading back
    def sealed(self, after=0):
        """Yield (seq, record) for stored records after `after`, oldest first; the record is
        a 128-byte buffer reused between items (copy it to keep it). Each segment is read
        through one open file: call close() on the generator when stopping early, so that it
        is closed at once rather than when the garbage collector finds it."""
        rec = self._scratch
        first = self._oldest
        while first and first <= self._newest:
            if first + _LAST > after:
                skip = max(0, after + 1 - first)
                try:
                    f = open(self._seg(first), "rb")
                except OSError:
                    f = None  # the caller sees the gap in the sequence numbers
                if f is not None:
                    try:
                        f.seek(R.SEGMENT_HEADER_SIZE + skip * R.RECORD_SIZE)
                        for pos in range(skip, R.SEGMENT_RECORDS):
                            if f.readinto(rec) != R.RECORD_SIZE:
                                break
                            yield first + pos, rec
                    finally:
                        f.close()
            first += R.SEGMENT_RECORDS
        start = self._newest + R.SEGMENT_RECORDS if self._newest else 1
        for seq in range(max(start, after + 1), self._next):
            if self._read_at(self._stage_fmt % (seq - start), 0, rec):
                yield seq, rec

    def records(self, after=0):
        """Yield every stored record after `after` as a dict, oldest first; "ok" says
        whether it verified (authentic and in its place in the chain). A record that does not
        verify yields only its seq. Do not append while iterating."""
        prev = bytearray(R.TAG_SIZE)
        body = bytearray(R.BODY_SIZE)
        have_prev = False
        for seq, rec in self.sealed(max(0, after - 1)):
            if seq <= after:  # the record before the first one asked for: its tag only
                prev[:] = memoryview(rec)[_TAG:]
                have_prev = True
                continue
            if not have_prev:
                if seq == 1:
                    have_prev = True  # the chain starts at 16 zero bytes
                elif (seq - 1) % R.SEGMENT_RECORDS == 0:
                    have_prev = self._read_at(self._seg(seq), 16, prev)  # segment's anchor
            ok = have_prev and seq_of(rec) == seq and self._sealer.check(rec, prev)
            prev[:] = memoryview(rec)[_TAG:]
            have_prev = True
            if ok:
                self._sealer.open_into(rec, body)
                d = unpack(seq, body)
                d["ok"] = True
            else:  # not authentic: its content means nothing
                d = {"seq": seq, "type": None, "ok": False}
            yield d
