"""`washpay sim run`: the simulated board, as a process tree a person or a test can drive.

The firmware runs unchanged under the real `micropython` (unix port) in a child process
whose console is a pseudo-terminal. This process stands where the board's USB-serial chip
and power supply would be:

- it relays the console between the child's pty and a second pty that people, tests and
  `mpremote` open (one shared pty does not work with mpremote), turns Ctrl-C into SIGINT
  while the firmware runs, and turns Ctrl-D at an empty REPL prompt into a soft reset
  (`MPY: soft reboot`), which the unix port does not do by itself;
- it serves the simulated peripherals' link (hw.sock) and the control channel (ctl.sock)
  that `washpay sim ctl` uses: coins, buttons, washer, door, network, power;
- a power cut kills the child with SIGKILL: the flash file keeps only what reached it;
- a watchdog that is not fed resets the board, as the ESP32's would.
"""

import errno
import fcntl
import json
import os
import pty
import selectors
import signal
import socket
import subprocess
import termios
import time
import tty
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE_DIR = ROOT / "firmware"
# the simulated board's own modules; the bench points this at a copy compiled to .mpy
SIM_DIR = Path(os.environ.get("WASHPAY_SIM_DIR") or ROOT / "boards" / "sim")

RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
FRIENDLY_PROMPT = b">>> "
BOOT_REASON = {"power": 1, "hard": 2, "wdt": 3, "soft": 5}
STATUS_TIMEOUT_S = 2.0


def micropython_command(explicit=None):
    """The micropython that runs the firmware (host_tools/interp.py); exits with the reason
    when there is none."""
    from host_tools.interp import InterpreterError, micropython

    try:
        return micropython(explicit)
    except InterpreterError as e:
        raise SystemExit(str(e)) from None



# On the board the firmware has a core to itself and samples the coin line every 5 ms; on a
# shared host a busy moment (parallel tests, a compile) could hold the simulated firmware off
# the CPU for longer than a pulse, and it would then rightly refuse a train it could not time.
# So the simulated firmware runs at a higher scheduling priority than the host's own work
# where the host allows it (root or CAP_SYS_NICE; else it runs as it is). A real-time
# priority was tried and made things worse: it starved mpremote and the simulator itself.
FIRMWARE_NICE = -5


def _firmware_priority(pid):
    try:
        os.setpriority(os.PRIO_PROCESS, pid, FIRMWARE_NICE)
    except OSError:
        pass


class SimRefused(Exception):
    """`washpay sim run` did not start the board; the message says why and what to do."""


def lock_state(state):
    """Hold STATE/sim.lock for as long as this process lives: one simulator per state
    directory. flock locks die with their process, so a killed simulator leaves no lock."""
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(state / "sim.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise SimRefused(f"{state} is in use by the simulator with pid {holder}: stop it "
                         "first, or give another --state directory") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _nonblock(fd):
    fl = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)


class SimRunner:
    def __init__(self, state_dir, heap="1m", device_id="sim-0001", quiet=False,
                 firmware_dir=None, site_key=None, bare=False, flash_image=None, lock_fd=None,
                 format_flash=False, micropython=None, fw_heap=None):
        self.micropython = micropython_command(micropython)
        # the firmware's own heap: rom_boot sets the rest of the GC heap aside after the
        # simulator's modules are in, so that this much is free when main.py starts
        self.fw_heap = fw_heap
        self.state = Path(state_dir).resolve()
        self.lock_fd = lock_fd  # STATE/sim.lock, held (lock_state) by whoever made this runner
        # --format: the first boot formats a flash that does not mount (rom_boot.py); without
        # it such a flash stops the simulator with `refused`, the flash left as it was
        self.format_flash = format_flash
        self.refused = None
        # bare: a freshly flashed MicroPython: no /rom, no factory files, an empty LittleFS
        self.bare = bare
        self.flash_image = Path(flash_image).resolve() if flash_image else None
        self.site_key = Path(site_key).resolve() if site_key else None
        self.firmware_dir = Path(firmware_dir).resolve() if firmware_dir else FIRMWARE_DIR
        self.heap = heap
        self.device_id = device_id
        self.quiet = quiet
        self.sel = selectors.DefaultSelector()
        self.child = None
        self.hw = None  # connection from the child's simhw
        self.hw_buf = b""
        self.ctl_clients = {}  # socket -> read buffer
        self.pending = {}  # request id -> (ctl socket, deadline, op)
        self.next_id = 1
        self.power = "off"
        self.boot_mode = "run"
        self.events = []  # what a person at the machine would have seen
        self.relay_on = False
        self.relay_pulses = 0
        self.boots = 0
        self.wdt_timeout_ms = 0
        self.last_feed = 0.0
        self.tail = b""  # recent console output, to see REPL prompts
        self.in_repl = False
        self.swallow_until = None  # hide output until this marker (after a raw soft reset)
        self.send_on_prompt = None
        # Ctrl-C from the console: SIGINT reaches the firmware only while Python code runs
        # with MicroPython's handler in place (at a prompt SIGINT would kill the process).
        # Until the boot ROM hands over to main.py it waits, as a byte waits in a UART FIFO.
        self.main_started = False
        self.sigint_pending = False
        self.executing = False  # code sent to the raw REPL runs
        self.raw_repl = False  # the last prompt was the raw REPL's
        self.last_sigint = 0.0
        self.stopping = False
        # The machine, its door and the network do not lose their state when our board loses
        # power: the last such request is replayed to every new firmware process.
        self.environment = {}
        # Nor do the cards: their images live here, the one on the reader is put back.
        from host_tools.sim.card_field import CardField

        self.cards = CardField(self.state)

    # ---- set-up
    def prepare(self):
        # first of all: nothing in a directory another simulator runs on is touched
        if self.lock_fd is None:
            self.lock_fd = lock_state(self.state)
        board = json.loads((SIM_DIR / "board.json").read_text())
        flash = self.state / "flash.bin"
        if self.flash_image is not None:  # a volume made elsewhere, e.g. by `washpay image`
            from host_tools.image import install_sim_flash

            install_sim_flash(self.flash_image, flash, board)
        if self.bare and not flash.exists():  # erased flash: MicroPython formats it at boot
            with open(flash, "wb") as f:
                f.write(b"\xff" * (board.get("sim", {}).get("flash_blocks", 512) * 4096))
        size = board.get("sim", {}).get("flash_blocks", 512) * 4096
        if flash.exists() and flash.stat().st_size != size:
            self._wrong_size(flash, size)
        if not flash.exists():
            blocks = board.get("sim", {}).get("flash_blocks", 512)
            with open(flash, "wb") as f:
                f.write(b"\xff" * (blocks * 4096))
            # factory files for the blank flash; files already put there are kept
            prov = self.state / "provision"
            prov.mkdir(exist_ok=True)
            factory = {"board.json": board, "config.json": {"device_id": self.device_id}}
            for name, content in factory.items():
                if not (prov / name).exists():
                    (prov / name).write_text(json.dumps(content, indent=1))
            # the board's identity, as provisioning gives a real one: its device secret,
            # derived from the site key (created here unless the operator names one)
            from host_tools import keys

            secrets = prov / "secrets.json"
            if not secrets.exists():
                site_key = keys.ensure_site_key(self.site_key or self.state / "site.key")
                doc = keys.secrets_json(site_key, self.device_id)
                if "card_key" not in doc:  # the site's card key material (docs/keys.md)
                    from host_tools.wallet import site_card_key

                    doc["card_key"] = site_card_key(site_key).hex()
                secrets.write_text(json.dumps(doc))
                secrets.chmod(0o600)
        for name in ("ctl.sock", "hw.sock"):
            try:
                (self.state / name).unlink()
            except FileNotFoundError:
                pass

        # console: board side (child's stdin/stdout) and user side (mpremote, people)
        self.board_master, board_slave = pty.openpty()
        tty.setraw(board_slave)
        self.board_slave = board_slave
        self.user_master, user_slave = pty.openpty()
        tty.setraw(user_slave)
        self.user_slave = user_slave  # held open so the master never sees EIO
        self.console_path = os.ttyname(user_slave)
        link = self.state / "console"
        try:
            link.unlink()
        except FileNotFoundError:
            pass
        link.symlink_to(self.console_path)
        _nonblock(self.board_master)
        _nonblock(self.user_master)
        self.sel.register(self.board_master, selectors.EVENT_READ, "board")
        self.sel.register(self.user_master, selectors.EVENT_READ, "user")
        self.log = open(self.state / "console.log", "ab", buffering=0)

        self.hw_server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.hw_server.bind(str(self.state / "hw.sock"))
        self.hw_server.listen(1)
        self.sel.register(self.hw_server, selectors.EVENT_READ, "hw-accept")
        self.ctl_server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl_server.bind(str(self.state / "ctl.sock.tmp"))
        self.ctl_server.listen(8)
        self.sel.register(self.ctl_server, selectors.EVENT_READ, "ctl-accept")

    def _wrong_size(self, flash, size):
        # A chip has one size: a flash file cut short (or grown) is damaged, and what LittleFS
        # would read past its end is not what a chip holds. Refused like a flash that does
        # not mount; --format keeps a copy and starts from an erased chip.
        got = flash.stat().st_size
        if not self.format_flash:
            raise SimRefused(
                f"{flash} is {got} bytes, the simulated flash chip {size}: it is damaged and "
                f"nothing was changed. Read its journal with `washpay journal decode {flash} "
                "--site-key KEY --device ID`; then `washpay sim run --format` formats it (a "
                "copy is kept as flash.bin.unmountable)")
        os.replace(flash, flash.with_name("flash.bin.unmountable"))
        with open(flash, "wb") as f:
            f.write(b"\xff" * size)
        print(f"sim: --format: {flash} was {got} bytes, not {size}: kept as "
              "flash.bin.unmountable; an erased chip in its place", flush=True)

    def event(self, kind, **data):
        ev = {"t": round(time.time(), 3), "event": kind, **data}
        self.events.append(ev)
        del self.events[:-500]
        if not self.quiet:
            print("sim: " + kind + (" " + json.dumps(data) if data else ""), flush=True)

    # ---- power
    def power_on(self, mode="run", reason="power"):
        if self.child is not None:
            return
        cmd = [
            self.micropython,
            "-X",
            f"heapsize={self.heap}",
            "-i",
            str(SIM_DIR / "rom_boot.py"),
            str(self.state),
            mode,
            "-" if self.bare else str(self.firmware_dir),  # "-": no /rom, no factory files
            str(SIM_DIR),
            str(BOOT_REASON[reason]),
        ]
        if self.format_flash:
            cmd.append("format")
            self.format_flash = False  # the operator said so for this start, not for ever
        if self.fw_heap:
            cmd.append(f"fw_heap={self.fw_heap}")
        self.child = subprocess.Popen(
            cmd,
            stdin=self.board_slave,
            stdout=self.board_slave,
            stderr=self.board_slave,
            start_new_session=True,
            close_fds=True,
        )
        _firmware_priority(self.child.pid)
        self.power = "on"
        self.boot_mode = mode
        self.boots += 1
        self.in_repl = False
        self.main_started = False
        self.sigint_pending = False
        self.executing = False
        self.raw_repl = False
        self.last_sigint = 0.0  # a new firmware process: its first Ctrl-C stops it
        self.tail = b""
        self.wdt_timeout_ms = 0
        self.relay_on = False
        self.event("power on", mode=mode, reason=reason)

    def power_cut(self, why="power cut"):
        if self.child is None:
            return
        try:
            os.killpg(self.child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.child.wait()
        self.child = None
        self._drop_hw()
        self._flush_console()
        self.power = "off"
        self.relay_on = False
        for rid, (sock, _, _) in list(self.pending.items()):
            self._reply(sock, {"ok": False, "error": "the board lost power"})
            del self.pending[rid]
        self.event(why)

    def reboot(self, mode, reason, banner=b"MPY: soft reboot\r\n"):
        self.power_cut(why=f"{reason} reset")
        if banner:
            self._to_user(banner)
        if mode == "raw":
            self.swallow_until = b"raw REPL; CTRL-B to exit\r\n"
            self.send_on_prompt = b"\x01"
        self.power_on(mode="repl" if mode == "raw" else "run", reason=reason)

    def _flush_console(self):
        # What the dead board wrote went out on the wire before the power went: pass it on
        # now, so that it is never taken for the next firmware's output (a prompt from the
        # old process would make the relay think the new one sits at its REPL). What it
        # had not read yet is lost, as a UART's receive FIFO is at a reset: the next
        # firmware must not find an old command waiting on its console.
        while True:
            try:
                data = os.read(self.board_master, 4096)
            except OSError:
                break
            if not data:
                break
            self._to_user(data)
        termios.tcflush(self.board_slave, termios.TCIFLUSH)
        self.tail = b""

    def _interrupt(self):
        # one SIGINT per stop: a second one while the unix port unwinds the first can kill
        # it, where a real board just shows its prompt (`\r\x03\x03`)
        self.sigint_pending = False
        if time.monotonic() - self.last_sigint > 1.0:
            self.last_sigint = time.monotonic()
            os.killpg(self.child.pid, signal.SIGINT)

    def _drop_hw(self):
        if self.hw is not None:
            self.sel.unregister(self.hw)
            self.hw.close()
            self.hw = None
            self.hw_buf = b""

    # ---- console relay
    def _to_user(self, data):
        self.log.write(data)
        try:
            os.write(self.user_master, data)
        except OSError as e:  # nobody reading: a UART with no listener drops bytes too
            if e.errno not in (errno.EAGAIN, errno.EIO):
                raise

    def _from_board(self, data):
        self.tail = (self.tail + data)[-64:]
        if self.send_on_prompt and self.tail.endswith(FRIENDLY_PROMPT):
            os.write(self.board_master, self.send_on_prompt)
            self.send_on_prompt = None
        if self.swallow_until is not None:
            if self.swallow_until in self.tail:
                data = self.tail[self.tail.index(self.swallow_until) :]
                self.swallow_until = None
            else:
                return
        if (self.tail.endswith(FRIENDLY_PROMPT) or self.tail.endswith(RAW_PROMPT)
                or self.tail.endswith(b"\x04>")):
            self.in_repl = True
            self.raw_repl = not self.tail.endswith(FRIENDLY_PROMPT)
            self.executing = False
            self.sigint_pending = False  # the firmware is stopped: nothing to interrupt
        self._to_user(data)

    def _at_prompt(self):
        return self.in_repl and (
            self.tail.endswith(FRIENDLY_PROMPT)
            or self.tail.endswith(RAW_PROMPT)
            or self.tail.endswith(b"\x04>")
        )

    def _from_user(self, data):
        out = bytearray()
        for b in data:
            if b == 0x04 and self._at_prompt():
                raw = not self.tail.endswith(FRIENDLY_PROMPT)
                if out:
                    os.write(self.board_master, bytes(out))
                    out.clear()
                self.reboot("raw" if raw else "run", "soft")
                continue
            if b == 0x03 and self.child is not None:
                if self.executing or (not self.in_repl and self.main_started):
                    self._interrupt()
                elif not self.in_repl:  # still booting: stop main.py as soon as it starts
                    self.sigint_pending = True
            elif b == 0x04 and self.in_repl and self.raw_repl and not self._at_prompt():
                self.executing = True  # the end of code for the raw REPL: it runs now
            out.append(b)
            if self._at_prompt():
                self.tail += b"."  # the prompt is no longer empty
        if out and self.child is not None:
            os.write(self.board_master, bytes(out))

    # ---- hardware link
    def _hw_message(self, msg):
        ev = msg.get("ev")
        if ev == "reply":
            data = msg["data"]
            rid = data.pop("id", None)
            if rid in self.pending:
                sock, _, op = self.pending.pop(rid)
                if op == "status":
                    data = self._status(data)
                elif "error" in data:
                    data = {"ok": False, "error": data["error"]}
                else:
                    data = {"ok": True, **data}
                self._reply(sock, data)
        elif ev == "relay":
            self.relay_on = msg["on"]
            if msg["on"]:
                self.relay_pulses += 1
            self.event("relay " + ("on" if msg["on"] else "off"))
        elif ev == "pin":
            self.event("pin", name=msg["name"], level=msg["level"])
        elif ev == "cut":
            self.power_cut(why="power cut (armed, at flash operation)")
        elif ev == "wdt":
            self.wdt_timeout_ms = msg["timeout_ms"]
            self.last_feed = time.monotonic()
        elif ev == "feed":
            self.last_feed = time.monotonic()
        elif ev == "reset":
            self.reboot("run", "hard", banner=b"")
        elif ev == "refused":
            flash = self.state / "flash.bin"
            self.refused = (
                f"{flash} holds no LittleFS volume that mounts (OSError {msg.get('errno')}) "
                "and is not blank: nothing was changed. Read its journal with `washpay "
                f"journal decode {flash} --site-key KEY --device ID`; then `washpay sim run "
                "--format` formats it (a copy is kept as flash.bin.unmountable)")
            self.stopping = True
        elif ev == "main":  # the boot ROM runs main.py now: a Ctrl-C can stop it
            self.main_started = True
            if self.sigint_pending and self.child is not None:
                self._interrupt()
        elif ev == "washer_run":  # the machine runs on its own supply: kept like its door
            self.environment["washer_run"] = msg["run"]
        elif ev in ("card", "card_left"):
            self.cards.on_event(msg)

    def _status(self, child):
        fw = child.pop("firmware", None) or {}
        st = {
            "ok": True,
            "power": self.power,
            "mode": "repl" if self.in_repl else "firmware",
            "console": self.console_path,
            "boots": self.boots,
            "relay": "on" if self.relay_on else "off",
            "relay_pulses": self.relay_pulses,
            "state": fw.get("state", "unknown"),
            "credit": fw.get("credit"),
            "program": fw.get("program"),
            "journal": fw.get("journal", {}),
            **child,
        }
        st["firmware"] = fw
        return st

    def _offline_status(self):
        return {
            "ok": True,
            "power": self.power,
            "mode": "off" if self.power == "off" else ("repl" if self.in_repl else "firmware"),
            "console": self.console_path,
            "boots": self.boots,
            "relay": "on" if self.relay_on else "off",
            "relay_pulses": self.relay_pulses,
            "state": "off" if self.power == "off" else "unknown",
            "credit": None,
            "program": None,
            "display": "",
            "journal": {},
            "flash": {},
        }

    # ---- control channel
    def _reply(self, sock, obj):
        try:
            sock.sendall((json.dumps(obj) + "\n").encode())
        except OSError:
            pass

    def _ctl_request(self, sock, req):
        op = req.get("op")
        if op == "power":
            if req.get("state") == "on":
                if self.child is None:
                    self.power_on()
                return self._reply(sock, {"ok": True, "power": self.power})
            if req.get("after_ops"):
                if self.hw is None:
                    return self._reply(sock, {"ok": False, "error": "the board is off"})
                req = {"op": "cut", "after_ops": req["after_ops"], "torn": req.get("torn")}
            else:
                self.power_cut()
                return self._reply(sock, {"ok": True, "power": self.power})
        if op == "events":
            return self._reply(sock, {"ok": True, "events": self.events})
        if op == "stop":
            self.stopping = True
            return self._reply(sock, {"ok": True})
        if op == "card":  # cards outlive the board's power: card_field.py keeps them
            req, reply = self.cards.request(req, board_on=self.hw is not None,
                                            at_repl=self.in_repl)
            if reply is not None:
                if req is not None and self.hw is not None:  # delivered, answered here
                    self.hw.sendall((json.dumps(req) + "\n").encode())
                return self._reply(sock, reply)
        if self.hw is None:
            if op == "status":
                return self._reply(sock, self._offline_status())
            why = "the board is off" if self.power == "off" else "the board is still booting"
            return self._reply(sock, {"ok": False, "error": why + f": cannot {op}"})
        if op in ("washer", "door", "net"):
            self.environment[op] = dict(req)
        rid = self.next_id
        self.next_id += 1
        req = {**req, "id": rid}
        self.pending[rid] = (sock, time.monotonic() + STATUS_TIMEOUT_S, req["op"])
        self.hw.sendall((json.dumps(req) + "\n").encode())

    def _expire(self):
        now = time.monotonic()
        for rid, (sock, deadline, op) in list(self.pending.items()):
            if now > deadline:
                del self.pending[rid]
                if op == "status":
                    st = self._offline_status()
                    st["state"] = "unresponsive"
                    self._reply(sock, st)
                else:
                    self._reply(
                        sock,
                        {"ok": False, "error": "the board did not answer (firmware stopped?)"},
                    )
        if (
            self.child is not None
            and self.wdt_timeout_ms
            and not self.in_repl
            and now - self.last_feed > self.wdt_timeout_ms / 1000 + 0.5
        ):
            self.event("watchdog reset")
            self.reboot("run", "wdt", banner=b"")

    # ---- main loop
    def serve(self):
        self.prepare()
        os.rename(self.state / "ctl.sock.tmp", self.state / "ctl.sock")
        print(f"console: {self.console_path}", flush=True)
        print(f"control: washpay sim ctl --state {self.state} status", flush=True)
        self.power_on()
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        try:
            while not self.stopping:
                for key, _ in self.sel.select(timeout=0.05):
                    self._dispatch(key)
                if self.child is not None and self.child.poll() is not None:
                    rc = self.child.returncode
                    self.child = None
                    self._drop_hw()
                    self._flush_console()
                    if rc == -signal.SIGINT:
                        # a Ctrl-C that met the unix port at its prompt, where its SIGINT
                        # handler is off: a board shows a new prompt; bring the REPL back
                        self.event("Ctrl-C at the prompt: REPL restarted")
                        self.power_on(mode="repl", reason="soft")
                        continue
                    self.power = "halted"
                    self.event("firmware process exited", code=rc)
                self._expire()
        except KeyboardInterrupt:
            pass
        finally:
            self.power_cut(why="simulator stopped")
            for name in ("ctl.sock", "hw.sock", "console"):
                try:
                    (self.state / name).unlink()
                except FileNotFoundError:
                    pass
        if self.refused:
            raise SimRefused(self.refused)

    def _dispatch(self, key):
        what = key.data
        if what == "board":
            try:
                data = os.read(self.board_master, 4096)
            except OSError:
                data = b""
            if data:
                self._from_board(data)
        elif what == "user":
            try:
                data = os.read(self.user_master, 4096)
            except OSError:
                data = b""
            if data:
                self._from_user(data)
        elif what == "hw-accept":
            conn, _ = self.hw_server.accept()
            self._drop_hw()
            self.hw = conn
            self.sel.register(conn, selectors.EVENT_READ, "hw")
            for req in self.environment.values():
                conn.sendall((json.dumps(req) + "\n").encode())
            card = self.cards.replay()
            if card is not None:
                conn.sendall((json.dumps(card) + "\n").encode())
        elif what == "hw":
            try:
                data = self.hw.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._drop_hw()
                return
            self.hw_buf += data
            while b"\n" in self.hw_buf:
                line, self.hw_buf = self.hw_buf.split(b"\n", 1)
                if line.strip():
                    self._hw_message(json.loads(line))
                if self.hw is None:
                    break
        elif what == "ctl-accept":
            conn, _ = self.ctl_server.accept()
            self.ctl_clients[conn] = b""
            self.sel.register(conn, selectors.EVENT_READ, "ctl")
        elif what == "ctl":
            sock = key.fileobj
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.sel.unregister(sock)
                self.ctl_clients.pop(sock, None)
                sock.close()
                return
            buf = self.ctl_clients[sock] + data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    req = json.loads(line)
                except ValueError:
                    self._reply(sock, {"ok": False, "error": "request is not JSON"})
                    continue
                self._ctl_request(sock, req)
            self.ctl_clients[sock] = buf
