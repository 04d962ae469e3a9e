"""Every refusal of an update on the simulated board (docs/ota.md, "Refusals"): each is
journaled as ota_refused, reported as `refused` with its reason, and leaves the running
version as it was; the next offer is taken as if nothing happened."""

import copy
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ota_env import DEVICE, Release, build_release, journal, resigned, rig, version

pytestmark = pytest.mark.device


def flipped(data, at):
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


def test_each_refusal_is_journaled_and_reported(tmp_path):
    base = tmp_path / "rel"
    base.mkdir()
    good_dir = build_release(base, "0.2.0")
    good = Release(good_dir)
    now = int(time.time())
    other_key = Ed25519PrivateKey.from_private_bytes(bytes(32))

    def re(name, **kw):
        return Release(resigned(base, good_dir, name, **kw))

    altered_file = copy.copy(good)
    altered_file.files = [flipped(good.files[0], 5)] + good.files[1:]
    altered_manifest = copy.copy(good)
    altered_manifest.manifest = flipped(good.manifest, 40)
    cases = [
        # (name, release the server holds, release offered, server misbehaviour, reason)
        ("bad signature", re("sig", key=other_key), None, None, "bad signature"),
        ("another board", re("board", boards=["esp32-devkitc"]), None, None,
         "is for boards esp32-devkitc, not sim"),
        ("journal format", re("jf", journal_formats=[99]), None, None,
         "reads journal formats 99"),
        ("older than the running", re("old", version="0.0.9"), None, None,
         "release 0.0.9 is not newer than the running 0.1.0"),
        ("min_version", re("min", min_version="0.1.5"), None, None,
         "updates from 0.1.5 or later"),
        ("expired", re("exp", expires=now - 10), None, None, "expired"),
        ("wrong hash", altered_file, good, None, "SHA-256 differs from the manifest"),
        ("truncated chunk", good, None, "short", "truncated chunk"),
        ("manifest not the offer's", altered_manifest, good, None,
         "manifest differs from the offer"),
        ("server has no such release", None, good, None, "server has no release"),
    ]
    with rig(tmp_path) as (sim, server, st):
        for n, (name, held, offered, misbehave, why) in enumerate(cases, 1):
            server.releases.clear()
            if held is not None:
                server.add(held)
            server.on_request = (lambda *a, m=misbehave: m) if misbehave else None
            server.offer(DEVICE, offered or held)
            server.wait(lambda s, n=n: s.states().count("refused") >= n, timeout=120,
                        what=f"refusal: {name}")
            report = [r for _, r in server.reports if r["state"] == "refused"][-1]
            assert why in report["reason"], (name, report)
        assert version(sim) == "0.1.0"
        assert "switched" not in server.states()
        # and after all that, a good release goes through
        server.releases.clear()
        server.on_request = None
        server.add(good)
        server.offer(DEVICE, good)
        server.wait(lambda s: "healthy" in s.states(), timeout=180, what="healthy")
        sim.call("power", state="cut")
        kinds = journal(st)
        assert sum(1 for k, _ in kinds if k == "ota_refused") == len(cases)
        assert ("ota_done", "0.2.0") in kinds


def test_without_a_release_key_the_offer_is_refused(tmp_path):
    base = tmp_path / "rel"
    base.mkdir()
    good = Release(build_release(base, "0.2.0"))
    with rig(tmp_path, release_pub=False) as (sim, server, st):
        server.add(good)
        server.offer(DEVICE, good)
        server.wait(lambda s: s.replies, timeout=60, what="the reply")
        reply = server.replies[0][1]
        assert reply["result"] == "refused"
        assert reply["reason"] == ("no release public key in /release.pub: provision the "
                                   "board with one")
        assert server.requests == 0 and version(sim) == "0.1.0"
