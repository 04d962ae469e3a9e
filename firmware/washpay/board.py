# The board layer: builds machine objects (pins, pulse counter, I2C, watchdog) from the board
# description in /board.json and hands them to drivers. It is the only firmware module that
# imports `machine`; on the simulated board, `machine` is the simulator's.
import json

import machine

BOARD_PATH = "/board.json"


class BoardError(Exception):
    pass


class Board:
    def __init__(self, spec):
        self.spec = spec
        self.id = spec["id"]
        self.pins = spec["pins"]
        self.coin = spec["coin"]
        self.washer = spec["washer"]
        self.display_spec = spec.get("display")
        self.buses = spec.get("buses", {})

    def _gpio(self, name):
        try:
            return self.pins[name]
        except KeyError:
            raise BoardError("board %s has no pin %r" % (self.id, name))

    def pin_in(self, name, pull=None):
        return machine.Pin(self._gpio(name), machine.Pin.IN, pull if pull is not None else -1)

    def pin_out(self, name, value=0):
        return machine.Pin(self._gpio(name), machine.Pin.OUT, value=value)

    def button(self, name):
        # buttons switch to ground; the internal pull-up holds the line high
        return self.pin_in(name, machine.Pin.PULL_UP)

    def coin_counter(self):
        # The PCNT counts the edge where a pulse starts, in hardware, even while Python is
        # busy: the acceptor's line is pulled up and pulses pull it low.
        edge = machine.Counter.FALLING
        if self.coin["pulse_active"] == "high":
            edge = machine.Counter.RISING
        src = self.pin_in("coin_pulse")
        return machine.Counter(self.coin.get("counter_id", 0), src, edge=edge)

    def inactive_level(self, active_word):
        return 1 if active_word == "low" else 0

    def i2c(self):
        bus = self.buses.get("display_i2c", {})
        return machine.I2C(
            bus.get("id", 0),
            scl=machine.Pin(self._gpio("i2c_scl")),
            sda=machine.Pin(self._gpio("i2c_sda")),
            freq=bus.get("freq", 100000),
        )

    def watchdog(self, timeout_ms):
        return machine.WDT(timeout=timeout_ms)

    def unique_id(self):
        return machine.unique_id()

    def reset_cause(self):
        causes = {
            machine.PWRON_RESET: "power on",
            machine.HARD_RESET: "hard reset",
            machine.WDT_RESET: "watchdog",
            machine.SOFT_RESET: "soft reset",
        }
        return causes.get(machine.reset_cause(), "other")

    def reset(self):
        machine.reset()

    def attach_status(self, fn):
        # The simulator's control channel reads the firmware's status through this port;
        # a real board has no such port (status goes out over the console and the network).
        port = getattr(machine, "diag_port", None)
        if port:
            port(fn)


def load(path=BOARD_PATH):
    try:
        with open(path) as f:
            return Board(json.load(f))
    except OSError:
        raise BoardError("%s is missing: provision the board (washpay provision)" % path)
    except (ValueError, KeyError) as e:
        raise BoardError("%s is not a valid board file: %r" % (path, e))
