"""Benchmark of a whole over-the-air update (docs/ota.md) over loopback: the simulated
board (the firmware under micropython, 64-bit or `--micropython` the 32-bit one), a real
Mosquitto, a release of this firmware built and signed as `washpay release build` does
(a throwaway key; a signed reinstall of the running version), and the minimal release
server below. Figures: time from the offer to staged and to healthy, bytes on the wire
(payloads, and with their MQTT framing, counted from the packets sent) against the
release's size, and the flash programs and erases of the download and staging.

    python -m host_tools.bench.update [--micropython PATH] [--heap-only]

and the heap an update holds while it downloads (the OTA modules as .mpy, the manifest
checked, its file list kept).

The release server here is the protocol's minimum (one chunk per request, from memory):
the tests use it too (tests/ota_env.py); `washpay server release` is the real one.
"""

import json
import struct
import tempfile
import threading
import time
from pathlib import Path

from host_tools import broker as B
from host_tools.server.commands import command_key, operator_command

UPDATE = 9  # the offer's command action (docs/ota.md, "The offer")
REQUEST = ">BBHIHH8s"
MANIFEST = 0xFFFF


class Release:
    """A release directory as the server holds it: manifest bytes, signature, files."""

    def __init__(self, directory):
        d = Path(directory)
        self.manifest = (d / "manifest.json").read_bytes()
        self.sig = bytes.fromhex((d / "manifest.sig").read_text().strip())
        doc = json.loads(self.manifest)
        self.version = doc["version"]
        self.files = [(d / "files" / f["path"].lstrip("/")).read_bytes() for f in doc["files"]]
        import hashlib

        self.digest = hashlib.sha256(self.manifest).digest()
        self.rid = self.digest[:8]
        self.size = len(self.manifest) + sum(len(f) for f in self.files)

    def offer_body(self, version=None):
        v = (version or self.version).encode()
        return (self.digest + self.sig + struct.pack(">H", len(self.manifest))
                + bytes([len(v)]) + v)

    def file(self, index):
        return self.manifest if index == MANIFEST else self.files[index]


class ReleaseServer:
    """Serves chunks of the releases it holds to any board (wp/+/fwq -> wp/ID/fwd), records
    status reports (wp/+/fws) and command replies (wp/+/res). `on_request(device, index,
    offset, length)` may return "drop" (no answer), "short" (a truncated chunk) or None."""

    def __init__(self, url, site_key):
        from urllib.parse import urlparse

        import paho.mqtt.client as mqtt

        u = urlparse(url)
        self.site_key = site_key
        self.releases = {}
        self.reports = []
        self.replies = []
        self.requests = 0
        self.bytes_in = 0  # payload bytes from boards: requests
        self.bytes_out = 0  # payload bytes to boards: chunks
        self.data_out = 0  # file bytes in those chunks (their 20-byte headers left out)
        self.on_request = None
        self.lock = threading.RLock()  # wait() holds it while a predicate calls states()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ota-test-server",
                        clean_session=True)
        c.username_pw_set(B.SERVER_USER, B.server_password(site_key))
        c.on_message = self._message
        c.on_connect = lambda c, *a: c.subscribe([("wp/+/fwq", 0), ("wp/+/fws", 1),
                                                   ("wp/+/res", 1)])
        c.connect(u.hostname, u.port)
        self.client = c
        c.loop_start()

    def add(self, release):
        self.releases[release.rid] = release
        return release

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()

    def offer(self, device, release, version=None, body=None):
        key = command_key(self.site_key, device)
        now = int(time.time())
        cmd = operator_command(key, device, UPDATE, body if body is not None else
                               release.offer_body(version), now - 5, now + 300)
        self.client.publish(f"wp/{device}/cmd", cmd, qos=1).wait_for_publish(10)

    def states(self, device=None):
        with self.lock:
            return [r["state"] for d, r in self.reports if device in (None, d)]

    def wait(self, predicate, timeout=60, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; reports {self.reports}, "
                             f"replies {self.replies}")

    def _message(self, client, userdata, msg):
        device, kind = msg.topic.split("/")[1:3]
        if kind == "fws":
            with self.lock:
                self.reports.append((device, json.loads(msg.payload)))
            return
        if kind == "res":
            with self.lock:
                self.replies.append((device, json.loads(msg.payload)))
            return
        p = msg.payload
        with self.lock:
            self.requests += 1
            self.bytes_in += len(p)
        if len(p) != 20 or p[0] != 1:
            return
        _, _, index, offset, length, _, rid = struct.unpack(REQUEST, p)
        action = self.on_request(device, index, offset, length) if self.on_request else None
        if action == "drop":
            return
        rel = self.releases.get(rid)
        status, data = 0, b""
        if rel is None:
            status = 1
        elif index != MANIFEST and index >= len(rel.files):
            status = 2
        else:
            data = rel.file(index)[offset:offset + length]
            if offset > len(rel.file(index)):
                status, data = 2, b""
        if action == "short":
            data = data[: len(data) // 2]
        out = struct.pack(REQUEST, 1, status, index, offset, len(data), 0, rid) + data
        with self.lock:
            self.bytes_out += len(out)
            self.data_out += len(data)
        client.publish(f"wp/{device}/fwd", out, qos=0)




def _framing(topic_len, payload, qos):
    # a PUBLISH: fixed header (1 + remaining length's varint), topic, packet id if QoS>0
    rest = 2 + topic_len + (2 if qos else 0) + payload
    n = 1
    while rest >= 128 ** n:
        n += 1
    return 1 + n + rest - payload


def run(micropython=None, log=print):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from host_tools import release as REL
    from host_tools.sim.client import SimBoard

    site_key = bytes(range(32))
    device = "sim-0001"
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    with tempfile.TemporaryDirectory(prefix="washpay-bench-update-") as tmp_name:
        tmp = Path(tmp_name)
        rel_dir = tmp / "rel"
        REL.build(REL.P.firmware_version(), rel_dir, key, ["sim"], downgrade=True)
        rel = Release(rel_dir)
        B.init(tmp / "broker", site_key, [device])
        broker = B.Broker(tmp / "broker").start()
        url = f"mqtt://127.0.0.1:{broker.port}"
        st = tmp / "st"
        (st / "provision").mkdir(parents=True)
        (st / "provision" / "config.json").write_text(json.dumps(
            {"device_id": device, "broker": url, "ota": {"healthy_s": 2},
             "sync": {"keepalive_s": 5, "backoff_min_ms": 200, "backoff_max_ms": 1000}}))
        (st / "provision" / "release.pub").write_text(f"ed25519 {pub.hex()}\n")
        (st / "site.key").write_text(site_key.hex() + "\n")
        (st / "site.key").chmod(0o600)
        server = ReleaseServer(url, site_key)
        sim = SimBoard(st, heap="1m", micropython=micropython, log=tmp / "sim.log").start()
        try:
            sim.wait_for(lambda s: ((s.get("firmware") or {}).get("sync") or {}).get("link")
                         == "up", timeout=60, what="the board online")
            before = sim.status()["flash"]
            server.add(rel)
            t0 = time.monotonic()
            server.offer(device, rel)
            server.wait(lambda s: "staged" in s.states(), timeout=900, what="staged")
            t_staged = time.monotonic() - t0
            flash = sim.status()["flash"]
            server.wait(lambda s: "healthy" in s.states(), timeout=900, what="healthy")
            t_healthy = time.monotonic() - t0
        finally:
            sim.stop()
            server.stop()
            broker.stop()
    topic = len(f"wp/{device}/fwd")
    chunks = server.requests  # one chunk per request answered (none dropped here)
    # the framing of each request and chunk (a short last chunk of a file has a 1 byte
    # shorter length field: the figure is within one byte a packet)
    framing = chunks * (_framing(topic, 980, 0) + _framing(topic, 20, 0))
    wire = server.bytes_out + server.bytes_in
    out = {
        "release_bytes": rel.size,
        "release_files": len(rel.files),
        "requests": server.requests,
        "payload_bytes": wire,
        "wire_bytes_with_mqtt_framing": wire + framing,
        "wire_per_release_byte": round((wire + framing) / rel.size, 3),
        "offer_to_staged_s": round(t_staged, 1),
        "offer_to_healthy_s": round(t_healthy, 1),
        "flash_programs_download_and_stage": flash["programs"] - before["programs"],
        "flash_erases_download_and_stage": flash["erases"] - before["erases"],
    }
    log(json.dumps(out, indent=1))
    return out


_HEAP = r"""
import gc, sys, vfs
sys.path.insert(0, @FILES@)
REL = @REL@


class RamBlocks:  # a LittleFS block device in RAM: where the slot is staged
    def __init__(self, n):
        self.data = bytearray(n * 4096)

    def readblocks(self, n, buf, off=0):
        buf[:] = self.data[n * 4096 + off:n * 4096 + off + len(buf)]

    def writeblocks(self, n, buf, off=None):
        off = off or 0
        self.data[n * 4096 + off:n * 4096 + off + len(buf)] = buf

    def ioctl(self, op, arg):
        return {4: len(self.data) // 4096, 5: 4096, 6: 0}.get(op, 0)


bd = RamBlocks(96)
vfs.VfsLfs2.mkfs(bd)
vfs.mount(vfs.VfsLfs2(bd), "/flash")
import json, bootslot
from binascii import unhexlify
with open(REL + "/manifest.json", "rb") as f:
    manifest = f.read()
sig = unhexlify(open(REL + "/manifest.sig").read().strip())
gc.collect()
before = gc.mem_alloc()
from washpay.ota.stage import Stage, MANIFEST
from washpay.ota.release import read_public_key
from hashlib import sha256
gc.collect()
imported = gc.mem_alloc() - before
stage = {"slot": "a", "id": sha256(manifest).digest().hex(), "sig": sig.hex(),
         "size": len(manifest), "version": @VERSION@}
checks = {"public_key": unhexlify(@PUB@), "running": "0.0.1", "board_id": "sim",
          "journal_format": @JF@, "mpy": @MPY@, "now": lambda: @NOW@}
s = Stage("/flash", stage, checks)
for i in range(0, len(manifest), 960):
    if s.accept(MANIFEST, i, manifest[i:i + 960]):
        s.check()
del manifest
gc.collect()
live = gc.mem_alloc() - before
print(json.dumps({"import_bytes": imported, "live_while_downloading_bytes": live,
                  "files": len(s.files)}))
"""


def heap(interpreter):
    """The heap an update takes while it downloads (washpay.ota.stage/release imported as
    .mpy, the manifest checked, its file list kept) on `interpreter`."""
    import subprocess

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from host_tools import release as REL

    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    with tempfile.TemporaryDirectory(prefix="washpay-bench-update-") as tmp_name:
        rel = Path(tmp_name) / "rel"
        now = int(time.time())
        doc = REL.build(REL.P.firmware_version(), rel, key, ["sim"], downgrade=True, now=now)
        root = Path(REL.P.FIRMWARE_DIR)
        # the loader beside the release's files, as on a board
        files = Path(tmp_name) / "files"
        import shutil

        shutil.copytree(rel / "files", files)
        shutil.copy(root / "bootslot.py", files / "bootslot.py")
        code = _HEAP
        for k, v in {"@FILES@": repr(str(files)), "@REL@": repr(str(rel)),
                     "@VERSION@": repr(doc["version"]), "@PUB@": repr(pub.hex()),
                     "@JF@": str(doc["journal_formats"][0]), "@MPY@": str(doc["mpy"]),
                     "@NOW@": str(now)}.items():
            code = code.replace(k, v)
        proc = subprocess.run([interpreter, "-X", "heapsize=2m", "-c", code],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(proc.stdout + proc.stderr)
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m host_tools.bench.update")
    ap.add_argument("--micropython", help="the interpreter the board runs (default: the "
                    "environment's; the 32-bit one for ESP32 object sizes)")
    ap.add_argument("--heap-only", action="store_true",
                    help="only the heap an update takes while it runs, on the interpreter")
    args = ap.parse_args(argv)
    from host_tools.interp import micropython

    interp = args.micropython or micropython()
    print(json.dumps({"interpreter": interp, **heap(interp)}, indent=1))
    if not args.heap_only:
        run(args.micropython)


if __name__ == "__main__":
    main()
