"""The update protocol's messages, the server's side (docs/ota.md).

Topics, all QoS 1, under the board's own `wp/ID/` (docs/sync.md):

    wp/ID/ota   server -> board   an offer (JSON), a chunk (binary), a refusal (JSON)
    wp/ID/otq   board -> server   a chunk request (JSON)
    wp/ID/ots   board -> server   a state report (JSON)

The board's firmware is an independent implementation of the same page. Parsing is
tolerant where the page leaves room (a report may name its rollout or only its version),
strict where a mistake would serve the wrong bytes.
"""

import json
import struct

OFFERS = "ota"  # server -> board
REQUESTS = "otq"  # board -> server
REPORTS = "ots"  # board -> server

MAX_CHUNK = 4096  # bytes of file data in one reply (a board asks for what fits its buffer)
MAX_MESSAGE = 1024  # a request or report longer than this is refused unread
CHUNK = b"C"
CHUNK_HEAD = struct.Struct(">IIIB")  # rollout, offset, file size, path length
# what a board reports -> the server's state name (docs/ota.md, "States")
REPORTED = {"offered": "offered", "downloading": "downloading", "staged": "staged",
            "switched": "switched", "healthy": "healthy", "done": "healthy",
            "rolled_back": "rolled_back", "rollback": "rolled_back", "refused": "refused"}


class OtaWireError(ValueError):
    """A message that does not follow docs/ota.md; the text says what is wrong."""


def build_offer(rollout, version, manifest_sha256, size, files):
    return json.dumps({"type": "offer", "rollout": rollout, "version": version,
                       "manifest": manifest_sha256, "size": size, "files": files,
                       "chunk": MAX_CHUNK}, separators=(",", ":")).encode()


def build_chunk(rollout, path, offset, total, data):
    p = path.encode()
    return CHUNK + CHUNK_HEAD.pack(rollout, offset, total, len(p)) + p + data


def parse_chunk(payload):
    """(rollout, path, offset, total, data) of a chunk reply (the tests' and the bench's
    boards read them)."""
    if payload[:1] != CHUNK or len(payload) < 1 + CHUNK_HEAD.size:
        raise OtaWireError("not a chunk")
    rollout, offset, total, n = CHUNK_HEAD.unpack_from(payload, 1)
    start = 1 + CHUNK_HEAD.size
    return (rollout, bytes(payload[start:start + n]).decode(), offset, total,
            bytes(payload[start + n:]))


def build_refusal(rollout, path, offset, error):
    return json.dumps({"type": "error", "rollout": rollout, "path": path, "offset": offset,
                       "error": error}, separators=(",", ":")).encode()


def _json(payload, what):
    if len(payload) > MAX_MESSAGE:
        raise OtaWireError(f"{what} of {len(payload)} bytes (at most {MAX_MESSAGE})")
    try:
        doc = json.loads(bytes(payload))
    except (ValueError, UnicodeDecodeError):
        raise OtaWireError(f"{what} is not JSON: {bytes(payload[:40])!r}") from None
    if not isinstance(doc, dict):
        raise OtaWireError(f"{what} is not a JSON object")
    return doc


def _int(doc, key, what, default=None):
    v = doc.get(key, default)
    if v is None and default is None and key not in doc:
        return None
    if type(v) is not int or v < 0:
        raise OtaWireError(f"{what}: {key} must be a whole number >= 0, not {v!r}")
    return v


def parse_request(payload):
    """{rollout, version, path, offset, length} of a chunk request."""
    doc = _json(payload, "chunk request")
    path = doc.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise OtaWireError(f"chunk request: path must be a file path like /washpay/app.mpy, "
                           f"not {path!r}")
    req = {"rollout": _int(doc, "rollout", "chunk request"),
           "version": doc.get("version") if isinstance(doc.get("version"), str) else None,
           "path": path,
           "offset": _int(doc, "offset", "chunk request", 0),
           "length": _int(doc, "length", "chunk request", MAX_CHUNK)}
    if req["rollout"] is None and req["version"] is None:
        raise OtaWireError("chunk request names neither its rollout nor its version")
    return req


def parse_report(payload):
    """{rollout, version, state, progress, reason} of a state report; progress is a
    percentage (from `progress`, or `have`/`total` bytes)."""
    doc = _json(payload, "state report")
    state = REPORTED.get(doc.get("state"))
    if state is None:
        raise OtaWireError(f"state report: unknown state {doc.get('state')!r} (one of "
                           f"{', '.join(sorted(REPORTED))})")
    rep = {"rollout": _int(doc, "rollout", "state report"),
           "version": doc.get("version") if isinstance(doc.get("version"), str) else None,
           "state": state, "progress": None, "reason": None}
    if rep["rollout"] is None and rep["version"] is None:
        raise OtaWireError("state report names neither its rollout nor its version")
    if "progress" in doc:
        rep["progress"] = min(100, _int(doc, "progress", "state report"))
    elif "have" in doc and "total" in doc:
        have, total = _int(doc, "have", "state report"), _int(doc, "total", "state report")
        rep["progress"] = min(100, have * 100 // total) if total else 0
    reason = doc.get("reason")
    if reason is not None:
        rep["reason"] = str(reason)[:200]
    return rep
