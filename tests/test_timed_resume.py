"""Boot recovery of a dryer's paid time (vend/timed.resume) at whole-second clocks, under
the real micropython (both interpreters): the time left is the last record's less the
seconds since it was written, the second the clock cannot tell goes to the customer, never
more than the record had, and a clock that went back counts nothing as elapsed."""

import json

from tests.conftest import run_micropython

SCRIPT = r"""
import asyncio, json, time
from washpay.vend import timed

class Washer:
    started = 0
    async def start(self, price):
        self.started += 1

class E:
    program = {"name": "dry"}
    vend_price = 300
    def __init__(self, now):
        self.now = now
        self.washer = Washer()
        self.records = []
    def clock(self):
        return self.now
    def _record(self, rtype, **f):
        self.records.append(rtype)

out = []
for written, left, now in CASES:
    e = E(now)
    asyncio.run(timed.resume(e, {"t": written, "left_s": left}))
    ms = time.ticks_diff(e.ends_ms, time.ticks_ms())
    out.append([(ms + 999) // 1000, e.washer.started, len(e.records)])
print(json.dumps(out))
"""

T = 1_795_388_400  # above 2^30: a heap integer on the 32-bit interpreter, as on an ESP32
CASES = [
    # (written, left_s in the record, now) -> (seconds left, machine started again)
    ((T, 12, T), (12, 1)),  # cut and back within the second: all of it, not 13
    ((T, 12, T + 5), (8, 1)),  # 5 whole seconds read: 7 to 8 really left, 8 given
    ((T, 12, T + 11), (2, 1)),
    ((T, 12, T + 12), (1, 1)),  # the second in doubt
    ((T, 12, T + 13), (0, 0)),  # over: not started again, the engine ends the vend
    ((T, 12, T + 600), (0, 0)),
    ((T, 12, T - 3600), (12, 1)),  # the clock went back: nothing counted as gone
]


def test_resume_gives_the_customer_the_second_in_doubt(each_micropython):
    code = "CASES = %r\n" % [list(c) for c, _ in CASES] + SCRIPT
    _, out, _ = run_micropython(code, interpreter=each_micropython)
    got = json.loads(out.strip().splitlines()[-1])
    assert [(left, started) for left, started, _ in got] == [want for _, want in CASES]
    # a resumed vend journals vend_running (recovered) once; an ended one journals nothing
    assert [n for _, started, n in got] == [started for _, started, _ in got]
