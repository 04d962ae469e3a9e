# `machine` for the simulated board: the subset of MicroPython's ESP32 machine module that
# washpay's board layer uses, backed by simhw's models instead of silicon. It shadows the
# unix port's built-in machine module (which has no Pin, Counter or I2C).
import time

import simhw

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5


def _bench():
    if simhw.bench is None:
        raise OSError("simulated board hardware not started")
    return simhw.bench


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self.mode = mode
        if value is not None:
            self.value(value)

    def init(self, mode=-1, pull=-1, value=None):
        self.mode = mode
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            return _bench().read(self.id)
        _bench().write(self.id, 1 if v else 0)
        return None

    __call__ = value

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, *args, **kw):
        # ESP32 pin IRQs are soft and drop pulses under load; washpay never uses them.
        raise OSError("Pin.irq is not modelled by the simulated board")

    def __repr__(self):
        return "Pin(%d)" % self.id


class Counter:
    RISING = 1
    FALLING = 2
    UP = 1
    DOWN = -1

    def __init__(self, id, src=None, *, edge=1, direction=1, filter_ns=0):
        self.id = id
        self.init(src, edge=edge, direction=direction, filter_ns=filter_ns)

    def init(self, src, *, edge=1, direction=1, filter_ns=0):
        self.src = src
        self.falling = edge == Counter.FALLING
        self.offset = _bench().counter(src.id, self.falling)

    def value(self, v=None):
        cur = _bench().counter(self.src.id, self.falling) - self.offset
        if v is not None:
            self.offset += cur - v
        return cur

    def deinit(self):
        pass


class I2C:
    def __init__(self, id=0, *, scl=None, sda=None, freq=400000):
        self.id = id

    def writeto(self, addr, buf, stop=True):
        _bench().i2c_write(addr, buf)
        return len(buf)

    def scan(self):
        return sorted(_bench().i2c_devices)


class SPI:
    MSB = 0
    LSB = 1

    def __init__(self, id=1, baudrate=1000000, *, polarity=0, phase=0, bits=8, firstbit=0,
                 sck=None, mosi=None, miso=None):
        self.id = id

    def init(self, *args, **kw):
        pass

    def write(self, buf):
        _bench().spi_xfer(buf)

    def read(self, n, write=0):
        return _bench().spi_xfer(bytes([write]) * n)

    def readinto(self, buf, write=0):
        buf[:] = _bench().spi_xfer(bytes([write]) * len(buf))

    def write_readinto(self, wbuf, rbuf):
        rbuf[:] = _bench().spi_xfer(wbuf)

    def deinit(self):
        pass


class WDT:
    def __init__(self, id=0, timeout=5000):
        if timeout < 1000:
            raise ValueError("ESP32 WDT timeout must be at least 1000 ms")
        _bench().feed(timeout)

    def feed(self):
        _bench().feed()


class RTC:
    def datetime(self, dt=None):
        if dt is not None:
            raise OSError("the simulated RTC follows the host clock")
        t = time.localtime()
        return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)


def unique_id():
    mac = _bench().board.get("sim", {}).get("mac", "24:0a:c4:00:00:01")
    return bytes(int(x, 16) for x in mac.split(":"))


def reset_cause():
    return _bench().boot_reason


def reset():
    b = _bench()
    b.link.send({"ev": "reset"})
    while True:  # the host restarts the board
        time.sleep(1)


def soft_reset():
    reset()


def freq(*args):
    return 240_000_000


def idle():
    time.sleep_ms(1)


def diag_port(status_fn):
    """The simulator's control channel asks the firmware for its status through this."""
    _bench().status_hook = status_fn
