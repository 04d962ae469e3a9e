"""`washpay flash`: put MicroPython (or a washpay factory image) on a board with esptool.

    washpay flash --port P --board B [--firmware FILE] [--dry-run]

The chip and the offset come from boards/B/board.json. Before esptool touches the board the
image is checked with esptool's image tools: it must be an ESP32 image for the board's chip,
MicroPython's combined firmware.bin (bootloader first, not a bare application), and fit in
the board's flash. Then three esptool runs, each printing its own progress:

    erase-flash                     (skipped with --no-erase: keeps the LittleFS volume)
    write-flash --flash-mode keep --flash-size keep OFFSET FILE
    verify-flash --flash-mode keep --flash-size keep OFFSET FILE

`--dry-run` checks the image and prints the exact commands. Exit status: 0 flashed (or the
dry run passed); 1 esptool failed; 2 refused before esptool ran.
"""

import os
import shlex
import subprocess
import sys
from pathlib import Path

from host_tools import boards
from host_tools.espimage import ImageError, chip_of, read_firmware

BUILD_BY_CHIP = {"esp32": "ESP32_GENERIC", "esp32s3": "ESP32_GENERIC_S3"}
IMAGE_DIR_ENV = "WASHPAY_MICROPYTHON_DIR"
DEFAULT_BAUD = 460800


class FlashError(Exception):
    """Flashing refused before esptool ran; the message says what to do."""


def image_dir():
    if os.environ.get(IMAGE_DIR_ENV):
        return Path(os.environ[IMAGE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "washpay" / "micropython"


def micropython_build(board):
    """MicroPython's build for the board (board.json), as micropython.org names its images."""
    return board.get("micropython_build") or BUILD_BY_CHIP.get(board["chip"], "?")


def default_firmware(board):
    """The board's MicroPython image in the image directory, or FlashError saying where."""
    build = micropython_build(board)
    if (board.get("memory") or {}).get("layout") == "frozen":
        raise FlashError(
            f"board {board['id']} has no PSRAM: stock {build} cannot hold washpay, it needs "
            f"MicroPython with washpay frozen in: washpay firmware build --board {board['id']} "
            f"--micropython-src DIR, then pass the image it prints as --firmware FILE"
        )
    path = image_dir() / f"{build}.bin"
    if not path.is_file():
        raise FlashError(
            f"no MicroPython image for {board['id']}: download {build} (v1.26 or later) from "
            f"https://micropython.org/download/{build.split('-')[0]}/ and save it as {path} "
            f"(or set ${IMAGE_DIR_ENV}), or pass --firmware FILE"
        )
    return path


def load_board(board_id):
    try:
        board = boards.load_board(board_id)
    except boards.BoardError as e:
        raise FlashError(str(e)) from None
    errors = [p for p in boards.validate_board(board) if p.level == "error"]
    if errors:
        raise FlashError(f"board {board_id} fails its checks (washpay board check): "
                         f"{errors[0]}")
    return board


def check_image(path, board):
    """The image, read and checked for `board` (espimage.Firmware), or FlashError."""
    offset = int(str(board["firmware_offset"]), 0)
    try:
        with open(path, "rb") as f:
            chip = chip_of(f.read(24))  # first: another chip's layout differs as a whole
    except (OSError, ImageError):
        chip = None  # read_firmware says what is wrong with the file
    if chip is not None and chip != board["chip"]:
        raise FlashError(
            f"{path} is built for {chip}, but board {board['id']} is an {board['chip']}: "
            f"use MicroPython's {micropython_build(board)} image"
        )
    try:
        fw = read_firmware(path, offset)
    except ImageError as e:
        raise FlashError(str(e)) from None
    flash = boards._flash_bytes(board["flash_size"])
    if flash and offset + len(fw.data) > flash:
        raise FlashError(f"{path} ({len(fw.data)} bytes at {hex(offset)}) does not fit the "
                         f"board's {board['flash_size']} flash")
    return fw


def esptool_commands(port, board, firmware, baud=DEFAULT_BAUD, erase=True):
    """[(step name, argv)]: the esptool runs that flash `firmware` onto the board at `port`."""
    offset = hex(int(str(board["firmware_offset"]), 0))
    base = [sys.executable, "-m", "esptool", "--chip", board["chip"], "--port", port,
            "--baud", str(baud)]
    keep = ["--flash-mode", "keep", "--flash-size", "keep"]
    steps = []
    if erase:
        steps.append(("erase", [*base, "--after", "no-reset", "erase-flash"]))
    steps.append(("write", [*base, "--after", "no-reset", "write-flash", *keep, offset,
                            str(firmware)]))
    steps.append(("verify", [*base, "--after", "hard-reset", "verify-flash", *keep, offset,
                             str(firmware)]))
    return steps


def flash(port, board_id, firmware=None, baud=DEFAULT_BAUD, erase=True, dry_run=False,
          out=None, run=subprocess.run):
    """Check, then run (or with dry_run print) the esptool steps; returns the exit status."""
    out = out or sys.stdout
    board = load_board(board_id)
    if board.get("simulated"):
        raise FlashError(f"board {board_id} is the simulated board: it has no flash to write; "
                         f"start it with `washpay sim run --bare` (a freshly flashed board)")
    path = Path(firmware) if firmware else default_firmware(board)
    fw = check_image(path, board)
    what = f"MicroPython {fw.app_version}" if fw.app_version else "image"
    out.write(f"washpay flash: {what} for {fw.chip} ({len(fw.data)} bytes) -> {board['id']} "
              f"at {hex(fw.base)} on {port}\n")
    steps = esptool_commands(port, board, path, baud, erase)
    if dry_run:
        for i, (name, argv) in enumerate(steps, 1):
            out.write(f"# {i}/{len(steps)} {name}\n{shlex.join(argv)}\n")
        return 0
    if not port.startswith(("socket://", "rfc2217://")) and not os.path.exists(port):
        raise FlashError(f"nothing on {port}: no such serial port. Is the board plugged in "
                         f"(ls /dev/ttyUSB* /dev/ttyACM*)?")
    for i, (name, argv) in enumerate(steps, 1):
        out.write(f"washpay flash: step {i}/{len(steps)}: {name}\n")
        out.flush()
        proc = run(argv, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            out.write(
                f"washpay flash: esptool failed at {name} (exit {proc.returncode}); see its "
                f"output above. If it could not connect: hold BOOT while it tries, try a lower "
                f"--baud, or close the program that holds {port}.\n"
            )
            return 1
    out.write(f"washpay flash: done; next: washpay provision --port {port} --board "
              f"{board['id']} --device-id ID\n")
    return 0


def flash_command(args, out=None, err=None):
    err = err or sys.stderr
    try:
        return flash(args.port, args.board, args.firmware, args.baud, erase=not args.no_erase,
                     dry_run=args.dry_run, out=out)
    except FlashError as e:
        err.write(f"washpay flash: {e}\n")
        return 2
