# Entry point: MicroPython runs main.py at boot. The loader (bootslot.py, docs/ota.md) picks
# the slot that boots: an updated one, or the factory firmware beside this file. The board
# is described by /board.json on the board's flash; washpay.app does the rest.
import sys

import bootslot

run = bootslot.start()
if bootslot.idle():  # nothing on trial, to journal or to resume: give its heap back
    del sys.modules["bootslot"]
del bootslot
run()
