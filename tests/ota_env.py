"""What the update tests share: releases built by the host's own tool (real mpy-cross, signed
with a real Ed25519 key), firmware variants that fail on purpose, and a minimal release
server that follows docs/ota.md on a real Mosquitto (the real one is `washpay server release`;
this one exists so the board's side can be proven on its own, and misbehaves on request)."""

import json
import shutil
import struct
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sync_env import FIRMWARE, SITE_KEY

from host_tools import broker as B
from host_tools import release as REL
from host_tools.server.commands import command_key, operator_command

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
UPDATE = 9  # the offer's command action (docs/ota.md, "The offer")
REQUEST = ">BBHIHH8s"
MANIFEST = 0xFFFF


def public_line(key=KEY):
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return f"ed25519 {raw.hex()}\n"


def firmware_variant(dest, version, change=None):
    """A copy of firmware/ whose VERSION is `version`; change(app_source) -> new source."""
    shutil.copytree(FIRMWARE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    init = dest / "washpay" / "__init__.py"
    text = init.read_text()
    init.write_text(text.replace(f'VERSION = "{REL.P.firmware_version()}"',
                                 f'VERSION = "{version}"'))
    if change:
        app = dest / "washpay" / "app.py"
        app.write_text(change(app.read_text()))
    return dest


def raises_at_import(src):
    return 'raise ImportError("this release is broken at import")\n' + src


def hangs_in_main_loop(src):
    anchor = '        wdt = self.board.watchdog(self.cfg["watchdog_ms"])\n'
    assert anchor in src
    return src.replace(anchor, anchor + "        while True:  # a release whose loop hangs\n"
                                        "            pass\n")


def build_release(base, version, change=None, key=KEY, **kw):
    """A signed release directory of firmware `version` for the sim board."""
    fw = firmware_variant(base / f"fw-{version}", version, change)
    out = base / f"rel-{version}"
    REL.build(version, out, key, ["sim"], firmware_dir=fw, now=int(time.time()), **kw)
    return out


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

    def __init__(self, url, site_key=SITE_KEY):
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
        client.publish(f"wp/{device}/fwd", out, qos=0)


def resigned(base, release_dir, name, key=KEY, **changes):
    """A copy of a release whose manifest has `changes` and is signed again by `key`: the
    files stay, so a refusal test needs no new build."""
    d = Path(base) / name
    shutil.copytree(release_dir, d)
    doc = json.loads((d / "manifest.json").read_bytes())
    doc.update(changes)
    manifest = REL.manifest_bytes(doc)
    (d / "manifest.json").write_bytes(manifest)
    (d / "manifest.sig").write_text(key.sign(REL.digest_message(manifest)).hex() + "\n")
    return d
