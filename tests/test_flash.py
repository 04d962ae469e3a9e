"""`washpay flash`: the exact esptool commands per board (dry run), and the image checks that
refuse an image built for another chip, a bare application, or anything that is not an ESP32
image, before esptool touches a board. The images are MicroPython-like stand-ins made with
esptool's image classes (tests/esp_images.py)."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT
from esp_images import micropython_firmware

from host_tools import flash as F


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    return {
        "esp32": micropython_firmware(d / "ESP32_GENERIC.bin", "esp32", "v1.26.0"),
        "esp32s3": micropython_firmware(d / "ESP32_GENERIC_S3.bin", "esp32s3", "v1.27.0",
                                        flash_size="8MB"),
        "app": d / "ESP32_GENERIC.parts" / "010000.bin",
        "dir": d,
    }


def washpay(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "host_tools.cli", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


@pytest.mark.parametrize("board,chip,offset", [("esp32-devkitc", "esp32", "0x1000"),
                                               ("esp32-s3-devkitc-1", "esp32s3", "0x0")])
def test_dry_run_prints_the_exact_esptool_commands(images, board, chip, offset):
    fw = images[chip]
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", board, "--firmware", str(fw),
                "--dry-run")
    assert r.returncode == 0, r.stderr
    esptool = f"{sys.executable} -m esptool --chip {chip} --port /dev/ttyUSB7 --baud 460800"
    keep = "--flash-mode keep --flash-size keep"
    assert r.stdout.splitlines()[1:] == [
        "# 1/3 erase",
        f"{esptool} --after no-reset erase-flash",
        "# 2/3 write",
        f"{esptool} --after no-reset write-flash {keep} {offset} {fw}",
        "# 3/3 verify",
        f"{esptool} --after hard-reset verify-flash {keep} {offset} {fw}",
    ]
    assert f"for {chip}" in r.stdout and f"at {offset}" in r.stdout


def test_dry_run_commands_are_valid_esptool_command_lines(images, tmp_path):
    """esptool accepts every printed command: it gets as far as opening the (absent) port."""
    board = F.load_board("esp32-devkitc")
    missing = str(tmp_path / "no-such-port")
    for name, argv in F.esptool_commands(missing, board, images["esp32"], erase=True):
        r = subprocess.run(argv + [], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        out = r.stdout + r.stderr
        assert r.returncode != 0
        assert "Could not open" in out and "No such option" not in out, (name, out)


def test_no_erase_keeps_the_volume(images):
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-devkitc", "--firmware",
                str(images["esp32"]), "--dry-run", "--no-erase")
    assert r.returncode == 0
    assert "erase-flash" not in r.stdout and "# 1/2 write" in r.stdout


def test_image_for_another_chip_is_refused(images):
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-devkitc", "--firmware",
                str(images["esp32s3"]), "--dry-run")
    assert r.returncode == 2
    assert "built for esp32s3" in r.stderr and "board esp32-devkitc is an esp32" in r.stderr
    assert "esptool" not in r.stdout
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-s3-devkitc-1",
                "--firmware", str(images["esp32"]), "--dry-run")
    assert r.returncode == 2 and "built for esp32," in r.stderr


def test_application_image_and_non_images_are_refused(images, tmp_path):
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-devkitc", "--firmware",
                str(images["app"]), "--dry-run")
    assert r.returncode == 2 and "application image" in r.stderr
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-devkitc", "--firmware",
                str(junk), "--dry-run")
    assert r.returncode == 2 and "not an ESP32 firmware image" in r.stderr
    cut = tmp_path / "cut.bin"
    cut.write_bytes(images["esp32"].read_bytes()[:100])
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-devkitc", "--firmware",
                str(cut), "--dry-run")
    assert r.returncode == 2 and "damaged or truncated" in r.stderr
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-devkitc", "--firmware",
                str(tmp_path / "absent.bin"), "--dry-run")
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_image_too_big_for_the_flash_is_refused(images, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(images["esp32"].read_bytes() + b"\xff" * (4 * 1024 * 1024))
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-devkitc", "--firmware",
                str(big), "--dry-run")
    assert r.returncode == 2 and "does not fit" in r.stderr


def test_default_image_comes_from_the_image_directory(images, tmp_path):
    empty = tmp_path / "empty"
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-wrover-e", "--dry-run",
                env={F.IMAGE_DIR_ENV: str(empty)})
    assert r.returncode == 2
    assert "ESP32_GENERIC-SPIRAM" in r.stderr and "micropython.org/download" in r.stderr
    d = tmp_path / "dir"
    d.mkdir()
    (d / "ESP32_GENERIC-SPIRAM.bin").write_bytes(images["esp32"].read_bytes())
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-wrover-e", "--dry-run",
                env={F.IMAGE_DIR_ENV: str(d)})
    assert r.returncode == 0, r.stderr
    assert str(d / "ESP32_GENERIC-SPIRAM.bin") in r.stdout


def test_a_board_without_psram_has_no_stock_default_image(images):
    """Stock MicroPython on a WROOM-32 cannot hold washpay: flash says what to build."""
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-devkitc", "--dry-run",
                env={F.IMAGE_DIR_ENV: str(images["dir"])})
    assert r.returncode == 2
    assert "no PSRAM" in r.stderr and "washpay firmware build --board esp32-devkitc" in r.stderr


def test_nothing_on_the_port_and_the_simulated_board_are_refused(images, tmp_path):
    r = washpay("flash", "--port", str(tmp_path / "ttyUSB9"), "--board", "esp32-devkitc",
                "--firmware", str(images["esp32"]))
    assert r.returncode == 2 and "nothing on" in r.stderr
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", "sim", "--firmware",
                str(images["esp32"]))
    assert r.returncode == 2 and "washpay sim run --bare" in r.stderr
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-c99",
                "--firmware", str(images["esp32"]))
    assert r.returncode == 2 and "known boards are" in r.stderr


class FakeEsptool:
    def __init__(self, fail_at=None):
        self.calls = []
        self.fail_at = fail_at

    def __call__(self, argv, **kw):
        step = next(w for w in ("erase-flash", "write-flash", "verify-flash") if w in argv)
        self.calls.append(step)
        return subprocess.CompletedProcess(argv, 2 if step == self.fail_at else 0)


def test_flash_runs_erase_write_verify_in_order(images, tmp_path, capsys):
    port = tmp_path / "ttyUSB0"
    port.touch()
    run = FakeEsptool()
    assert F.flash(str(port), "esp32-devkitc", images["esp32"], run=run) == 0
    assert run.calls == ["erase-flash", "write-flash", "verify-flash"]
    out = capsys.readouterr().out
    assert "step 1/3: erase" in out and "washpay provision --port" in out


def test_esptool_failure_stops_and_says_so(images, tmp_path, capsys):
    port = tmp_path / "ttyUSB0"
    port.touch()
    run = FakeEsptool(fail_at="write-flash")
    assert F.flash(str(port), "esp32-devkitc", images["esp32"], run=run) == 1
    assert run.calls == ["erase-flash", "write-flash"]  # never verifies a failed write
    assert "esptool failed at write" in capsys.readouterr().out


def test_esptool_image_info_reads_our_stand_in_images(images):
    for chip, name in (("esp32", "ESP32"), ("esp32s3", "ESP32-S3")):
        r = subprocess.run([sys.executable, "-m", "esptool", "image-info", str(images[chip])],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"Detected image type: {name}" in r.stdout
        assert "Checksum: 0x" in r.stdout and "(valid)" in r.stdout
    r = subprocess.run([sys.executable, "-m", "esptool", "image-info", str(images["app"])],
                       capture_output=True, text=True, timeout=60)
    assert "Project name: micropython" in r.stdout and "App version: v1.26.0" in r.stdout


def test_image_without_an_application_is_refused(images, tmp_path):
    """Only a bootloader and a partition table (e.g. a download cut short, or the parts of a
    build merged without the app): a board flashed with it never starts."""
    from esp_images import bootloader, partition_table

    head = bootloader("esp32") + b"\xff" * (0x7000 - len(bootloader("esp32")))
    no_app = tmp_path / "no-app.bin"
    no_app.write_bytes(head + partition_table())  # 0x1000..0x8c00: nothing at 0x10000
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-devkitc", "--firmware",
                str(no_app), "--dry-run")
    assert r.returncode == 2 and "holds no application" in r.stderr, r.stdout + r.stderr
    assert "factory partition at 0x10000" in r.stderr and "esptool" not in r.stdout
    # the same with erased flash (or garbage) where the application belongs
    padded = tmp_path / "padded.bin"
    padded.write_bytes(no_app.read_bytes().ljust(0x10000 - 0x1000 + 4096, b"\xff"))
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-devkitc", "--firmware",
                str(padded), "--dry-run")
    assert r.returncode == 2 and "holds no application" in r.stderr, r.stderr
    # no partition table at all
    bare = tmp_path / "bootloader-only.bin"
    bare.write_bytes(head)
    r = washpay("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-devkitc", "--firmware",
                str(bare), "--dry-run")
    assert r.returncode == 2 and "no partition table" in r.stderr, r.stderr
