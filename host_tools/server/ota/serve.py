"""The rollout inside `washpay server run`: offers, chunks and the boards' reports.

The ingest of journals runs on paho's network thread (host_tools/server/service.py). The
update traffic does not: its messages go into a bounded queue and one worker thread of its
own, with its own database connection, serves them. A fleet downloading at once therefore
delays no journal batch: the network thread only enqueues. Two limits keep the load
bounded (docs/ota.md, "The server"):

- `max_downloads` (default 8): boards that hold a download slot (offered or downloading,
  and heard from within `stall_s`); the next board is offered the release only when one
  stages, ends, or falls silent;
- `queue_size` (default 256): update messages waiting for the worker; beyond it a chunk
  request is dropped (counted in `dropped`) and the board asks again after its timeout.
"""

import queue
import threading
import time

from host_tools.server.ota import rollout as RO
from host_tools.server.ota import wire as OW
from host_tools.server.store import open_store


class OtaService:
    def __init__(self, store_url, publish, log=print, max_downloads=8, stall_s=120.0,
                 poll_s=1.0, queue_size=256, clock=time.time):
        self.store = open_store(store_url)
        RO.ensure_schema(self.store)
        self.publish = publish  # publish(topic, payload): QoS 1, thread-safe (paho)
        self.log = log
        self.max_downloads = max_downloads
        self.stall_s = stall_s
        self.poll_s = poll_s
        self.clock = clock
        self.inbox = queue.Queue(maxsize=queue_size)
        self.files = {}  # version -> {path: bytes}
        self.rollouts = {}  # rollout id -> (version, state, {device}, read at)
        self.served = {}  # (rollout, device) -> {(path, offset): bytes served}
        self.touched = {}  # (rollout, device) -> when its last request was written down
        self.counts = {"chunks": 0, "bytes": 0, "refused": 0, "reports": 0, "offers": 0,
                       "dropped": 0, "malformed": 0}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="washpay-ota", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=5)
        self.store.close()

    # ---- called on paho's network thread: enqueue only
    def handle(self, device, kind, payload):
        try:
            self.inbox.put_nowait((device, kind, bytes(payload)))
        except queue.Full:
            self.counts["dropped"] += 1  # the board asks again after its timeout

    # ---- the worker
    def _run(self):
        next_poll = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_poll:
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
            self.request(device, payload)
        elif kind == OW.REPORTS:
            self.report(device, payload)

    # ---- offers
    def offer_due(self):
        for rid, device, version, digest in RO.to_offer(self.store, self.max_downloads,
                                                       self.stall_s, now=self.clock()):
            files = self._files(version)
            size = sum(len(v) for p, v in files.items() if not p.startswith("/manifest."))
            self.publish(f"wp/{device}/{OW.OFFERS}",
                         OW.build_offer(rid, version, digest, size, len(files) - 2))
            self.counts["offers"] += 1
            self.log(f"server: {device}: offered release {version} (rollout {rid})")

    def _files(self, version):
        files = self.files.get(version)
        if files is None:
            files = self.files[version] = RO.release_files(self.store, version)
        return files

    def _rollout(self, rid):
        """(version, state, devices) of rollout `rid`, read again after poll_s (a halt
        from the command line takes effect within that)."""
        cached = self.rollouts.get(rid)
        if cached and time.monotonic() - cached[3] < self.poll_s:
            return cached[:3]
        rows = self.store.query("SELECT version, state FROM rollouts WHERE id = ?", (rid,))
        if not rows:
            return None
        devices = {d for (d,) in self.store.query(
            "SELECT device FROM rollout_devices WHERE rollout = ?", (rid,))}
        self.rollouts[rid] = (rows[0][0], rows[0][1], devices, time.monotonic())
        return self.rollouts[rid][:3]

    def _which(self, device, rid, version):
        """The rollout a board's message is about: the one it names, else its newest."""
        if rid is not None:
            return rid
        cur = RO.current(self.store, device)
        if cur is None or cur[1] != version:
            return None
        return cur[0]

    # ---- chunk requests
    def request(self, device, payload):
        topic = f"wp/{device}/{OW.OFFERS}"
        try:
            req = OW.parse_request(payload)
        except OW.OtaWireError as e:
            self._malformed(device, str(e), payload)
            self.publish(topic, OW.build_refusal(None, None, None, str(e)))
            return
        rid = self._which(device, req["rollout"], req["version"])
        error, data, total = self._chunk(device, rid, req)
        if error:
            self.counts["refused"] += 1
            self.publish(topic, OW.build_refusal(rid, req["path"], req["offset"], error))
            return
        self.publish(topic, OW.build_chunk(rid, req["path"], req["offset"], total, data))
        self.counts["chunks"] += 1
        self.counts["bytes"] += len(data)
        self._progress(device, rid, req["path"], req["offset"], len(data))

    def _chunk(self, device, rid, req):
        """(refusal, data, file size): a refusal says what was wrong with the request."""
        ro = self._rollout(rid) if rid is not None else None
        if ro is None:
            what = f"rollout {req['rollout']}" if req["rollout"] is not None else \
                f"release {req['version']}"
            return f"no {what} for {device}", None, None
        version, state, devices = ro
        if device not in devices:
            return f"{device} is not in rollout {rid}", None, None
        if state == "halted":
            return f"rollout {rid} is halted: ask again when it is resumed", None, None
        files = self._files(version)
        path, offset, length = req["path"], req["offset"], req["length"]
        data = files.get(path)
        if data is None:
            return f"release {version} has no file {path}", None, None
        if length == 0:
            return f"length 0 at {path} offset {offset}: ask for 1 to {OW.MAX_CHUNK} bytes", \
                None, None
        if offset >= len(data):
            return (f"offset {offset} is beyond the end of {path} ({len(data)} bytes)",
                    None, None)
        return None, data[offset:offset + min(length, OW.MAX_CHUNK)], len(data)

    def _progress(self, device, rid, path, offset, n):
        """Record that the board downloads: `downloading` at its first request, and how
        far (distinct bytes served against the release's size) at most every 2 s, so a
        board that sends no progress reports still shows one."""
        key = (rid, device)
        served = self.served.setdefault(key, {})
        served[(path, offset)] = n
        now = self.clock()
        if now - self.touched.get(key, 0) < 2.0:
            return
        self.touched[key] = now
        version = self._rollout(rid)[0]
        size = sum(len(v) for v in self._files(version).values())
        pct = min(99, sum(served.values()) * 100 // max(1, size))
        with self.store.transaction() as tx:
            tx.execute(
                "UPDATE rollout_devices SET state = 'downloading', progress = ?, updated = ? "
                "WHERE rollout = ? AND device = ? AND state IN ('offered', 'downloading')",
                (pct, now, rid, device))

    # ---- reports
    def report(self, device, payload):
        try:
            rep = OW.parse_report(payload)
        except OW.OtaWireError as e:
            self._malformed(device, str(e), payload)
            return
        rid = self._which(device, rep["rollout"], rep["version"])
        try:
            if rid is None:
                raise RO.RolloutError(f"{device} reported {rep['state']} for release "
                                      f"{rep['version']}, which no rollout gives it")
            out = RO.report(self.store, device, rid, rep["state"], rep["progress"],
                            rep["reason"], now=self.clock())
        except RO.RolloutError as e:
            self._malformed(device, str(e), payload)
            return
        self.counts["reports"] += 1
        if out["old"] != out["new"]:
            why = f": {rep['reason']}" if rep["reason"] else ""
            self.log(f"server: {device}: rollout {rid} {out['old']} -> {out['new']}{why}")
            self.touched.pop((rid, device), None)
        if "rollout" in out:
            self.rollouts.pop(rid, None)
            self.log(f"server: rollout {rid} {out['rollout'][0]}: {out['rollout'][1]}")

    def _malformed(self, device, detail, payload):
        """A message the server cannot act on: a problem (docs/sync.md, "Problems") the
        operator sees in `server report`, counted each time; nothing else changes."""
        self.counts["malformed"] += 1
        self.log(f"server: {device}: update message refused: {detail}")
        with self.store.transaction() as tx:
            tx.problem(device, 0, "ota_message", detail, evidence=payload[:256],
                       now=self.clock())
