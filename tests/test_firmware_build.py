"""`washpay firmware build`: the MicroPython esp32 port build that freezes washpay in (for
boards without PSRAM), and the manifest it freezes. ESP-IDF is not on this machine, so the
commands are checked as a dry run and the build is run with `make` stood in by a function
that leaves a firmware.bin where the port build does."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIRMWARE, ROOT
from esp_images import micropython_firmware

from host_tools.release import firmware as B


@pytest.fixture
def src(tmp_path):
    """The shape of a MicroPython source tree, as far as the build command looks."""
    d = tmp_path / "micropython"
    port = d / "ports" / "esp32"
    (port / "boards").mkdir(parents=True)
    (port / "modules").mkdir()
    (port / "Makefile").write_text("# esp32 port\n")
    (port / "boards" / "manifest.py").write_text(
        'freeze("$(PORT_DIR)/modules")\ninclude("$(MPY_DIR)/extmod/asyncio")\n'
        'require("umqtt.simple")\n')
    (port / "modules" / "_boot.py").write_text("import inisetup  # the port's\n")
    (port / "modules" / "inisetup.py").write_text("def setup(): pass\n")
    (d / "mpy-cross").mkdir()
    return d


def washpay(*args, env=None):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.mark.parametrize("board,target", [
    ("esp32-devkitc", ["BOARD=ESP32_GENERIC"]),
    ("esp32-wrover-e", ["BOARD=ESP32_GENERIC", "BOARD_VARIANT=SPIRAM"]),
    ("esp32-s3-devkitc-1", ["BOARD=ESP32_GENERIC_S3", "BOARD_VARIANT=SPIRAM_OCT"]),
])
def test_dry_run_prints_the_port_build_with_washpay_frozen(src, board, target):
    r = washpay("firmware", "build", "--board", board, "--micropython-src", str(src),
                "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stdout.splitlines() if not x.startswith(("#", "washpay"))]
    port = src / "ports" / "esp32"
    manifest = ROOT / "build" / "firmware" / board / "manifest.py"
    assert lines == [
        f"make -C {src / 'mpy-cross'}",
        " ".join(["make", "-C", str(port), *target, "submodules"]),
        " ".join(["make", "-C", str(port), *target, f"FROZEN_MANIFEST={manifest}"]),
    ]
    build_dir = "build-" + "-".join(t.split("=")[1] for t in target)
    assert f"cp {port / build_dir / 'firmware.bin'}" in r.stdout
    # the port's own manifest, its modules from a copy with washpay's _boot.py, then washpay
    modules = manifest.parent / "modules"
    assert manifest.read_text().splitlines() == [
        f"freeze({str(modules)!r})", 'include("$(MPY_DIR)/extmod/asyncio")',
        'require("umqtt.simple")', "", f"include({str(FIRMWARE / 'washpay' / 'manifest.py')!r})"]
    assert (modules / "_boot.py").read_text() == (ROOT / "boards/esp32/_boot.py").read_text()
    assert (modules / "inisetup.py").read_text() == "def setup(): pass\n"


def test_a_port_manifest_of_another_shape_is_refused(src):
    (src / "ports/esp32/boards/manifest.py").write_text('freeze("$(PORT_DIR)/mods")\n')
    r = washpay("firmware", "build", "--board", "esp32-devkitc", "--micropython-src", str(src),
                "--dry-run")
    assert r.returncode == 2 and "cannot replace the port's" in r.stderr


def test_refusals_say_what_to_do(src, tmp_path):
    r = washpay("firmware", "build", "--board", "esp32-devkitc", "--micropython-src",
                str(tmp_path / "nothing"), "--dry-run")
    assert r.returncode == 2 and "not a MicroPython source tree" in r.stderr
    r = washpay("firmware", "build", "--board", "sim", "--micropython-src", str(src))
    assert r.returncode == 2 and "simulated board" in r.stderr
    env = {"PATH": "/usr/bin:/bin", "IDF_PATH": ""}
    r = washpay("firmware", "build", "--board", "esp32-devkitc", "--micropython-src", str(src),
                env=env)
    assert r.returncode == 2 and "ESP-IDF is not set up" in r.stderr and "--dry-run" in r.stderr
    assert "Traceback" not in r.stderr


def test_build_runs_the_steps_and_keeps_a_checked_image(src, tmp_path, monkeypatch):
    monkeypatch.setenv("IDF_PATH", str(tmp_path / "esp-idf"))
    ran = []

    def make(argv, **kw):
        ran.append(argv)
        if "FROZEN_MANIFEST=" in argv[-1]:
            out = src / "ports" / "esp32" / "build-ESP32_GENERIC"
            out.mkdir(parents=True)
            micropython_firmware(out / "firmware.bin", "esp32", "v1.29.0")
        return subprocess.CompletedProcess(argv, 0)

    out = tmp_path / "fw.bin"
    assert B.build("esp32-devkitc", src, out, run=make, out=open(os.devnull, "w")) == 0
    assert [a[-1] for a in ran][:2] == [str(src / "mpy-cross"), "submodules"]
    assert out.read_bytes() == (src / "ports/esp32/build-ESP32_GENERIC/firmware.bin").read_bytes()

    def failing(argv, **kw):
        return subprocess.CompletedProcess(argv, 2)

    assert B.build("esp32-devkitc", src, tmp_path / "x.bin", run=failing,
                   out=open(os.devnull, "w")) == 1
    assert not (tmp_path / "x.bin").exists()


def _frozen_files(manifest):
    """What MicroPython's manifest semantics freeze from `manifest`: package(path,
    base_path) walks base_path/path for .py files, module(file, base_path) takes one file,
    both relative to the manifest's folder. Returns {module path: source path}."""
    here = Path(manifest).parent
    found, meta = {}, {}

    def package(path, files=None, base_path=".", opt=None):
        base = (here / base_path).resolve()
        assert files is None, "the manifest lists files: keep it to the whole package"
        assert (base / path).is_dir(), f"package {path!r} not found under {base}"
        for f in sorted((base / path).rglob("*.py")):
            found[f.relative_to(base).as_posix()] = f

    def module(path, base_path=".", opt=None):
        f = (here / base_path / path).resolve()
        assert f.is_file(), f
        found[path] = f

    exec(Path(manifest).read_text(), {"metadata": meta.update, "package": package,
                                      "module": module})
    return found, meta


def test_the_manifest_freezes_every_firmware_module_and_its_version():
    found, meta = _frozen_files(FIRMWARE / "washpay" / "manifest.py")
    tree = {f.relative_to(FIRMWARE).as_posix() for f in (FIRMWARE / "washpay").rglob("*.py")}
    assert set(found) == tree
    assert "main.py" not in found  # runs from the board's filesystem, written by provisioning
    version = (FIRMWARE / "washpay" / "__init__.py").read_text()
    assert f'VERSION = "{meta["version"]}"' in version
