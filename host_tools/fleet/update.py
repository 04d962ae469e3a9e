"""A simulated board's side of a firmware update (docs/ota.md), for the server's tests and
`python -m host_tools.bench.rollout`: it authenticates the offer (command action 9) and
answers it, asks for the manifest and every file chunk by chunk with one request
outstanding as a board does, checks the manifest against the offer and each file's size and
SHA-256 against the manifest, and reports its states. It stages nothing and boots nothing:
the real board's update path is firmware/washpay/ota/, tested under micropython. It reads
the protocol from docs/ota.md on its own, as fleet/board.py does the sync protocol.

    board = UpdatingBoard("laundry-7", site_key)
    await board.connect("127.0.0.1", port)
    offer = await board.offer()                 # replied "done", reported "offered"
    files = await board.download(offer)         # downloading ... staged
    await board.report(offer, "healthy")
"""

import asyncio
import hashlib
import hmac
import json
import struct

from host_tools import broker as B
from host_tools import keys as K
from host_tools.fleet.mqtt import MQTTClient

UPDATE = 9  # the offer's command action
COMMAND_HEAD = 32
COMMAND_TAG = 16
REQUEST = struct.Struct(">BBHIHH8s")  # version, reserved, file, offset, length, reserved, id
CHUNK = REQUEST  # version, status, file, offset, length, reserved, id
MANIFEST = 0xFFFF
CHUNK_LEN = 960
CHUNK_TIMEOUT_S = 5.0


class UpdateRefused(Exception):
    """The board refuses the update: the message is the reason it reports."""


class UpdatingBoard:
    def __init__(self, device, site_key, chunk=CHUNK_LEN, timeout_s=CHUNK_TIMEOUT_S,
                 client_class=MQTTClient):
        self.device = device
        self.chunk = chunk
        self.timeout_s = timeout_s
        self.command_key = K.command_key(K.device_secret(site_key, device))
        self.client = client_class(device, user=device,
                                   password=B.device_password(site_key, device), keepalive=30)
        self.client.on_message = self._message
        self.offers = asyncio.Queue()
        self.chunks = asyncio.Queue()
        self.bytes_in = self.requests = self.resent = 0

    async def connect(self, host, port):
        await self.client.connect(host, port, clean=False)
        await self.client.subscribe(f"wp/{self.device}/cmd", 1)
        await self.client.subscribe(f"wp/{self.device}/fwd", 0)
        return self

    def close(self):
        self.client.close()

    def _message(self, topic, payload, retained):
        self.bytes_in += len(payload)
        if topic.endswith("/fwd"):
            self.chunks.put_nowait(bytes(payload))
        else:
            self.offers.put_nowait(bytes(payload))

    def _offer(self, p):
        """The offer in a command, authenticated: {cmd, sha256, signature, size, version}."""
        m = struct.unpack_from(">H", p, 30)[0]
        tag = hmac.new(self.command_key, p[:COMMAND_HEAD + m], hashlib.sha256).digest()
        if len(p) != COMMAND_HEAD + m + COMMAND_TAG or not hmac.compare_digest(
                tag[:COMMAND_TAG], p[COMMAND_HEAD + m:]):
            raise UpdateRefused("bad tag")
        if p[29] != UPDATE:
            raise UpdateRefused(f"action {p[29]} is not an offer")
        body = p[COMMAND_HEAD:COMMAND_HEAD + m]
        size, vlen = struct.unpack_from(">HB", body, 96)
        return {"cmd": p[1:9].hex(), "sha256": body[:32], "signature": body[32:96],
                "size": size, "version": body[99:99 + vlen].decode(), "id": body[:8]}

    async def offer(self, timeout=10.0, answer=True):
        """The next offer, replied to (`done`) and reported (`offered`) unless `answer` is
        false."""
        offer = self._offer(await asyncio.wait_for(self.offers.get(), timeout))
        if answer:
            await self.send("res", {"result": "done", "cmd": offer["cmd"],
                                    "reason": f"update {offer['version']} offered"})
            await self.report(offer, "offered")
        return offer

    async def send(self, kind, doc, qos=1):
        raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        await self.client.publish(f"wp/{self.device}/{kind}", raw, qos=qos)

    async def fetch(self, rid, index, offset, length):
        """(status, data) of one chunk; asked again after timeout_s, as a board does."""
        while True:
            await self.send("fwq", REQUEST.pack(1, 0, index, offset, length, 0, rid), qos=0)
            self.requests += 1
            try:
                async with asyncio.timeout(self.timeout_s):
                    while True:
                        msg = await self.chunks.get()
                        _, status, i, o, n, _, r = CHUNK.unpack_from(msg)
                        if (r, i, o) == (rid, index, offset):  # else a late answer: dropped
                            return status, msg[CHUNK.size:CHUNK.size + n]
            except TimeoutError:
                self.resent += 1

    async def fetch_file(self, rid, index, size):
        parts, have = [], 0
        while have < size:
            want = min(self.chunk, size - have)
            status, data = await self.fetch(rid, index, have, want)
            if status == 1:
                raise UpdateRefused(f"server has no release {rid.hex()}")
            if status:
                raise UpdateRefused(f"server refused range file {index} offset {have}")
            if len(data) != want:
                raise UpdateRefused(f"truncated chunk: file {index} offset {have} got "
                                    f"{len(data)} of {want} bytes")
            parts.append(data)
            have += len(data)
        return b"".join(parts)

    async def report(self, offer, state, **fields):
        await self.send("fws", {"id": offer["id"].hex(), "version": offer["version"],
                                "state": state, **fields})

    async def download(self, offer):
        """Fetch and check the offered release, report `staged`; returns {path: bytes}
        with /manifest.json. A refusal is reported (`refused`) and raised."""
        try:
            return await self._download(offer)
        except UpdateRefused as e:
            await self.report(offer, "refused", reason=str(e))
            raise

    async def _download(self, offer):
        rid = offer["id"]
        manifest = await self.fetch_file(rid, MANIFEST, offer["size"])
        if hashlib.sha256(manifest).digest() != offer["sha256"]:
            raise UpdateRefused("manifest differs from the offer")
        files = json.loads(manifest)["files"]
        total = len(manifest) + sum(f["size"] for f in files)
        have, last = len(manifest), 0
        got = {"/manifest.json": manifest}
        await self.report(offer, "downloading", pct=have * 100 // total, bytes=have,
                          total=total)
        for i, f in enumerate(files):
            data = await self.fetch_file(rid, i, f["size"])
            if hashlib.sha256(data).hexdigest() != f["sha256"]:
                raise UpdateRefused(f"file {f['path']}: SHA-256 differs from the manifest")
            got[f["path"]] = data
            have += len(data)
            if have * 100 // total >= last + 10:
                last = have * 100 // total
                await self.report(offer, "downloading", pct=last, bytes=have, total=total)
        await self.report(offer, "staged")
        return got
