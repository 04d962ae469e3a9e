"""What the update tests share: releases built by the host's own tool (real mpy-cross, signed
with a real Ed25519 key), firmware variants that fail on purpose, and a minimal release
server that follows docs/ota.md on a real Mosquitto (the real one is `washpay server release`;
this one exists so the board's side can be proven on its own, and misbehaves on request)."""

import json
import shutil
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sync_env import FIRMWARE

from host_tools import release as REL
from host_tools.bench.update import Release, ReleaseServer  # noqa: F401 (the tests' server)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))


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
