# The board's keys, all derived with HKDF-SHA256 (docs/keys.md is the one definition; the
# host's host_tools/keys.py derives the same keys with `cryptography`, and a shared test
# vector pins both). A board holds only its device secret, in /secrets.json, and derives the
# rest at boot; the site master key never leaves the operator.
from washpay.crypto import hkdf_sha256

DEVICE_SALT = b"washpay/v1/device"
KEY_SALT = b"washpay/v1"


def device_secret(site_key, device_id):
    """The 32-byte secret of one board (done by provisioning, on the host)."""
    return hkdf_sha256(site_key, DEVICE_SALT, device_id.encode(), 32)


def derive(device_secret, info):
    """A 32-byte key of this board for one purpose, named by `info` (bytes)."""
    return hkdf_sha256(device_secret, KEY_SALT, info, 32)


def journal_keys(device_secret):
    """(encryption key, MAC key) of the transaction journal."""
    return derive(device_secret, b"journal-enc"), derive(device_secret, b"journal-mac")


def token_key(device_secret):
    """Tags of the QR tokens this board accepts (docs/token-format.md)."""
    return derive(device_secret, b"token")


def command_key(device_secret):
    """Tags of the server's remote-start commands (docs/remote-start.md)."""
    return derive(device_secret, b"command")


def load_device_secret(secrets):
    """The device secret from the parsed /secrets.json, or None if the board has none."""
    return load_secret(secrets, "device_secret")


def load_secret(secrets, name):
    """A 32-byte key stored as 64 hex digits under `name` in the parsed /secrets.json, or
    None when it is missing or malformed."""
    from binascii import unhexlify

    value = secrets.get(name) if isinstance(secrets, dict) else None
    if not isinstance(value, str) or len(value) != 64:
        return None
    try:
        return unhexlify(value)
    except ValueError:
        return None
