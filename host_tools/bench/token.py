"""Figures for QR tokens and remote start (`make bench`): token size and QR version, the
firmware's check under micropython (time and heap per check), and on the simulated board
the time from a code held up to the relay, and the flash work of one redemption.

    bench() -> [(name, value, unit), ...]
"""

import json
import subprocess
import tempfile
import time
from pathlib import Path

from host_tools import keys as K
from host_tools import token as T

ROOT = Path(__file__).resolve().parents[2]
SITE_KEY = bytes(range(32))
DEVICE = "sim-0001"
T0 = 1767225600

_CHECK = """
import sys, time, gc, json
sys.path.append(%(fw)r)
from binascii import unhexlify
from washpay.payments.token import TokenVerifier
from washpay.payments.remote import CommandVerifier
from washpay.replay import ReplayCache
cache = ReplayCache(%(dir)r + "/used", 64, clock=lambda: %(now)d)
v = TokenVerifier(unhexlify(%(tkey)r), %(dev)r, cache)
c = CommandVerifier(unhexlify(%(ckey)r), %(dev)r, cache)
tok = %(token)r.encode()
cmd = unhexlify(%(cmd)r)
v.check(tok); c.check(cmd)
out = {}
for name, fn, arg in (("token", v.check, tok), ("command", c.check, cmd)):
    gc.collect()
    free = gc.mem_free()
    t0 = time.ticks_us()
    for _ in range(100):
        fn(arg)
    out[name + "_us"] = time.ticks_diff(time.ticks_us(), t0) / 100
    out[name + "_bytes"] = (free - gc.mem_free()) // 100
print(json.dumps(out))
"""


# The worst case of the single-use cache (replay.py): the board's /used_commands with
# every slot of both pools holding an unexpired id (32 payment + 16 admin), then a
# remote start checked against it (a miss: every slot compared) and added (the pool is
# full: the first id to expire is dropped, the file rewritten).
_FULL = """
import sys, time, gc, json, os
sys.path.append(%(fw)r)
from binascii import unhexlify
from washpay.payments.remote import CommandVerifier
from washpay.replay import ReplayCache, ADMIN
gc.collect()
free = gc.mem_free()
cache = ReplayCache(%(dir)r + "/used", 32, admin=16, clock=lambda: %(now)d)
gc.collect()
out = {"cache_bytes": free - gc.mem_free()}
for i in range(32):
    cache.add(b"p" + i.to_bytes(7, "big"), %(now)d, %(now)d + 600 + i)
for i in range(16):
    cache.add(b"a" + i.to_bytes(7, "big"), %(now)d, %(now)d + 300 + i, ADMIN)
c = CommandVerifier(unhexlify(%(ckey)r), %(dev)r, cache)
cmd = unhexlify(%(cmd)r)
c.check(cmd)
gc.collect()
free = gc.mem_free()
t0 = time.ticks_us()
for _ in range(100):
    c.check(cmd)
out["check_us"] = time.ticks_diff(time.ticks_us(), t0) / 100
out["check_bytes"] = (free - gc.mem_free()) // 100
gc.collect()
free = gc.mem_free()
t0 = time.ticks_us()
for i in range(100):
    cache.add(b"q" + i.to_bytes(7, "big"), %(now)d, %(now)d + 700 + i)
out["add_us"] = time.ticks_diff(time.ticks_us(), t0) / 100
out["add_bytes"] = (free - gc.mem_free()) // 100
out["file"] = os.stat(%(dir)r + "/used")[6]
print(json.dumps(out))
"""


def full_cache_figures():
    secret = K.device_secret(SITE_KEY, DEVICE)
    cmd = T.build_command(K.command_key(secret), DEVICE, "quick", T0, T0 + 300)
    with tempfile.TemporaryDirectory() as d:
        code = _FULL % {"fw": str(ROOT / "firmware"), "dir": d, "now": T0 + 60,
                        "ckey": K.command_key(secret).hex(), "dev": DEVICE, "cmd": cmd.hex()}
        out = subprocess.run([_micropython(), "-X", "heapsize=256k", "-c", code],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


_IMPORTS = """
import sys, gc
sys.path.insert(0, %(rom)r)
import asyncio, json, struct, hashlib, binascii
from washpay import journal, crypto, keys, config, board, ui
from washpay.vend import engine as vend
gc.collect()
free = gc.mem_free()
from washpay.drivers import gm65
from washpay import replay
from washpay.payments import token, remote
gc.collect()
print(free - gc.mem_free())
"""


def module_ram():
    """Heap taken by importing gm65, replay, token and remote as .mpy (as provisioned)."""
    from host_tools.bench import compile_firmware

    with tempfile.TemporaryDirectory() as d:
        rom = compile_firmware(Path(d) / "rom")
        out = subprocess.run([_micropython(), "-X", "heapsize=512k", "-c",
                              _IMPORTS % {"rom": str(rom)}], capture_output=True, text=True,
                             timeout=120, check=True).stdout
    return int(out.strip().splitlines()[-1])


def _micropython():
    from host_tools.sim.runner import micropython_command

    return micropython_command()


def check_figures():
    secret = K.device_secret(SITE_KEY, DEVICE)
    token = T.encode_token(K.token_key(secret), DEVICE, "quick", T0, T0 + 1800)
    cmd = T.build_command(K.command_key(secret), DEVICE, "quick", T0, T0 + 300)
    with tempfile.TemporaryDirectory() as d:
        code = _CHECK % {"fw": str(ROOT / "firmware"), "dir": d, "now": T0 + 60,
                         "tkey": K.token_key(secret).hex(), "ckey": K.command_key(secret).hex(),
                         "dev": DEVICE, "token": token, "cmd": cmd.hex()}
        out = subprocess.run([_micropython(), "-X", "heapsize=256k", "-c", code],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def sim_figures():
    from host_tools.sim.client import SimBoard

    with tempfile.TemporaryDirectory() as d:
        board = SimBoard(Path(d) / "st")
        board.start()
        try:
            board.wait_ready()
            board.wait_for(lambda s: s["firmware"]["qr"]["scanner"]["reading"], timeout=20)
            key = K.load_site_key(Path(d) / "st" / "site.key")
            text, _ = T.issue_token(key, DEVICE, "quick", 1800)
            f0 = board.status()["flash"]
            t0 = time.time()
            board.call("qr", text=text)
            board.wait_for(lambda s: s["relay"] == "on" or s["relay_pulses"], timeout=10,
                           interval=0.005)
            events = board.call("events")["events"]
            relay_t = next(e["t"] for e in events if e["event"] == "relay on")
            st = board.wait_for(lambda s: s["state"] == "running", timeout=10)
            f1 = st["flash"]
        finally:
            board.stop()
    wire_ms = 60 + (len(text) + 1) * 10_000 / 9600  # module decode + the bytes at 9600 baud
    return [
        ("code held up -> relay on (simulated board)", round((relay_t - t0) * 1000), "ms"),
        ("  of which the scanner and 9600-baud line", round(wire_ms), "ms"),
        ("flash programs, scan -> running (2 records + replay cache)",
         f1["programs"] - f0["programs"], "ops"),
        ("flash erases, scan -> running", f1["erases"] - f0["erases"], "ops"),
    ]


def bench():
    longest = T.encode_token(b"k" * 32, DEVICE, "x" * 10, T0, T0 + 86400, T.AMOUNT_MAX)
    quick = T.encode_token(b"k" * 32, DEVICE, "quick", T0, T0 + 1800)
    rows = [
        ("token text, program 'quick'", len(quick), "chars"),
        ("longest token text (10-byte program)", len(longest), "chars"),
        ("QR symbol of the longest token", T.qr_code(longest).designator, "version-ECC"),
    ]
    f = check_figures()
    rows += [
        ("token check under micropython (host CPU)", round(f["token_us"]), "us"),
        ("  heap allocated per token check", f["token_bytes"], "bytes"),
        ("remote-start check under micropython (host CPU)", round(f["command_us"]), "us"),
        ("  heap allocated per command check", f["command_bytes"], "bytes"),
        ("heap for the QR/remote-start modules (.mpy; incl. qstr pool growth)",
         module_ram(), "bytes"),
    ]
    f = full_cache_figures()
    rows += [
        ("remote-start check, /used_commands full (32 + 16 ids)", round(f["check_us"]),
         "us"),
        ("  heap allocated per check with the full cache", f["check_bytes"], "bytes"),
        ("  add to the full payment pool (drop one, rewrite the file)", round(f["add_us"]),
         "us"),
        ("  heap allocated per add", f["add_bytes"], "bytes"),
        ("  the cache object, 48 slots (live heap)", f["cache_bytes"], "bytes"),
        ("  /used_commands file, full", f["file"], "bytes"),
    ]
    return rows + sim_figures()


if __name__ == "__main__":
    for name, value, unit in bench():
        print(f"{name:60} {value:>8} {unit}")
