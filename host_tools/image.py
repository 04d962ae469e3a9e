"""`washpay image`: one factory image per device, so a factory line flashes one file per board.

    washpay image --board B --device-id ID -o factory.bin [--micropython firmware.bin]

The image is MicroPython's combined firmware.bin merged (`esptool merge-bin`) with a LittleFS
volume placed at the board's `vfs` partition. The volume holds what `washpay provision`
would copy: the firmware compiled to .mpy for the image's MicroPython version (main.py as
source), /board.json, /config.json and the device's /secrets.json. It is made with
littlefs-python with the geometry MicroPython's VfsLfs2 mounts on an ESP32: 4096-byte blocks
over the whole partition. The output starts at the board's firmware offset, like
firmware.bin itself: `washpay flash --board B --firmware factory.bin` writes it.

The image holds the device's secret: it is written with mode 0600 and belongs to one board.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

from host_tools import keys as K
from host_tools import provision as P
from host_tools import site as S
from host_tools.espimage import ImageError, parse_version
from host_tools.flash import FlashError, check_image, default_firmware

BLOCK_SIZE = 4096
# MicroPython's VfsLfs2 defaults (extmod/vfs_lfs.c): read and program 32 bytes, lookahead 32;
# on-disk format 2.0, which every littlefs 2.x mounts.
LFS_OPTIONS = {"read_size": 32, "prog_size": 32, "cache_size": 128, "lookahead_size": 32,
               "name_max": 255, "disk_version": 0x00020000}


class ImageRefused(Exception):
    """No image was written; the message says why."""


def build_volume(files, size, block_size=BLOCK_SIZE):
    """A LittleFS volume of `size` bytes holding {path: bytes}; returns its bytes."""
    from littlefs import LittleFS

    if size % block_size:
        raise ImageRefused(f"a volume of {size} bytes is not whole {block_size}-byte blocks")
    fs = LittleFS(block_size=block_size, block_count=size // block_size, mount=False,
                  **LFS_OPTIONS)
    fs.format()
    fs.mount()
    for path in sorted(files):
        parent = path.rsplit("/", 1)[0]
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(files[path])
    used = fs.used_block_count
    fs.unmount()
    return bytes(fs.context.buffer), used


def _hex(value):
    return int(str(value), 0)


def vfs_span(board, fw=None):
    """(offset, size) of the vfs partition; the image's partition table must agree."""
    vfs = board.get("vfs") or {}
    offset, size = _hex(vfs["offset"]), _hex(vfs["size"])
    if fw is not None:
        part = fw.partition("vfs")
        if part is None and fw.partitions:
            raise ImageRefused(f"{fw.path} has no partition named vfs: not a MicroPython build")
        if part is not None and (part.offset, part.size) != (offset, size):
            raise ImageRefused(
                f"{fw.path} puts vfs at {hex(part.offset)}+{hex(part.size)}, board "
                f"{board['id']} says {hex(offset)}+{hex(size)}: use the build for that board "
                f"(a volume in the wrong place is reformatted at the first boot)"
            )
    return offset, size


def has_frozen_washpay(data):
    """Whether a MicroPython image has washpay frozen in: the frozen modules' names are in it
    as text (washpay firmware build)."""
    return b"washpay/__init__.py" in data


def build_image(board_id, device_id, output, micropython=None, micropython_version=None,
                site_key_path=None, passphrase_file=None, wifi=None, broker=None,
                vfs_output=None, mpy_cross=None, say=print, firmware_dir=None):
    board = P.load_board(board_id)
    P.check_device_id(device_id)
    wifi = P.parse_wifi(wifi) if wifi is not None else None
    broker = P.check_broker(broker)
    try:
        site_key, _ = S.load(site_key_path, passphrase_file)
    except K.KeyFileError as e:
        raise ImageRefused(str(e)) from None
    try:
        path = Path(micropython) if micropython else default_firmware(board)
        fw = check_image(path, board)
    except FlashError as e:
        raise ImageRefused(str(e)) from None

    version = parse_version(micropython_version) if micropython_version else None
    if micropython_version and version is None:
        raise ImageRefused(f"--micropython-version {micropython_version!r} is not a version")
    version = version or fw.micropython_version
    if version is None:
        raise ImageRefused(f"{path} does not say which MicroPython it is (no application "
                           f"description): pass --micropython-version, e.g. 1.26.0")
    if version < P.MIN_MICROPYTHON or P.mpy_major_for(version) is None:
        need = ".".join(map(str, P.MIN_MICROPYTHON))
        raise ImageRefused(f"MicroPython version mismatch: {path} is MicroPython "
                           f"{'.'.join(map(str, version))}; washpay needs {need} or later")
    tool = P.find_mpy_cross(mpy_cross)
    fw_dir = Path(firmware_dir) if firmware_dir else P.FIRMWARE_DIR
    files = P.compile_firmware(tool, version, P.mpy_major_for(version), fw_dir)
    if (board.get("memory") or {}).get("layout") == "frozen":
        if not has_frozen_washpay(fw.data):
            raise ImageRefused(
                f"board {board['id']} has no PSRAM: {path} is a stock MicroPython, which cannot "
                f"hold washpay; build one with washpay frozen in (washpay firmware build "
                f"--board {board['id']} --micropython-src DIR) and pass it as --micropython")
        files = {k: v for k, v in files.items() if not k.startswith(P.OWNED_DIRS)}
    files.update(P.board_files(board, device_id, site_key, wifi, broker))

    vfs_offset, vfs_size = vfs_span(board, fw)
    if fw.base + len(fw.data) > vfs_offset:
        raise ImageRefused(f"{path} runs past the vfs partition at {hex(vfs_offset)}")
    volume, used = build_volume(files, vfs_size)

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="washpay-image-") as tmp:
        vfs_file = Path(tmp) / "vfs.bin"
        vfs_file.write_bytes(volume)
        cmd = [sys.executable, "-m", "esptool", "--chip", fw.chip, "merge-bin",
               "-o", str(output), "--target-offset", hex(fw.base),
               hex(fw.base), str(path), hex(vfs_offset), str(vfs_file)]
        output.touch(mode=0o600)
        output.chmod(0o600)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            output.unlink(missing_ok=True)
            why = (proc.stderr or proc.stdout).strip().splitlines()
            raise ImageRefused(f"esptool merge-bin failed: {why[-1] if why else proc.returncode}")
    if vfs_output:
        vo = Path(vfs_output)
        vo.touch(mode=0o600)
        vo.chmod(0o600)
        vo.write_bytes(volume)
    ver = ".".join(map(str, version))
    say(f"washpay image: {output} for {device_id} (board {board['id']}, {fw.chip}): "
        f"MicroPython {ver} + washpay {P.firmware_version(fw_dir)} ({len(files)} files, "
        f"{used} of {vfs_size // BLOCK_SIZE} blocks of the vfs at {hex(vfs_offset)})")
    if board.get("simulated"):
        say(f"  boot it: washpay sim run --state DIR --bare --flash-image {output}")
    else:
        say(f"  flash it at {hex(fw.base)}: washpay flash --port PORT --board {board['id']} "
            f"--firmware {output}")
    return {"output": output, "files": files, "vfs_offset": vfs_offset, "vfs_size": vfs_size,
            "base": fw.base, "blocks_used": used, "micropython": version}


def image_command(args, out=None, err=None):
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        build_image(args.board, args.device_id, args.output, args.micropython,
                    args.micropython_version, args.site_key, args.passphrase_file, args.wifi,
                    args.broker, args.vfs_output, args.mpy_cross,
                    say=lambda t: out.write(t + "\n"), firmware_dir=args.firmware_dir)
    except (ImageRefused, P.Refused, ImageError) as e:
        err.write(f"washpay image: {e}\n")
        return 2
    return 0


# ---- the simulated board starts from a volume (washpay sim run --flash-image)
def install_sim_flash(source, flash_file, board):
    """Copy a vfs volume, or the vfs part of a factory image, to a new sim's flash file."""
    source, flash_file = Path(source), Path(flash_file)
    if flash_file.exists():
        raise SystemExit(f"{flash_file} exists: --flash-image only starts a new state "
                         f"directory (remove flash.bin to start over; its journal goes with it)")
    try:
        data = source.read_bytes()
    except OSError as e:
        raise SystemExit(f"cannot read flash image {source}: {e.strerror}") from None
    size = board.get("sim", {}).get("flash_blocks", 512) * BLOCK_SIZE
    if len(data) != size:
        base = _hex(board["firmware_offset"])
        start = _hex(board["vfs"]["offset"]) - base
        if not data[:1] == b"\xe9" or len(data) <= start:
            raise SystemExit(
                f"{source} is neither a {size}-byte vfs volume nor a factory image of "
                f"`washpay image --board {board['id']}` ({len(data)} bytes)"
            )
        data = data[start:start + size]
        data += b"\xff" * (size - len(data))
    flash_file.parent.mkdir(parents=True, exist_ok=True)
    flash_file.write_bytes(data)

