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


class Noise:
    """Glitches on the coin line from something else (a motor, a relay, a bad ground):
    `count` glitches of `width_us`, one per `period_us` from t0, each started up to
    `jitter_us` late (a fixed pseudo-random sequence). Generated as time reaches them, so
    an hour of noise costs no memory."""

    def __init__(self, t0, period_us, width_us, count, jitter_us=0):
        self.t0 = t0
        self.period = period_us
        self.width = width_us
        self.jitter = jitter_us
        self.left = count
        self.k = 0
        self.x = t0 & 0x7FFFFFFF
        self.s = self._at()

    def _at(self):
        t = self.t0 + self.k * self.period
        if self.jitter:
            self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
            t += (self.x >> 8) % (self.jitter + 1)
        return t

    def take(self):
        """The next glitch as (start, end); None once the noise is over."""
        if self.left <= 0:
            return None
        s = self.s
        self.left -= 1
        self.k += 1
        self.s = self._at()
        return s, s + self.width


class CoinAcceptorModel:
    """A CH-926-style acceptor: one pulse train per accepted coin, nothing while inhibited;
    and its line, which noise can reach whatever the acceptor does.

    The line is active while any pulse or glitch holds it. They are kept as pending
    intervals (the acceptor's pulses, sorted by start) and noise sources; reading the line
    or the counter at time t consumes what started by t, in time order, and counts the
    line's real edges: a glitch inside a pulse is no edge. Reads come in time order, so each
    costs O(1) plus the intervals that started since the last one."""

    def __init__(self, cfg):
        self.pulses_for = {int(v): int(n) for v, n in cfg["pulses"].items()}
        self.pulse_us = int(cfg.get("pulse_ms", 50)) * 1000
        self.gap_us = int(cfg.get("gap_ms", 50)) * 1000
        self.between_us = int(cfg.get("between_ms", 300)) * 1000
        self.pending = []  # [start_us, end_us] not yet reached, sorted by start
        self.noise = []  # Noise sources still emitting
        self.free_at = 0  # the acceptor is busy emitting until then
        # the line up to self.t: edges so far, and the active stretch under way
        self.t = 0
        self.rises = 0
        self.falls = 0
        self.on = False
        self.on_from = 0
        self.on_until = 0

    def _add(self, start, end):
        i = len(self.pending)
        while i and self.pending[i - 1][0] > start:
            i -= 1
        self.pending.insert(i, [start, end])

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
        self.free_at = max(self.free_at, t - gap_us)
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
        if not inside:
            # phantom pulses, 37 ms apart: each one an edge of its own
            self.noise.append(Noise(now + 20_000, 37_000, width_us, count))
            return
        # short drops inside the next (or current) pulses: one more counted edge each
        self.advance(now)
        for _ in range(count):
            lo = now + width_us
            if self.on and self.on_until > lo + width_us and \
                    self.on_until - self.on_from > 4 * width_us:
                mid = max((self.on_from + self.on_until) // 2, lo)
                self._add(mid + width_us, self.on_until)
                self.on_until = mid
                continue
            for iv in self.pending:
                if iv[1] - iv[0] > 4 * width_us:
                    mid = (iv[0] + iv[1]) // 2
                    end = iv[1]
                    iv[1] = mid
                    self._add(mid + width_us, end)
                    break

    def storm(self, rate_hz, seconds, width_us=None):
        """Noise at `rate_hz` for `seconds`, from now: glitches of width_us (default: a
        quarter period, at most 0.5 ms) at random points of each period."""
        period = 1_000_000 // rate_hz
        width = width_us or min(500, period // 4)
        if not 0 < width < period:
            raise ValueError("a glitch of %d us does not fit a period of %d us"
                             % (width, period))
        count = int(rate_hz * seconds)
        self.noise.append(Noise(now_us() + 20_000, period, width, count,
                                period - width - 1))
        return count

    def advance(self, t):
        """Bring the line's edge counts up to time t (earlier times change nothing: the
        counter never counts backwards)."""
        if t < self.t:
            return
        pending = self.pending
        while True:
            src = None
            s = t + 1
            if pending and pending[0][0] < s:
                s = pending[0][0]
            for n in self.noise:
                if n.s < s and n.left > 0:
                    src = n
                    s = n.s
            if s > t:
                break
            if src is None:
                e = pending.pop(0)[1]
            else:
                e = src.take()[1]
                if src.left <= 0:
                    self.noise.remove(src)
            if self.on and s > self.on_until:  # the line went idle in between
                self.falls += 1
                self.on = False
            if self.on:
                self.on_until = max(self.on_until, e)
            else:
                self.rises += 1
                self.on = True
                self.on_from = s
                self.on_until = e
        if self.on and self.on_until <= t:
            self.falls += 1
            self.on = False
        self.t = t

    def active(self, t):
        self.advance(t)
        return self.on

    def starts(self, t):
        self.advance(t)
        return self.rises

    def ends(self, t):
        self.advance(t)
        return self.falls


class WasherModel:
    """The washing machine: starts on the relay if its door is closed, reports busy.

    It is another machine on its own supply: a program it runs goes on through our board's
    power cuts, on its own timer. The host keeps what `run()` says and hands it to the next
    firmware process (op "washer_run"); a machine switched by its supply (start mode
    "power") stopped when our relay let go."""

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

    def run(self):
        """The running program, for the host to keep across power cuts."""
        return {"op": "washer_run", "run_from": self.run_from, "run_until": self.run_until,
                "starts": self.starts}

    def restore(self, msg, t):
        self.run_from = int(msg["run_from"])
        self.run_until = int(msg["run_until"])
        self.starts = int(msg["starts"])
        if self.start_mode == "power":  # our relay was its supply: off since the cut
            self.run_until = min(self.run_until, t)

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
            before = self.washer.starts, self.washer.run_until
            self.washer.relay(on, now_us())
            self.link.send({"ev": "relay", "on": on})
            if (self.washer.starts, self.washer.run_until) != before:
                self.link.send({"ev": "washer_run", "run": self.washer.run()})
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
        if self.lcd:
            self.lcd.note()  # the screen now is among the ones shown
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
            # the last screens, oldest first, and how many there have been: a notice of a
            # few seconds is still here when a loaded host looks late
            "shown": self.lcd.shown if self.lcd else [],
            "shown_n": self.lcd.shown_n if self.lcd else 0,
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
        if op == "glitch" and "rate" in msg:
            rate, seconds = int(msg["rate"]), float(msg.get("seconds", 1))
            if not 1 <= rate <= 20_000:
                return {"error": "noise rate must be 1 to 20000 Hz, not %d" % rate}
            if not 0 < seconds <= 86_400:
                return {"error": "noise lasts more than 0 and at most 86400 s"}
            width = int(msg.get("width_us", 0))
            try:
                n = self.acceptor.storm(rate, seconds, width)
            except ValueError as e:
                return {"error": str(e)}
            return {"glitches": n, "ends_in_ms": int(seconds * 1000) + 20}
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
                # driven by hand from now: a program the machine ran by itself is over, and
                # back in auto it answers the relay afresh
                self.washer.mode = "manual"
                self.washer.manual_busy = what == "busy"
                t = now_us()
                if self.washer.run_until > t:
                    self.washer.run_until = t
                    self.link.send({"ev": "washer_run", "run": self.washer.run()})
            return {}
        if op == "washer_run":  # the machine's program, running since before our power cut
            self.washer.restore(msg, now_us())
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
