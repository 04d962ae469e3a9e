# What the firmware asks of the board once it runs: the watchdog, the wall clock, a reset.
# The rest of the board layer (board.py: board.json, pins, buses, peripherals) is boot's and
# dropped after it; this stays (issue 13). Like board.py, a module that imports `machine`.
import machine


class BoardError(Exception):
    pass


class Chip:
    def __init__(self, board_id):
        self.id = board_id

    def watchdog(self, timeout_ms):
        return machine.WDT(timeout=timeout_ms)

    def set_time(self, unix_time):
        """Set the RTC from the server's authenticated time (docs/sync.md, clock command)."""
        import time

        t = time.gmtime(unix_time)
        machine.RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))

    def reset(self):
        machine.reset()
