# The simulated board's boot ROM: what the ESP32's bootloader and MicroPython's _boot.py do
# on a real board, for the unix port.
#
#   micropython -i rom_boot.py STATE_DIR MODE FIRMWARE_DIR SIM_DIR BOOT_REASON [format] [fw_heap=N]
#
# It opens the flash file, mounts its LittleFS volume at / (formatting a blank flash and
# installing the factory files from STATE_DIR/provision, as a factory image would), mounts
# the firmware directory read-only at /rom (where a ROMFS image lives on a real board),
# connects the simulated peripherals to the host, and in MODE "run" starts main.py the way
# MicroPython does: from / if present, else from /rom. Afterwards `-i` leaves the REPL on
# the console, as a real board does when main.py ends or is interrupted. fw_heap=N (e.g.
# 96k): the GC heap left free for the firmware when main.py starts; the rest is set aside,
# so the firmware runs in what a board would give it, whatever the simulator itself takes.
#
# A flash that does not mount and is not blank is never formatted by itself (it holds the
# journal: money records not yet synced): the host is told, and stops the simulator with
# that reason; only "format" (washpay sim run --format) formats it, after keeping a copy as
# STATE_DIR/flash.bin.unmountable. What a real board does: boards/esp32/_boot.py.
import json
import os
import sys
import time

import vfs

_state, _mode, _firmware, _simdir, _reason = sys.argv[1:6]
_opts = sys.argv[6:]
_format = "format" in _opts
_fw_heap = ([o[8:] for o in _opts if o.startswith("fw_heap=")] or [None])[0]
sys.path.insert(0, _simdir)
# FIRMWARE_DIR "-": a bare board, as MicroPython is after `washpay flash`: no /rom, no
# factory files; a blank flash becomes an empty volume and main.py runs only if one is there
_bare = _firmware == "-"

import sim_flash  # noqa: E402
import simhw  # noqa: E402

with open(_simdir + "/board.json") as _f:
    _board = json.load(_f)
_factory = {}
try:
    for _name in os.listdir(_state + "/provision"):
        with open(_state + "/provision/" + _name, "rb") as _f:
            _factory[_name] = _f.read()
except OSError:
    pass
# the machine on the relay is the one the provisioned board file describes (a dryer is
# switched by its supply: start_mode power), and so is its model's timing (sim.washer:
# confirm_delay_ms, cycle_s) where the file has one; the pins stay the simulated board's
if "board.json" in _factory:
    try:
        _prov = json.loads(_factory["board.json"])
        _board["washer"] = _prov["washer"]
        _board["sim"]["washer"] = _prov.get("sim", {}).get("washer", _board["sim"]["washer"])
    except (ValueError, KeyError, AttributeError):
        pass  # the firmware reports a broken board file itself
    _prov = None

if _bare:
    _factory = {}
_flashfile = open(_state + "/flash.bin", "r+b")
_link = _state + "/hw.sock"
_bench = None


def _cut():
    _bench.link.send({"ev": "cut"})


_bdev = sim_flash.SimFlash(
    _flashfile, _board.get("sim", {}).get("flash_blocks", 512), 4096, on_cut=_cut
)
_bench = simhw.Bench(_board, _link, _bdev, int(_reason))
simhw.bench = _bench
import machine  # noqa: E402,F401  (the sim's, found on SIM_DIR before the root moves)
import network  # noqa: E402,F401  (likewise: the sim's WLAN follows the bench's net flag)

# A ROMFS image (mpremote romfs build) stands for a board's romfs partition: its .mpy
# bytecode runs in place. Here the image itself sits in the GC heap, so it is read before
# the root moves and counted in the simulator's baseline below.
_romfs = None
if _firmware.endswith(".romfs"):
    with open(_firmware, "rb") as _f:
        _romfs = _f.read()

try:
    _vol = vfs.VfsLfs2(_bdev)  # mounts it: OSError if there is no volume that mounts
except OSError as _e:
    _vol = None
    if _bdev.erased():
        print("sim: blank flash, formatting LittleFS" + ("" if _bare else
                                                         " and installing factory files"))
        _bdev.erase_all()  # an empty or short file becomes the whole chip, erased
    elif _format:
        print("sim: --format: the flash holds no volume that mounts (OSError %d); a copy "
              "is kept as flash.bin.unmountable; formatting it" % _e.errno)
        _flashfile.seek(0)
        with open(_state + "/flash.bin.unmountable", "wb") as _f:
            _buf = bytearray(4096)
            while True:
                _n = _flashfile.readinto(_buf)
                if not _n:
                    break
                _f.write(_buf[:_n])
        _buf = None
        _bdev.erase_all()
    else:
        _bench.link.send({"ev": "refused", "errno": _e.errno})
        while True:  # the host stops the simulator; the flash stays as it is
            time.sleep(1)
    vfs.VfsLfs2.mkfs(_bdev)
vfs.umount("/")
if _vol is not None:
    vfs.mount(_vol, "/")
else:
    vfs.mount(vfs.VfsLfs2(_bdev), "/")
    for _name, _data in _factory.items():
        with open("/" + _name, "wb") as _f:
            _f.write(_data)
if not _bare:
    if _romfs is not None:
        vfs.mount(vfs.VfsRom(_romfs), "/rom")
    else:
        vfs.mount(vfs.VfsPosix(_firmware), "/rom")
os.chdir("/")
sys.path[:] = ["", ".frozen", "/rom", "/lib"]
_factory = None

# What the simulator itself keeps on the GC heap (its peripheral models share the heap
# with the firmware, unlike on a board): `sim ctl heap` reports the firmware's part apart.
import gc  # noqa: E402

gc.collect()
if _fw_heap:
    # one block the firmware never sees, sized so that FW_HEAP bytes stay free; the second
    # allocation corrects the first for the block's header and rounding
    _n = int(_fw_heap[:-1]) * 1024 if _fw_heap[-1] in "kK" else int(_fw_heap)
    _size = gc.mem_free() - _n - 64
    _aside = bytearray(max(0, _size))
    gc.collect()
    _size += gc.mem_free() - _n
    _aside = None
    gc.collect()
    _aside = bytearray(max(0, _size))
    gc.collect()
    simhw.heap_aside = _aside
simhw.heap_baseline = gc.mem_alloc()

if _mode == "run" and (not _bare or "main.py" in os.listdir("/")):
    # up to here the boot ROM and _boot.py, which a console Ctrl-C does not stop on a
    # board; the host delivers one that came in meanwhile from now on
    _bench.link.send({"ev": "main"})
    import main  # noqa: E402,F401
