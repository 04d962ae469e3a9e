# The board layer: builds machine objects (pins, pulse counter, I2C, SPI, UART) from the
# board description in /board.json and hands them to drivers. Boot's (wiring.py) and the
# card tool's: the running app keeps only chip.py's Chip (watchdog, clock, reset), and this
# module is dropped after boot. With chip.py, the only firmware modules that import
# `machine`; on the simulated board, `machine` is the simulator's.
import json

import machine

from washpay.chip import BoardError, Chip

BOARD_PATH = "/board.json"


class Board(Chip):
    def __init__(self, spec):
        # only the parts used are kept: the rest of board.json (names, flash layout, the
        # simulator's section) goes back to the heap
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

    def spi(self, name="card_spi"):
        """The SPI bus `name` of board.json "buses" on the spi_sck/mosi/miso pins (mode 0,
        MSB first: what the MFRC522 wants; it takes up to 10 MHz)."""
        bus = self.buses.get(name)
        if bus is None:
            raise BoardError("board %s has no bus %r" % (self.id, name))
        return machine.SPI(
            bus.get("id", 1),
            baudrate=bus.get("baudrate", 1000000),
            polarity=0,
            phase=0,
            sck=machine.Pin(self._gpio("spi_sck")),
            mosi=machine.Pin(self._gpio("spi_mosi")),
            miso=machine.Pin(self._gpio("spi_miso")),
        )

    def has_pin(self, name):
        return name in self.pins

    def uart(self, name):
        """The UART of board.json "buses" "<name>_uart" on pins <name>_tx / <name>_rx, given
        explicitly (UART1's default pins on an ESP32 are the flash's)."""
        bus = self.buses.get(name + "_uart")
        if bus is None:
            raise BoardError("board %s has no bus %r" % (self.id, name + "_uart"))
        return machine.UART(
            bus.get("id", 1),
            baudrate=bus.get("baudrate", 9600),
            tx=machine.Pin(self._gpio(name + "_tx")),
            rx=machine.Pin(self._gpio(name + "_rx")),
            rxbuf=bus.get("rxbuf", 512),
        )

    def command_port(self):
        """Server commands from the simulator's control channel; None on a real board (the
        sync link carries them there)."""
        port = getattr(machine, "command_port", None)
        return port() if port else None

    def wlan(self):
        """The Wi-Fi station interface, switched on (on the sim, it follows the net flag)."""
        import network

        w = network.WLAN(network.STA_IF)
        w.active(True)
        return w

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
