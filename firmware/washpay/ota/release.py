"""The board's check of a signed release (docs/release-format.md): the signature of the
release key over the manifest, then every rule the manifest must meet on this board, then
every file's size and SHA-256. Each refusal raises `Refused` with one line that says why.

A release directory holds manifest.json (the signed bytes), manifest.sig (the Ed25519
signature, hex) and files/<board path> for every file of the release.
"""

import json
from hashlib import sha256

from micropython import const

FORMAT = "washpay-release/1"
_CONTEXT = b"washpay/v1/release"  # prefixed to the manifest digest: the signed message
_MAX_MANIFEST = const(16384)  # a release of washpay has ~80 files: ~10 KiB of manifest
_CHUNK = const(512)


class Refused(Exception):
    """A release this board must not install; str() is the reason, for the journal."""


def signed_message(manifest_digest):
    """What the release key signs: the context and SHA-256 of manifest.json's bytes."""
    return _CONTEXT + manifest_digest


def version_tuple(text):
    """(1, 2, 3) from "1.2.3": three whole numbers, the only version form of a release."""
    parts = text.split(".") if isinstance(text, str) else ()
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise Refused("version %r is not MAJOR.MINOR.PATCH" % (text,))
    return tuple(int(p) for p in parts)


def path_ok(path):
    """True for a file an update may write: /main.py or under /washpay/; never the journal,
    config, secrets or board description (they survive every update)."""
    if not isinstance(path, str) or not (path == "/main.py" or path.startswith("/washpay/")):
        return False
    for part in path[1:].split("/"):
        if not part or part[0] == ".":  # no empty, ".", ".." or hidden component
            return False
    return all(c.isalpha() or c.isdigit() or c in "/._-" for c in path)


def _field(doc, name, kind):
    v = doc.get(name)
    if type(v) is not kind:  # noqa: E721 (bool is not an int here)
        raise Refused("manifest field %s is missing or not a %s" % (name, kind.__name__))
    return v


def check_manifest(manifest, signature, public_key, running, board_id, journal_format, mpy,
                   now):
    """The manifest dict if the release may replace `running` on this board, else Refused.

    manifest: manifest.json's bytes; signature: 64 bytes; public_key: the release key (32
    bytes); running: the running firmware's version text; board_id: /board.json's id;
    journal_format: the record version of the board's journal; mpy: the .mpy major version
    the board loads; now: Unix time in seconds, None if the clock is not set."""
    if len(manifest) > _MAX_MANIFEST:
        raise Refused("manifest too large (%d bytes, at most %d)" % (len(manifest),
                                                                       _MAX_MANIFEST))
    from washpay.ota.ed25519 import verify

    if not verify(public_key, signed_message(sha256(manifest).digest()), signature):
        raise Refused("bad signature: not signed by this board's release key")
    try:
        doc = json.loads(manifest)
    except ValueError:
        raise Refused("manifest is not JSON")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise Refused("manifest is not %s" % FORMAT)
    version = _field(doc, "version", str)
    new = version_tuple(version)
    boards = _field(doc, "boards", list)
    if board_id not in boards:
        raise Refused("release %s is for boards %s, not %s" % (version, ", ".join(
            str(b) for b in boards), board_id))
    built = _field(doc, "mpy", int)
    if built != mpy:
        raise Refused("release %s is compiled for .mpy v%d; this board loads v%d" % (
            version, built, mpy))
    formats = _field(doc, "journal_formats", list)
    if journal_format not in formats:
        raise Refused("release %s reads journal formats %s, not this board's format %d" % (
            version, ", ".join(str(f) for f in formats), journal_format))
    have = version_tuple(running)
    least = _field(doc, "min_version", str)
    if have < version_tuple(least):
        raise Refused("release %s updates from %s or later; this board runs %s" % (
            version, least, running))
    if new <= have and not _field(doc, "downgrade", bool):
        raise Refused("release %s is not newer than the running %s (and not a signed "
                      "downgrade)" % (version, running))
    expires = _field(doc, "expires", int)
    if now is None:
        raise Refused("clock not set: cannot check the release's expiry")
    if now >= expires:
        raise Refused("release %s expired (at %d, now %d)" % (version, expires, int(now)))
    for f in _field(doc, "files", list):
        if not (isinstance(f, dict) and path_ok(f.get("path"))):
            raise Refused("manifest lists a file the update may not write: %r" % (
                f.get("path") if isinstance(f, dict) else f,))
        try:
            ok = type(f["size"]) is int and len(bytes.fromhex(f["sha256"])) == 32
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise Refused("manifest entry of %s has no size or SHA-256" % f["path"])
    return doc


def check_file(entry, path, buf=None):
    """Refused unless the file at `path` has the size and SHA-256 `entry` lists."""
    h = sha256()
    n = 0
    buf = buf or bytearray(_CHUNK)
    mv = memoryview(buf)
    try:
        with open(path, "rb") as f:
            while True:
                got = f.readinto(buf)
                if not got:
                    break
                h.update(mv[:got])
                n += got
    except OSError:
        raise Refused("file %s is missing" % entry["path"])
    if n != entry["size"]:
        raise Refused("file %s has %d bytes, the manifest says %d" % (entry["path"], n,
                                                                      entry["size"]))
    if h.digest() != bytes.fromhex(entry["sha256"]):
        raise Refused("file %s: SHA-256 differs from the manifest" % entry["path"])


def read_public_key(path):
    """The release public key in a release.pub file ("ed25519 <64 hex digits>")."""
    try:
        with open(path) as f:
            words = f.read().split()
        key = bytes.fromhex(words[1]) if len(words) == 2 and words[0] == "ed25519" else b""
    except (OSError, ValueError):
        key = b""
    if len(key) != 32:
        raise Refused("no release public key in %s: provision the board with one" % path)
    return key


def read_signature(path):
    try:
        with open(path) as f:
            text = f.read().strip()
        sig = bytes.fromhex(text)
    except (OSError, ValueError):
        raise Refused("manifest.sig missing or not hex")
    if len(sig) != 64:
        raise Refused("manifest.sig is not 64 bytes")
    return sig


def check_release(root, public_key, running, board_id, journal_format, mpy, now):
    """Check the release directory `root` whole: manifest, signature, every file. Returns
    the manifest dict; raises Refused."""
    try:
        with open(root + "/manifest.json", "rb") as f:
            manifest = f.read(_MAX_MANIFEST + 1)
    except OSError:
        raise Refused("manifest.json missing")
    doc = check_manifest(manifest, read_signature(root + "/manifest.sig"), public_key, running,
                         board_id, journal_format, mpy, now)
    del manifest
    buf = bytearray(_CHUNK)
    for entry in doc["files"]:
        check_file(entry, root + "/files" + entry["path"], buf)
    return doc
