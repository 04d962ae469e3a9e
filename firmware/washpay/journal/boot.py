# Boot recovery of the journal (journal/__init__.py's storage): where the chain ends, read
# back with a bounded number of reads whatever the size of the journal. The head file names
# the oldest and newest segments; the newest segment's last record that verifies and the
# staged records after it give the next sequence number, the chain's tag and the last
# record. Run once, by Journal(), and dropped after (washpay.forget): its code is not kept
# with the journal's.
import os
import struct

from washpay.journal import records as R
from washpay.journal.seal import seq_of

_LAST = R.SEGMENT_RECORDS - 1  # a segment's last record; as many are staged before it
_STAGE_SLOTS = _LAST
_TAG = R.RECORD_SIZE - R.TAG_SIZE  # offset of the tag in a record


def recover(j):
    """Read the journal `j` back from flash: its counters, chain tag and last record."""
    if not _read_head(j):
        _scan_segments(j)  # no head yet (new journal) or lost: the one slow path
    # segments closed after the head was last written: normally none, at most one
    while True:
        first = j._newest + R.SEGMENT_RECORDS if j._newest else 1
        path = j._seg(first)
        size = j._size(path)
        if size is None:
            break
        if size != R.SEGMENT_SIZE or not _segment_header_ok(j, path, first):
            # its write was cut off: the stage still holds its records
            os.remove(path)
            j.discarded += 1
            break
        j._newest = first
        if not j._oldest:
            j._oldest = first
    if j._newest and (j._size(j._seg(j._oldest)) is None
                      or j._size(j._seg(j._newest)) is None):
        _scan_segments(j)  # the head names a missing segment
    j._next = 1
    j._prev_tag[:] = bytes(R.TAG_SIZE)
    if j._newest:
        _recover_segment(j, j._newest)
    j._anchor[:] = j._prev_tag
    _recover_stage(j)
    last = j.last()
    if last is not None:
        j.boot = last["boot"] + 1


def _read_head(j):
    h = memoryview(j._scratch)[: R.HEAD_SIZE]
    if not j._read_at(j.root + "/head", 0, h) or bytes(h[0:4]) != R.HEAD_MAGIC:
        return False
    j._oldest, j._newest, j.synced_seq, limit = struct.unpack_from(">IIII", h, 4)
    j._limit = limit or None
    return True


def _scan_segments(j):
    firsts = []
    for group in os.listdir(j.root + "/seg"):
        for name in os.listdir("%s/seg/%s" % (j.root, group)):
            if name.endswith(".seg") and len(name) == 12:
                try:
                    firsts.append(int(name[:8], 16))
                except ValueError:
                    pass
    firsts.sort()
    j._oldest = firsts[0] if firsts else 0
    j._newest = firsts[-1] if firsts else 0
    # a cut during an ack may have left a segment file with no head above it
    if j._newest and j._size(j._seg(j._newest)) != R.SEGMENT_SIZE:
        os.remove(j._seg(j._newest))
        firsts.pop()
        j._newest = firsts[-1] if firsts else 0
        j._oldest = firsts[0] if firsts else 0
    # segments are deleted only once the server has acknowledged them: whatever came before
    # the oldest one left was acknowledged (a lost head must not put the cursor at 0)
    if j._oldest > 1:
        j.synced_seq = j._oldest - 1


def _segment_header_ok(j, path, first):
    h = j._hdr
    if not j._read_at(path, 0, h):
        return False
    return bytes(h[0:4]) == R.SEGMENT_MAGIC and struct.unpack_from(">I", h, 8)[0] == first


def _recover_segment(j, first):
    """Take the newest completed segment's last record as the chain's end."""
    path = j._seg(first)
    rec = j._scratch
    prev = j._rec  # free at boot: holds the record before the one being checked
    j._next = first + R.SEGMENT_RECORDS
    if j._read_at(path, R.SEGMENT_HEADER_SIZE + _LAST * R.RECORD_SIZE, rec):
        j._prev_tag[:] = memoryview(rec)[_TAG:]  # the stage chains from this tag
    # Normally the last record verifies at once; if the flash corrupted it, walk back
    # through this one segment (31 records at most) for the newest that verifies.
    for pos in range(_LAST, -1, -1):
        if not j._read_at(path, R.SEGMENT_HEADER_SIZE + pos * R.RECORD_SIZE, rec):
            j.damaged += 1
            continue
        if pos:
            ok = j._read_at(path, R.SEGMENT_HEADER_SIZE + (pos - 1) * R.RECORD_SIZE, prev)
            prev_tag = memoryview(prev)[_TAG:]
        else:
            ok = j._read_at(path, 0, j._hdr)
            prev_tag = memoryview(j._hdr)[16:32]
        if ok and seq_of(rec) == first + pos and j._sealer.check(rec, prev_tag):
            _accept(j, rec, first + pos)
            return
        j.damaged += 1


def _recover_stage(j):
    rec = j._scratch
    expected = j._next
    for i in range(_STAGE_SLOTS):
        if not j._read_at(j._stage_fmt % i, 0, rec) or seq_of(rec) != expected + i:
            break  # an older segment's record, or never written: the chain ends here
        if j._sealer.check(rec, j._prev_tag):
            _accept(j, rec, expected + i)
        else:
            j.damaged += 1  # kept counting: its sequence number is never reused
        j._prev_tag[:] = memoryview(rec)[_TAG:]
        j._next = expected + i + 1


def _accept(j, rec, seq):
    j._sealer.open_into(rec, j._body)
    j._last_ok = seq
