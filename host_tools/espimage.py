"""ESP32 flash images as washpay's host tools read them.

Which chip an image was built for, whether it is MicroPython's combined `firmware.bin`
(second-stage bootloader + partition table + application, flashed at the chip's bootloader
offset) or a bare application, where its partitions are and which MicroPython release it
carries. esptool's image classes parse and check the image headers; the partition table and
the application description are the ESP-IDF formats, read here:

- partition table at flash 0x8000: 32-byte entries `AA 50 | type | subtype | offset u32 |
  size u32 | label[16] | flags u32`, ended by an MD5 entry (`EB EB ...`) or erased flash;
- `esp_app_desc_t` at the start of the application's first DROM segment: magic 0xABCD5432,
  then secure_version, two reserved words, version[32], project_name[32].
"""

import re
import struct
from dataclasses import dataclass
from pathlib import Path

IMAGE_MAGIC = 0xE9
PARTITION_TABLE_OFFSET = 0x8000
_ENTRY = struct.Struct("<2sBBII16sI")
_ENTRY_MAGIC = b"\xaa\x50"
_MD5_MAGIC = b"\xeb\xeb"
_APP_DESC_MAGIC = 0xABCD5432
TYPE_APP, TYPE_DATA = 0, 1


class ImageError(ValueError):
    """An image that cannot be used; the message says what it is and what to give instead."""


@dataclass(frozen=True)
class Partition:
    label: str
    type: int
    subtype: int
    offset: int
    size: int


def chip_of(data, name="the image"):
    """The chip ("esp32", "esp32s3", ...) an image header says it was built for."""
    if len(data) < 24 or data[0] != IMAGE_MAGIC:
        first = f"0x{data[0]:02x}" if data else "nothing"
        raise ImageError(f"{name} is not an ESP32 firmware image (it starts with {first}, not "
                         f"the image magic 0xe9): give MicroPython's .bin for the board")
    from esptool.targets import CHIP_DEFS

    chip_id = int.from_bytes(data[12:14], "little")
    for chip, rom in CHIP_DEFS.items():
        if chip != "esp8266" and getattr(rom, "IMAGE_CHIP_ID", None) == chip_id:
            return chip
    raise ImageError(f"{name} is for an unknown chip (image chip id {chip_id})")


def load_image(data, chip, name="the image"):
    """esptool's parsed image (header, segments, checksum), or ImageError."""
    from esptool.bin_image import LoadFirmwareImage

    try:
        return LoadFirmwareImage(chip, data)
    except Exception as e:  # esptool raises FatalError, struct.error, RuntimeError, ...
        raise ImageError(f"{name} is damaged or truncated: {e}") from None


def is_application(image):
    """True for an application image (segments mapped from flash), False for a bootloader."""
    rom = image.ROM_LOADER
    return any(rom.IROM_MAP_START <= s.addr < rom.IROM_MAP_END
               or rom.DROM_MAP_START <= s.addr < rom.DROM_MAP_END for s in image.segments)


def parse_partition_table(data):
    """Partitions from the bytes of a partition table (0xc00 bytes at flash 0x8000)."""
    parts = []
    for off in range(0, len(data) - _ENTRY.size + 1, _ENTRY.size):
        magic, ptype, subtype, offset, size, label, _flags = _ENTRY.unpack_from(data, off)
        if magic != _ENTRY_MAGIC:
            break  # the MD5 entry (EB EB) or erased flash ends the table
        parts.append(Partition(label.rstrip(b"\0").decode(errors="replace"), ptype, subtype,
                               offset, size))
    return parts


def app_description(image):
    """(project name, version) from an application image's esp_app_desc_t, or None."""
    rom = image.ROM_LOADER
    for seg in image.segments:
        if rom.DROM_MAP_START <= seg.addr < rom.DROM_MAP_END and len(seg.data) >= 80:
            magic, = struct.unpack_from("<I", seg.data, 0)
            if magic != _APP_DESC_MAGIC:
                return None
            version = bytes(seg.data[16:48]).split(b"\0")[0].decode(errors="replace")
            project = bytes(seg.data[48:80]).split(b"\0")[0].decode(errors="replace")
            return project, version
    return None


def parse_version(text):
    """(1, 26, 0) from "v1.26.0", "1.26", "v1.27.0-preview.12.gabcdef"; None if not one."""
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


@dataclass
class Firmware:
    """MicroPython's combined firmware.bin (or a factory image that starts with one)."""

    path: Path
    data: bytes
    chip: str
    base: int  # the flash address of data[0]: the chip's bootloader offset
    partitions: list
    project: str | None = None
    app_version: str | None = None
    app: object = None  # esptool's image of the application

    @property
    def micropython_version(self):
        if self.project and self.project.lower() != "micropython":
            return None
        return parse_version(self.app_version)

    def partition(self, label):
        for p in self.partitions:
            if p.label == label:
                return p
        return None


def read_firmware(path, base):
    """Read and check MicroPython's combined image, to be flashed at `base`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}") from None
    chip = chip_of(data, str(path))
    image = load_image(data, chip, str(path))
    if is_application(image):
        raise ImageError(
            f"{path} is an application image (it goes at 0x10000), not MicroPython's combined "
            f"firmware.bin (bootloader + partition table + application, flashed at "
            f"{hex(base)}): download the .bin from micropython.org/download for the board"
        )
    fw = Firmware(path, data, chip, base, [])
    table = PARTITION_TABLE_OFFSET - base
    if 0 <= table < len(data):
        fw.partitions = parse_partition_table(data[table:table + 0xC00])
    if not fw.partitions:
        raise ImageError(f"{path} has no partition table at {hex(PARTITION_TABLE_OFFSET)}: it "
                         f"is not MicroPython's combined firmware.bin for the board")
    app = next((p for p in fw.partitions if p.type == TYPE_APP), None)
    if app is None:
        raise ImageError(f"{path}: its partition table has no application partition: a board "
                         f"flashed with it would not start")
    fw.app = _application(path, data, chip, app, app.offset - base)
    desc = app_description(fw.app)
    if desc:
        fw.project, fw.app_version = desc
    return fw


def _application(path, data, chip, part, start):
    """The application image at its partition's offset (esptool's parse), or ImageError: an
    image that holds only a bootloader and a partition table flashes a board that never
    starts."""
    where = f"the {part.label} partition at {hex(part.offset)}"
    if not 0 <= start < len(data) or data[start] != IMAGE_MAGIC:
        ends = f"ends at {len(data)} bytes" if start >= len(data) else "has no image header"
        raise ImageError(f"{path} holds no application: it {ends} where the application "
                         f"belongs ({where}); give MicroPython's whole firmware.bin for the "
                         f"board")
    app = load_image(data[start:start + part.size], chip, f"the application in {path}")
    if not is_application(app):
        raise ImageError(f"{path}: {where} holds no application image")
    return app
