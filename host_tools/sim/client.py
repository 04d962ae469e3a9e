"""Talking to a running simulated board: `washpay sim ctl`, tests and the demo use this."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


class SimError(Exception):
    """The simulated board refused a request or is not there; the message says why."""


class SimClient:
    def __init__(self, state_dir, timeout=10.0):
        self.state = Path(state_dir)
        self.timeout = timeout

    def call(self, op, **args):
        path = self.state / "ctl.sock"
        if not path.exists():
            raise SimError(
                f"no simulated board is running in {self.state}: "
                f"start one with `washpay sim run --state {self.state}`"
            )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            try:
                s.connect(str(path))
            except OSError as e:
                raise SimError(f"cannot reach the simulated board in {self.state}: {e}") from e
            s.sendall((json.dumps({"op": op, **args}) + "\n").encode())
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise SimError("the simulator closed the control channel")
                buf += chunk
        reply = json.loads(buf.split(b"\n", 1)[0])
        if not reply.get("ok", False):
            raise SimError(reply.get("error", "request failed"))
        return reply

    def status(self):
        return self.call("status")

    def wait_for(self, predicate, timeout=10.0, interval=0.05, what="condition"):
        """Poll status until predicate(status) is true; return that status."""
        deadline = time.monotonic() + timeout
        st = None
        while time.monotonic() < deadline:
            try:
                st = self.status()
                if predicate(st):
                    return st
            except SimError:
                pass
            except (KeyError, TypeError):
                # a status without the firmware's part (booting, or too busy to answer
                # within the simulator's status timeout on a loaded host) cannot satisfy a
                # predicate that reads it: not yet, ask again
                pass
            time.sleep(interval)
        raise SimError(f"timed out after {timeout}s waiting for {what}; last status: {st}")

    def wait_ready(self, timeout=20.0):
        """Wait until the firmware runs and answers (after power on or a reset)."""
        return self.wait_for(
            lambda st: st.get("power") == "on"
            and st.get("state") not in ("unknown", "unresponsive", "off", None),
            timeout,
            what="the firmware to start",
        )

    def firmware_status(self, timeout=10.0):
        """The next status that has the firmware's part (a loaded host can make one status
        come back without it): what to read a count from before acting."""
        return self.wait_for(lambda st: bool(st["firmware"]), timeout,
                             what="the firmware's status")

    def insert_coin(self, value, timeout=10.0):
        """Drop one coin of `value` and wait until the firmware has credited it."""
        before = self.firmware_status()["credit"]
        reply = self.call("coin", value=value)
        if "pulses" not in reply:
            raise SimError(f"the acceptor took no coin of {value}: {reply}")
        return self.wait_for(lambda s: s["credit"] == before + value, timeout,
                             what=f"credit +{value}")

    def select_program(self, name, presses_max=10):
        """Press the select button until the firmware shows program `name`."""
        st = self.status()
        programs = [p["name"] for p in st.get("firmware", {}).get("programs", [])]
        if programs and name not in programs:
            have = ", ".join(programs)
            raise SimError(f"no program {name!r} on this machine (programs: {have})")
        for _ in range(presses_max):
            if st.get("program") == name:
                return st
            before = st.get("program")
            self.call("button", name="select")
            st = self.wait_for(
                lambda s, b=before: s.get("program") != b, timeout=3, what="the program to change"
            )
        raise SimError(f"program {name!r} never came up after {presses_max} presses")


class SimBoard:
    """Starts `washpay sim run` in the background; a context manager for tests and the demo."""

    def __init__(self, state_dir, heap="1m", device_id=None, log=None, firmware=None,
                 bare=False, flash_image=None, micropython=None, fw_heap=None, args=()):
        self.state = Path(state_dir)
        self.micropython = micropython  # None: $WASHPAY_MICROPYTHON or the environment's
        self.fw_heap = fw_heap  # the firmware's own heap (sim run --fw-heap)
        self.firmware = firmware
        self.bare = bare  # a freshly flashed MicroPython board (washpay sim run --bare)
        self.flash_image = flash_image
        self.args = list(args)  # more `washpay sim run` options, e.g. ["--format"]
        self.heap = heap
        self.device_id = device_id
        self.log = log
        self.proc = None
        self.client = SimClient(state_dir)

    def start(self, timeout=20.0):
        cmd = [sys.executable, "-m", "host_tools.cli", "sim", "run", "--state", str(self.state)]
        cmd += ["--heap", self.heap, "--quiet"]
        if self.device_id:
            cmd += ["--device-id", self.device_id]
        if self.firmware:
            cmd += ["--firmware", str(self.firmware)]
        if self.bare:
            cmd += ["--bare"]
        if self.micropython:
            cmd += ["--micropython", str(self.micropython)]
        if self.fw_heap:
            cmd += ["--fw-heap", str(self.fw_heap)]
        if self.flash_image:
            cmd += ["--flash-image", str(self.flash_image)]
        cmd += self.args
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=root, env=env)
        deadline = time.monotonic() + timeout
        while not (self.state / "ctl.sock").exists():
            if self.proc.poll() is not None:
                raise SimError(f"washpay sim run exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise SimError("washpay sim run did not come up")
            time.sleep(0.02)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                self.client.call("stop")
            except SimError:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __getattr__(self, name):
        return getattr(self.client, name)
