# Reading the journal backwards from its newest record, each record verified: what boot
# looks back at (payments/card.py rebuilds the card risk counters from it). Apart from
# journal/__init__.py so that a board compiling its sources at boot does not pay for it
# there: only the card reader's boot step imports it.
from washpay.journal import records as R
from washpay.journal.seal import seq_of, unpack

_TAG = R.HEADER_SIZE + R.BODY_SIZE  # offset of the tag in a record


def recent(j, limit):
    """Yield the newest stored records as dicts, newest first: at most `limit` of them,
    fewer when the journal holds fewer (acknowledged segments are deleted). What boot
    reads to look back at the last events (payments/card.py: the card risk counters).

    Each record is checked against the tag of the record before it, or against its
    segment's anchor when it is a segment's first, before it is decrypted; one that does
    not verify is skipped (it still counts toward `limit`). Two records and one body
    are held at a time, and each record is read once (plus the one before the last).
    A segment is read through one open file: close() the generator when stopping early.
    Do not append while iterating."""
    open_first = j._newest + R.SEGMENT_RECORDS if j._newest else 1
    low = max(j._oldest or open_first, j._next - limit, 1)
    cur = bytearray(R.RECORD_SIZE)
    prev = bytearray(R.RECORD_SIZE)
    body = bytearray(R.BODY_SIZE)
    anchor = bytearray(R.TAG_SIZE)
    seg = [0, None]  # first seq and open file of the segment being read

    def load(seq, buf, offset=-1):
        # record `seq` into buf, from its stage file or its segment; offset >= 0 reads
        # that part of seq's segment file instead (its header's anchor)
        if seq >= open_first:
            return j._read_at(j._stage_fmt % (seq - open_first), 0, buf)
        first = seq - (seq - 1) % R.SEGMENT_RECORDS
        if seg[0] != first:
            if seg[1] is not None:
                seg[1].close()
            seg[0] = first
            try:
                seg[1] = open(j._seg(first), "rb")
            except OSError:
                seg[1] = None  # deleted meanwhile or never there: nothing to verify
        f = seg[1]
        if f is None:
            return False
        if offset < 0:
            offset = R.SEGMENT_HEADER_SIZE + (seq - first) * R.RECORD_SIZE
        f.seek(offset)
        return f.readinto(buf) == len(buf)

    seq = j._next - 1
    have = seq >= low and load(seq, cur)
    try:
        while seq >= low:
            pos = (seq - 1) % R.SEGMENT_RECORDS
            if seq == 1:
                anchor[:] = bytes(R.TAG_SIZE)  # the chain starts at 16 zero bytes
                ok = True
            elif pos == 0 and seq == open_first:
                anchor[:] = j._anchor
                ok = True
            elif pos == 0:
                ok = load(seq, anchor, 16)  # the segment header's anchor
            else:
                ok = load(seq - 1, prev)
                anchor[:] = memoryview(prev)[_TAG:]
            if have and ok and seq_of(cur) == seq and j._sealer.check(cur, anchor):
                j._sealer.open_into(cur, body)
                yield unpack(seq, body)
            if pos:  # the record before is read already: it is the next one to check
                cur, prev = prev, cur
                have = ok
            else:
                have = seq - 1 >= low and load(seq - 1, cur)
            seq -= 1
    finally:
        if seg[1] is not None:
            seg[1].close()
