"""The sync protocol's topics and messages, from docs/sync.md (the server's side).

The firmware's washpay/net/ is an independent implementation of the same page; tests pin
the two together with shared vectors.
"""

import hmac
import struct
from dataclasses import dataclass
from hashlib import sha256

from host_tools import keys as K

VERSION = 1
RECORD_SIZE = 128
BATCH_HEADER = struct.Struct(">BBHI")  # version, count, reserved, device's newest seq
ACK = struct.Struct(">BBHI")  # version, reserved, reserved, acknowledged seq
ACK_SIZE = ACK.size + 16
MAX_BATCH = 255
ACK_KEY_INFO = b"sync-ack"
ACK_LABEL = b"washpay/v1/ack"

TOPIC_ROOT = "wp"
JOURNAL = "j"  # board -> server: a batch of sealed records
ACKS = "ack"  # server -> board: highest contiguous sequence stored (retained)
COMMANDS = "cmd"  # server -> board: a signed command
RESULTS = "res"  # board -> server: a command's outcome, status replies
STATE = "state"  # board -> server: "online" / "offline" (the will), retained


class WireError(ValueError):
    """A message that does not follow docs/sync.md; the text says what is wrong."""


def topic(device, kind):
    return f"{TOPIC_ROOT}/{device}/{kind}"


def parse_topic(t):
    """(device, kind) of a wp/<device>/<kind> topic, or raise WireError."""
    parts = t.split("/")
    if len(parts) != 3 or parts[0] != TOPIC_ROOT or not parts[1]:
        raise WireError(f"topic {t!r} is not wp/<device>/<kind>")
    return parts[1], parts[2]


@dataclass
class Batch:
    device_last_seq: int
    records: list  # raw 128-byte records, in the order sent

    @property
    def seqs(self):
        return [struct.unpack_from(">I", r, 4)[0] for r in self.records]


def parse_batch(payload):
    if len(payload) < BATCH_HEADER.size:
        raise WireError(f"batch of {len(payload)} bytes is shorter than its header")
    version, count, _, last_seq = BATCH_HEADER.unpack_from(payload)
    if version != VERSION:
        raise WireError(f"batch format version {version}, this server reads {VERSION}")
    body = len(payload) - BATCH_HEADER.size
    if body != count * RECORD_SIZE:
        raise WireError(f"batch says {count} records but carries {body} bytes "
                        f"({count * RECORD_SIZE} expected)")
    recs = [bytes(payload[BATCH_HEADER.size + i * RECORD_SIZE:
                          BATCH_HEADER.size + (i + 1) * RECORD_SIZE]) for i in range(count)]
    return Batch(last_seq, recs)


def build_batch(records, device_last_seq):
    """A batch as a board sends it (used by tests and the benchmark's simulated boards)."""
    if len(records) > MAX_BATCH:
        raise WireError(f"at most {MAX_BATCH} records per batch")
    return BATCH_HEADER.pack(VERSION, len(records), 0, device_last_seq) + b"".join(records)


def ack_key(site_key, device_id):
    return K.derive(K.device_secret(site_key, device_id), ACK_KEY_INFO)


def _ack_tag(key, device_id, head):
    return hmac.new(key, ACK_LABEL + device_id.encode() + head, sha256).digest()[:16]


def build_ack(key, device_id, seq):
    """The server's acknowledgement: every record up to `seq` is stored and verified."""
    head = ACK.pack(VERSION, 0, 0, seq)
    return head + _ack_tag(key, device_id, head)


def parse_ack(key, device_id, payload):
    if len(payload) != ACK_SIZE:
        raise WireError(f"an ack is {ACK_SIZE} bytes, not {len(payload)}")
    head = bytes(payload[: ACK.size])
    if not hmac.compare_digest(_ack_tag(key, device_id, head), bytes(payload[ACK.size:])):
        raise WireError("ack tag does not verify")
    return ACK.unpack(head)[3]
