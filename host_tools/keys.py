"""The operator's keys: the site master key file and what is derived from it (docs/keys.md).

Everything a board holds is derived with HKDF-SHA256 from the site key and the board's device
id, here with `cryptography`; the firmware's washpay/keys.py derives the same with its own
HKDF, and tests/test_journal_keys.py pins both to one vector.
"""

import json
import os
import stat
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SITE_KEY_LEN = 32
DEVICE_SALT = b"washpay/v1/device"
KEY_SALT = b"washpay/v1"
JOURNAL_ENC = b"journal-enc"
JOURNAL_MAC = b"journal-mac"


class KeyFileError(ValueError):
    """A key file is missing or malformed; the message says what to do."""


def _hkdf(ikm, salt, info, length=32):
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def new_site_key(path, passphrase=None):
    """Create a site key file (32 random bytes as hex, mode 0600); refuse to overwrite one.

    With a passphrase the file holds the key sealed with AES-256-GCM under a key stretched
    from the passphrase with scrypt (see `seal_site_key`)."""
    path = Path(path)
    key = os.urandom(SITE_KEY_LEN)
    text = key.hex() + "\n" if passphrase is None else seal_site_key(key, passphrase)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists: a site key is never overwritten") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return key


# ---- the passphrase-protected form (docs/keys.md): one JSON object, scrypt + AES-256-GCM
PROTECTED_FORMAT = "washpay-site-key/1"
PASSPHRASE_ENV = "WASHPAY_SITE_PASSPHRASE"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1  # about 32 MiB and a tenth of a second
_SEAL_AAD = b"washpay/v1/site-key"


class KeyKind:
    """What a protected key file holds: its format name, associated data, passphrase
    variable and the name a person reads in messages."""

    def __init__(self, format, aad, env, name, length):
        self.format, self.aad, self.env, self.name, self.length = format, aad, env, name, length


SITE_KEY = KeyKind(PROTECTED_FORMAT, _SEAL_AAD, PASSPHRASE_ENV, "site key", SITE_KEY_LEN)
# the release signing key (host_tools/release/, docs/release-format.md): an Ed25519 seed
RELEASE_KEY = KeyKind("washpay-release-key/1", b"washpay/v1/release-key",
                      "WASHPAY_RELEASE_PASSPHRASE", "release key", 32)


def _stretch(passphrase, salt, n, r, p):
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    if isinstance(passphrase, str):
        passphrase = passphrase.encode()
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def seal_site_key(key, passphrase):
    """The text of a passphrase-protected key file holding `key`."""
    return seal_key(key, passphrase, SITE_KEY)


def seal_key(key, passphrase, kind):
    """The protected-file text of `key` for a kind of key (SITE_KEY, RELEASE_KEY): one
    mechanism, whose format name and associated data tell the kinds apart, so that one
    kind's file never loads as another's."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, nonce = os.urandom(16), os.urandom(12)
    kek = _stretch(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    sealed = AESGCM(kek).encrypt(nonce, key, kind.aad)
    doc = {"format": kind.format, "kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R,
           "p": SCRYPT_P, "salt": salt.hex(), "nonce": nonce.hex(), "sealed": sealed.hex()}
    return json.dumps(doc, indent=1) + "\n"


def is_protected(path):
    """True if the key file at `path` is the passphrase-protected form."""
    try:
        return Path(path).read_text().lstrip().startswith("{")
    except OSError:
        return False


def ask_passphrase(path, kind=SITE_KEY):
    """The passphrase of a protected key file: the kind's variable (WASHPAY_SITE_PASSPHRASE),
    else a prompt on a terminal; never waits for input that cannot come (scripts, CI)."""
    if os.environ.get(kind.env):
        return os.environ[kind.env]
    if sys.stdin is not None and sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"passphrase for {kind.name} {path}: ")
    raise KeyFileError(
        f"{path} is protected by a passphrase: set {kind.env} or pass --passphrase-file"
    )


def _unseal(path, text, passphrase, kind=SITE_KEY):
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        doc = json.loads(text)
        if doc.get("format") != kind.format or doc.get("kdf") != "scrypt":
            raise ValueError(doc.get("format"))
        salt, nonce = bytes.fromhex(doc["salt"]), bytes.fromhex(doc["nonce"])
        sealed = bytes.fromhex(doc["sealed"])
        n, r, p = int(doc["n"]), int(doc["r"]), int(doc["p"])
    except (ValueError, KeyError, TypeError, AttributeError):
        plain = "neither 64 hex digits nor " if kind is SITE_KEY else ""
        raise KeyFileError(
            f"{path} is not a {kind.name} file ({plain}{kind.format})"
        ) from None
    if passphrase is None:
        passphrase = ask_passphrase(path, kind)
    try:
        key = AESGCM(_stretch(passphrase, salt, n, r, p)).decrypt(nonce, sealed, kind.aad)
    except InvalidTag:
        raise KeyFileError(f"wrong passphrase for {path} (or the file was altered)") from None
    if len(key) != kind.length:
        raise KeyFileError(f"{path} holds {len(key)} bytes; a {kind.name} is {kind.length}")
    return key


def load_protected_key(path, kind, passphrase=None):
    """The key in a protected file of `kind` (only the protected form exists for kinds other
    than the site key)."""
    path = Path(path)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise KeyFileError(f"{kind.name} file {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read {kind.name} file {path}: {e}") from None
    return _unseal(path, text, passphrase, kind)


def load_site_key(path, passphrase=None):
    """The 32-byte site key from a key file written by new_site_key(), either form.

    A protected file takes `passphrase`, else WASHPAY_SITE_PASSPHRASE, else a prompt."""
    path = Path(path)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise KeyFileError(f"site key file {path} not found") from None
    if text.startswith("{"):
        return _unseal(path, text, passphrase)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"{path} is not a site key (expected 64 hex digits)") from None
    if len(key) != SITE_KEY_LEN:
        raise KeyFileError(f"{path} holds {len(key)} bytes; a site key is {SITE_KEY_LEN}")
    return key


def site_key_exposed(path):
    """True if the key file can be read by other users (it should be mode 0600)."""
    return bool(Path(path).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def ensure_site_key(path):
    """Load the site key at `path`, creating it first if there is none."""
    if Path(path).exists():
        return load_site_key(path)
    return new_site_key(path)


def device_secret(site_key, device_id):
    """The secret a board keeps in /secrets.json: HKDF(site key, device salt, device id)."""
    if not device_id:
        raise KeyFileError("a device id is needed to derive a board's secret")
    return _hkdf(site_key, DEVICE_SALT, device_id.encode())


def derive(secret, info):
    """A 32-byte key of one board for one purpose, named by `info`."""
    return _hkdf(secret, KEY_SALT, info)


def journal_keys(secret):
    """(encryption key, MAC key) of a board's transaction journal."""
    return derive(secret, JOURNAL_ENC), derive(secret, JOURNAL_MAC)


TOKEN_INFO = b"token"
COMMAND_INFO = b"command"


def token_key(secret):
    """The key of a board's QR token tags (docs/token-format.md)."""
    return derive(secret, TOKEN_INFO)


def command_key(secret):
    """The key of a board's remote-start command tags (docs/remote-start.md)."""
    return derive(secret, COMMAND_INFO)


def secrets_json(site_key, device_id):
    """The content of a board's /secrets.json."""
    return {"device_secret": device_secret(site_key, device_id).hex()}
