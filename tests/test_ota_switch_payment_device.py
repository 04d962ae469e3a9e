"""A payment just as an update's switch is due (docs/ota.md, "The flow as the board sees
it", step 5), on the simulated board under both interpreters: the firmware under the real
micropython, a real Mosquitto, a release built and signed by the host's tool.

The switch is due the moment the last chunk is staged on an idle board. The release server
holds that chunk back while the customer acts, so the payment is under way when the board
stages: a card whose write is torn (the board waits for it to come back: a payment in
progress) and a coin whose pulse train has begun but not ended. The switch must wait until
the payment and its wash are over; the payment is journaled once; the money is intact on
the card, in the credit and in the journal after the switch; the new version boots
healthy."""

import json
import threading
import time

import pytest
from card_helpers import PRICE, UID4, issued_image
from ota_env import DEVICE, Release, build_release, records, rig, version
from sync_env import SITE_KEY

from host_tools import wallet as W

pytestmark = pytest.mark.device


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return Release(build_release(tmp_path_factory.mktemp("ota-switch"), "0.2.0"))


def fw(st):
    return st.get("firmware") or {}


def on_last_chunk(server, release, act):
    """Run act() on the release server's thread when the board asks for the release's last
    chunk, before answering it: whatever act() starts is under way as the board stages.
    Returns an Event set once act() has run."""
    last = len(release.files) - 1
    size = len(release.files[last])
    ran = threading.Event()

    def hook(device, index, offset, length):
        if index == last and offset + length >= size and not ran.is_set():
            try:
                act()
            finally:
                ran.set()

    server.on_request = hook
    return ran


def waiting_to_switch(sim, server):
    """The board staged the release and is waiting for the machine to be idle: it looks
    every 0.5 s, so a few seconds later it has looked many times. It must not switch."""
    server.wait(lambda s: "staged" in s.states(), timeout=180, what="staged")
    sim.wait_for(lambda s: (fw(s).get("update") or {}).get("state") == "staged",
                 timeout=30, what="the board waiting to switch")
    time.sleep(3)
    s = sim.status()
    assert fw(s)["version"] == "0.1.0" and fw(s)["update"]["state"] == "staged", fw(s)
    assert server.states()[-1] == "staged", server.reports


def healthy_after(sim, server):
    server.wait(lambda s: "healthy" in s.states(), timeout=240, what="healthy")
    assert version(sim) == "0.2.0"
    s = sim.status()
    assert fw(s)["credit"] == 0 and fw(s)["state"] in ("idle", "done")


def test_a_card_tapped_as_the_switch_is_due(tmp_path, release, each_micropython):
    card_img = issued_image(UID4, 1000, card_key=W.site_card_key(SITE_KEY))
    with rig(tmp_path, micropython=each_micropython) as (sim, server, st):
        sim.wait_for(lambda s: fw(s)["card"]["exchanges"] >= 2, timeout=30,
                     what="the card reader to poll")
        server.add(release)

        def tap_torn():
            # the card leaves in the WRITE's data frame, its old copy kept: the board has
            # journaled the debit and waits for the card to come back to finish paying
            sim.call("card", action="tap", image=card_img, remove_after=8, torn="old")
            sim.wait_for(lambda s: fw(s)["card"]["waiting"] == UID4.hex(), timeout=30,
                         what="the payment waiting for the card")

        tapped = on_last_chunk(server, release, tap_torn)
        server.offer(DEVICE, release)
        assert tapped.wait(180), "the board never asked for the last chunk"
        waiting_to_switch(sim, server)
        s = sim.status()
        assert fw(s)["state"] == "starting" and s["relay_pulses"] == 0
        assert s["display"] == "Tap card again\nto finish paying"
        # the card comes back: the payment ends, the wash runs (the machine's 4 s), and
        # only then the board switches
        sim.call("card", action="tap", uid=UID4.hex())
        sim.wait_for(lambda s: fw(s)["state"] == "running", timeout=30, what="the wash")
        assert server.states()[-1] == "staged"
        healthy_after(sim, server)
        img = sim.call("card", action="dump", uid=UID4.hex())["image"]
        assert W.read_wallet(W.site_card_key(SITE_KEY), UID4, {
            b: bytes.fromhex(img["blocks"][b]) for b in (4, 5, 6)}).balance == 1000 - PRICE
        sim.call("power", state="cut")
        recs = records(st)
    kinds = [r["type"] for r in recs]
    money = [r for r in recs if r["type"].startswith(("card", "vend", "coin"))]
    assert [r["type"] for r in money] == ["card_debit", "vend_running", "vend_done"], money
    debit = money[0]
    assert (debit["amount"], debit["balance_before"], debit["balance_after"]) == (
        PRICE, 1000, 1000 - PRICE)
    assert kinds.index("vend_done") < kinds.index("ota_done")
    assert "ota_rollback" not in kinds and "ota_refused" not in kinds


def test_a_coin_inserted_as_the_switch_is_due(tmp_path, release, each_micropython):
    # a train ends 2 s after its last pulse (the longest the config allows): the coin is
    # still being counted when the board has staged
    cfg = {"coins": {"end_ms": 2000}}
    with rig(tmp_path, config=cfg, micropython=each_micropython) as (sim, server, st):
        server.add(release)
        dropped = on_last_chunk(server, release,
                                lambda: sim.call("coin", value=200)["pulses"])
        server.offer(DEVICE, release)
        assert dropped.wait(180), "the board never asked for the last chunk"
        s = sim.wait_for(lambda s: fw(s).get("credit") == 200 or fw(s).get("version") ==
                         "0.2.0", timeout=60, what="the coin credited or the new version")
        assert (fw(s)["version"], fw(s)["credit"]) == ("0.1.0", 200), "the coin was lost"
        waiting_to_switch(sim, server)  # credit: the switch waits for it to be spent
        sim.insert_coin(50)
        sim.call("button", name="start")
        sim.wait_for(lambda s: fw(s)["state"] == "running", timeout=30, what="the wash")
        healthy_after(sim, server)
        sim.call("power", state="cut")
        recs = records(st)
    kinds = [r["type"] for r in recs]
    coins = [r["amount"] for r in recs if r["type"] == "coin"]
    assert coins == [200, 50]
    assert kinds.index("vend_done") < kinds.index("ota_done")
    assert "ota_rollback" not in kinds


# ---- the last look before the switch (washpay/updates.py quiet), on its own
QUIET = r"""
import asyncio, json
from washpay import updates as U
from washpay.journal import records as R

class Acceptor:
    def __init__(self):
        self.inhibited = False
        self.log = []
    def inhibit(self, on):
        self.inhibited = bool(on)
        self.log.append(self.inhibited)

class Decoder:
    idle = True
    end_ms = 40

class Engine:
    state = R.IDLE
    credit = 0
    busy = False
    def update_inhibit(self):  # as the engine: coins taken below the most credit
        app.acceptor.inhibit(self.credit >= 1000)

class App:
    pass

async def case(during=None):
    global app
    app = App()
    app.acceptor, app.decoder, app.engine, app.card = Acceptor(), Decoder(), Engine(), None
    # after boot the config keeps no "coins": the decoder holds its own end_ms
    app.cfg = {"risk": {"inhibit_grace_ms": 60}}
    if during:
        during(app, 0)
    t = asyncio.create_task(U.quiet(app))
    await asyncio.sleep_ms(30)  # inside the grace: the acceptor refuses coins already
    if during:
        during(app, 1)
    ok = await t
    return [ok, app.acceptor.log, app.acceptor.inhibited]

def coin(app, step):  # a train being counted as the look begins, credited during it
    if step == 0:
        app.decoder.idle = False
    else:
        app.decoder.idle = True
        app.engine.credit = 200
        app.engine.state = R.CREDIT
        app.engine.update_inhibit()

def released(app, step):  # an event let coins in again during the look (a lockout ended)
    if step:
        app.engine.update_inhibit()

def card(app, step):  # a card payment began during the look
    if step:
        app.engine.state = R.STARTING

async def main():
    out = {}
    for name, during in (("idle", None), ("coin", coin), ("released", released),
                         ("card", card)):
        out[name] = await case(during)
    print(json.dumps(out))

asyncio.run(main())
"""


def test_the_last_look_before_the_switch_holds_coins_off(each_micropython):
    """Idle: coins stay refused through the reset (True). A coin counted meanwhile, coins
    let in again by anything, a payment begun: not now (False), coins as the engine has
    them. Under both interpreters."""
    from conftest import run_micropython

    _, out, _ = run_micropython(QUIET, interpreter=each_micropython)
    got = json.loads(out.strip().splitlines()[-1])
    assert got == {"idle": [True, [True], True],
                   "coin": [False, [True, False, False], False],
                   "released": [False, [True, False, False], False],
                   "card": [False, [True, False], False]}
