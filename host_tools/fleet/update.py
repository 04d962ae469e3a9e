"""A simulated board's side of a firmware update (docs/ota.md), for the server's tests and
`python -m host_tools.bench.rollout`: it takes an offer, asks for the manifest and every
file chunk by chunk (a few requests in flight), checks each file's size and SHA-256
against the manifest, and reports its states as a board does. It stages nothing and boots
nothing: the real board's update path is firmware/washpay/ota/, tested under micropython.

    board = UpdatingBoard("laundry-7", site_key)
    await board.connect("127.0.0.1", port)
    offer = await board.offer()
    result = await board.update(offer)          # downloading ... staged
    await board.report(offer["rollout"], "healthy")
"""

import asyncio
import hashlib
import json

from host_tools import broker as B
from host_tools.fleet.mqtt import MQTTClient
from host_tools.server.ota import wire as OW


class UpdateRefused(Exception):
    """The server refused a request: the message is its reason."""


class UpdatingBoard:
    def __init__(self, device, site_key, chunk=2048, window=4):
        self.device = device
        self.chunk = chunk
        self.window = window
        self.client = MQTTClient(device, user=device,
                                 password=B.device_password(site_key, device), keepalive=30)
        self.client.on_message = self._message
        self.offers = asyncio.Queue()
        self.refusals = []  # every refusal the server sent (JSON dicts)
        self.pending = {}  # (path, offset) -> future
        self.bytes_in = 0

    async def connect(self, host, port):
        await self.client.connect(host, port, clean=False)
        await self.client.subscribe(f"wp/{self.device}/{OW.OFFERS}", 1)
        return self

    def close(self):
        self.client.close()

    def _message(self, topic, payload, retained):
        self.bytes_in += len(payload)
        if payload[:1] == OW.CHUNK:
            _, path, offset, total, data = OW.parse_chunk(payload)
            fut = self.pending.pop((path, offset), None)
            if fut is not None and not fut.done():
                fut.set_result((data, total))
            return
        msg = json.loads(payload)
        if msg.get("type") == "offer":
            self.offers.put_nowait(msg)
        elif msg.get("type") == "error":
            self.refusals.append(msg)
            fut = self.pending.pop((msg.get("path"), msg.get("offset")), None)
            if fut is not None and not fut.done():
                fut.set_exception(UpdateRefused(msg["error"]))

    async def offer(self, timeout=10.0):
        return await asyncio.wait_for(self.offers.get(), timeout)

    async def send(self, kind, doc):
        raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        await self.client.publish(f"wp/{self.device}/{kind}", raw, qos=1)

    async def fetch(self, rollout, path, offset, length=None, timeout=10.0):
        """(data, file size) of one chunk; UpdateRefused with the server's reason."""
        fut = asyncio.get_running_loop().create_future()
        self.pending[(path, offset)] = fut
        await self.send(OW.REQUESTS, {"rollout": rollout, "path": path, "offset": offset,
                                      "length": length or self.chunk})
        return await asyncio.wait_for(fut, timeout)

    async def fetch_file(self, rollout, path, size=None):
        first, total = await self.fetch(rollout, path, 0)
        size = total if size is None else size
        parts = {0: first}
        offsets = list(range(len(first), size, self.chunk))
        for i in range(0, len(offsets), self.window):
            got = await asyncio.gather(*(self.fetch(rollout, path, o)
                                         for o in offsets[i:i + self.window]))
            parts.update(zip(offsets[i:i + self.window], (d for d, _ in got), strict=True))
        return b"".join(parts[o] for o in sorted(parts))

    async def report(self, rollout, state, **fields):
        await self.send(OW.REPORTS, {"rollout": rollout, "state": state, **fields})

    async def update(self, offer, report_every=25):
        """Download the offered release, check it, report `staged`; returns
        {path: bytes} with /manifest.json and /manifest.sig. A file that does not match
        the manifest raises ValueError (the board would refuse it: `wrong hash`)."""
        rid = offer["rollout"]
        manifest = await self.fetch_file(rid, "/manifest.json")
        if hashlib.sha256(manifest).hexdigest() != offer["manifest"]:
            raise ValueError("manifest.json differs from the offer's SHA-256")
        sig = await self.fetch_file(rid, "/manifest.sig")
        doc = json.loads(manifest)
        got = {"/manifest.json": manifest, "/manifest.sig": sig}
        total = sum(f["size"] for f in doc["files"])
        have = last = 0
        for f in doc["files"]:
            data = await self.fetch_file(rid, f["path"], f["size"])
            if len(data) != f["size"] or hashlib.sha256(data).hexdigest() != f["sha256"]:
                raise ValueError(f"wrong hash: {f['path']}")
            got[f["path"]] = data
            have += len(data)
            if have * 100 // total >= last + report_every:
                last = have * 100 // total
                await self.report(rid, "downloading", have=have, total=total)
        await self.report(rid, "staged")
        return got
