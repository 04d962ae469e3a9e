# Entry point: MicroPython runs main.py at boot. The loader (bootslot.py, docs/ota.md) picks
# the slot that boots: an updated one, or the factory firmware beside this file. The board
# is described by /board.json on the board's flash; washpay.app does the rest.
import gc
import sys

# Where the heap is small (a board without PSRAM), a collection after every 8 KiB allocated,
# not only when an allocation fails (issue 13). The heap does not compact: left alone, boot
# and each sync allocate upwards through free space, long-lived objects land between
# garbage, and once the garbage goes the free heap is many small holes; a 600-byte buffer
# then fails with kilobytes free. Collecting early lets what is allocated next reuse the
# low holes, so the long-lived objects stay packed: on the 32-bit interpreter the full
# scenario passes in 92 KiB instead of 100 (bytecode in place) and in 176 instead of 198
# (.mpy files). A collection of such a heap takes a few ms on an ESP32, under the coin
# sampler's 20 ms; a heap of megabytes (PSRAM) is never near full, and collecting it that
# often would cost tens of ms each time for nothing.
if gc.mem_free() < 256 * 1024:
    gc.threshold(8192)

import bootslot  # noqa: E402

run = bootslot.start()
if bootslot.idle():  # nothing on trial, to journal or to resume: give its heap back
    del sys.modules["bootslot"]
del bootslot
run()
