# Runs under MicroPython (tests/test_ota_loader.py, test_ota_stage.py): a LittleFS volume
# on the simulated flash, in RAM, mounted at /flash, with power cuts armed at the N-th
# program or erase. It imports nothing of washpay at module level, so that a test can
# import washpay from a slot on the volume, as the loader does on a board.
import json
import os

import vfs
from sim_flash import SimFlash

MOUNT = "/flash"
BLOCKS = 128


class PowerCut(Exception):
    pass


class RamFile:
    """The file interface SimFlash uses, over a bytearray; after the cut writes are lost."""

    def __init__(self, buf):
        self.mv = memoryview(buf)
        self.pos = 0
        self.dead = False

    def seek(self, pos):
        self.pos = pos

    def read(self, n):
        p = self.pos
        self.pos = p + n
        return bytes(self.mv[p : p + n])

    def readinto(self, b):
        n = len(b)
        b[:] = self.mv[self.pos : self.pos + n]
        self.pos += n
        return n

    def write(self, data):
        if not self.dead:
            self.mv[self.pos : self.pos + len(data)] = data
        self.pos += len(data)

    def flush(self):
        pass


def blank_image(blocks=BLOCKS):
    image = bytearray(b"\xff" * (blocks * 4096))
    vfs.VfsLfs2.mkfs(SimFlash(RamFile(image), blocks))
    return image


def mount(image):
    """Mount `image` at MOUNT; an armed cut leaves the image as it was at that instant
    (the torn half included) and raises PowerCut; every later write is lost."""
    f = RamFile(image)
    flash = SimFlash(f, len(image) // 4096)
    flash.fired = False

    def cut():
        f.dead = True
        flash.fired = True
        raise PowerCut()

    flash.on_cut = cut
    vfs.mount(vfs.VfsLfs2(flash), MOUNT)
    return flash


def unmount():
    try:
        vfs.umount(MOUNT)
    except OSError:
        pass


def emit(obj):
    print("@@ " + json.dumps(obj))


def makedirs(path):
    part = ""
    for name in path.split("/")[1:-1]:
        part += "/" + name
        try:
            os.mkdir(part)
        except OSError:
            pass


def put(path, data):
    makedirs(path)
    with open(path, "wb") as f:
        f.write(data)


def get(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def slot(name, version, app=None):
    """A slot holding a tiny washpay: VERSION, and an app whose run() returns the version
    (or the source `app`)."""
    base = MOUNT + "/slot_" + name + "/files/washpay/"
    put(base + "__init__.py", ("VERSION = " + repr(version) + "\n").encode())
    put(base + "app.py", (app or "from washpay import VERSION\n\ndef run():\n"
                          "    return VERSION\n").encode())
