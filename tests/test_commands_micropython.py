"""Server commands (net/commands.py) under the real micropython, with a stand-in engine,
journal and replay cache: what the fuzz suite found beyond issue 18's list."""

import json

from conftest import micropython_i386, run_micropython

from host_tools import keys as K
from host_tools.server import commands as C

SITE_KEY = bytes(range(32))
DEVICE = "sim-0001"
T0 = 1767225600
RIG = """
import json
from binascii import unhexlify
from washpay.net import Commands
class Cache:
    floor = 0
    def check_time(self, issued, expires, pool=0): return None
    def used(self, cid): return False
    def room(self, pool=0): return True
    def add(self, cid, issued, expires, pool=0): pass
class Remote:
    cache = Cache()
class Journal:
    clock_trusted = False
    def append(self, rtype, **fields): return 1
class Prices:
    version = 1000000
class Engine:
    programs = [{"name": "quick", "price": 250}]
    prices = Prices()
    def program_named(self, name):
        return ([p for p in self.programs if p["name"] == name] or [None])[0]
cmds = Commands(Remote(), Engine(), Journal(), unhexlify(KEY), "sim-0001",
                config_path=DIR + "/config.json")
"""


def test_refusals_with_distinct_reasons_keep_a_bounded_count(tmp_path):
    # every refusal reason carrying a value (here the table's version) used to become a
    # key of the status's counts: a signed command stream grew it without bound (the fuzz
    # suite saw a MemoryError escape on_command, which never raises, after ~100000)
    key = K.command_key(K.device_secret(SITE_KEY, DEVICE))
    cmds = [C.operator_command(key, DEVICE, C.PRICE_TABLE,
                               json.dumps({"version": v}).encode(), T0, T0 + 300).hex()
            for v in range(300)]
    code = f"KEY = {key.hex()!r}\nDIR = {str(tmp_path)!r}\n" + RIG + f"""
reasons = set()
for c in {cmds!r}:
    r = json.loads(cmds.on_command(unhexlify(c)))
    reasons.add(r["result"])
st = cmds.status()
print("RESULT", json.dumps([sorted(reasons), len(st["refused"]), sum(st["refused"].values()),
                            st["refused"].get("other", 0)]))
"""
    for interp in [None] + [x for x in (micropython_i386(),) if x]:
        out = run_micropython(code, interpreter=interp)[1]
        got = json.loads([x for x in out.splitlines() if x.startswith("RESULT ")][-1][7:])
        assert got == [["refused"], 13, 300, 288]
