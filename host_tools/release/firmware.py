"""`washpay firmware build`: MicroPython for a board without PSRAM, with washpay frozen in.

    washpay firmware build --board B --micropython-src DIR [--dry-run] [-o FILE]

A plain ESP32-WROOM-32 gives MicroPython about 112 KiB of GC heap; washpay's bytecode loaded
from .mpy files would take most of it. Frozen into the image, the bytecode runs from flash.
This runs MicroPython's own esp32 port build (ESP-IDF's idf.py under `make`) with a frozen
manifest: the port's own, with boards/esp32/_boot.py in place of the port's _boot.py (it
formats only an erased partition), and firmware/washpay/manifest.py:

    make -C DIR/mpy-cross
    make -C DIR/ports/esp32 BOARD=ESP32_GENERIC submodules
    make -C DIR/ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=build/.../manifest.py

and copies DIR/ports/esp32/build-ESP32_GENERIC/firmware.bin to FILE (default
build/firmware/<board>-washpay-<version>.bin), checked as washpay flash checks an image.
`--dry-run` checks the tree and prints the commands. Exit status: 0 built (or the dry run
passed); 1 the build failed; 2 refused before anything ran.
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from host_tools import flash as F
from host_tools.provision import firmware_version

ROOT = Path(__file__).resolve().parents[2]
WASHPAY_MANIFEST = ROOT / "firmware" / "washpay" / "manifest.py"
BOARD_BOOT = ROOT / "boards" / "esp32" / "_boot.py"  # frozen in place of the port's _boot.py
PORT_MODULES = 'freeze("$(PORT_DIR)/modules")'


class BuildError(Exception):
    """Refused before the build ran; the message says what to do."""


def port_target(board):
    """(BOARD, BOARD_VARIANT or None) of MicroPython's esp32 port for the board."""
    build = F.micropython_build(board)
    name, _, variant = build.partition("-")
    return name, variant or None


def check_tree(src):
    src = Path(src)
    if not (src / "ports" / "esp32" / "Makefile").is_file() or not (src / "mpy-cross").is_dir():
        raise BuildError(f"{src} is not a MicroPython source tree (no ports/esp32/Makefile): "
                         f"clone MicroPython v1.26 or later and give its top directory")
    return src


def frozen_manifest(dest, src):
    """The manifest the port build freezes: the port's own (asyncio, networking, ...) with
    its modules/ taken from a copy in which washpay's _boot.py (boards/esp32/_boot.py: format
    only an erased partition, docs/provisioning.md) replaces the port's, then washpay."""
    dest = Path(dest)
    port = Path(src) / "ports" / "esp32"
    try:
        text = (port / "boards" / "manifest.py").read_text()
    except OSError as e:
        raise BuildError(f"{port}/boards/manifest.py: {e.strerror}: is this MicroPython "
                         f"v1.26 or later?") from None
    if text.count(PORT_MODULES) != 1 or not (port / "modules" / "_boot.py").is_file():
        raise BuildError(f"{port}/boards/manifest.py does not freeze {PORT_MODULES} with a "
                         f"_boot.py in it as MicroPython v1.26-1.29 do: washpay's _boot.py "
                         f"cannot replace the port's; build by hand (docs/provisioning.md)")
    modules = dest.parent / "modules"
    if modules.exists():
        shutil.rmtree(modules)
    shutil.copytree(port / "modules", modules)
    shutil.copy(BOARD_BOOT, modules / "_boot.py")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text.replace(PORT_MODULES, f"freeze({str(modules.resolve())!r})")
                    + f"\ninclude({str(WASHPAY_MANIFEST)!r})\n")
    return dest


def build_commands(src, board, manifest, jobs=None):
    """[(step, argv)] of the build, and the path of the firmware.bin it makes."""
    name, variant = port_target(board)
    port = Path(src) / "ports" / "esp32"
    target = [f"BOARD={name}"] + ([f"BOARD_VARIANT={variant}"] if variant else [])
    par = [f"-j{jobs}"] if jobs else []
    steps = [
        ("mpy-cross", ["make", *par, "-C", str(Path(src) / "mpy-cross")]),
        ("submodules", ["make", "-C", str(port), *target, "submodules"]),
        ("build", ["make", *par, "-C", str(port), *target,
                   f"FROZEN_MANIFEST={Path(manifest).resolve()}"]),
    ]
    build_dir = port / (f"build-{name}-{variant}" if variant else f"build-{name}")
    return steps, build_dir / "firmware.bin"


def build(board_id, src, out_file=None, dry_run=False, jobs=None, out=None,
          run=subprocess.run):
    out = out or sys.stdout
    try:
        board = F.load_board(board_id)
    except F.FlashError as e:
        raise BuildError(str(e)) from None
    if board.get("simulated"):
        raise BuildError(f"board {board_id} is the simulated board: it runs the firmware "
                         f"files as they are (washpay sim run)")
    src = check_tree(src)
    version = firmware_version()
    work = ROOT / "build" / "firmware" / board["id"]
    manifest = frozen_manifest(work / "manifest.py", src)
    steps, made = build_commands(src, board, manifest, jobs)
    target = Path(out_file) if out_file else work.parent / f"{board['id']}-washpay-{version}.bin"
    out.write(f"washpay firmware build: MicroPython {F.micropython_build(board)} with washpay "
              f"{version} frozen in, for {board['id']} -> {target}\n")
    if dry_run:
        for i, (name, argv) in enumerate(steps, 1):
            out.write(f"# {i}/{len(steps)} {name}\n{shlex.join(argv)}\n")
        out.write(f"# then: cp {made} {target}\n")
        return 0
    if not shutil.which("idf.py") and not os.environ.get("IDF_PATH"):
        raise BuildError("ESP-IDF is not set up in this shell (no idf.py): install the version "
                         "MicroPython's ports/esp32/README.md names and `source "
                         "$IDF_PATH/export.sh`, or see the commands with --dry-run")
    for i, (name, argv) in enumerate(steps, 1):
        out.write(f"washpay firmware build: step {i}/{len(steps)}: {name}\n")
        out.flush()
        proc = run(argv, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            out.write(f"washpay firmware build: {name} failed (exit {proc.returncode}); see "
                      f"the output above\n")
            return 1
    try:
        fw = F.check_image(made, board)
    except F.FlashError as e:
        out.write(f"washpay firmware build: the build made no usable image: {e}\n")
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(made, target)
    out.write(f"washpay firmware build: {target} ({len(fw.data)} bytes); next: washpay flash "
              f"--port PORT --board {board['id']} --firmware {target}\n")
    return 0


def build_command(args, out=None, err=None):
    err = err or sys.stderr
    try:
        return build(args.board, args.micropython_src, args.output, args.dry_run, args.jobs,
                     out=out)
    except BuildError as e:
        err.write(f"washpay firmware build: {e}\n")
        return 2
