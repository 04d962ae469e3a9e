"""Stand-ins for MicroPython's ESP32 firmware.bin, built with esptool's own image classes.

No real MicroPython image can be downloaded here, so tests build one with the same layout:
a second-stage bootloader image (RAM segments only) at the chip's bootloader offset, a
partition table at 0x8000 with MicroPython's 4 MiB layout (nvs, phy_init, factory app at
0x10000, vfs at 0x200000), and an application image at 0x10000 whose first DROM segment holds
an esp_app_desc_t naming the project "micropython" and its version. The pieces are merged
with `esptool merge-bin`, as ESP-IDF's build does. The code is dummy (zeros): the images are
valid to esptool (headers, checksums, SHA-256 digests) but do not run on a chip.
"""

import hashlib
import struct
import subprocess
import sys
from pathlib import Path

from esptool.bin_image import ELFSection, ESP32FirmwareImage, ESP32S3FirmwareImage

CLASSES = {"esp32": ESP32FirmwareImage, "esp32s3": ESP32S3FirmwareImage}
BOOTLOADER_OFFSET = {"esp32": 0x1000, "esp32s3": 0x0}
RAM = {  # (DRAM, IRAM) load addresses for the bootloader's segments
    "esp32": (0x3FFF0000, 0x40080400),
    "esp32s3": (0x3FCE3000, 0x403C8000),
}
FLASH_SIZES = {"4MB": 0x20, "8MB": 0x30}


def _image(chip, segments, entry, flash_size="4MB"):
    img = CLASSES[chip]()
    img.segments = [ELFSection(b".seg%d" % i, addr, data, 0)
                    for i, (addr, data) in enumerate(segments)]
    img.entrypoint = entry
    img.flash_mode = 2  # dio
    img.flash_size_freq = FLASH_SIZES[flash_size]  # 40 MHz
    return img.save(None)


def bootloader(chip, flash_size="4MB"):
    dram, iram = RAM[chip]
    return _image(chip, [(dram, b"\x00" * 64), (iram, b"\x00" * 256)], iram, flash_size)


def app_desc(version, project="micropython"):
    desc = struct.pack("<II8s32s32s16s16s32s32s", 0xABCD5432, 0, b"", version.encode(),
                       project.encode(), b"12:00:00", b"Jan  1 2026", b"v5.4.1", b"\0" * 32)
    return desc + b"\0" * (256 - len(desc))


def application(chip, version="v1.29.0", project="micropython"):
    rom = CLASSES[chip].ROM_LOADER
    return _image(chip, [(rom.DROM_MAP_START + 0x20, app_desc(version, project) + b"\0" * 256),
                         (rom.IROM_MAP_START + 0x20, b"\x00" * 1024)], rom.IROM_MAP_START + 0x20)


def partition_table(flash_size=0x400000):
    """MicroPython's esp32 layout: the app ends at 2 MiB and vfs runs to the end of flash."""
    rows = [
        (1, 0x02, 0x9000, 0x6000, b"nvs"),
        (1, 0x01, 0xF000, 0x1000, b"phy_init"),
        (0, 0x00, 0x10000, 0x1F0000, b"factory"),
        (1, 0x81, 0x200000, flash_size - 0x200000, b"vfs"),
    ]
    table = b"".join(struct.pack("<2sBBII16sI", b"\xaa\x50", t, s, off, size, label, 0)
                     for t, s, off, size, label in rows)
    table += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(table).digest()
    return table + b"\xff" * (0xC00 - len(table))


def micropython_firmware(dest, chip="esp32", version="v1.29.0", project="micropython",
                         flash_size="4MB"):
    """Write a MicroPython-like combined firmware.bin for `chip` to `dest`; returns its path."""
    dest = Path(dest)
    work = dest.parent / (dest.stem + ".parts")
    work.mkdir(parents=True, exist_ok=True)
    size = {"4MB": 0x400000, "8MB": 0x800000}[flash_size]
    parts = {
        BOOTLOADER_OFFSET[chip]: bootloader(chip, flash_size),
        0x8000: partition_table(size),
        0x10000: application(chip, version, project),
    }
    args = []
    for off, data in parts.items():
        f = work / f"{off:06x}.bin"
        f.write_bytes(data)
        args += [hex(off), str(f)]
    subprocess.run(
        [sys.executable, "-m", "esptool", "--chip", chip, "merge-bin", "-o", str(dest),
         "--target-offset", hex(BOOTLOADER_OFFSET[chip]), *args],
        check=True, capture_output=True,
    )
    return dest
