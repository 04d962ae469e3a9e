"""Ingest: one board's batch in, the exactly-once ledger and an acknowledgement out.

For each batch (docs/sync.md), in one database transaction that holds the board's row lock:

- records at or below the board's high-water mark (every record 1..high is stored) are
  compared with the stored copy: identical is a duplicate delivery (a resend after a lost
  ack, or a replay) and is counted; different is a **fork** (the same sequence number with
  other content: a journal rolled back or rewritten) and is kept as evidence;
- the record at high + 1 is verified (format version, chained HMAC tag from the stored tag
  before it), decrypted, decoded and stored under UNIQUE(device, seq); a record whose tag
  does not verify is stored as unverified evidence and reported (**bad tag**), so that one
  damaged record cannot block a board's journal forever, and its revenue is not counted;
- a record above high + 1 cannot be verified yet: records before it are missing. With
  several ingest processes that is normal (the batch before it is in another process's
  hands); it is parked, and taken as soon as the records before it are stored, by
  whichever process stores them. A record more than MAX_AHEAD beyond, or a gap that stays,
  is reported (**gap**; `washpay server report` shows what is missing and what waits);
- a board reporting a newest sequence number below what the server holds is either a
  **stale delivery** (a batch it published before the records the ledger now holds: a
  broker that redelivers its saved queue after a restart, or a copy that waited in a slow
  ingest process) or a **rollback** (its journal really went back: flash restored or
  replaced). Both carry only sequence numbers the ledger holds, so the batch alone cannot
  tell them apart; what the board does next can (rule below, `ROLLBACK_AFTER_S`);
- card debits and top-ups feed the shadow balance of each card (counter and balance): a
  counter spent twice (**card_counter_reuse**: a copied or restored card), a write whose
  balance before is not the balance after the card's previous write (**card_balance_mismatch**, or
  **card_balance_rise** when it went up without a top-up the server knows of), and a record
  whose arithmetic does not add up (**card_arith**) are flagged as fraud.

The rollback rule. A batch whose board reports a newest sequence number L below the
ledger's high-water mark H:

- carrying a record that differs from the ledger's copy: the board's journal is not the
  history the ledger holds: each such record is a **fork**, and the batch is a
  **rollback** at once. A restored board always gets here with its first new record,
  since every boot journals a record (vend/boot.py) and it lands at a sequence number the
  ledger holds with other content;
- carrying only records the ledger holds, byte for byte: a **stale delivery**, counted
  (`Outcome.stale`, `Ingest.stale`) and not a problem. The board is remembered as behind
  (in this process: when, and at which H). A batch of it reporting L >= H, or the ledger
  growing past that H (the board brought new records), forgets it. A board still behind,
  sending again only old records with the ledger unchanged, `ROLLBACK_AFTER_S` or more
  after it was first seen behind, is a **rollback**: a restored board whose cursor is older
  than its newest record resends the same old records for ever (it refuses the server's
  acks, which name more records than it has) and never reaches its new ones. A stale
  delivery is one burst at the head of a broker's queue, and a healthy board's newer
  batches report L >= H.

The acknowledgement is the new high-water mark: the board may delete everything up to it.
This module is the host's independent reading of the journal format through
host_tools/journal.py; it never imports the firmware.
"""

import struct
import time
from dataclasses import dataclass, field

from host_tools import journal as J
from host_tools.server import wire

ZERO_TAG = bytes(J.TAG_SIZE)
MAX_AHEAD = 4096  # records parked beyond a gap, per board
# records of a card wallet write (docs/wallet-format.md): each is the card's next counter,
# and moves its balance by -amount (a debit) or +amount (a top-up)
CARD_WRITES = {"card_debit": -1, "card_topup": 1}
# records that may say a card write of their board never reached the card (store.VOIDS_WRITE)
CARD_VOIDS = ("card_cancel", "card_settled")
NOT_LANDED = "payment had not landed"  # card_settled's reason when the write never landed
# a board that reports fewer records than the ledger holds and brings nothing new for this
# long is behind for real (a rollback), not a stale copy: a restored board resends its old
# records every 15 s to 2 min (the uploader's growing wait), a stale burst lasts seconds
ROLLBACK_AFTER_S = 300.0
BEHIND_MAX = 100_000  # boards remembered as behind, per process (oldest forgotten first)
FRAUD = ("fork", "rollback", "card_counter_reuse", "card_balance_mismatch",
         "card_balance_rise", "card_arith")


@dataclass
class Outcome:
    device: str
    ack: int = 0
    stored: int = 0
    duplicates: int = 0
    parked: int = 0  # records kept beyond a gap until the records before them arrive
    problems: list = field(default_factory=list)  # (kind, seq, detail)
    resolved: int = 0  # open problems this batch resolved (their records are all in)
    stale: bool = False  # a batch published before records the ledger already holds
    records: list = field(default_factory=list)  # decoded fields of what was stored


class Ingest:
    def __init__(self, store, site_key, clock=time.time, covered_fast=True,
                 rollback_after_s=ROLLBACK_AFTER_S):
        self.store = store
        self.site_key = site_key
        self.clock = clock
        self.rollback_after_s = rollback_after_s
        self.stale = 0  # batches taken as stale deliveries
        self._behind = {}  # device -> (first seen behind, the ledger's high then)
        # a batch the ledger already holds whole (a resend after an ack timeout) takes the
        # short path: the resend storm of docs/fleet.md
        self.covered_fast = covered_fast
        self.covered = 0  # batches answered on the short path
        self._keys = {}
        self._ack_keys = {}

    def keys(self, device):
        k = self._keys.get(device)
        if k is None:
            k = self._keys[device] = J.Keys(self.site_key, device)
        return k

    def ack_key(self, device):
        k = self._ack_keys.get(device)
        if k is None:
            k = self._ack_keys[device] = wire.ack_key(self.site_key, device)
        return k

    def ack_message(self, device, seq):
        return wire.build_ack(self.ack_key(device), device, seq)

    def high(self, device):
        rows = self.store.query("SELECT high_seq FROM devices WHERE device = ?", (device,))
        return rows[0][0] if rows else 0

    def batch(self, device, payload):
        """Ingest one batch message from `device`; return an Outcome (ack = new high)."""
        now = self.clock()
        out = Outcome(device)
        try:
            batch = wire.parse_batch(payload)
        except wire.WireError as e:
            with self.store.transaction() as tx:
                dev = tx.lock_device(device, now)
                # what it carried is unknown: it resolves once the ledger holds every record
                # the board had said it had, and at least one more than now
                tx.problem(device, 0, "malformed", str(e), bytes(payload[:256]), now,
                           upto=max(dev["reported_seq"], dev["high_seq"] + 1))
                out.ack = dev["high_seq"]
            out.problems.append(("malformed", 0, str(e)))
            return out
        if self.covered_fast and self._covered(device, batch, out):
            return out
        keys = self.keys(device)
        with self.store.transaction() as tx:
            dev = tx.lock_device(device, now)
            high = dev["high_seq"]
            last_tag = dev["last_tag"] or ZERO_TAG
            pending = {}  # seq -> raw stored in this transaction

            def problem(kind, seq, detail, evidence=None, upto=None):
                tx.problem(device, seq, kind, detail, evidence, now, upto)
                out.problems.append((kind, seq, detail))

            forks = 0

            def records():
                # the batch in sequence order, then whatever was parked beyond it
                for r in sorted(batch.records, key=lambda r: struct.unpack_from(">I", r, 4)[0]):
                    yield r, False
                while True:
                    r = tx.unpark(device, high + 1)
                    if r is None:
                        return
                    yield r, True

            for raw, parked in records():
                seq = struct.unpack_from(">I", raw, 4)[0]
                if seq == 0:
                    problem("malformed", 0, "a record with sequence number 0", raw,
                            upto=max(batch.device_last_seq, high + 1))
                    continue
                if seq <= high:
                    have = pending.get(seq) or tx.record_raw(device, seq)
                    if have == raw:
                        if not parked:
                            out.duplicates += 1
                    else:
                        forks += 1
                        problem("fork", seq,
                                f"record {seq} arrived again with different content: the "
                                "journal was rolled back or rewritten", raw)
                    continue
                if seq > high + 1:
                    if seq - high > MAX_AHEAD:
                        problem("gap", high + 1,
                                f"records {high + 1}..{seq - 1} missing (received {seq}); "
                                "too far ahead to keep: the board sends it again",
                                upto=seq - 1)
                        break
                    tx.park(device, seq, raw, now)
                    out.parked += 1
                    continue
                ok = raw[0] == J.VERSION and keys.tag(last_tag, raw) == raw[J.MAC_END:]
                fields = {}
                if ok:  # an unauthenticated body means nothing: only its raw bytes are kept
                    try:
                        fields = J.decode_body(seq, keys.decrypt(raw))
                    except (ValueError, OverflowError, OSError):
                        fields = {}
                if not ok:
                    problem("bad_tag", seq,
                            f"record {seq} does not verify: altered, or not sealed by this "
                            "board after the record before it", raw)
                elif fields.get("type") in CARD_WRITES:
                    self._card(tx, device, seq, fields, problem, now)
                elif fields.get("type") in CARD_VOIDS:
                    self._void(tx, device, seq, fields, now)
                tx.insert_records([(device, seq, raw, ok, fields, now)])
                pending[seq] = raw
                high = seq
                last_tag = raw[J.MAC_END:]
                out.stored += 1
                if ok:
                    out.records.append(fields)
            tx.update_device(
                device,
                high_seq=high,
                last_tag=last_tag if high else None,
                reported_seq=max(dev["reported_seq"], batch.device_last_seq),
                last_seen=now,
                batches=dev["batches"] + 1,
                duplicates=dev["duplicates"] + out.duplicates,
            )
            if high > dev["high_seq"]:
                out.resolved = tx.resolve_caught_up(device, high, now)
            # against the mark before this batch: a batch that brought records is not stale
            self._reported(device, batch.device_last_seq, dev["high_seq"], now, out,
                           problem, forks)
        out.ack = high
        return out

    def _reported(self, device, last, high, now, out, problem, forks=0):
        """The rollback rule (module docstring): `last` is the newest record the board
        said it had, `high` the ledger's high-water mark before this batch."""
        if last >= high:
            self._behind.pop(device, None)
            return
        if forks:
            self._behind.pop(device, None)
            problem("rollback", last,
                    f"the board says its newest record is {last}, but the server holds every "
                    f"record up to {high}, and it sent {forks} record(s) the ledger holds with "
                    "other content: flash restored or replaced")
            return
        since = self._behind.get(device)
        if since is None or since[1] != high:  # first seen behind, or it brought new records
            if since is None and len(self._behind) >= BEHIND_MAX:
                self._behind.pop(next(iter(self._behind)))
            self._behind[device] = (now, high)
            since = self._behind[device]
        if now - since[0] >= self.rollback_after_s:
            del self._behind[device]
            problem("rollback", last,
                    f"the board says its newest record is {last}, but the server holds every "
                    f"record up to {high}, and for {now - since[0]:.0f} s it has sent only "
                    "records the ledger holds: flash restored or replaced")
            return
        out.stale = True
        self.stale += 1

    def _covered(self, device, batch, out):
        """A batch every record of which the ledger already holds, byte for byte: a resend
        after an ack timeout, the bulk of an outage's resend storm (docs/fleet.md, "What
        breaks first"). Answered with one read of the stored copies and one counter update,
        without the board's row lock or a query per record, so that the queue of resends
        behind it drains at the speed of reads. False (nothing done) if any record is new,
        different (a fork: the full path keeps it as evidence) or malformed. A board that
        reports a newest record below what the ledger holds goes through the rollback rule
        here too (a stale delivery is this path's, a rollback is written in this
        transaction).

        Safe beside other ingest processes: a record at or below a board's high-water mark
        is never changed or removed, and the high-water mark only grows."""
        seqs = {}
        for r in batch.records:
            if len(r) < 8:
                return False
            seqs[struct.unpack_from(">I", r, 4)[0]] = bytes(r)
        if not seqs or len(seqs) != len(batch.records) or min(seqs) < 1:
            return False
        lo, hi = min(seqs), max(seqs)
        with self.store.transaction() as tx:  # one round of reads, no row lock held
            row = tx.one("SELECT high_seq FROM devices WHERE device = ?", (device,))
            high = row[0] if row else 0
            if hi > high:
                return False
            have = {seq: bytes(raw) for seq, raw in tx.all(
                "SELECT seq, raw FROM records WHERE device = ? AND seq >= ? AND seq <= ?",
                (device, lo, hi))}
            if any(have.get(seq) != raw for seq, raw in seqs.items()):
                return False
            now = self.clock()
            tx.execute("UPDATE devices SET batches = batches + 1, "
                       "duplicates = duplicates + ?, last_seen = ? WHERE device = ?",
                       (len(seqs), now, device))

            def problem(kind, seq, detail):
                tx.problem(device, seq, kind, detail, None, now)
                out.problems.append((kind, seq, detail))

            self._reported(device, batch.device_last_seq, high, now, out, problem)
        self.covered += 1
        out.duplicates = len(seqs)
        out.ack = high
        return True

    def _card(self, tx, device, seq, f, problem, now):
        uid = f.get("source") or ""
        counter = f.get("card_counter", 0)
        before, after, amount = f.get("balance_before"), f.get("balance_after"), f.get("amount")
        sign = CARD_WRITES[f["type"]]
        if after != before + sign * amount:
            problem("card_arith", seq, f"card {uid}: balance {before} {'+' if sign > 0 else '-'}"
                    f" {amount} is not {after}")
        spent = tx.card_debit_at(uid, counter)
        if spent:
            d, s = spent[0][0], spent[0][1]
            problem("card_counter_reuse", seq,
                    f"card {uid}: counter {counter} was already spent at {d} record {s}: "
                    "a copied or restored card")
        prev = tx.card_debit_at(uid, counter - 1) if counter else []
        if prev:
            prev_after = prev[0][4]
            if before > prev_after:
                problem("card_balance_rise", seq,
                        f"card {uid}: balance rose from {prev_after} to {before} between "
                        f"counter {counter - 1} and {counter} with no top-up on record")
            elif before < prev_after:
                problem("card_balance_mismatch", seq,
                        f"card {uid}: balance before is {before}, but the previous debit "
                        f"left {prev_after}")
        shadow = tx.card(uid)
        if shadow is None or counter > shadow["counter"]:
            tx.put_card(uid, counter, after, device, seq, now)

    def _void(self, tx, device, seq, f, now):
        """A card write of this board never reached the card: the card's shadow goes back
        to what the card still holds, if that write was the newest the server knew."""
        if f["type"] == "card_settled" and (f.get("amount") or f.get("reason") != NOT_LANDED):
            return
        uid = f.get("source") or ""
        counter = f.get("card_counter", 0)
        shadow = tx.card(uid)
        if shadow is not None and shadow["counter"] == counter and shadow["device"] == device:
            tx.put_card(uid, counter - 1, f.get("balance_before"), device, seq, now)

    # ---- other messages
    def state(self, device, payload):
        online = bytes(payload) == b"online"
        now = self.clock()
        with self.store.transaction() as tx:
            tx.lock_device(device, now)
            tx.update_device(device, online=int(online), state_at=now)
        return online
