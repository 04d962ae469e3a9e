"""`washpay site`: the site key file in both forms (plain hex, passphrase-protected), and the
device secrets provisioning derives from it, pinned to docs/keys.md's vector on both sides
(host_tools under CPython, the firmware's washpay/keys.py under MicroPython)."""

import hashlib
import io
import json
import os
import stat
import subprocess
import sys

import pytest
from conftest import ROOT, run_micropython
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from host_tools import keys as K
from host_tools import provision as P
from host_tools import site as S
from host_tools.wallet import site_card_key

PASSPHRASE = "correct horse battery"
# docs/keys.md: the key 00 01 .. 1f sealed under PASSPHRASE (salt and nonce fixed)
PROTECTED_VECTOR = {
    "format": "washpay-site-key/1", "kdf": "scrypt", "n": 32768, "r": 8, "p": 1,
    "salt": "00112233445566778899aabbccddeeff", "nonce": "0102030405060708090a0b0c",
    "sealed": "cdc4e37acfa69c085278f53f850a8917559bb3b1a313dd90cf24e8793eb1f5fe"
              "f6f2dcd82b9cecb62a33311a6ea893a5",
}
DEVICE_SECRET_VECTOR = "94ee36cc824e1179f64b3d4c14ed0c4f5f661eb6aa8f39f83548ef34b64960bf"


def washpay(*args, env=None, input_text=None):
    return subprocess.run(
        [sys.executable, "-m", "host_tools.cli", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdin=subprocess.DEVNULL if input_text is None else None, input=input_text,
    )


@pytest.fixture(autouse=True)
def no_ambient_passphrase(monkeypatch):
    monkeypatch.delenv(K.PASSPHRASE_ENV, raising=False)
    monkeypatch.delenv(S.SITE_KEY_ENV, raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal: never prompt


def test_site_init_creates_a_private_key_and_never_overwrites_it(tmp_path):
    path = tmp_path / "site.key"
    r = washpay("site", "init", "--site-key", str(path))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = K.load_site_key(path)
    assert S.key_id(key) in r.stdout and key.hex() not in r.stdout
    before = path.read_bytes()
    r = washpay("site", "init", "--site-key", str(path))
    assert r.returncode == 2
    assert "never overwritten" in r.stderr
    assert path.read_bytes() == before


def test_protected_vector_unseals_to_the_documented_key(tmp_path):
    path = tmp_path / "site.key"
    path.write_text(json.dumps(PROTECTED_VECTOR))
    assert K.load_site_key(path, passphrase=PASSPHRASE) == bytes(range(32))
    # the same by an independent route: hashlib's scrypt and AES-GCM with the fixed AAD
    kek = hashlib.scrypt(PASSPHRASE.encode(), salt=bytes.fromhex(PROTECTED_VECTOR["salt"]),
                         n=32768, r=8, p=1, maxmem=64 * 1024 * 1024, dklen=32)
    plain = AESGCM(kek).decrypt(bytes.fromhex(PROTECTED_VECTOR["nonce"]),
                                bytes.fromhex(PROTECTED_VECTOR["sealed"]),
                                b"washpay/v1/site-key")
    assert plain == bytes(range(32))
    assert json.dumps(PROTECTED_VECTOR["sealed"])[1:-1] in (ROOT / "docs" / "keys.md").read_text()


def test_protected_key_round_trip_by_file_and_by_environment(tmp_path, monkeypatch):
    path = tmp_path / "site.key"
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE + "\n")
    r = washpay("site", "init", "--site-key", str(path), "--protect", "--passphrase-file",
                str(pw))
    assert r.returncode == 0, r.stderr
    assert "protected by a passphrase" in r.stdout
    doc = json.loads(path.read_text())
    assert doc["format"] == "washpay-site-key/1" and stat.S_IMODE(path.stat().st_mode) == 0o600
    key, _ = S.load(path, passphrase_file=pw)
    assert key.hex() not in path.read_text()
    monkeypatch.setenv(K.PASSPHRASE_ENV, PASSPHRASE)
    assert K.load_site_key(path) == key  # what journal decode and sim run call
    r = washpay("site", "show", "--site-key", str(path), env={K.PASSPHRASE_ENV: PASSPHRASE})
    assert r.returncode == 0 and S.key_id(key) in r.stdout and "protected" in r.stdout


def test_protected_key_errors_say_what_to_do(tmp_path):
    path = tmp_path / "site.key"
    path.write_text(json.dumps(PROTECTED_VECTOR))
    with pytest.raises(K.KeyFileError, match="WASHPAY_SITE_PASSPHRASE or pass --passphrase"):
        K.load_site_key(path)  # no passphrase, no terminal: an error, never a hang
    with pytest.raises(K.KeyFileError, match="wrong passphrase"):
        K.load_site_key(path, passphrase="not it at all")
    tampered = dict(PROTECTED_VECTOR, sealed="00" + PROTECTED_VECTOR["sealed"][2:])
    path.write_text(json.dumps(tampered))
    with pytest.raises(K.KeyFileError, match="altered"):
        K.load_site_key(path, passphrase=PASSPHRASE)
    path.write_text('{"format": "something else"}')
    with pytest.raises(K.KeyFileError, match="not a site key file"):
        K.load_site_key(path, passphrase=PASSPHRASE)
    r = washpay("site", "show", "--site-key", str(tmp_path / "none.key"))
    assert r.returncode == 2 and "washpay site init" in r.stderr


def test_site_init_refuses_a_short_or_missing_passphrase(tmp_path):
    path = tmp_path / "site.key"
    pw = tmp_path / "pw"
    pw.write_text("short\n")
    r = washpay("site", "init", "--site-key", str(path), "--passphrase-file", str(pw))
    assert r.returncode == 2 and "at least 8 characters" in r.stderr
    r = washpay("site", "init", "--site-key", str(path), "--protect")
    assert r.returncode == 2 and "--passphrase-file" in r.stderr
    assert not path.exists()


def test_default_site_key_path_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(S.SITE_KEY_ENV, str(tmp_path / "k"))
    assert S.default_site_key_path() == tmp_path / "k"
    with pytest.raises(K.KeyFileError, match="washpay site init --site-key"):
        S.load()


def test_provisioned_secrets_match_the_vector_and_the_firmware_reads_them():
    files = P.board_files({"id": "sim"}, "sim-0001", bytes(range(32)), wifi=("home", "pw123456"))
    secrets = json.loads(files["/secrets.json"])
    assert secrets == {"device_secret": DEVICE_SECRET_VECTOR, "wifi_password": "pw123456",
                       "card_key": site_card_key(bytes(range(32))).hex()}
    assert json.loads(files["/config.json"]) == {"device_id": "sim-0001", "wifi": "home"}
    out = run_micropython(
        "import json\nfrom washpay import keys, config\n"
        f"s = keys.load_device_secret(json.loads({files['/secrets.json'].decode()!r}))\n"
        "print(keys.device_secret(bytes(range(32)), 'sim-0001') == s, s.hex())\n"
        "from washpay.payments.wallet import load_card_key\n"
        f"ck = load_card_key(json.loads({files['/secrets.json'].decode()!r}))\n"
        f"print(ck.hex() == {site_card_key(bytes(range(32))).hex()!r})\n"
        f"c = config.validate(json.loads({files['/config.json'].decode()!r}))\n"
        "print(c['device_id'], c['wifi'], repr(c['broker']))\n",
        heap="128k",
    )[1].split()
    assert out == ["True", DEVICE_SECRET_VECTOR, "True", "sim-0001", "home", "''"]
