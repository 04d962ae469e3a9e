# The transaction journal: the device's single source of truth for money.
#
# Interface (what the rest of the firmware relies on, and what the encrypted journal keeps):
#   seq = journal.append(rtype, **fields)   durable when it returns; only then act on it
#   journal.last()                          the newest record (a dict), or None
#   journal.count, journal.last_seq, journal.unsynced
#
# This is the provisional store of the foundation: one record per line in /journal/log,
# "<json> <crc32 hex>\n", appended and closed (LittleFS commits a file on close, so after a
# power cut the file holds the last committed state). Boot reads only the file's tail.
import json
import os
from binascii import crc32

from micropython import const

from washpay.journal.records import RECORD_TYPES

_TAIL = const(1024)


class JournalError(Exception):
    pass


class Journal:
    def __init__(self, root="/journal"):
        self.root = root
        self.path = root + "/log"
        try:
            os.mkdir(root)
        except OSError:
            pass
        self._last = None
        self.count = 0
        self.synced_seq = 0
        self._recover()

    @property
    def last_seq(self):
        return self._last["seq"] if self._last else 0

    @property
    def unsynced(self):
        return self.last_seq - self.synced_seq

    def last(self):
        return self._last

    def _recover(self):
        try:
            size = os.stat(self.path)[6]
        except OSError:
            return
        with open(self.path, "rb") as f:
            f.seek(max(0, size - _TAIL))
            tail = f.read()
        for line in reversed(tail.split(b"\n")):
            rec = _decode(line)
            if rec is not None:
                self._last = rec
                self.count = rec["seq"]  # the provisional log never deletes records
                return

    def append(self, rtype, **fields):
        if rtype not in RECORD_TYPES:
            raise JournalError("unknown record type %r" % rtype)
        rec = {"seq": self.last_seq + 1, "type": rtype}
        rec.update(fields)
        body = json.dumps(rec).encode()
        line = body + b" %08x\n" % (crc32(body) & 0xFFFFFFFF)
        with open(self.path, "ab") as f:
            f.write(line)
        self._last = rec
        self.count += 1
        return rec["seq"]

    def records(self):
        try:
            f = open(self.path, "rb")
        except OSError:
            return
        with f:
            for line in f:
                rec = _decode(line.rstrip(b"\n"))
                if rec is not None:
                    yield rec


def _decode(line):
    if len(line) < 10:
        return None
    body, _, crc = line.rpartition(b" ")
    try:
        if int(crc, 16) != crc32(body) & 0xFFFFFFFF:
            return None
        return json.loads(body)
    except ValueError:
        return None
