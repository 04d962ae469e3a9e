"""A board's serial console, through pyserial: is a MicroPython REPL there, reset the board,
and read what the firmware says while it boots.

`washpay provision` uses it around mpremote: first to see that something answers on the
port (mpremote would wait for a raw REPL that never comes), last to reset the board and wait
for the firmware's one machine-readable line, `washpay: boot {json}` (firmware/washpay/app.py).
A board on native USB drops off the bus while it resets; the port is opened again.
"""

import json
import os
import time

BOOT_PREFIX = "washpay: boot "
CANNOT_START = "washpay: cannot start:"
RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"


class ConsoleError(Exception):
    """The console could not be used, or the firmware did not come up; says what was seen."""


class Console:
    def __init__(self, port, baudrate=115200):
        import serial

        self.port = port
        self.baudrate = baudrate
        self._serial = serial
        self.s = None
        self.seen = bytearray()  # everything read since the reset, for error messages

    def open(self):
        serial = self._serial
        s = serial.Serial()
        s.port = self.port
        s.baudrate = self.baudrate
        s.timeout = 0.05
        # both lines released: an ESP32 dev board's auto-reset circuit leaves the chip running
        s.dtr = False
        s.rts = False
        try:
            s.open()
        except (serial.SerialException, OSError) as e:
            raise ConsoleError(f"cannot open {self.port}: {e}") from None
        self.s = s
        return self

    def close(self):
        if self.s is not None:
            self.s.close()
            self.s = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def _read(self):
        if self.s is None:
            try:
                self.open()
            except ConsoleError:
                time.sleep(0.2)
                return b""
        try:
            return self.s.read(4096)
        except (self._serial.SerialException, OSError):
            self.close()  # gone while the board resets: opened again on the next read
            time.sleep(0.2)
            return b""

    def read_until(self, marker, timeout):
        """What arrived up to and including `marker`, or None after `timeout` seconds."""
        buf = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            buf += self._read()
            if marker in buf:
                return bytes(buf)
        return None

    def drain(self, quiet=0.2, limit=2.0):
        """Read and drop input until none came for `quiet` seconds."""
        end = time.monotonic() + limit
        last = time.monotonic()
        while time.monotonic() < end and time.monotonic() - last < quiet:
            if self._read():
                last = time.monotonic()

    def hello(self, timeout):
        """True if a MicroPython REPL answers: stop what runs (Ctrl-C), wait for the prompt.

        One Ctrl-C first (a second one while the first still unwinds upsets some boards);
        another, with Ctrl-B for the banner and a fresh prompt, if no prompt came."""
        self.drain()
        self.s.write(b"\r\x03")
        if self.read_until(b">>> ", min(1.5, timeout)) is None:
            self.s.write(b"\x03\x02")
            if self.read_until(b">>> ", timeout) is None:
                return False
        self.drain()  # let the rest arrive before another tool takes the port
        return True

    def reset(self):
        """machine.reset() from the raw REPL: the board restarts as after power-on."""
        self.hello(5)
        self.s.write(b"\r\x01")
        if self.read_until(RAW_PROMPT, 5) is None:
            raise ConsoleError(f"the board at {self.port} did not enter its raw REPL to be reset")
        self.seen = bytearray()
        self.s.write(b"import machine\nmachine.reset()\n\x04")

    def wait_boot(self, timeout):
        """The firmware's boot report (a dict) from its `washpay: boot` line."""
        deadline = time.monotonic() + timeout
        line = bytearray()
        while time.monotonic() < deadline:
            chunk = self._read()
            self.seen += chunk
            line += chunk
            while b"\n" in line:
                one, _, rest = bytes(line).partition(b"\n")
                line = bytearray(rest)
                text = one.decode(errors="replace").strip()
                if text.startswith(BOOT_PREFIX):
                    try:
                        return json.loads(text[len(BOOT_PREFIX):])
                    except ValueError:
                        raise ConsoleError(f"unreadable boot report: {text}") from None
                if text.startswith(CANNOT_START):
                    why = text[len(CANNOT_START):].strip()
                    raise ConsoleError(f"the firmware did not start: {why}")
        tail = self.seen.decode(errors="replace").strip().splitlines()[-8:]
        raise ConsoleError(
            f"no `{BOOT_PREFIX.strip()}` line on {self.port} within {timeout:g} s of the reset; "
            "the console said:\n    " + "\n    ".join(tail or ["(nothing)"])
        )

    def reset_and_wait_boot(self, timeout):
        self.reset()
        return self.wait_boot(timeout)


# ---- what a person is told when a board's port cannot be used (card, journal pull, ...)
def port_missing(port):
    """Why `port` cannot be a board's serial port (it does not exist), or None."""
    port = str(port)
    if port.startswith(("socket://", "rfc2217://")) or os.path.exists(port):
        return None
    return (f"nothing on {port}: no such serial port. Is the board plugged in (ls "
            "/dev/ttyUSB* /dev/ttyACM*)? For a simulated board use STATE/console of a "
            "running `washpay sim run`")


def mpremote_failure(port, text):
    """mpremote's last words about `port`, in terms of what to do."""
    if "may be in use" in text or "failed to access" in text:
        return port_missing(port) or (
            f"cannot open {port}: another program holds it (a serial terminal, mpremote, "
            "another washpay command): close it and try again")
    return text


def restart(port, timeout):
    """Reset the board on `port` and return once its firmware is up (its boot report).

    A command that stopped the firmware to work at the REPL hands the next command a board
    that runs, not one still starting (`mpremote reset` returns before the board has even
    reset)."""
    with Console(port) as con:
        return con.reset_and_wait_boot(timeout)
