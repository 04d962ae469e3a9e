"""`washpay image`: a factory image per device. The produced LittleFS volume is mounted under
the real MicroPython (VfsLfs2 over the image's bytes), the merged file is read with esptool's
image tools, and the simulated board boots the firmware from the volume and takes a coin."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, run_micropython
from esp_images import micropython_firmware

from host_tools import keys as K
from host_tools import provision as P
from host_tools.sim.client import SimBoard, SimError

# A block device over a slice of the factory image, mounted as MicroPython mounts "vfs".
MOUNT = """
import vfs, os, json, hashlib, binascii
class Slice:
    def __init__(self, f, start, blocks):
        self.f, self.start, self.blocks = f, start, blocks
    def readblocks(self, n, buf, off=0):
        self.f.seek(self.start + n * 4096 + off)
        self.f.readinto(buf)
    def writeblocks(self, n, buf, off=None):
        raise OSError(30)  # read-only: mounting must not need to write
    def ioctl(self, op, arg):
        return {{4: self.blocks, 5: 4096}}.get(op, 0)
f = open({path!r}, "rb")
vfs.mount(vfs.VfsLfs2(Slice(f, {start}, {blocks}), readsize=32, progsize=32), "/img")
out = {{}}
def walk(d):
    for e in os.ilistdir(d):
        p = d + "/" + e[0]
        if e[1] & 0x4000:
            walk(p)
        else:
            with open(p, "rb") as g:
                out[p[4:]] = binascii.hexlify(hashlib.sha256(g.read()).digest()).decode()
walk("/img")
print(json.dumps(out))
"""


def mounted_files(path, start, blocks):
    """{path: sha256 hex} of every file in the volume, as the real MicroPython sees it."""
    out = run_micropython(MOUNT.format(path=str(path), start=start, blocks=blocks), heap="2m")
    return json.loads(out[1].strip().splitlines()[-1])


def washpay(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "host_tools.cli", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=120, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


@pytest.fixture(scope="module")
def fw_dir(tmp_path_factory):
    """The firmware as it is now: other work on the tree must not change it mid-test."""
    dest = tmp_path_factory.mktemp("fw") / "firmware"
    shutil.copytree(ROOT / "firmware", dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = tmp_path_factory.mktemp("site")
    key = K.new_site_key(d / "site.key")
    return {"key": key, "path": d / "site.key", "dir": d}


@pytest.fixture(scope="module")
def firmware(tmp_path_factory):
    d = tmp_path_factory.mktemp("mp")
    return {
        "esp32": micropython_firmware(d / "esp32.bin", "esp32", "v1.29.0"),
        "esp32s3": micropython_firmware(d / "s3.bin", "esp32s3", "v1.27.0", flash_size="8MB"),
        "old": micropython_firmware(d / "old.bin", "esp32", "v1.22.2"),
        "custom": micropython_firmware(d / "custom.bin", "esp32", "v0.3", project="mybuild"),
        "s3_4mb": micropython_firmware(d / "s3-4mb.bin", "esp32s3", "v1.27.0"),
    }


@pytest.fixture(scope="module")
def sim_image(site, firmware, fw_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "factory.bin"
    r = washpay("image", "--board", "sim", "--device-id", "factory-7", "-o", str(out),
                "--micropython", str(firmware["esp32"]), "--site-key", str(site["path"]),
                "--broker", "mqtts://broker.example:8883", "--firmware-dir", str(fw_dir))
    assert r.returncode == 0, r.stderr
    return out, r


def test_factory_image_layout_and_volume(sim_image, firmware, site, fw_dir):
    out, r = sim_image
    data = out.read_bytes()
    fw = firmware["esp32"].read_bytes()
    assert "factory-7" in r.stdout and "at 0x200000" in r.stdout
    assert data[:len(fw)] == fw  # flashed at 0x1000, like firmware.bin
    assert len(data) == 0x200000 - 0x1000 + 0x200000
    assert oct(out.stat().st_mode & 0o777) == "0o600"  # it holds the device's secret
    files = mounted_files(out, 0x200000 - 0x1000, 512)
    expect = P.compile_firmware(P.find_mpy_cross(), (1, 29, 0), 6, fw_dir)
    expect.update(P.board_files(P.load_board("sim"), "factory-7", site["key"],
                                broker="mqtts://broker.example:8883"))
    assert files == {p: hashlib.sha256(b).hexdigest() for p, b in expect.items()}
    assert "/main.py" in files and "/washpay/app.mpy" in files and "/washpay/app.py" not in files


def test_esptool_image_info_reads_the_factory_image(sim_image):
    out, _ = sim_image
    r = subprocess.run([sys.executable, "-m", "esptool", "image-info", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Detected image type: ESP32" in r.stdout and "(valid)" in r.stdout


def test_factory_image_boots_on_the_simulated_board_and_takes_a_coin(sim_image, tmp_path):
    out, _ = sim_image
    board = SimBoard(tmp_path / "st", bare=True, flash_image=out, log=tmp_path / "sim.log")
    with board:
        st = board.wait_ready()
        fw = st["firmware"]
        assert fw["device_id"] == "factory-7" and fw["board"] == "sim"
        assert fw["config_error"] is None and st["state"] == "idle"
        board.call("coin", value=200)
        st = board.wait_for(lambda s: s["credit"] == 200, what="credit 2.00")
        assert st["journal"]["last_type"] == "coin"
    assert "washpay: boot " in (tmp_path / "st" / "console.log").read_text()


def test_s3_image_uses_the_whole_8mb_vfs(site, firmware, tmp_path):
    out = tmp_path / "s3.bin"
    r = washpay("image", "--board", "esp32-s3-devkitc-1", "--device-id", "dryer-2", "-o",
                str(out), "--micropython", str(firmware["esp32s3"]), "--site-key",
                str(site["path"]), "--vfs-output", str(tmp_path / "vfs.bin"))
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data[:1] == b"\xe9" and len(data) == 0x200000 + 0x600000  # base 0x0 on the S3
    assert (tmp_path / "vfs.bin").read_bytes() == data[0x200000:]
    files = mounted_files(out, 0x200000, 0x600000 // 4096)
    assert "/board.json" in files and "/washpay/vend/engine.mpy" in files
    r = subprocess.run([sys.executable, "-m", "esptool", "image-info", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert "Detected image type: ESP32-S3" in r.stdout


def test_refusals_write_nothing(site, firmware, tmp_path):
    out = tmp_path / "f.bin"
    base = ["image", "--device-id", "d-1", "-o", str(out), "--site-key", str(site["path"])]
    cases = [
        (["--board", "esp32-devkitc", "--micropython", str(firmware["esp32s3"])],
         "built for esp32s3"),
        (["--board", "esp32-s3-devkitc-1", "--micropython", str(firmware["s3_4mb"])],
         "puts vfs at 0x200000+0x200000"),
        (["--board", "sim", "--micropython", str(firmware["old"])],
         "MicroPython version mismatch"),
        (["--board", "sim", "--micropython", str(firmware["custom"])],
         "--micropython-version"),
        (["--board", "sim", "--micropython", str(firmware["esp32"]), "--broker", "http://x"],
         "--broker"),
        # a WROOM-32 without PSRAM: stock MicroPython cannot hold washpay as .mpy files
        (["--board", "esp32-devkitc", "--micropython", str(firmware["esp32"])],
         "build one with washpay frozen in (washpay firmware build --board esp32-devkitc"),
    ]
    for extra, message in cases:
        r = washpay(*base, *extra)
        assert r.returncode == 2, (extra, r.stdout)
        assert message in r.stderr, r.stderr
        assert not out.exists()
    r = washpay("image", "--board", "sim", "--device-id", "d-1", "-o", str(out),
                "--micropython", str(firmware["esp32"]), "--site-key",
                str(site["dir"] / "none.key"))
    assert r.returncode == 2 and "washpay site init" in r.stderr and not out.exists()


def test_version_can_be_given_for_a_custom_build(site, firmware, tmp_path):
    out = tmp_path / "f.bin"
    r = washpay("image", "--board", "sim", "--device-id", "d-1", "-o", str(out),
                "--micropython", str(firmware["custom"]), "--micropython-version", "1.28.0",
                "--site-key", str(site["path"]))
    assert r.returncode == 0, r.stderr
    assert "MicroPython 1.28.0" in r.stdout


def test_sim_refuses_a_flash_image_over_an_existing_flash(sim_image, tmp_path):
    out, _ = sim_image
    st = tmp_path / "st"
    st.mkdir()
    (st / "flash.bin").write_bytes(b"\xff" * 4096)
    with pytest.raises(SimError, match="exited"):
        SimBoard(st, bare=True, flash_image=out, log=tmp_path / "log").start()
    assert (st / "flash.bin").read_bytes() == b"\xff" * 4096
    assert "only starts a new state directory" in (tmp_path / "log").read_text()
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"junk")
    with pytest.raises(SimError, match="exited"):
        SimBoard(tmp_path / "st2", bare=True, flash_image=junk, log=tmp_path / "log2").start()
    assert "neither" in (tmp_path / "log2").read_text()


def test_frozen_washpay_is_recognised_by_its_module_names():
    from host_tools.image import has_frozen_washpay

    assert has_frozen_washpay(b"\x00asyncio/core.py\x00washpay/__init__.py\x00washpay/app.py")
    assert not has_frozen_washpay(b"\x00asyncio/core.py\x00inisetup.py\x00")
