"""Staging a release into the slot that is not running (docs/ota.md): which bytes to ask
for next, writing a chunk that came, checking each file as it completes. It knows nothing
of MQTT: update.py carries the requests and chunks; tests drive it directly.

Everything it needs to resume is on the flash: the pointer's `stage` names the release and
the slot, and the bytes already staged are the files' sizes there. A power cut loses at
most the chunk being written.
"""

import os
import struct
from binascii import hexlify
from hashlib import sha256

from micropython import const

from washpay.ota.release import Refused, check_file, check_manifest

MANIFEST = const(0xFFFF)  # the file index that names manifest.json
CHUNK_MAX = const(960)  # the most a request asks for: 20 + 960 bytes fit the receive buffer
_REQUEST = ">BBHIHH8s"  # version, 0, file, offset, length, 0, release id: 20 bytes
CHUNK_HEAD = const(20)
_VERSION = const(1)
_BLOCK = const(4096)


def request(rid, index, offset, length):
    return struct.pack(_REQUEST, _VERSION, 0, index, offset, length, 0, rid)


def chunk_header(payload):
    """(status, file, offset, n, release id) of a chunk; None if it is not one."""
    if len(payload) < CHUNK_HEAD or payload[0] != _VERSION:
        return None
    _, status, index, offset, n, _, rid = struct.unpack_from(_REQUEST, payload, 0)
    return status, index, offset, n, bytes(rid)


def wipe(path):
    """Delete a directory tree (a slot), or a file; nothing if it is not there."""
    try:
        names = [e[0] for e in os.ilistdir(path)]
    except OSError:
        try:
            os.remove(path)
        except OSError:
            pass
        return
    for name in names:
        wipe(path + "/" + name)
    os.rmdir(path)


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def _makedirs(path):
    part = ""
    for name in path.split("/")[1:-1]:
        part += "/" + name
        try:
            os.mkdir(part)
        except OSError:
            pass  # there already


class Stage:
    def __init__(self, root, stage, checks):
        """stage: the pointer's `stage` ({"slot", "id", "sig", "size", "version"}); checks:
        check_manifest's board facts {"public_key", "running", "board_id",
        "journal_format", "mpy", "now"} (now: a function)."""
        self.dir = root + "/slot_" + stage["slot"]
        self.digest = bytes.fromhex(stage["id"])
        self.rid = self.digest[:8]
        self.sig = bytes.fromhex(stage["sig"])
        self.size = stage["size"]
        self.version = stage["version"]
        self.checks = checks
        self.files = None  # [(path, size, sha256 hex)] once the manifest checked out
        self.total = self.size  # the manifest and every file, once known
        self.staged = 0
        self.index = MANIFEST
        self.have = 0
        self._f = None  # the file being written
        try:
            os.mkdir(self.dir)
        except OSError:
            pass
        with open(self.dir + "/manifest.sig", "w") as f:  # check_release reads it there
            f.write(hexlify(self.sig).decode())
        self._resume()

    def name(self):
        return "manifest.json" if self.index == MANIFEST else self.files[self.index][0]

    def _path(self, index):
        if index == MANIFEST:
            return self.dir + "/manifest.json"
        return self.dir + "/files" + self.files[index][0]

    def _resume(self):
        # what reached the flash before a lost link or a power cut: keep it, ask for the rest
        n = _size(self._path(MANIFEST))
        if n > self.size:
            wipe(self._path(MANIFEST))
            n = 0
        if n == self.size:
            self._manifest_done()
        else:
            self.index, self.have, self.staged = MANIFEST, n, n

    def _manifest_done(self):
        path = self._path(MANIFEST)
        with open(path, "rb") as f:
            data = f.read()
        if sha256(data).digest() != self.digest:
            wipe(path)
            raise Refused("manifest differs from the offer")
        c = self.checks
        doc = check_manifest(data, self.sig, c["public_key"], c["running"], c["board_id"],
                             c["journal_format"], c["mpy"], c["now"]())
        del data
        if doc["version"] != self.version:
            raise Refused("manifest is %s, the offer said %s" % (doc["version"], self.version))
        self.files = [(e["path"], e["size"], e["sha256"]) for e in doc["files"]]
        del doc
        self.total = self.size + sum(f[1] for f in self.files)
        self.staged = self.size
        self.index = 0
        self._seek()

    def _seek(self):
        # the first file not yet whole; a file longer than listed is staged again
        files = self.files
        while self.index < len(files):
            path = self._path(self.index)
            n = _size(path)
            want = files[self.index][1]
            if n > want:
                wipe(path)
                n = 0
            if n < want:
                self.have = n
                self.staged += n
                return
            self.staged += n
            self.index += 1
        self.have = 0

    def next(self):
        """(file, offset, length) to ask for next; None when every byte is staged."""
        if self.files is not None and self.index >= len(self.files):
            return None
        size = self.size if self.index == MANIFEST else self.files[self.index][1]
        return self.index, self.have, min(CHUNK_MAX, size - self.have)

    def accept(self, index, offset, data):
        """Write the chunk asked for by next() (from the MQTT handler: quick, no checks);
        True when it completes its file: then check() before asking for more. The file
        stays open and is committed at every 4 KiB (a flash block) and at its end: a power
        cut loses at most the bytes since, which are asked for again."""
        path = self._path(index)
        f = self._f
        if f is None:
            if not self.have:
                _makedirs(path)
            elif _size(path) != offset:  # a chunk written already: resync from the flash
                self.have = _size(path)
                return False
            f = self._f = open(path, "ab")
        f.write(data)
        n = len(data)
        self.have += n
        self.staged += n
        size = self.size if index == MANIFEST else self.files[index][1]
        if self.have == size:
            self.close()
            return True
        if self.have % _BLOCK < n:
            f.flush()
        return False

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None

    def check(self):
        """Check the file the last chunk completed (the manifest: its digest, signature and
        rules; a file: its size and SHA-256), then move on to the next one."""
        import gc

        gc.collect()  # the signature check needs its working room at once
        if self.index == MANIFEST:
            self._manifest_done()
            return
        path_, size, digest = self.files[self.index]
        check_file({"path": path_, "size": size, "sha256": digest}, self._path(self.index))
        self.index += 1
        self.have = 0
        self._seek()

    def finish(self):
        """Every file once more against the manifest (those staged before a power cut were
        not checked since); returns the version."""
        self.close()
        buf = bytearray(512)
        for i, (path, size, digest) in enumerate(self.files):
            check_file({"path": path, "size": size, "sha256": digest}, self._path(i), buf)
        return self.version
