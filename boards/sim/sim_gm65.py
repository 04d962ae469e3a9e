# A GM65 QR scanner module on the simulated board's QR UART, as the firmware sees it through
# machine.UART: it answers configuration frames (7E 00 ...) the way the module does, keeps
# its registers (read mode, same-code delay, baud rate) and saves them to its own flash,
# and sends what is held in front of it as text + CR. docs/gm65.md is the protocol; this is
# an independent implementation of it, for the simulator only.
#
# Host ops (washpay sim ctl):
#   qr {"text": ...}     a code in front of the scanner: sent if the read mode scans by
#                        itself (continuous or sense) and the same-code delay allows it
#   qr_raw {"hex": ...}  bytes on the scanner's TX line as they are (noise, stubs, frames)
import json
import time

_REG_MODE = 0x0000
_REG_SAME_CODE = 0x0013
_REG_BAUD = 0x002A
_MODE_CONTINUOUS = 2
_MODE_SENSE = 3
_DECODE_US = 60_000  # from a code coming into view to its first byte on the wire
_REPLY_US = 2_000
# 3 MHz / baud code -> baud; the module's table (docs/gm65.md)
_BAUDS = {0x0139: 9600, 0x001A: 115200, 0x0034: 57600, 0x004E: 38400, 0x009C: 19200,
          0x00D0: 14400, 0x0271: 4800, 0x09C4: 1200}
_FACTORY = {_REG_MODE: 0x00, _REG_SAME_CODE: 0x00, _REG_BAUD: 0x39, _REG_BAUD + 1: 0x01}


def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = (crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def now_us():
    return time.time_ns() // 1000


class SimGM65:
    def __init__(self, bench, cfg=None, link_path=None):
        self.bench = bench
        cfg = cfg or {}
        # the module's own flash: a file next to the board's state, opened now because the
        # host's paths are out of reach once the board's LittleFS is mounted at /
        self.file = None
        if link_path and "/" in link_path:
            path = link_path.rsplit("/", 1)[0] + "/gm65.json"
            try:
                self.file = open(path, "r+b")
            except OSError:
                self.file = open(path, "w+b")
        self.flash = self._load()
        self.regs = bytearray(256)
        for addr, v in self.flash.items():
            self.regs[addr] = v
        self.uart = None  # the board's UART on our pins, once the firmware opens it
        self.rx = b""  # bytes received, not yet a whole frame
        self.frames = 0
        self.bad_frames = 0
        self.noise_in = 0  # bytes received at a baud rate other than ours
        self.saves = 0
        self.last_text = None
        self.last_sent_us = 0
        self.sent = 0
        self.power_on_noise = bytes.fromhex(cfg.get("power_on_noise", ""))
        bench.uart_devices["qr_tx"] = self
        bench.op_handlers["qr"] = self.op_qr
        bench.op_handlers["qr_raw"] = self.op_raw

    # ---- its flash
    def _load(self):
        regs = dict(_FACTORY)
        if self.file:
            try:
                self.file.seek(0)
                for k, v in json.loads(self.file.read().strip() or b"{}").items():
                    regs[int(k)] = int(v)
            except (OSError, ValueError):
                pass
        return regs

    def _save(self):
        self.flash = {a: self.regs[a] for a in _FACTORY}
        self.saves += 1
        if self.file:
            text = json.dumps({str(k): v for k, v in self.flash.items()})
            self.file.seek(0)
            self.file.write((text + " " * (120 - len(text))).encode())
            self.file.flush()

    @property
    def baud(self):
        return _BAUDS.get(self.regs[_REG_BAUD] | self.regs[_REG_BAUD + 1] << 8, 9600)

    @property
    def mode(self):
        return self.regs[_REG_MODE] & 3

    # ---- the wire
    def attach(self, uart):
        self.uart = uart
        if self.power_on_noise:
            self.send(self.power_on_noise)

    def send(self, data, delay_us=0):
        if self.uart is None:
            return False  # the board's UART is not listening: the bytes are lost
        self.uart._deliver(data, self.baud, now_us() + delay_us)
        return True

    def receive(self, data, uart):
        """Bytes the board wrote to us."""
        if uart.baudrate != self.baud:
            self.noise_in += len(data)  # framing errors: nothing we can read
            return
        self.rx += bytes(data)
        while True:
            i = self.rx.find(b"\x7e\x00")
            if i < 0:
                self.rx = self.rx[-1:] if self.rx.endswith(b"\x7e") else b""
                return
            self.rx = self.rx[i:]
            if len(self.rx) < 6:
                return
            n = self.rx[3]
            if len(self.rx) < 8 + n:
                return
            frame, self.rx = self.rx[: 8 + n], self.rx[8 + n :]
            self._frame(frame)

    def _frame(self, f):
        ftype, n = f[2], f[3]
        addr = f[4] << 8 | f[5]
        data = f[6 : 6 + n]
        crc = f[6 + n : 8 + n]
        c = crc16(f[2 : 6 + n])
        if crc != b"\xab\xcd" and crc != bytes((c >> 8, c & 0xFF)):
            self.bad_frames += 1
            return  # the module stays silent on a frame it cannot trust
        self.frames += 1
        old_baud = self.baud
        if ftype == 0x07 and n == 1:
            count = data[0] or 256
            self._reply(bytes(self.regs[(addr + i) & 0xFF] for i in range(count)))
        elif ftype == 0x08 and n >= 1:
            for i, v in enumerate(data):
                self.regs[(addr + i) & 0xFF] = v
            # the reply still goes out at the old rate; a new baud rate applies after it
            self._reply(b"\x00", old_baud)
        elif ftype == 0x09:
            self._save()
            self._reply(b"\x00")
        else:
            self.bad_frames += 1

    def _reply(self, data, baud=None):
        body = bytes((0x00, len(data) & 0xFF)) + data
        c = crc16(body)
        frame = b"\x02\x00" + body + bytes((c >> 8, c & 0xFF))
        if self.uart is not None:
            self.uart._deliver(frame, baud or self.baud, now_us() + _REPLY_US)

    # ---- the host's side
    def op_qr(self, msg):
        text = msg.get("text")
        if not isinstance(text, str):
            return {"error": "qr needs text"}
        if self.mode not in (_MODE_CONTINUOUS, _MODE_SENSE):
            return {"sent": False,
                    "why": "read mode %d: the module waits for its trigger" % self.mode}
        same = self.regs[_REG_SAME_CODE]
        t = now_us()
        if (same & 0x80 and text == self.last_text
                and t - self.last_sent_us < (same & 0x7F) * 100_000):
            return {"sent": False, "why": "same code within the same-code delay"}
        if not self.send(text.encode() + b"\r", _DECODE_US):
            return {"sent": False, "why": "the board's QR UART is not open"}
        self.last_text = text
        self.last_sent_us = t
        self.sent += 1
        return {"sent": True, "bytes": len(text) + 1, "baud": self.baud}

    def op_raw(self, msg):
        try:
            data = bytes.fromhex(msg.get("hex", ""))
        except ValueError:
            return {"error": "qr_raw needs hex digits"}
        if not self.send(data):
            return {"sent": False, "why": "the board's QR UART is not open"}
        return {"sent": True, "bytes": len(data), "baud": self.baud}

    def status(self):
        return {
            "mode": self.mode, "same_code": self.regs[_REG_SAME_CODE], "baud": self.baud,
            "saved": {("%04x" % a): v for a, v in self.flash.items()}, "saves": self.saves,
            "frames": self.frames, "bad_frames": self.bad_frames, "noise_in": self.noise_in,
            "sent": self.sent, "open": self.uart is not None,
        }
