"""`washpay release` on the host: the sealed release key, a build compiled with the real
mpy-cross and signed, its verification, and every tampering refused with one line and exit
status 2 (docs/release-format.md). The board's side of the same format is
tests/test_ota_verify_micropython.py."""

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from host_tools import keys as K
from host_tools import provision as P
from host_tools import release as R

PASSPHRASE = "correct horse battery"
DOC = (ROOT / "docs" / "release-format.md").read_text()


def washpay(*args, env=None):
    """The CLI as an operator runs it, with no WASHPAY_* variable from the caller's shell."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WASHPAY_")}
    return subprocess.run(
        [sys.executable, "-m", "host_tools.cli", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=300, env={**clean, "PYTHONPATH": str(ROOT), **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def refused(r, *pieces):
    """Exit 2, one line on stderr naming the reason, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for piece in pieces:
        assert piece in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("release-key")
    pw = d / "pw"
    pw.write_text(PASSPHRASE + "\n")
    r = washpay("release", "keygen", "--key", str(d / "release.key"), "--passphrase-file",
                str(pw))
    assert r.returncode == 0, r.stderr
    return d / "release.key", d / "release.pub", pw


@pytest.fixture(scope="module")
def built(keys, tmp_path_factory):
    key, pub, pw = keys
    out = tmp_path_factory.mktemp("rel") / "rel"
    r = washpay("release", "build", "--version", P.firmware_version(), "-o", str(out),
                "--key", str(key), "--passphrase-file", str(pw), "--boards",
                "sim,esp32-devkitc", "--min-version", "0.0.5", "--micropython-version",
                "1.26.0")
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_keygen_seals_the_private_key_and_writes_the_public_one(keys):
    key, pub, pw = keys
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    doc = json.loads(key.read_text())
    assert doc["format"] == "washpay-release-key/1" and doc["kdf"] == "scrypt"
    private = R.load_private(key, pw)
    public = R.public_bytes(private)
    assert pub.read_text() == f"ed25519 {public.hex()}\n"
    assert R.load_public(pub) == public
    # the seed is nowhere in the file in the clear
    from cryptography.hazmat.primitives import serialization as s

    seed = private.private_bytes(s.Encoding.Raw, s.PrivateFormat.Raw, s.NoEncryption())
    assert seed.hex() not in key.read_text()


def test_release_key_and_site_key_never_load_as_each_other(keys, tmp_path):
    key, pub, pw = keys
    with pytest.raises(K.KeyFileError, match="not a site key file"):
        K.load_site_key(key, passphrase=PASSPHRASE)
    with pytest.raises(K.KeyFileError, match="not a site key"):
        K.load_site_key(pub)  # a public key file is not a plain site key either
    site = tmp_path / "site.key"
    K.new_site_key(site, passphrase=PASSPHRASE)
    with pytest.raises(K.KeyFileError, match="not a release key file"):
        R.load_private(site, pw)
    assert washpay("release", "build", "--version", P.firmware_version(), "-o",
                   str(tmp_path / "x"), "--key", str(site), "--passphrase-file",
                   str(pw)).returncode == 2


def test_keygen_refusals(keys, tmp_path):
    key, pub, pw = keys
    before = key.read_bytes()
    refused(washpay("release", "keygen", "--key", str(key), "--passphrase-file", str(pw)),
            "never overwritten")
    assert key.read_bytes() == before
    refused(washpay("release", "keygen", "--key", str(tmp_path / "a.key")),
            "always sealed with a passphrase", "WASHPAY_RELEASE_PASSPHRASE")
    short = tmp_path / "short"
    short.write_text("abc\n")
    refused(washpay("release", "keygen", "--key", str(tmp_path / "b.key"),
                    "--passphrase-file", str(short)), "at least 8 characters")
    assert not (tmp_path / "a.key").exists() and not (tmp_path / "b.key").exists()
    r = washpay("release", "keygen", "--key", str(tmp_path / "c.key"),
                env={"WASHPAY_RELEASE_PASSPHRASE": PASSPHRASE})
    assert r.returncode == 0 and (tmp_path / "c.pub").exists(), r.stderr
    assert R.load_public(tmp_path / "c.pub") != R.load_public(pub)  # a new key each time


def test_build_writes_a_signed_manifest_of_every_firmware_file(keys, built):
    key, pub, pw = keys
    out, text = built
    manifest = (out / "manifest.json").read_bytes()
    sig = bytes.fromhex((out / "manifest.sig").read_text())
    # the signed message, spelled out as docs/release-format.md gives it
    message = b"washpay/v1/release" + hashlib.sha256(manifest).digest()
    assert len(message) == 50 and '"washpay/v1/release"' in DOC
    Ed25519PublicKey.from_public_bytes(R.load_public(pub)).verify(sig, message)
    doc = json.loads(manifest)
    assert manifest == (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
    assert doc["format"] == "washpay-release/1" and doc["version"] == P.firmware_version()
    assert doc["min_version"] == "0.0.5" and doc["downgrade"] is False
    assert doc["boards"] == ["esp32-devkitc", "sim"]
    assert doc["micropython"] == "1.26.0" and doc["mpy"] == 6
    records = (ROOT / "firmware" / "washpay" / "journal" / "records.py").read_text()
    assert doc["journal_formats"] == [int(re.search(r"^VERSION = const\((\d+)\)", records,
                                                     re.M).group(1))]
    assert doc["expires"] - doc["created"] == 90 * 86400
    assert abs(doc["created"] - time.time()) < 3600
    # every file of the firmware, as provisioning would install it, and nothing else; not
    # the loader (firmware/bootslot.py), which is never updated over the air (docs/ota.md)
    sources = {"/" + p.relative_to(ROOT / "firmware").with_suffix(
        ".mpy" if p.name != "main.py" else ".py").as_posix()
        for p in (ROOT / "firmware").rglob("*.py")
        if "__pycache__" not in p.parts and p.name not in ("manifest.py", "bootslot.py")}
    assert {f["path"] for f in doc["files"]} == sources
    assert [f["path"] for f in doc["files"]] == sorted(sources)
    for f in doc["files"]:
        data = (out / "files" / f["path"].lstrip("/")).read_bytes()
        assert len(data) == f["size"] and hashlib.sha256(data).hexdigest() == f["sha256"]
        if f["path"].endswith(".mpy"):
            assert data[:2] == b"M\x06"
    assert "/washpay/ota/ed25519.mpy" in sources  # the verifier ships in every release
    assert f"release {doc['version']}" in text and "sim" in text
    # every field is documented, once, in the doc's table
    for field in doc:
        assert f"| `{field}` |" in DOC, field


def test_verify_accepts_the_release(keys, built):
    key, pub, pw = keys
    out, _ = built
    r = washpay("release", "verify", str(out), "--pub", str(pub))
    assert r.returncode == 0, r.stderr
    assert "verifies" in r.stdout and R.S.key_id(R.load_public(pub)) in r.stdout


def tampered(built, tmp_path, change):
    out, _ = built
    d = tmp_path / "rel"
    shutil.copytree(out, d)
    change(d)
    return d


def _first_mpy(d):
    return sorted((d / "files" / "washpay").glob("*.mpy"))[0]


def _flip_byte(f, i=20):
    b = bytearray(f.read_bytes())
    b[i] ^= 1
    f.write_bytes(bytes(b))


TAMPERING = {
    "a file altered": (lambda d: _flip_byte(_first_mpy(d)), "differs from the manifest"),
    "a file truncated": (lambda d: _first_mpy(d).write_bytes(_first_mpy(d).read_bytes()[:-1]),
                         "differs from the manifest"),
    "a file removed": (lambda d: _first_mpy(d).unlink(), "missing"),
    "a file added": (lambda d: (d / "files" / "washpay" / "evil.mpy").write_bytes(b"M\x06"),
                     "files/washpay/evil.mpy is not in the manifest"),
    "the manifest altered": (lambda d: (d / "manifest.json").write_bytes(
        (d / "manifest.json").read_bytes().replace(b'"min_version":"0.0.5"',
                                                   b'"min_version":"0.0.0"')),
                             "bad signature"),
    # the first byte flipped (writing "00" left it as it was when it already was 00: the
    # signature depends on the build time, so 1 build in 256 did not alter it)
    "the signature altered": (lambda d: (d / "manifest.sig").write_text(
        "%02x" % (int((d / "manifest.sig").read_text()[:2], 16) ^ 0xFF)
        + (d / "manifest.sig").read_text()[2:]), "bad signature"),
    "the signature not hex": (lambda d: (d / "manifest.sig").write_text("nope\n"),
                              "not an Ed25519 signature"),
    "the signature removed": (lambda d: (d / "manifest.sig").unlink(), "manifest.sig missing"),
}


@pytest.mark.parametrize("name", list(TAMPERING))
def test_verify_refuses_tampering(keys, built, tmp_path, name):
    key, pub, pw = keys
    change, reason = TAMPERING[name]
    d = tampered(built, tmp_path, change)
    refused(washpay("release", "verify", str(d), "--pub", str(pub)), reason)


def test_verify_refuses_another_key_and_no_release(keys, built, tmp_path):
    key, pub, pw = keys
    out, _ = built
    other = tmp_path / "other.pub"
    other.write_text("ed25519 " + "ab" * 32 + "\n")
    refused(washpay("release", "verify", str(out), "--pub", str(other)), "bad signature",
            "not signed by release key")
    bad = tmp_path / "bad.pub"
    bad.write_text("hello\n")
    refused(washpay("release", "verify", str(out), "--pub", str(bad)),
            "not a release public key")
    refused(washpay("release", "verify", str(tmp_path / "none"), "--pub", str(pub)),
            "not a release directory")
    refused(washpay("release", "verify", str(out), "--pub", str(tmp_path / "no.pub")),
            "cannot read release public key")


def test_verify_refuses_an_expired_release(keys, tmp_path):
    key, pub, pw = keys
    private = R.load_private(key, pw)
    out = tmp_path / "old"
    R.build(P.firmware_version(), out, private, ["sim"], expires_days=1,
            now=int(time.time()) - 2 * 86400)
    refused(washpay("release", "verify", str(out), "--pub", str(pub)), "expired on")
    assert R.verify(out, R.load_public(pub), now=time.time() - 1.5 * 86400)["boards"] == ["sim"]


def test_build_refusals(keys, built, tmp_path):
    key, pub, pw = keys
    out, _ = built
    v = P.firmware_version()
    base = ["release", "build", "--key", str(key), "--passphrase-file", str(pw)]
    refused(washpay(*base, "--version", "9.9.9", "-o", str(tmp_path / "a")),
            "--version 9.9.9", "VERSION")
    refused(washpay(*base, "--version", "1.2", "-o", str(tmp_path / "a")), "MAJOR.MINOR.PATCH")
    refused(washpay(*base, "--version", v, "--min-version", "x", "-o", str(tmp_path / "a")),
            "--min-version")
    refused(washpay(*base, "--version", v, "--boards", "esp8266", "-o", str(tmp_path / "a")),
            "no board 'esp8266'")
    refused(washpay(*base, "--version", v, "-o", str(out)), "already exists")
    refused(washpay(*base, "--version", v, "--micropython-version", "1.20.0", "-o",
                    str(tmp_path / "a")), "needs 1.26")
    refused(washpay(*base, "--version", v, "--micropython-version", "banana", "-o",
                    str(tmp_path / "a")), "is not a version")
    refused(washpay(*base, "--version", v, "--expires-days", "0", "-o", str(tmp_path / "a")),
            "--expires-days")
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    refused(washpay("release", "build", "--key", str(key), "--passphrase-file", str(wrong),
                    "--version", v, "-o", str(tmp_path / "a")), "wrong passphrase")
    refused(washpay("release", "build", "--key", str(key), "--version", v, "-o",
                    str(tmp_path / "a")), "WASHPAY_RELEASE_PASSPHRASE")
    refused(washpay("release", "build", "--key", str(tmp_path / "none.key"), "--version", v,
                    "-o", str(tmp_path / "a")), "no release key", "release keygen")
    assert not (tmp_path / "a").exists()


def test_verify_refuses_a_signed_manifest_that_is_not_a_release(keys, built, tmp_path):
    """Signed by the release key but malformed (a faulty build tool): one line, no traceback."""
    key, pub, pw = keys
    private = R.load_private(key, pw)
    out, _ = built
    doc = json.loads((out / "manifest.json").read_bytes())
    for name, change in (("no size", lambda d: d["files"][0].pop("size")),
                         ("hash not hex", lambda d: d["files"][0].update(sha256="zz" * 32)),
                         ("no version", lambda d: d.pop("version")),
                         ("a bad path", lambda d: d["files"][0].update(path="/secrets.json"))):
        bad = json.loads(json.dumps(doc))
        change(bad)
        d = tmp_path / name.replace(" ", "-")
        shutil.copytree(out, d)
        m = R.manifest_bytes(bad)
        (d / "manifest.json").write_bytes(m)
        (d / "manifest.sig").write_text(private.sign(R.digest_message(m)).hex() + "\n")
        refused(washpay("release", "verify", str(d), "--pub", str(pub)),
                "which no board may write" if name == "a bad path" else "is signed but not")
