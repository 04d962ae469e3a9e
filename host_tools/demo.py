"""`washpay demo`: one purchase on the simulated board, narrated step by step."""

import shutil
import tempfile
import time
from pathlib import Path

from host_tools.money import money
from host_tools.sim.client import SimBoard, SimError


def _say(msg):
    print(msg, flush=True)


def _screen(st):
    return " | ".join(line for line in st.get("display", "").split("\n") if line) or "(blank)"


def run_demo(state=None, keep=False):
    tmp = None
    if state is None:
        tmp = tempfile.mkdtemp(prefix="washpay-demo-")
        state = tmp
    state = Path(state)
    try:
        with SimBoard(state, log=state / "sim.log") as sim:
            st = sim.wait_ready()
            fw = st["firmware"]
            _say(f"Board up: {fw['device_id']} ({fw['board']}), firmware {fw['version']}")
            _say(f"  console for mpremote: {st['console']}")
            _say(f"  display: {_screen(st)}")
            sim.select_program("standard")
            st = sim.status()
            price = next(p["price"] for p in fw["programs"] if p["name"] == "standard")
            cur = fw.get("currency")
            _say(f"Customer picks 'standard' ({money(price, cur)}):")
            _say(f"  display: {_screen(st)}")
            for coin in (200, 100, 50):
                sim.call("coin", value=coin)
                want = (st["credit"] or 0) + coin
                st = sim.wait_for(lambda s, w=want: s["credit"] == w, what=f"credit {want}")
                _say(f"Coin {money(coin, cur)} in -> credit {money(st['credit'], cur)}; "
                     f"display: {_screen(st)}")
            sim.call("button", name="start")
            _say("Customer presses START")
            st = sim.wait_for(lambda s: s["relay_pulses"] >= 1, what="the relay")
            _say(f"  relay pulsed (start contact); state {st['state']}")
            st = sim.wait_for(lambda s: s["state"] == "running", what="the washer to confirm")
            _say(f"Washer confirms (busy line): state {st['state']}; display: {_screen(st)}")
            st = sim.wait_for(lambda s: s["state"] in ("idle", "credit"), timeout=30,
                              what="the cycle to end")
            _say(f"Cycle done: state {st['state']}, credit left {money(st['credit'], cur)}")
            j = st["journal"]
            _say(f"Journal: {j['count']} records, last seq {j['last_seq']}, "
                 f"{j['unsynced']} not yet uploaded; flash {st['flash']}")
        if tmp and not keep:  # the state goes at the end: no command to run on it later
            _say("\nThe board's flash, read back on the host with the site key (washpay "
                 "journal decode; `washpay demo --keep` keeps the flash to decode yourself):\n")
        else:
            _say("\nThe board's flash, read back on the host with the site key (washpay "
                 f"journal decode {state / 'flash.bin'} --site-key {state / 'site.key'} "
                 f"--device {fw['device_id']}):\n")
        from host_tools.journal import decode_command

        rc = decode_command([state / "flash.bin"], state / "site.key", fw["device_id"])
        if rc != 0:
            _say("demo failed: the journal did not verify")
            return 1
        _say("Demo finished.")
        return 0
    except SimError as e:
        _say(f"demo failed: {e}")
        log = state / "sim.log"
        if log.exists():
            _say(log.read_text()[-2000:])
        return 1
    finally:
        if tmp and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif keep:
            _say(f"state kept in {state}")
        time.sleep(0)
