"""Code a board runs only at boot, once per connection or once per card tap is loaded for
that use and dropped after it (washpay.use, issue 13): the sync's set-up and MQTT sign-in
(net/setup.py), the GM65's probe and settings (drivers/gm65_setup.py), and a tap's SELECT,
MIFARE commands and wallet code (drivers/mifare.py, payments/wallet.py, with
payments/card_tap.py). The full scenario of `make bench` runs on the simulated board (boot,
a coin wash, a card payment, a QR token, a backlog synced to a real Mosquitto, a remote
start, a price and a blacklist push), under whichever micropython the tests run
($WASHPAY_MICROPYTHON: `make test32` runs it at ESP32 object sizes); a main.py around the
firmware's prints which of those modules are loaded, twice a second. Once the scenario
passed, they are all gone: a module that stayed loaded (a bound method or a coroutine of
it kept somewhere) would hold its code in the heap for ever, and the next use would load
a second copy."""

import pytest
from sync_env import need_mosquitto

from host_tools.bench import scenario

pytestmark = pytest.mark.device

DROPPED = ("washpay.net.setup", "washpay.drivers.gm65_setup", "washpay.drivers.mifare",
           "washpay.payments.wallet", "washpay.payments.card_tap")

MAIN = f"""
import asyncio, sys
DROPPED = {DROPPED!r}
from washpay import app
_main = app.App.main
async def _watched(self):
    async def watch():
        while True:
            await asyncio.sleep_ms(500)
            print("loaded|" + ",".join(m for m in DROPPED if m in sys.modules))
    asyncio.create_task(watch())
    await _main(self)
app.App.main = _watched
app.run()
"""


def test_set_up_and_tap_code_is_gone_after_the_full_scenario(tmp_path):
    need_mosquitto()
    r = scenario.attempt(tmp_path, tls=False, files={"main.py": MAIN})
    assert r.ok, f"the scenario failed: {r}"
    logs = sorted(tmp_path.glob("try*/st/console.log"))
    lines = [ln for ln in logs[-1].read_text(errors="replace").splitlines()
             if ln.startswith("loaded|")]
    assert len(lines) > 10, "the watch never ran"
    assert lines[-1] == "loaded|", lines[-1]
