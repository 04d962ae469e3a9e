# washpay's _boot.py for ESP32 MicroPython builds, frozen in place of the port's own
# (ports/esp32/modules/_boot.py): what a provisioned board runs first at every boot
# (docs/provisioning.md, "What a provisioned board runs at boot").
#
# Stock MicroPython mounts the vfs partition and, when that fails, calls inisetup.setup():
# it formats the partition if its first block is erased, and otherwise prints "The
# filesystem appears to be corrupted" every 3 s for ever. A damaged volume whose first block
# happens to be erased is formatted, and the journal (money records not yet synced) goes
# with it. Here only a partition that is erased from end to end is formatted, as stock
# does for a new board; any other volume that does not mount is left as it is: one line on
# the console, no file system at /, so main.py does not run and the REPL stays free for the
# recovery (dump with esptool read-flash, washpay journal decode, re-provision). The coin
# acceptor refuses coins while no firmware drives its inhibit line (docs/wiring.md).
import gc

import vfs
from flashbdev import bdev


def _erased(dev):
    size = dev.ioctl(5, 0)
    buf = bytearray(size)
    ff = b"\xff" * size
    for n in range(dev.ioctl(4, 0)):
        dev.readblocks(n, buf)
        if buf != ff:
            return False
    return True


try:
    if bdev:
        vfs.mount(bdev, "/")
except OSError as e:
    if _erased(bdev):
        import inisetup

        inisetup.setup()  # stock: format the erased partition, write a boot.py
    else:
        print("washpay: out of order: flash refused: the vfs partition holds no volume that "
              "mounts (OSError %d) and is not erased; nothing was written. Dump it with "
              "esptool read-flash, read it with washpay journal decode, then re-provision "
              "(docs/provisioning.md)" % e.errno)
gc.collect()
