"""Board files: load boards/<id>/board.json and check it before anything is flashed.

A board file names the chip, where MicroPython goes in flash and which GPIO carries each
washpay signal. `validate_board` applies the chip's pin rules (flash pins, input-only pins,
strapping pins, the console UART) so that a wiring mistake is an error message on the bench,
not a board that does not boot or a relay that cannot switch. `wiring_table` renders the pin
map for people wiring a unit (docs/wiring.md is made from it).
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

BOARDS_DIR = Path(__file__).resolve().parent.parent / "boards"

# --- Chip facts -------------------------------------------------------------------------------
# Sources: ESP32 Series Datasheet (pin list, "Strapping Pins", GPIO34-39 are input-only with no
# pull-up/pull-down), ESP32-WROOM-32 datasheet (GPIO6-11 wired to the module's SPI flash),
# ESP32-S3 Series Datasheet (GPIO0-21 and 26-48 exist; GPIO26-32 are the SPI flash/PSRAM bus,
# GPIO33-37 the extra lines of octal flash/PSRAM; strapping GPIO0/3/45/46; GPIO19/20 are the
# USB D-/D+ pads), ESP32-S3-WROOM-1 datasheet (octal PSRAM on the R8 modules), and MicroPython's
# esp32 port (UART0 on GPIO1/3 resp. 43/44 carries the REPL; the S3 build also runs a USB REPL).


@dataclass(frozen=True)
class ChipPins:
    gpios: frozenset
    flash: frozenset  # wired to the module's flash/PSRAM: using them crashes the chip
    input_only: frozenset  # no output driver and no internal pull resistors
    strapping: dict  # GPIO -> what the boot ROM reads from it at reset
    console: frozenset  # UART0: boot log and the MicroPython REPL that provisioning uses
    usb: frozenset = frozenset()
    octal_memory: frozenset = frozenset()
    no_pull: frozenset = frozenset()  # inputs without internal pull-ups


CHIPS = {
    "esp32": ChipPins(
        # 34 GPIO pads: there is no GPIO20 on the WROOM-32's ESP32-D0WD, nor 24 or 28-31.
        gpios=frozenset([*range(20), 21, 22, 23, 25, 26, 27, *range(32, 40)]),
        flash=frozenset(range(6, 12)),
        input_only=frozenset(range(34, 40)),
        no_pull=frozenset(range(34, 40)),
        strapping={
            0: "boot mode: held low at reset, the chip waits in download mode",
            2: "boot mode: must be low or floating for flashing over serial",
            5: "SDIO timing; its internal pull-up holds it high through reset",
            12: "flash voltage: held high at reset, a 3.3 V flash module does not boot",
            15: "boot log and SDIO timing; its internal pull-up holds it high through reset",
        },
        console=frozenset([1, 3]),
    ),
    "esp32s3": ChipPins(
        gpios=frozenset([*range(22), *range(26, 49)]),
        flash=frozenset(range(26, 33)),
        input_only=frozenset(),
        strapping={
            0: "boot mode: held low at reset, the chip waits in download mode",
            3: "JTAG source; floating at reset",
            45: "flash voltage: held high at reset, a 3.3 V flash module does not boot",
            46: "boot mode and boot log: must be low for flashing over serial",
        },
        console=frozenset([43, 44]),
        usb=frozenset([19, 20]),
        octal_memory=frozenset(range(33, 38)),
    ),
}

# Where MicroPython's combined firmware.bin starts (bootloader offset of each chip).
FIRMWARE_OFFSETS = {"esp32": 0x1000, "esp32s3": 0x0}

# MicroPython 1.26+ ends the app partition at 2 MiB and makes "vfs" run from there to the end
# of flash: a LittleFS image made for any other span will not mount and is reformatted.
VFS_OFFSET = 0x200000
FLASH_BLOCK = 4096  # SPI NOR erase unit

# --- Memory ---------------------------------------------------------------------------------
# The GC heap washpay needs, at ESP32 object sizes: the full scenario of `make bench`
# (32-bit MicroPython; TLS buffers excluded, mbedTLS keeps them outside the GC heap on an
# ESP32) passes in this much, held by tests/test_heap_budget.py, with the firmware's bytecode
# in flash ("frozen": measured as a ROMFS image, bytecode in place) and as .mpy files on the
# filesystem, whose bytecode loads into the heap. Lower them as the firmware shrinks (issue
# 13's targets, met: the scenario passes in 83 and 148 KiB).
HEAP_NEEDED_KIB = {"frozen": 96, "mpy": 160}
LAYOUTS = tuple(HEAP_NEEDED_KIB)
PSRAM_MODES = ("quad", "octal")
# ESP32 modules with quad PSRAM (WROVER) wire GPIO16/17 to it: a signal there crashes the chip.
PSRAM_PINS = {"esp32": frozenset([16, 17]), "esp32s3": frozenset()}


def heap_needed_kib(layout):
    return HEAP_NEEDED_KIB[layout]


# --- Signals ----------------------------------------------------------------------------------
# Direction decides the rules: "out" and "io" need an output driver.
SIGNALS = {
    "coin_pulse": ("in", "coin acceptor COIN output (open collector): pull up to 3.3 V"),
    "coin_inhibit": ("out", "coin acceptor SET/inhibit, through a transistor"),
    "relay": ("out", "washer start relay, through an optocoupler or transistor driver"),
    "washer_busy": ("in", "washer busy/door-lock signal, through an optocoupler"),
    "door": ("in", "door switch"),
    "btn_start": ("in", "start button to GND"),
    "btn_select": ("in", "select button to GND"),
    "spi_sck": ("out", "MFRC522 SCK"),
    "spi_mosi": ("out", "MFRC522 MOSI"),
    "spi_miso": ("in", "MFRC522 MISO"),
    "card_cs": ("out", "MFRC522 SDA/NSS (chip select)"),
    "card_rst": ("out", "MFRC522 RST"),
    "qr_tx": ("out", "QR scanner RX"),
    "qr_rx": ("in", "QR scanner TX"),
    "i2c_scl": ("out", "LCD backpack (PCF8574) SCL"),
    "i2c_sda": ("io", "LCD backpack (PCF8574) SDA"),
    "led_green": ("out", "green LED, through a resistor"),
    "led_red": ("out", "red LED, through a resistor"),
    "buzzer": ("out", "buzzer, through a transistor"),
}
REQUIRED_PINS = tuple(SIGNALS)
START_MODES = ("contact", "power", "coin")
LEVELS = ("low", "high")
# (section, key, signal it qualifies): the active level of each polarity-sensitive line.
ACTIVE_LEVELS = (
    ("coin", "pulse_active", "coin_pulse"),
    ("coin", "inhibit_active", "coin_inhibit"),
    ("washer", "relay_active", "relay"),
    ("washer", "busy_active", "washer_busy"),
    ("washer", "door_closed", "door"),
)
# Timings each start mode needs, all in the "washer" section.
MODE_TIMINGS = {
    "contact": ("pulse_ms",),
    "power": (),
    "coin": ("coin_pulse_ms", "coin_gap_ms", "coin_value"),
}


class Problem(NamedTuple):
    level: str  # "error" (do not flash) or "warning" (works if the circuit allows it)
    pin: str | None  # the signal name, or None for a board-wide problem
    gpio: int | None
    message: str

    def __str__(self):
        return f"{self.level}: {self.message}"


class BoardError(Exception):
    """A board file that cannot be found or read."""


def list_boards(boards_dir=None):
    """Ids of the boards under boards/, sorted."""
    root = Path(boards_dir) if boards_dir else BOARDS_DIR
    return sorted(p.parent.name for p in root.glob("*/board.json"))


def load_board(board, boards_dir=None):
    """Read a board by id ("esp32-devkitc"), by folder, or by path to its board.json."""
    root = Path(boards_dir) if boards_dir else BOARDS_DIR
    path = Path(board)
    if path.is_dir():
        path = path / "board.json"
    elif not path.is_file():
        path = root / str(board) / "board.json"
    if not path.is_file():
        known = ", ".join(list_boards(root)) or "none"
        raise BoardError(f"no board {str(board)!r}: known boards are {known} "
                         f"(or give the path of a board.json)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BoardError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    if not isinstance(data, dict):
        raise BoardError(f"{path}: expected a JSON object at the top level")
    return data


def _int(value):
    """A number written as 4096 or "0x1000"; None if it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value), 0)
    except ValueError:
        return None


def _flash_bytes(value):
    """ "4MB" -> 4 MiB, as esptool spells flash sizes; None if unreadable."""
    text = str(value).upper()
    if text.endswith("MB") and text[:-2].isdigit():
        return int(text[:-2]) * 1024 * 1024
    return None


def validate_board(board):
    """Check a board against its chip's rules; returns a list of Problems (empty = fine)."""
    problems = []

    def error(message, pin=None, gpio=None):
        problems.append(Problem("error", pin, gpio, message))

    def warn(message, pin=None, gpio=None):
        problems.append(Problem("warning", pin, gpio, message))

    chip_name = board.get("chip")
    chip = CHIPS.get(chip_name)
    if chip is None:
        error(f"chip {chip_name!r} is not supported: use one of {', '.join(CHIPS)}")
        return problems

    offset = _int(board.get("firmware_offset"))
    if offset != FIRMWARE_OFFSETS[chip_name]:
        want = hex(FIRMWARE_OFFSETS[chip_name])
        error(f"firmware_offset {board.get('firmware_offset')!r} is wrong for {chip_name}: "
              f"MicroPython's firmware.bin goes at {want}")

    _check_flash_layout(board, error)
    _check_memory(board, chip_name, error)
    _check_pins(board.get("pins") or {}, chip_name, chip, error, warn)
    _check_washer(board, error)
    if board.get("simulated"):
        _check_sim(board, error)
    return problems


def _check_flash_layout(board, error):
    flash = _flash_bytes(board.get("flash_size"))
    if flash is None:
        error(f"flash_size {board.get('flash_size')!r} is not a size like \"4MB\"")
        return
    vfs = board.get("vfs") or {}
    start, size = _int(vfs.get("offset")), _int(vfs.get("size"))
    if vfs.get("block_size") != FLASH_BLOCK:
        error(f"vfs.block_size must be {FLASH_BLOCK} (the SPI flash erase unit), "
              f"not {vfs.get('block_size')!r}")
    if start is None or size is None:
        error("vfs needs an offset and a size, e.g. \"0x200000\"")
        return
    if start != VFS_OFFSET or start + size != flash:
        error(f"vfs {hex(start)}+{hex(size)} does not match MicroPython's: from "
              f"{hex(VFS_OFFSET)} to the end of the {board['flash_size']} flash, size "
              f"{hex(flash - VFS_OFFSET)}; a volume of another size is reformatted at boot")


def _check_memory(board, chip_name, error):
    """memory: {"psram": null | {"size_mb", "mode"}, "gc_heap_kib", "layout"}: what heap
    MicroPython gets on this board, and whether washpay runs from .mpy files or frozen."""
    mem = board.get("memory")
    if not isinstance(mem, dict):
        error('memory is missing: say {"psram": null or {"size_mb": 8, "mode": "quad"}, '
              '"gc_heap_kib": ..., "layout": "frozen" or "mpy"}')
        return
    psram = mem.get("psram")
    if psram is not None and not (
            isinstance(psram, dict) and psram.get("mode") in PSRAM_MODES
            and isinstance(psram.get("size_mb"), int) and psram["size_mb"] > 0):
        error(f"memory.psram {psram!r}: null, or e.g. {{\"size_mb\": 8, \"mode\": \"quad\"}}")
        return
    heap, layout = mem.get("gc_heap_kib"), mem.get("layout")
    if layout not in LAYOUTS:
        error(f"memory.layout {layout!r} is not one of {', '.join(LAYOUTS)}")
        return
    if isinstance(heap, bool) or not isinstance(heap, int) or heap <= 0:
        error(f"memory.gc_heap_kib {heap!r}: the GC heap MicroPython gets, in KiB")
        return
    if heap < HEAP_NEEDED_KIB[layout]:
        error(f"memory: washpay as {layout} files needs {HEAP_NEEDED_KIB[layout]} KiB of GC "
              f"heap, the board has {heap} KiB: use a board with PSRAM, or layout \"frozen\" "
              f"(MicroPython with washpay frozen in: washpay firmware build)")
    build = str(board.get("micropython_build") or "")
    if not build:
        error("micropython_build is missing: MicroPython's build for this board, e.g. "
              "ESP32_GENERIC or ESP32_GENERIC-SPIRAM")
    elif not board.get("simulated") and ("SPIRAM" in build) != (psram is not None):
        error(f"micropython_build {build}: a board {'with' if psram else 'without'} PSRAM "
              f"runs a build {'with' if psram else 'without'} SPIRAM in its name")
    if psram is not None and psram.get("mode") == "octal" and chip_name != "esp32s3":
        error(f"memory.psram: octal PSRAM exists only on esp32s3 modules, not {chip_name}")
    if psram is not None:
        for name, gpio in (board.get("pins") or {}).items():
            if gpio in PSRAM_PINS.get(chip_name, ()):
                error(f"{name}: GPIO{gpio} is wired to the PSRAM on {chip_name} modules with "
                      f"PSRAM (WROVER); using it crashes the chip", name, gpio)


def _check_pins(pins, chip_name, chip, error, warn):
    for name in REQUIRED_PINS:
        if name not in pins:
            error(f"{name}: no GPIO assigned (every washpay signal needs one)", name)
    owner = {}
    for name, gpio in pins.items():
        if name not in SIGNALS:
            warn(f"{name}: not a washpay signal, the firmware ignores it", name,
                 gpio if isinstance(gpio, int) else None)
        if isinstance(gpio, bool) or not isinstance(gpio, int):
            error(f"{name}: {gpio!r} is not a GPIO number", name)
            continue
        where = f"{name}: GPIO{gpio}"
        if gpio not in chip.gpios:
            error(f"{where} does not exist on {chip_name}", name, gpio)
            continue
        if gpio in owner:
            error(f"{where} is already used by {owner[gpio]}: give each signal its own pin",
                  name, gpio)
        else:
            owner[gpio] = name
        if gpio in chip.flash:
            error(f"{where} is wired to the module's flash on {chip_name}; using it crashes "
                  f"the chip", name, gpio)
        if gpio in chip.console:
            error(f"{where} is the UART0 console on {chip_name} (boot log and the REPL that "
                  f"provisioning uses)", name, gpio)
        direction = SIGNALS.get(name, ("in",))[0]
        if gpio in chip.input_only and direction != "in":
            error(f"{where} is input-only on {chip_name} and cannot drive an output",
                  name, gpio)
        if gpio in chip.strapping:
            warn(f"{where} is a strapping pin on {chip_name} ({chip.strapping[gpio]}): the "
                 f"attached circuit must not pull it the wrong way during reset", name, gpio)
        if gpio in chip.usb:
            warn(f"{where} is a native USB pin on {chip_name} (MicroPython's USB REPL) and "
                 f"glitches at power-up", name, gpio)
        if gpio in chip.octal_memory:
            warn(f"{where} is taken by octal flash/PSRAM on {chip_name} modules such as "
                 f"N8R8/N16R8; use it only on a quad-SPI module", name, gpio)


def _check_washer(board, error):
    washer = board.get("washer") or {}
    mode = washer.get("start_mode")
    if mode not in START_MODES:
        error(f"washer.start_mode {mode!r} is not one of {', '.join(START_MODES)}")
    for key in MODE_TIMINGS.get(mode, ()):
        value = washer.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            error(f"washer.{key} must be a positive whole number for start_mode {mode!r}, "
                  f"not {value!r}")
    for section, key, signal in ACTIVE_LEVELS:
        value = (board.get(section) or {}).get(key)
        if value not in LEVELS:
            error(f"{section}.{key} must be \"low\" or \"high\" (the level of {signal} when "
                  f"active), not {value!r}", signal)


def _check_sim(board, error):
    blocks = (board.get("sim") or {}).get("flash_blocks")
    size = _int((board.get("vfs") or {}).get("size"))
    if size is None or blocks != size // FLASH_BLOCK:
        error(f"sim.flash_blocks {blocks!r} does not cover vfs.size "
              f"({(size or 0) // FLASH_BLOCK} blocks of {FLASH_BLOCK} B)")


def wiring_table(board):
    """The pin map as a Markdown table: signal, GPIO, direction, note."""
    chip = CHIPS.get(board.get("chip"))
    pins = board.get("pins") or {}
    levels = {signal: (section, key) for section, key, signal in ACTIVE_LEVELS}
    labels = {"in": "in", "out": "out", "io": "in/out"}
    rows = ["| Signal | GPIO | Direction | Note |", "|---|---|---|---|"]
    for name, (direction, what) in SIGNALS.items():
        gpio = pins.get(name)
        notes = [what]
        if name in levels:
            section, key = levels[name]
            level = (board.get(section) or {}).get(key)
            notes.append(f"{level} = door closed" if key == "door_closed"
                         else f"active {level}")
        if chip is not None and isinstance(gpio, int):
            if gpio in chip.no_pull:
                notes.append("input-only pin without internal pull-up: fit an external one")
            if gpio in chip.strapping:
                notes.append(f"strapping pin: {chip.strapping[gpio]}")
        rows.append(f"| {name} | {gpio if gpio is not None else '-'} | {labels[direction]} "
                    f"| {'; '.join(notes)} |")
    return "\n".join(rows) + "\n"


def check_all(boards_dir=None, out=None):
    """Validate every board under boards/ and print what is wrong; 0 if none has an error."""
    out = out or sys.stdout
    root = Path(boards_dir) if boards_dir else BOARDS_DIR
    failed = 0
    ids = list_boards(root)
    if not ids:
        print(f"no boards found under {root}", file=out)
        return 1
    for board_id in ids:
        try:
            board = load_board(board_id, root)
        except BoardError as e:
            print(f"{board_id}: error: {e}", file=out)
            failed += 1
            continue
        problems = validate_board(board)
        if board.get("id") != board_id:
            problems.insert(0, Problem("error", None, None, f"id {board.get('id')!r} does not "
                                       f"match its folder boards/{board_id}"))
        errors = sum(p.level == "error" for p in problems)
        warnings = len(problems) - errors
        verdict = f"{errors} error(s)" if errors else "ok"
        print(f"{board_id}: {verdict}, {warnings} warning(s)", file=out)
        for p in problems:
            print(f"  {p}", file=out)
        failed += bool(errors)
    return 1 if failed else 0


def main(argv=None):
    """`python -m host_tools.boards [check | wiring [board...]]`."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args else "check"
    if command == "check":
        return check_all()
    if command == "wiring":
        for board_id in args or list_boards():
            board = load_board(board_id)
            print(f"### {board['name']} (`{board['id']}`)\n")
            print(wiring_table(board))
        return 0
    print("usage: python -m host_tools.boards [check | wiring [board...]]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
