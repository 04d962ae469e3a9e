"""The firmware's heap budget (issue 13), at ESP32 object sizes: the full scenario of
`make bench` (host_tools/bench/scenario.py: coin wash, card payment, QR token, an offline
backlog synced to a real Mosquitto, remote start, price and blacklist push) runs on the
simulated board under the 32-bit micropython with the firmware given only its budgeted
heap (`sim run --fw-heap`: what is free when main.py starts). Over plain MQTT: on an ESP32
mbedTLS keeps its buffers outside the GC heap, on the unix port inside it.

Budgets (KiB) are what the firmware meets today with a few KiB of margin (the smallest heap
varies by a few KiB from run to run: a heap that does not compact is as fragmented as the
order of events made it), a ratchet: lower them as the firmware shrinks, never raise them
to let a change through. The issue's targets are lower still:
bytecode in place live <= 64 and passing in 96; .mpy files passing in 160 (make bench
prints where the firmware stands). A run that fails for something other than memory (a
coin train mistimed on a loaded machine, an MQTT ack late) is run again. Skipped, saying
so, where there is no 32-bit interpreter ($WASHPAY_MICROPYTHON32, or
../shared/tools/micropython-i386 beside the repo).
"""

import pytest
from sync_env import need_mosquitto

from host_tools.bench import build_romfs, compile_firmware, scenario
from host_tools.boards import HEAP_NEEDED_KIB
from host_tools.interp import micropython32

pytestmark = pytest.mark.device

# the heap each layout needs: one definition, which board checks and provisioning hold
# boards to (host_tools/boards.py)
ROMFS_HEAP_K = HEAP_NEEDED_KIB["frozen"]  # bytecode in place (ROMFS, as a frozen build runs it)
ROMFS_LIVE_K = 74  # live after the scenario, bytecode in place (69.4 measured; target 64)
MPY_HEAP_K = HEAP_NEEDED_KIB["mpy"]  # .mpy files on the board's filesystem (stock MicroPython)


@pytest.fixture(scope="module")
def mp32():
    path = micropython32()
    if path is None:
        pytest.skip("no 32-bit micropython (ESP32 object sizes): set WASHPAY_MICROPYTHON32 "
                    "or put it at ../shared/tools/micropython-i386; the heap budget is not "
                    "checked")
    need_mosquitto()
    return path


def test_full_scenario_in_budget_bytecode_in_place(mp32, tmp_path):
    fw = build_romfs(tmp_path / "fw.romfs")
    r = scenario.attempt(tmp_path / "run", firmware=fw, micropython=mp32,
                     fw_heap=f"{ROMFS_HEAP_K}k", tls=False)
    assert r.ok, f"the full scenario failed in {ROMFS_HEAP_K} KiB: {r}"
    assert r.live <= ROMFS_LIVE_K * 1024, (
        f"live heap after the scenario {r.live / 1024:.1f} KiB > budget {ROMFS_LIVE_K} KiB; "
        f"after each step: {r.after}")


def test_full_scenario_in_budget_mpy_files(mp32, tmp_path):
    fw = compile_firmware(tmp_path / "mpy")
    r = scenario.attempt(tmp_path / "run", firmware=fw, micropython=mp32,
                     fw_heap=f"{MPY_HEAP_K}k", tls=False)
    assert r.ok, f"the full scenario failed in {MPY_HEAP_K} KiB: {r}"


REPLAY_FULL = """
import gc, sys
sys.path.append(%(fw)r)
from washpay.replay import ReplayCache
t = 1_800_000_000  # epoch seconds past 2**30: a heap integer on an ESP32
c = ReplayCache(%(path)r, 64, clock=lambda: t, trusted=lambda: True)
ids = [bytes((i, 1, 2, 3, 4, 5, 6, 7)) for i in range(64)]
gc.collect()
before = gc.mem_alloc()
for i in range(64):
    c.add(ids[i], t, t + 600 + i)
gc.collect()
print(gc.mem_alloc() - before)
"""


def test_a_full_replay_cache_holds_no_heap_integers(mp32, tmp_path):
    # the ids and expiry times of used tokens live in buffers made at start: filling the
    # cache allocates nothing that stays (a list of expiry times held 64 heap integers)
    import subprocess

    from conftest import FIRMWARE

    code = REPLAY_FULL % {"fw": str(FIRMWARE), "path": str(tmp_path / "used")}
    out = subprocess.run([mp32, "-X", "heapsize=256k", "-c", code], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert int(out.strip()) <= 64, out
