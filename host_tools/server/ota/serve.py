"""The rollout inside `washpay server run`: offers, chunks and the boards' reports
(docs/ota.md).

The ingest of journals runs on paho's network thread (host_tools/server/service.py). The
update traffic does not: its messages go into a bounded queue, and one worker thread with
its own database connection serves them, so boards downloading never delay a journal
batch (the network thread only enqueues). Two limits bound the load (docs/ota.md, "The
server"):

- `max_downloads` (default 8): boards holding a download slot (offered or downloading,
  heard from within `stall_s`); the next board is offered the release only when one
  stages, ends, or falls silent;
- `queue_size` (default 256): update messages waiting for the worker; beyond it a chunk
  request is dropped (counted in `dropped`), and the board asks again after its 5 s
  (reports and offer replies are always kept).
"""

import json
import queue
import threading
import time

from host_tools.server import commands as C
from host_tools.server.ota import rollout as RO
from host_tools.server.ota import wire as OW
from host_tools.server.store import open_store

OFFER_TTL_S = 3600  # an offer waiting longer in an offline board's session is refused
# a board's refusal of the offer command that says "not now" rather than "not this release":
# the offer is made again later (docs/ota.md, "The offer"; docs/sync.md, replies)
NOT_NOW = ("expired", "replayed", "on trial", "not yet valid")


class OtaService:
    def __init__(self, store_url, site_key, publish, log=print, max_downloads=8,
                 stall_s=120.0, poll_s=1.0, queue_size=256, clock=time.time):
        self.store = open_store(store_url)
        RO.ensure_schema(self.store)
        self.site_key = site_key
        self.publish = publish  # publish(topic, payload, qos): thread-safe (paho)
        self.log = log
        self.max_downloads = max_downloads
        self.stall_s = stall_s
        self.poll_s = poll_s
        self.clock = clock
        self.queue_size = queue_size
        self.inbox = queue.Queue()
        self.releases = {}  # version and release id -> RO.Release
        self.members = {}  # (device, version) -> (rollout, state, read at)
        self.touched = {}  # (rollout, device) -> when its progress was last written
        self.counts = {"chunks": 0, "bytes": 0, "refused": 0, "held": 0, "reports": 0,
                       "offers": 0, "dropped": 0, "malformed": 0}
        self._offer_now = False  # a slot came free: offer before the next poll
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="washpay-ota", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        self.store.close()

    # ---- called on paho's network thread: enqueue only
    def handle(self, device, kind, payload):
        # a chunk request may be dropped (the board asks again after its 5 s); a report or
        # an offer's reply never is: the broker's copy is acknowledged already
        if kind == OW.REQUESTS and self.inbox.qsize() >= self.queue_size:
            self.counts["dropped"] += 1
            return
        self.inbox.put_nowait((device, kind, payload))

    # ---- the worker
    def _run(self):
        next_poll = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_poll or self._offer_now:
                self._offer_now = False
                next_poll = now + self.poll_s
                self._guard(self.offer_due)
            try:
                device, kind, payload = self.inbox.get(timeout=max(0.0, next_poll - now))
            except queue.Empty:
                continue
            self._guard(self.message, device, kind, payload)

    def _guard(self, fn, *args):
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - one bad message must not stop the updates
            self.log(f"server: update: {type(e).__name__}: {e}")

    def message(self, device, kind, payload):
        if kind == OW.REQUESTS:
            self.request(device, bytes(payload))
        elif kind == OW.REPORTS:
            self.report(device, bytes(payload))
        elif kind == "reply":
            self.offer_reply(device, payload)

    def _release(self, version=None, release_id=None):
        key = version or release_id
        rel = self.releases.get(key)
        if rel is None:
            rel = RO.load_release(self.store, version=version, release_id=release_id)
            if rel is not None:
                self.releases[rel.version] = self.releases[rel.id] = rel
        return rel

    # ---- offers
    def offer_due(self):
        for rid, device, version in RO.to_offer(self.store, self.max_downloads,
                                                self.stall_s, now=self.clock()):
            rel = self._release(version=version)
            payload, cid = C.build(self.site_key, device, "update", ttl_s=OFFER_TTL_S,
                                   issued=self.clock(), manifest=rel.manifest,
                                   signature=rel.signature, version=version)
            now = self.clock()
            with self.store.transaction() as tx:
                tx.execute(
                    "INSERT INTO commands (id, device, kind, args, body, created, expires, "
                    "status) VALUES (?, ?, 'update', ?, ?, ?, ?, 'sent')",
                    (cid.hex(), device, json.dumps({"version": version, "rollout": rid}),
                     payload, now, now + OFFER_TTL_S))
            RO.offer_sent(self.store, rid, device, cid.hex())
            self.publish(f"wp/{device}/cmd", payload, 1)
            self.counts["offers"] += 1
            self.log(f"server: {device}: offered release {version} (rollout {rid})")

    def offer_reply(self, device, res):
        """The board's reply to an offer (docs/sync.md replies): a refusal that is not
        "not now" ends the board's part of the rollout with the reason."""
        found = RO.by_command(self.store, res.get("cmd"))
        if found is None:
            return
        rid, dev = found
        result, reason = res.get("result"), str(res.get("reason") or "")
        if result in ("refused", "invalid") and not any(w in reason for w in NOT_NOW):
            self._report(dev, rid, "refused", None, f"offer {result}: {reason}")

    # ---- chunk requests
    def request(self, device, payload):
        try:
            index, offset, length, release_id = OW.parse_request(payload)
        except OW.OtaWireError as e:
            self._malformed(device, str(e), payload)
            return  # nothing to answer: the request names nothing we can trust
        status, data, rid, rel = self._chunk(device, index, offset, length, release_id)
        if status is None:
            self.counts["held"] += 1  # halted: the board asks again every 5 s
            return
        self.publish(f"wp/{device}/{OW.CHUNKS}",
                     OW.build_chunk(status, index, offset, release_id, data), 0)
        if status != OW.DATA:
            self.counts["refused"] += 1
            return
        self.counts["chunks"] += 1
        self.counts["bytes"] += len(data)
        self._progress(device, rid, rel, index, offset)

    def _chunk(self, device, index, offset, length, release_id):
        """(status, data, rollout, release): status None is no answer (the rollout is
        halted)."""
        rel = self._release(release_id=release_id)
        member = self._member(device, rel.version) if rel else None
        if member is None:
            self._refusal(device, f"chunk request for release {release_id.hex()}, which no "
                          f"rollout gives {device}")
            return OW.UNKNOWN_RELEASE, b"", None, rel
        rid, state = member
        if state == "halted":
            return None, b"", rid, rel
        data = rel.manifest if index == OW.MANIFEST_FILE else (
            rel.files[index][1] if index < len(rel.files) else None)
        if data is None or offset >= len(data) or not 1 <= length <= OW.MAX_CHUNK:
            what = "manifest.json" if index == OW.MANIFEST_FILE else f"file {index}"
            self._refusal(device, f"chunk request out of range: {what} offset {offset} "
                          f"length {length} (release {rel.version} has {len(rel.files)} "
                          f"files; at most {OW.MAX_CHUNK} bytes a chunk)")
            return OW.BAD_RANGE, b"", rid, rel
        return OW.DATA, data[offset:offset + length], rid, rel

    def _member(self, device, version):
        """(rollout, rollout state) of the board's newest rollout of `version`, read again
        after poll_s (a halt from the command line takes effect within that), or None."""
        cached = self.members.get((device, version))
        if cached and time.monotonic() - cached[2] < self.poll_s:
            return cached[:2]
        rows = RO.rollouts_of(self.store, device, version)
        if not rows:
            return None
        self.members[(device, version)] = (*rows[0], time.monotonic())
        return rows[0]

    def _progress(self, device, rid, rel, index, offset):
        """`downloading` at the first request, and how far: the board asks file by file
        in order, so the bytes before this request are what it has. Written at most every
        2 s a board (it keeps the board's download slot)."""
        key = (rid, device)
        now = self.clock()
        if now - self.touched.get(key, 0) < 2.0:
            return
        self.touched[key] = now
        have = offset if index == OW.MANIFEST_FILE else (
            len(rel.manifest) + sum(len(d) for _, d in rel.files[:index]) + offset)
        with self.store.transaction() as tx:
            tx.execute(
                "UPDATE rollout_devices SET state = 'downloading', progress = ?, updated = ? "
                "WHERE rollout = ? AND device = ? AND state IN ('offered', 'downloading')",
                (min(99, have * 100 // rel.size), now, rid, device))

    # ---- reports
    def report(self, device, payload):
        try:
            rep = OW.parse_report(payload)
        except OW.OtaWireError as e:
            self._malformed(device, str(e), payload)
            return
        rel = self._release(release_id=rep["id"]) if rep["id"] else \
            self._release(version=rep["version"])
        member = self._member(device, rel.version) if rel else None
        if member is None:
            what = rep["id"].hex() if rep["id"] else rep["version"]
            self._malformed(device, f"{device} reported {rep['state']} for release {what}, "
                            f"which no rollout gives it", payload)
            return
        self._report(device, member[0], rep["state"], rep["pct"], rep["reason"])

    def _report(self, device, rid, state, pct, reason):
        try:
            out = RO.report(self.store, device, rid, state, pct, reason, now=self.clock())
        except RO.RolloutError as e:
            self._malformed(device, str(e), b"")
            return
        self.counts["reports"] += 1
        if out["old"] != out["new"]:
            self._offer_now |= out["new"] not in RO.ACTIVE  # its download slot is free
            why = f": {reason}" if reason else ""
            self.log(f"server: {device}: rollout {rid} {out['old']} -> {out['new']}{why}")
        if "rollout" in out:
            self.members = {k: v for k, v in self.members.items() if v[0] != rid}
            self.log(f"server: rollout {rid} {out['rollout'][0]}: {out['rollout'][1]}")

    def _refusal(self, device, detail):
        self.log(f"server: {device}: {detail}")

    def _malformed(self, device, detail, payload):
        """A message the server cannot act on: a problem (docs/sync.md, "Problems") that
        the operator sees in `server report`, counted each time; nothing else changes."""
        self.counts["malformed"] += 1
        self.log(f"server: {device}: update message refused: {detail}")
        with self.store.transaction() as tx:
            tx.problem(device, 0, "ota_message", detail, evidence=bytes(payload[:256]),
                       now=self.clock())
