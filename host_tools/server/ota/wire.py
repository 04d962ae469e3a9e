"""The update protocol's messages, the server's side (docs/ota.md, "The protocol").

    wp/ID/cmd   server -> board   the offer: a signed command, action 9 (commands.py)
    wp/ID/fwq   board -> server   a chunk request (binary, 20 bytes), QoS 0
    wp/ID/fwd   server -> board   a chunk (binary, 20-byte header + data), QoS 0
    wp/ID/fws   board -> server   a status report (JSON), QoS 1

The board's firmware/washpay/ota/ is an independent implementation of the same page.
"""

import hashlib
import json
import struct

REQUESTS = "fwq"  # board -> server
CHUNKS = "fwd"  # server -> board
REPORTS = "fws"  # board -> server

VERSION = 1
MANIFEST_FILE = 0xFFFF  # the file index that asks for manifest.json
MAX_CHUNK = 960  # the longest chunk a board asks for (its receive buffer holds 1024)
REQUEST = struct.Struct(">BBHIHH8s")  # version, reserved, file, offset, length, reserved, id
CHUNK = struct.Struct(">BBHIHH8s")  # version, status, file, offset, length, reserved, id
DATA, UNKNOWN_RELEASE, BAD_RANGE = 0, 1, 2
MAX_REPORT = 1024  # a status report longer than this is refused unread
# a board's reported states (docs/ota.md, "Status report")
STATES = ("offered", "downloading", "staged", "switched", "healthy", "rolled_back",
          "refused")


class OtaWireError(ValueError):
    """A message that does not follow docs/ota.md; the text says what is wrong."""


def release_id(manifest):
    """The release id: the first 8 bytes of SHA-256 of manifest.json's bytes."""
    return hashlib.sha256(manifest).digest()[:8]


def parse_request(payload):
    """(file index, offset, length, release id) of a chunk request."""
    if len(payload) != REQUEST.size:
        raise OtaWireError(f"chunk request of {len(payload)} bytes (a request is "
                           f"{REQUEST.size})")
    version, _, index, offset, length, _, rid = REQUEST.unpack(bytes(payload))
    if version != VERSION:
        raise OtaWireError(f"chunk request version {version}, this server reads {VERSION}")
    return index, offset, length, rid


def build_request(index, offset, length, rid):
    """A chunk request as a board sends it (the tests' and the bench's boards)."""
    return REQUEST.pack(VERSION, 0, index, offset, length, 0, rid)


def build_chunk(status, index, offset, rid, data=b""):
    return CHUNK.pack(VERSION, status, index, offset, len(data), 0, rid) + data


def parse_chunk(payload):
    """(status, file index, offset, release id, data) of a chunk."""
    if len(payload) < CHUNK.size:
        raise OtaWireError(f"chunk of {len(payload)} bytes is shorter than its header")
    version, status, index, offset, n, _, rid = CHUNK.unpack_from(payload)
    data = bytes(payload[CHUNK.size:])
    if version != VERSION or len(data) != n:
        raise OtaWireError(f"chunk version {version}, {len(data)} bytes for length {n}")
    return status, index, offset, rid, data


def parse_report(payload):
    """{id (8 bytes or None), version, state, pct, reason} of a status report."""
    if len(payload) > MAX_REPORT:
        raise OtaWireError(f"status report of {len(payload)} bytes (at most {MAX_REPORT})")
    try:
        doc = json.loads(bytes(payload))
    except (ValueError, UnicodeDecodeError):
        raise OtaWireError(f"status report is not JSON: {bytes(payload[:40])!r}") from None
    if not isinstance(doc, dict):
        raise OtaWireError("status report is not a JSON object")
    state = doc.get("state")
    if state not in STATES:
        raise OtaWireError(f"status report: unknown state {state!r} (one of "
                           f"{', '.join(STATES)})")
    rid = doc.get("id")
    try:
        rid = bytes.fromhex(rid) if rid is not None else None
    except (TypeError, ValueError):
        rid = b""
    if rid is not None and len(rid) != 8:
        raise OtaWireError(f"status report: id {doc.get('id')!r} is not a release id (16 "
                           f"hex digits)")
    version = doc.get("version")
    if rid is None and not isinstance(version, str):
        raise OtaWireError("status report names neither its release id nor its version")
    pct = doc.get("pct")
    if pct is not None and (type(pct) is not int or not 0 <= pct <= 100):
        raise OtaWireError(f"status report: pct {pct!r} is not 0 to 100")
    reason = doc.get("reason")
    return {"id": rid, "version": version if isinstance(version, str) else None,
            "state": state, "pct": pct,
            "reason": None if reason is None else str(reason)[:200]}
