# The uploader: sends the journal's sealed records to the server in batches, exactly as
# stored (still encrypted and tagged), and moves the journal's sync cursor only when the
# server acknowledges them (docs/sync.md).
#
#   up = Uploader(journal, b"laundry-7", ack_key)
#   up.on_ack(payload)          # from the MQTT handler: a message on wp/<id>/ack
#   await up.session(client)    # while connected: fill the window, wait for acks, resend
#
# Rules that keep money safe:
# - the cursor moves only on an authenticated ack, and only to the server's highest
#   contiguous sequence number; nothing unacknowledged is ever deleted (Journal.ack deletes
#   only segments at or below the cursor);
# - every new connection starts again from the cursor: whatever was in flight when the last
#   one died is sent again, and the server drops the duplicates;
# - a batch not acknowledged in time is sent again with smaller batches; a link that keeps
#   up gets larger ones (up to max_batch), so a slow link makes fewer round trips;
# - each timeout in a row doubles the wait for the next (up to 8x ack_timeout_ms), and an
#   ack in good time or a new connection brings it back: a server working through a fleet's
#   backlog after an outage is not sent the same batches every 15 s (docs/fleet.md).
#
# Batches are built in one buffer: the uploader's own, made at construction, or with
# `borrow` the MQTT client's receive buffer (mqtt.py: MQTTClient(lend=batch_bytes(...))),
# taken for each batch and given back once it is published. The journal is read
# synchronously (Journal.sealed shares a read buffer with append), never across an await.
import asyncio
import struct
from time import ticks_diff, ticks_ms

from micropython import const

from washpay.crypto import MacKey, constant_time_eq
from washpay.net.mqtt import HEADROOM

_VERSION = const(1)
_HEADER = const(8)  # version, count, reserved u16, the board's newest seq u32
_RECORD = const(128)
_ACK_SIZE = const(24)
ACK_LABEL = b"washpay/v1/ack"


def batch_bytes(max_batch):
    """The buffer a batch of up to `max_batch` records is built in, with its headroom."""
    return HEADROOM + _HEADER + max(1, min(max_batch, 255)) * _RECORD


class Uploader:
    def __init__(self, journal, device_id, ack_key, max_batch=32, first_batch=8, window=2,
                 ack_timeout_ms=15000, log=None, borrow=False):
        self.journal = journal
        self.device_id = device_id
        self.topic = b"wp/" + device_id + b"/j"
        self._mac = MacKey(ack_key)
        self.max_batch = max(1, min(max_batch, 255))
        self.batch = max(1, min(first_batch, self.max_batch))
        self.window = max(1, window)
        self.ack_timeout_ms = ack_timeout_ms
        self.wait_ms = ack_timeout_ms  # grows with each timeout in a row
        self.log = log or (lambda *a: None)
        # the MQTT header is written into the headroom: a batch leaves in one write
        self._mv = None if borrow else memoryview(bytearray(batch_bytes(self.max_batch)))
        self._flight = []  # [last seq of batch, sent at (ticks)] oldest first
        self._event = asyncio.Event()
        self.acked = journal.synced_seq
        self.sent_seq = self.acked
        self.server_seq = 0  # the newest ack seen, even one this board could not apply
        self.batches = 0
        self.records_sent = 0
        self.resends = 0
        self.acks = 0
        self.bad_acks = 0
        self.last_error = None

    def status(self):
        j = self.journal
        return {
            "acked": self.acked,
            "sent": self.sent_seq,
            "backlog": j.last_seq - self.acked,
            "batch": self.batch,
            "batches": self.batches,
            "records_sent": self.records_sent,
            "resends": self.resends,
            "acks": self.acks,
            "bad_acks": self.bad_acks,
            "error": self.last_error,
        }

    # ---- acknowledgements (called from the MQTT reader: no awaiting here)
    def on_ack(self, payload):
        if len(payload) != _ACK_SIZE or payload[0] != _VERSION:
            self._refuse("ack of %d bytes, not a version-1 ack" % len(payload))
            return
        tag = self._mac.mac(ACK_LABEL, self.device_id, payload[:_HEADER])
        if not constant_time_eq(memoryview(tag)[:16], payload[_HEADER:]):
            self._refuse("ack tag does not verify: not from this site's server")
            return
        seq = struct.unpack_from(">I", payload, 4)[0]
        self.server_seq = seq
        j = self.journal
        if seq > j.last_seq:
            # the server holds more of this board than the board has: its journal was reset
            # or replaced. Delete nothing; the server reports the fork.
            self._refuse("server acknowledges %d, but the newest record is %d" % (seq, j.last_seq))
            return
        self.acks += 1
        if seq > self.acked:
            try:
                j.ack(seq)
            except Exception as e:  # noqa: BLE001 - flash trouble: keep the records, retry later
                self.last_error = "journal ack failed: %s" % e
                self.log("sync:", self.last_error)
                return
            self.acked = seq
            # a batch that made it in time earns a larger next one
            fl = self._flight
            if fl and fl[0][0] <= seq:
                if ticks_diff(ticks_ms(), fl[0][1]) < self.ack_timeout_ms // 2:
                    self.batch = min(self.max_batch, self.batch * 2)
                    self.wait_ms = self.ack_timeout_ms
            while fl and fl[0][0] <= seq:
                fl.pop(0)
        # the server may have had more than we sent on this link
        self.sent_seq = max(self.sent_seq, self.acked)
        self._event.set()

    def _refuse(self, why):
        self.bad_acks += 1
        self.last_error = why
        self.log("sync: ack refused:", why)

    # ---- sending
    def _fill(self, buf, after):
        """Copy up to `batch` records after `after` into `buf`; (count, last seq)."""
        n = 0
        last = after
        limit = self.batch
        pos = HEADROOM + _HEADER
        for seq, rec in self.journal.sealed(after):
            if seq != last + 1:
                # a record this board cannot read back: uploads stop before it (the server
                # reports the gap); nothing after it is skipped silently
                if not n:
                    self.last_error = "journal record %d unreadable: upload stops there" % (
                        last + 1)
                break
            buf[pos : pos + _RECORD] = rec
            pos += _RECORD
            last = seq
            n += 1
            if n >= limit:
                break
        if n:
            h = HEADROOM
            buf[h] = _VERSION
            buf[h + 1] = n
            buf[h + 2] = buf[h + 3] = 0
            struct.pack_into(">I", buf, h + 4, self.journal.last_seq)
        return n, last

    async def session(self, client):
        """Upload while `client` is connected; returns or raises when it is not."""
        j = self.journal
        self.acked = max(self.acked, j.synced_seq)
        self.sent_seq = self.acked  # resend whatever the last connection left in flight
        self.wait_ms = self.ack_timeout_ms  # a new link: what the old one taught may not hold
        fl = self._flight
        fl.clear()
        ev = self._event
        while True:
            ev.clear()  # before looking: an ack that lands while we publish wakes the wait
            while len(fl) < self.window and j.last_seq > self.sent_seq:
                mv = self._mv or await client.borrow()
                try:
                    n, last = self._fill(mv, self.sent_seq)
                    if n:
                        await client.publish(self.topic, mv[: HEADROOM + _HEADER + n * _RECORD],
                                             qos=1, wait=False, headroom=HEADROOM)
                finally:
                    if mv is not self._mv:
                        client.give_back()
                if not n:
                    break
                fl.append([last, ticks_ms()])
                self.sent_seq = last
                self.batches += 1
                self.records_sent += n
            if fl and ticks_diff(ticks_ms(), fl[0][1]) > self.wait_ms:
                # no ack in time: the server or its link is slow or gone; start over from
                # the cursor with smaller batches (duplicates are harmless), and wait longer
                self.resends += 1
                self.batch = max(1, self.batch // 2)
                self.last_error = "no ack for records up to %d within %d ms" % (
                    fl[0][0], self.wait_ms)
                self.wait_ms = min(self.wait_ms * 2, self.ack_timeout_ms * 8)
                self.log("sync:", self.last_error)
                fl.clear()
                self.sent_seq = self.acked
                continue
            if not fl:
                # nothing in flight: look for new records a few times a second (sleep_ms
                # allocates nothing, so an idle link makes no garbage)
                await asyncio.sleep_ms(250)
                continue
            try:
                await asyncio.wait_for_ms(ev.wait(), 100)  # woken at once by an ack
            except asyncio.TimeoutError:
                pass
