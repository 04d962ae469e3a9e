# `machine` for the simulated board: the subset of MicroPython's ESP32 machine module that
# washpay's board layer uses, backed by simhw's models instead of silicon. It shadows the
# unix port's built-in machine module (which has no Pin, Counter or I2C).
import io
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


class UART(io.IOBase):
    """A UART wired to a simulated device (the one registered in the bench's uart_devices
    under the board's name of our TX pin). Bytes arrive at the sender's baud rate, one byte
    time after another, into an rx buffer of `rxbuf` bytes (the excess is lost, as on the
    ESP32); bytes sent at a rate other than ours arrive as framing garbage. Reads never block
    (timeout 0), and select.poll / asyncio streams wait on it through ioctl."""

    INV_TX = 1
    INV_RX = 2

    def __init__(self, id, baudrate=115200, bits=8, parity=None, stop=1, *, tx=None, rx=None,
                 rxbuf=256, txbuf=256, timeout=0, timeout_char=0, invert=0, flow=0):
        self.id = id
        self.baudrate = 115200
        self.bits = 8
        self.parity = None
        self.stop = 1
        self.tx = self.rx = None
        self.rxbuf = 256
        self._rx = b""
        self._incoming = []  # [first byte due (us), us per byte, data, bytes taken]
        self.lost = 0  # bytes dropped on a full rx buffer
        self.device = None
        self.init(baudrate, bits, parity, stop, tx=tx, rx=rx, rxbuf=rxbuf)

    def init(self, baudrate=0, bits=0, parity=-1, stop=0, *, tx=None, rx=None, rxbuf=None,
             **kw):
        # like the ESP32's: what is not given stays as it was
        if baudrate:
            self.baudrate = baudrate
        if bits:
            self.bits = bits
        if parity != -1:
            self.parity = parity
        if stop:
            self.stop = stop
        if rxbuf:
            self.rxbuf = rxbuf
        if tx is not None:
            self.tx = tx if isinstance(tx, int) else tx.id
        if rx is not None:
            self.rx = rx if isinstance(rx, int) else rx.id
        b = _bench()
        dev = getattr(b, "uart_devices", {}).get(b.by_gpio.get(self.tx))
        if dev is not None and dev is not self.device:
            self.device = dev
            dev.attach(self)

    def deinit(self):
        self.device = None

    # ---- the device's side
    def _deliver(self, data, baud, due_us):
        if baud != self.baudrate or self.bits != 8 or self.parity is not None:
            data = _garble(data, baud, self.baudrate)
        per = 10_000_000 // baud
        if self._incoming:
            last = self._incoming[-1]
            due_us = max(due_us, last[0] + len(last[2]) * last[1])
        self._incoming.append([due_us, per, bytes(data), 0])

    def _pump(self):
        t = simhw.now_us()
        while self._incoming:
            e = self._incoming[0]
            n = min(len(e[2]), (t - e[0]) // e[1] + 1) if t >= e[0] else 0
            if n > e[3]:
                room = self.rxbuf - len(self._rx)
                take = e[2][e[3] : n]
                if len(take) > room:
                    self.lost += len(take) - room
                    take = take[:room]
                self._rx += take
                e[3] = n
            if e[3] < len(e[2]):
                break
            self._incoming.pop(0)

    # ---- the firmware's side
    def any(self):
        self._pump()
        return len(self._rx)

    def readinto(self, buf, nbytes=None):
        self._pump()
        n = min(len(buf) if nbytes is None else nbytes, len(self._rx))
        if not n:
            return None
        buf[:n] = self._rx[:n]
        self._rx = self._rx[n:]
        return n

    def read(self, nbytes=None):
        self._pump()
        n = len(self._rx) if nbytes is None or nbytes < 0 else min(nbytes, len(self._rx))
        if not n:
            return None
        data, self._rx = self._rx[:n], self._rx[n:]
        return data

    def readline(self):
        self._pump()
        i = self._rx.find(b"\n")
        return self.read(i + 1 if i >= 0 else None)

    def write(self, buf):
        data = bytes(buf)
        if self.device is not None:
            self.device.receive(data, self)
        return len(data)

    def flush(self):
        pass

    def txdone(self):
        return True

    def sendbreak(self):
        pass

    def ioctl(self, req, arg):
        if req == 3:  # MP_STREAM_POLL: asyncio and select.poll wait here
            _bench().poll()  # the host's requests are served while the firmware waits
            self._pump()
            ret = 0
            if arg & 1 and self._rx:
                ret |= 1
            if arg & 4:
                ret |= 4
            return ret
        if req == 4:  # close
            return 0
        # anything else, MP_STREAM_GET_FILENO (10) above all, is not supported: with a file
        # number the poller would wait on that descriptor instead of asking us
        return -1


def _garble(data, baud, rate):
    # What a UART at `rate` makes of bytes sent at `baud`: framing errors and wrong bytes,
    # about as many as fit the time the sender took.
    n = max(1, len(data) * rate // baud)
    x = sum(data) + baud
    out = bytearray(n)
    for i in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out[i] = (x >> 16) & 0xFF
    return bytes(out)


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


class _CommandPort:
    def __init__(self):
        import asyncio

        self.inbox = []
        self.flag = asyncio.ThreadSafeFlag()

    def op(self, msg):
        from binascii import unhexlify

        try:
            payload = unhexlify(msg.get("hex", ""))
        except ValueError:
            return {"error": "command needs the command's bytes as hex digits"}
        if len(self.inbox) >= 8:
            return {"error": "command inbox full: the firmware is not taking commands"}
        self.inbox.append(payload)
        self.flag.set()  # the firmware's own task executes it, never this request
        return {"queued": len(self.inbox)}


def command_port():
    """Server commands from the simulator's control channel (op "command" {"hex"}), until
    the sync link carries them: the firmware takes them from .inbox when .flag is set."""
    port = _CommandPort()
    _bench().op_handlers["command"] = port.op
    return port


def diag_port(status_fn):
    """The simulator's control channel asks the firmware for its status through this."""
    _bench().status_hook = status_fn
