"""Boot-only code is dropped once the board runs (issue 13): a board that has booted holds
none of the modules that only its start uses (wiring.py, config.py, board.py, keys.py,
journal/boot.py, vend/boot.py) nor those loaded only for a rare event (vend/watch.py), and
still holds what it runs on. Checked on the simulated board, whose main.py here lists the
loaded modules when the app's start is over (when its watchdog task begins)."""

import json
import time

import pytest

from host_tools.sim.client import SimBoard

pytestmark = pytest.mark.device

MAIN = """
import gc, sys
from washpay import app

_watchdog = app.App.watchdog

async def watchdog(self):
    gc.collect()
    print("MODULES " + " ".join(sorted(k for k in sys.modules if k.startswith("washpay"))))
    await _watchdog(self)

app.App.watchdog = watchdog
app.run()
"""

BOOT_ONLY = {"washpay.wiring", "washpay.config", "washpay.board", "washpay.keys",
             "washpay.journal.boot", "washpay.vend.boot", "washpay.vend.watch"}
KEPT = {"washpay.app", "washpay.chip", "washpay.journal", "washpay.vend.engine",
        "washpay.drivers.coin_acceptor", "washpay.payments.coin"}


def test_a_booted_board_holds_no_boot_only_code(tmp_path):
    st = tmp_path / "st"
    (st / "provision").mkdir(parents=True)
    (st / "provision" / "config.json").write_text(json.dumps({}))
    (st / "provision" / "main.py").write_text(MAIN)
    board = SimBoard(st, log=tmp_path / "sim.log")
    board.start()
    try:
        board.wait_ready()
        log = st / "console.log"
        deadline = time.monotonic() + 20
        line = None
        while line is None and time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            line = next((x for x in text.splitlines() if x.startswith("MODULES ")), None)
            time.sleep(0.1)
        assert line is not None, "the app's start never ended"
        loaded = set(line.split()[1:])
        # it sells: a coin is credited
        board.call("coin", value=100)
        board.wait_for(lambda s: s["credit"] == 100, timeout=10, what="the coin's credit")
    finally:
        board.stop()
    assert not BOOT_ONLY & loaded, f"boot-only code kept: {sorted(BOOT_ONLY & loaded)}"
    assert KEPT <= loaded, f"missing: {sorted(KEPT - loaded)}"
