# The simulated board's hardware, seen from the ESP32's pins.
#
# Everything wired to the board lives here as a model driven by time and by the host:
# the coin acceptor's open-collector pulse line (with a pulse counter that counts edges
# at the moment they happen, like the ESP32's PCNT, whether or not Python is looking),
# the washer's start input, busy and door signals, the buttons, LEDs, buzzer and the I2C
# character display. The sim's `machine` module reads and drives these models through the
# GPIO numbers of boards/sim/board.json, so the firmware's board layer runs unchanged.
# The host (`washpay sim run`) talks to this module over a Unix socket, one JSON object per line.
import json
import socket
import struct
import time

_PRESS_US = 150_000  # how long a simulated button press holds the line
_FEED_REPORT_US = 200_000  # rate limit for watchdog-feed reports to the host
_POLL_US = 5_000


def now_us():
    return time.time_ns() // 1000


class CoinAcceptorModel:
    """A CH-926-style acceptor: one pulse train per accepted coin, nothing while inhibited."""

    def __init__(self, cfg):
        self.pulses_for = {int(v): int(n) for v, n in cfg["pulses"].items()}
        self.pulse_us = int(cfg.get("pulse_ms", 50)) * 1000
        self.gap_us = int(cfg.get("gap_ms", 50)) * 1000
        self.between_us = int(cfg.get("between_ms", 300)) * 1000
        self.intervals = []  # [start_us, end_us] of the line being active, in time order
        self.done_starts = 0  # starts of intervals already pruned
        self.done_ends = 0
        self.free_at = 0  # the acceptor is busy emitting until then

    def _add(self, start, end):
        self.intervals.append([start, end])
        self.intervals.sort()
        self.free_at = max(self.free_at, end)

    def train(self, n, t0, pulse_us=None, gap_us=None, jitter_us=0):
        pulse_us = pulse_us or self.pulse_us
        gap_us = gap_us or self.gap_us
        t = t0
        for _ in range(n):
            w = pulse_us
            if jitter_us:
                from random import randint

                w += randint(-jitter_us, jitter_us)
            self._add(t, t + w)
            t += w + gap_us
        return t

    def insert(self, value, count=1, gap_ms=None):
        n = self.pulses_for[value]
        now = now_us()
        between = self.between_us if gap_ms is None else int(gap_ms) * 1000
        t = max(now + 50_000, self.free_at + between)
        for _ in range(count):
            t = self.train(n, t) - self.gap_us + between
        return n

    def glitch(self, count=1, width_us=500, inside=False):
        now = now_us()
        for i in range(count):
            if inside:
                # a short drop inside the next (or current) pulse: one more counted edge
                for iv in self.intervals:
                    if iv[1] > now + 2 * width_us and iv[1] - iv[0] > 4 * width_us:
                        mid = (iv[0] + iv[1]) // 2
                        end = iv[1]
                        iv[1] = mid
                        self._add(mid + width_us, end)
                        break
            else:
                t = now + 20_000 + i * 37_000
                self._add(t, t + width_us)

    def _prune(self, t):
        # forget intervals long past, keeping their edge counts
        while self.intervals and self.intervals[0][1] < t - 2_000_000:
            self.intervals.pop(0)
            self.done_starts += 1
            self.done_ends += 1

    def active(self, t):
        self._prune(t)
        for s, e in self.intervals:
            if s <= t < e:
                return True
            if s > t:
                break
        return False

    def starts(self, t):
        n = self.done_starts
        for s, _ in self.intervals:
            if s <= t:
                n += 1
        return n

    def ends(self, t):
        n = self.done_ends
        for _, e in self.intervals:
            if e <= t:
                n += 1
        return n


class WasherModel:
    """The washing machine: starts on the relay if its door is closed, reports busy."""

    def __init__(self, cfg, start_mode):
        self.confirm_us = int(cfg.get("confirm_delay_ms", 300)) * 1000
        self.cycle_us = int(float(cfg.get("cycle_s", 4)) * 1_000_000)
        self.start_mode = start_mode
        self.mode = "auto"  # auto: responds to the relay; manual: busy only from the host
        self.manual_busy = False
        self.door_closed = True
        self.run_from = 0
        self.run_until = 0
        self.starts = 0

    def relay(self, on, t):
        if self.mode != "auto" or not self.door_closed:
            return
        if self.start_mode == "power":
            if on:
                self.run_from = t + self.confirm_us
                self.run_until = t + 10**15
                self.starts += 1
            else:
                self.run_until = t
        elif on and not self.busy(t):
            self.run_from = t + self.confirm_us
            self.run_until = self.run_from + self.cycle_us
            self.starts += 1

    def busy(self, t):
        if self.mode == "manual":
            return self.manual_busy
        return self.run_from <= t < self.run_until


class HostLink:
    def __init__(self, path):
        self.sock = None
        self._rx = bytearray(8192)  # the longest line: a card image (~3 KB)
        self._mv = memoryview(self._rx)
        self._n = 0
        if path:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # the unix port takes a raw struct sockaddr_un: family, path, NUL
            s.connect(struct.pack("H", socket.AF_UNIX) + path.encode() + b"\0")
            s.setblocking(False)
            self.sock = s

    def send(self, obj):
        if self.sock is None:
            return
        self.sock.setblocking(True)
        try:
            # streamed: a status reply is kilobytes, and the simulator shares the
            # firmware's GC heap (three copies of it in one piece is what fails first)
            json.dump(obj, self.sock)
            self.sock.write(b"\n")
        finally:
            self.sock.setblocking(False)

    def messages(self):
        if self.sock is None:
            return
        # read into one buffer made at start (in the simulator's share of the heap) and
        # parse lines in place: the simulator shares the firmware's GC heap, and a card
        # image is a 3 KB line that a fragmented heap may not have in one piece
        rx, mv = self._rx, self._mv
        while self._n < len(rx):
            try:
                n = self.sock.readinto(mv[self._n :])
            except OSError:
                n = None
            if not n:
                break
            self._n += n
        while True:
            nl = rx.find(b"\n", 0, self._n)
            if nl < 0:
                break
            msg = json.loads(mv[:nl]) if nl else None
            # the line leaves the buffer before it is handled: handling may poll again
            rest = self._n - nl - 1
            rx[:rest] = mv[nl + 1 : self._n]
            self._n = rest
            if msg is not None:
                yield msg
        if self._n == len(rx):
            self._n = 0  # a line longer than the buffer: dropped
            print("sim: a link message longer than %d bytes was dropped" % len(rx))


class Bench:
    """All simulated hardware of one board, addressed by GPIO number."""

    def __init__(self, board, link_path=None, flash=None, boot_reason=1):
        self.board = board
        self.pins = board["pins"]
        self.by_gpio = {gpio: name for name, gpio in self.pins.items()}
        sim = board.get("sim", {})
        self.acceptor = CoinAcceptorModel(sim.get("acceptor", {"pulses": {}}))
        self.washer = WasherModel(sim.get("washer", {}), board["washer"]["start_mode"])
        self.coin_cfg = board["coin"]
        self.washer_cfg = board["washer"]
        self.outputs = {}  # name -> electrical level driven by the firmware
        self.pressed = {}  # button name -> released at (us)
        self.net_up = True
        self.flash = flash
        self.boot_reason = boot_reason
        self.i2c_devices = {}
        # SPI devices by the name of their chip-select pin; each has xfer(bytes) -> bytes
        # (same length, clocked while selected), select(bool), and may have reset(level)
        # for a reset pin named in its `rst` attribute
        self.spi_devices = {}
        # host requests handled by peripheral models: op name -> handler(msg) -> reply dict
        self.op_handlers = {}
        self.link = HostLink(link_path)
        self.status_hook = None
        self.wdt_timeout = 0
        self._last_feed_report = 0
        self._last_poll = 0
        self.coins_returned = 0
        disp = board.get("display")
        if disp and disp.get("type") == "lcd1602_pcf8574":
            from sim_lcd import SimLCD1602

            self.lcd = SimLCD1602(cols=disp.get("cols", 16), rows=disp.get("rows", 2))
            self.i2c_devices[disp["addr"]] = self.lcd.i2c_write
        else:
            self.lcd = None
        self.card_reader = None
        if "card_cs" in self.pins:
            # the MFRC522 and the cards held to it (sim_mfrc522.py); card memory changes go
            # to the host, which keeps the cards through power cuts
            from sim_mfrc522 import SimMFRC522

            self.card_reader = SimMFRC522(rst="card_rst", on_event=self.link.send)
            self.spi_devices["card_cs"] = self.card_reader
            self.op_handlers["card"] = self.card_reader.handle
        # UART devices by the board's name of the TX pin wired to them; machine.UART
        # connects to the one on its tx pin (attach, receive; it calls uart._deliver)
        self.uart_devices = {}
        self.scanner = None
        if "qr_tx" in self.pins:
            # the GM65 QR scanner (sim_gm65.py); its saved settings live in its own flash,
            # a file next to the board's state
            from sim_gm65 import SimGM65

            self.scanner = SimGM65(self, sim.get("gm65"), link_path)

    # ---- pins, as the sim machine module sees them
    def _level(self, active, active_word):
        return (0 if active else 1) if active_word == "low" else (1 if active else 0)

    def read(self, gpio):
        self.poll()
        name = self.by_gpio.get(gpio)
        t = now_us()
        if name == "coin_pulse":
            return self._level(self.acceptor.active(t), self.coin_cfg["pulse_active"])
        if name == "washer_busy":
            return self._level(self.washer.busy(t), self.washer_cfg["busy_active"])
        if name == "door":
            return self._level(self.washer.door_closed, self.washer_cfg["door_closed"])
        if name and name.startswith("btn_"):
            start, end = self.pressed.get(name, (0, 0))
            return 0 if start <= t < end else 1  # to GND, pulled up
        return self.outputs.get(name, 0)

    def write(self, gpio, level):
        name = self.by_gpio.get(gpio)
        if name is None:
            return
        old = self.outputs.get(name)
        self.outputs[name] = level
        if old == level:
            return
        dev = self.spi_devices.get(name)
        if dev is not None:
            dev.select(level == 0)  # chip selects are active low
            return
        for dev in self.spi_devices.values():
            if getattr(dev, "rst", None) == name:
                dev.reset(level)
                return
        if name == "relay":
            on = level == (1 if self.washer_cfg["relay_active"] == "high" else 0)
            self.washer.relay(on, now_us())
            self.link.send({"ev": "relay", "on": on})
        elif name in ("coin_inhibit", "led_green", "led_red", "buzzer"):
            self.link.send({"ev": "pin", "name": name, "level": level})

    def counter(self, gpio, edge_falling):
        name = self.by_gpio.get(gpio)
        if name != "coin_pulse":
            return 0
        # Transitions into the active state are pulse starts.
        start_is_falling = self.coin_cfg["pulse_active"] == "low"
        t = now_us()
        if edge_falling == start_is_falling:
            return self.acceptor.starts(t)
        return self.acceptor.ends(t)

    def inhibited(self):
        level = self.outputs.get("coin_inhibit")
        if level is None:
            return False
        return level == (1 if self.coin_cfg["inhibit_active"] == "high" else 0)

    def spi_xfer(self, data):
        """Clock `data` out on the SPI bus; returns what MISO carried back."""
        self.poll()  # code at the REPL reads no pins: the host's requests come in here too
        for cs, dev in self.spi_devices.items():
            if self.outputs.get(cs, 1) == 0:
                return dev.xfer(bytes(data))
        return b"\xff" * len(data)  # nobody selected: MISO floats high

    def i2c_write(self, addr, buf):
        dev = self.i2c_devices.get(addr)
        if dev is None:
            raise OSError(19)  # ENODEV, as machine.I2C reports a missing device
        dev(buf)

    def feed(self, timeout_ms=None):
        t = now_us()
        if timeout_ms is not None:
            self.wdt_timeout = timeout_ms
            self.link.send({"ev": "wdt", "timeout_ms": timeout_ms})
            self._last_feed_report = t
        elif t - self._last_feed_report >= _FEED_REPORT_US:
            self._last_feed_report = t
            self.link.send({"ev": "feed"})
        self.poll()

    # ---- the host's side
    def poll(self):
        t = now_us()
        if t - self._last_poll < _POLL_US:
            return
        self._last_poll = t
        for msg in self.link.messages():
            try:
                reply = self.handle(msg)
            except Exception as e:  # a bad request must not take the board down
                reply = {"error": "%s: %s" % (type(e).__name__, e)}
            if "id" in msg:
                if reply is None:
                    reply = {}
                reply["id"] = msg["id"]
                self.link.send({"ev": "reply", "data": reply})

    def status(self):
        st = {
            "pins": dict(self.outputs),
            "washer": {
                "mode": self.washer.mode,
                "busy": self.washer.busy(now_us()),
                "door": "closed" if self.washer.door_closed else "open",
                "starts": self.washer.starts,
            },
            "inhibit": self.inhibited(),
            "coins_returned": self.coins_returned,
            "net": "up" if self.net_up else "down",
            "display": self.lcd.text() if self.lcd else "",
            "flash": self.flash.counters() if self.flash else {},
            "scanner": self.scanner.status() if self.scanner else {},
        }
        if self.status_hook:
            st["firmware"] = self.status_hook()
        return st

    def handle(self, msg):
        op = msg.get("op")
        if op == "heap":
            import gc

            gc.collect()
            out = {"alloc": gc.mem_alloc(), "free": gc.mem_free(),
                   "sim_baseline": heap_baseline}
            if msg.get("map"):  # the block map and qstr figures on the console (bench)
                import micropython

                micropython.qstr_info()
                micropython.mem_info(1)
            return out
        if op == "status":
            return self.status()
        if op == "coin":
            value = int(msg["value"])
            if value not in self.acceptor.pulses_for:
                return {"error": "the acceptor does not take a coin of %d" % value}
            if self.inhibited():
                self.coins_returned += 1
                return {"returned": True}
            n = self.acceptor.insert(value, int(msg.get("count", 1)), msg.get("gap_ms"))
            return {"pulses": n}
        if op == "pulses":
            t = self.acceptor.train(
                int(msg["n"]),
                max(now_us() + 20_000, self.acceptor.free_at + self.acceptor.between_us),
                int(msg.get("width_ms", 50)) * 1000,
                int(msg.get("gap_ms", 50)) * 1000,
            )
            return {"ends_in_ms": (t - now_us()) // 1000}
        if op == "glitch":
            self.acceptor.glitch(
                int(msg.get("count", 1)), int(msg.get("width_us", 500)), bool(msg.get("inside"))
            )
            return {}
        if op == "button":
            # a finger presses, holds and lets go; a second press comes after the release
            name = "btn_" + msg["name"]
            start = max(now_us(), self.pressed.get(name, (0, 0))[1] + _PRESS_US)
            self.pressed[name] = (start, start + _PRESS_US)
            return {}
        if op == "washer":
            what = msg["state"]
            if what == "auto":
                self.washer.mode = "auto"
            else:
                self.washer.mode = "manual"
                self.washer.manual_busy = what == "busy"
            return {}
        if op == "door":
            self.washer.door_closed = msg["state"] == "closed"
            return {}
        if op == "net":
            self.net_up = msg["state"] == "up"
            return {}
        if op == "cut":
            self.flash.arm_cut(int(msg["after_ops"]), bool(msg.get("torn")))
            return {"armed": True}
        handler = self.op_handlers.get(op)
        if handler is not None:
            return handler(msg)
        return {"error": "unknown op %r" % op}


bench = None  # the one Bench of this process, set by the boot ROM
heap_baseline = 0  # GC heap in use before main.py: the simulator's own share
heap_aside = None  # rom_boot: the heap set aside so the firmware gets exactly FW_HEAP
