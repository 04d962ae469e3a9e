"""`washpay site`: the operator's site master key file (docs/keys.md).

`washpay site init` creates it once per site: 32 random bytes, mode 0600, never overwritten,
optionally sealed with a passphrase (scrypt + AES-256-GCM). Every other command that needs the
key (`provision`, `image`, `journal decode`) finds it the same way: `--site-key FILE`, else
$WASHPAY_SITE_KEY, else ~/.config/washpay/site.key; a protected file's passphrase comes from
`--passphrase-file`, else $WASHPAY_SITE_PASSPHRASE, else a prompt on a terminal.
"""

import hashlib
import os
import sys
from pathlib import Path

from host_tools import keys as K

SITE_KEY_ENV = "WASHPAY_SITE_KEY"
MIN_PASSPHRASE = 8


def default_site_key_path():
    """Where the site key is when no --site-key is given."""
    if os.environ.get(SITE_KEY_ENV):
        return Path(os.environ[SITE_KEY_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "washpay" / "site.key"


def read_passphrase_file(path):
    """The passphrase in `path`: its first line, without the line end."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise K.KeyFileError(f"cannot read passphrase file {path}: {e.strerror}") from None
    lines = text.splitlines()
    return lines[0] if lines else ""


def key_id(site_key):
    """A short public name of a site key, to tell keys apart without showing them."""
    return hashlib.sha256(b"washpay/v1/key-id" + site_key).hexdigest()[:8]


def load(path=None, passphrase_file=None):
    """(site key, its path) for the commands that need it; KeyFileError says what to do."""
    path = Path(path) if path else default_site_key_path()
    if not path.exists():
        raise K.KeyFileError(
            f"no site key at {path}: create the site's key once with "
            f"`washpay site init --site-key {path}` (and back it up), or point --site-key or "
            f"${SITE_KEY_ENV} at the operator's key file"
        )
    passphrase = read_passphrase_file(passphrase_file) if passphrase_file else None
    return K.load_site_key(path, passphrase=passphrase), path


def _new_passphrase(args):
    if args.passphrase_file:
        return read_passphrase_file(args.passphrase_file)
    if os.environ.get(K.PASSPHRASE_ENV):
        return os.environ[K.PASSPHRASE_ENV]
    if sys.stdin is not None and sys.stdin.isatty():
        import getpass

        first = getpass.getpass("passphrase for the new site key: ")
        if getpass.getpass("again: ") != first:
            raise K.KeyFileError("the two passphrases differ: nothing was written")
        return first
    raise K.KeyFileError(
        f"--protect needs a passphrase: pass --passphrase-file or set {K.PASSPHRASE_ENV}"
    )


def init_command(args, out=None, err=None):
    """`washpay site init`: 0 when the key file was created, 2 when refused."""
    out = out or sys.stdout
    err = err or sys.stderr
    path = Path(args.site_key) if args.site_key else default_site_key_path()
    try:
        if path.exists():
            raise K.KeyFileError(
                f"{path} already exists: a site key is never overwritten (every board, "
                f"journal and card of the site depends on it)"
            )
        passphrase = None
        if args.protect or args.passphrase_file:
            passphrase = _new_passphrase(args)
            if len(passphrase) < MIN_PASSPHRASE:
                raise K.KeyFileError(
                    f"the passphrase must be at least {MIN_PASSPHRASE} characters: "
                    f"nothing was written"
                )
        key = K.new_site_key(path, passphrase=passphrase)
    except K.KeyFileError as e:
        err.write(f"washpay site init: {e}\n")
        return 2
    form = "protected by a passphrase" if passphrase else "not protected: keep it private"
    out.write(f"site key {key_id(key)} written to {path} (mode 0600, {form}).\n"
              f"Back it up offline: without it no journal verifies and no board is "
              f"provisioned for this site.\n")
    return 0


def show_command(args, out=None, err=None):
    """`washpay site show`: which key a file holds (its id), without showing it."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        key, path = load(args.site_key, args.passphrase_file)
    except K.KeyFileError as e:
        err.write(f"washpay site show: {e}\n")
        return 2
    form = "protected" if K.is_protected(path) else "plain"
    exposed = " (readable by other users: chmod 600 it)" if K.site_key_exposed(path) else ""
    out.write(f"site key {key_id(key)} in {path}, {form}{exposed}\n")
    return 0
