# The simulated board's SPI NOR flash: a LittleFS block device backed by a file.
#
# It behaves like the ESP32's flash partition as seen through esp32.Partition: erase sets a
# 4 KiB block to 0xFF, a program can only clear bits (new = old AND data), and nothing is
# cached, so the file holds exactly what reached the chip. It counts reads, programs and
# erases, and can cut the power at the N-th program or erase, optionally leaving that
# operation torn (only its first half applied).
import time

_IOCTL_BLOCK_COUNT = 4
_IOCTL_BLOCK_SIZE = 5
_IOCTL_BLOCK_ERASE = 6


class SimFlash:
    def __init__(self, f, block_count, block_size=4096, on_cut=None):
        self.f = f
        self.block_count = block_count
        self.block_size = block_size
        self.on_cut = on_cut  # called when an armed cut fires; must not return
        self.reads = 0
        self.programs = 0
        self.erases = 0
        self._cut_at = 0  # 0 = not armed; else the op number (counted from arming) to cut at
        self._torn = False
        self._ops = 0
        self._ff = b"\xff" * block_size

    def arm_cut(self, after_ops, torn=False):
        """Cut power at the after_ops-th program/erase from now (1 = the next one)."""
        self._cut_at = max(1, int(after_ops))
        self._torn = bool(torn)
        self._ops = 0

    def counters(self):
        return {"reads": self.reads, "programs": self.programs, "erases": self.erases}

    def _cut_now(self):
        # Count this op; return True when it is the one the power dies on.
        if not self._cut_at:
            return False
        self._ops += 1
        return self._ops >= self._cut_at

    def _die(self):
        self.f.flush()
        if self.on_cut:
            self.on_cut()
        while True:  # the host kills this process; nothing else may reach the flash
            time.sleep(1)

    def readblocks(self, n, buf, off=0):
        self.reads += 1
        self.f.seek(n * self.block_size + off)
        self.f.readinto(buf)

    def _program(self, addr, data):
        self.f.seek(addr)
        old = self.f.read(len(data))
        new = int.from_bytes(old, "big") & int.from_bytes(data, "big")
        self.f.seek(addr)
        self.f.write(new.to_bytes(len(data), "big"))

    def _erase(self, n):
        if self._cut_now():
            if self._torn:
                self.f.seek(n * self.block_size)
                self.f.write(self._ff[: self.block_size // 2])
            self._die()
        self.erases += 1
        self.f.seek(n * self.block_size)
        self.f.write(self._ff)
        self.f.flush()

    def writeblocks(self, n, buf, off=None):
        if off is None:  # esp32.Partition semantics: a write without offset erases first
            self._erase(n)
            off = 0
        addr = n * self.block_size + off
        if self._cut_now():
            if self._torn:
                self._program(addr, bytes(buf[: len(buf) // 2]))
            self._die()
        self.programs += 1
        self._program(addr, bytes(buf))
        self.f.flush()

    def erased(self):
        """True if every byte the flash file holds is 0xFF: a chip as erased (esptool
        erase-flash, or new), the only flash that the boot may format by itself."""
        self.f.seek(0)
        buf = bytearray(self.block_size)
        while True:
            n = self.f.readinto(buf)
            if not n:
                return True
            if buf[:n] != self._ff[:n]:
                return False

    def erase_all(self):
        """Erase the whole chip (esptool erase-flash): every block 0xFF, at its full size."""
        for n in range(self.block_count):
            self.f.seek(n * self.block_size)
            self.f.write(self._ff)
        self.f.flush()

    def ioctl(self, op, arg):
        if op == _IOCTL_BLOCK_COUNT:
            return self.block_count
        if op == _IOCTL_BLOCK_SIZE:
            return self.block_size
        if op == _IOCTL_BLOCK_ERASE:
            self._erase(arg)
            return 0
        return 0
