"""Device tests: the firmware under the real micropython on the simulated board, driven
through the same control channel as `washpay sim ctl`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from host_tools.sim.client import SimBoard, SimError

pytestmark = pytest.mark.device
ROOT = Path(__file__).resolve().parent.parent


def test_full_coin_wash(sim):
    st = sim.firmware_status()
    assert st["state"] == "idle" and st["credit"] == 0
    assert st["display"].startswith("Insert coins")
    sim.select_program("standard")  # 3.50
    for coin in (200, 100, 50):
        st = sim.insert_coin(coin)
    assert st["credit"] == 350 and st["state"] == "credit"
    assert "Credit 3.50" in st["display"]
    count_before = st["journal"]["count"]
    sim.call("button", name="start")
    st = sim.wait_for(lambda s: s["state"] == "running", what="running")
    assert st["relay_pulses"] == 1
    assert st["inhibit"] is True  # no coins while the machine runs
    st = sim.wait_for(lambda s: s["state"] == "idle", timeout=20, what="cycle end")
    assert st["credit"] == 0
    assert st["inhibit"] is False
    # vend_start, vend_running, vend_done
    assert st["journal"]["count"] == count_before + 3
    assert st["journal"]["last_type"] == "vend_done"


def test_not_enough_credit_does_not_start(sim):
    sim.insert_coin(100)
    sim.call("button", name="start")
    st = sim.wait_for(lambda s: "Insert" in s["display"], what="the shortfall message")
    assert "1.50" in st["display"]  # quick costs 2.50
    assert st["relay_pulses"] == 0 and st["state"] == "credit"


def test_door_open_refuses_start(sim):
    sim.insert_coin(200)
    sim.insert_coin(100)
    sim.call("door", state="open")
    sim.call("button", name="start")
    st = sim.wait_for(lambda s: "Close the door" in s["display"], what="door message")
    assert st["relay_pulses"] == 0 and st["credit"] == 300


def test_power_cut_right_after_coin_keeps_credit(sim):
    sim.insert_coin(200)
    sim.call("power", state="cut")
    assert sim.status()["power"] == "off"
    sim.call("power", state="on")
    st = sim.wait_ready()
    assert st["credit"] == 200 and st["state"] == "credit"
    assert st["boots"] == 2


def test_washer_never_confirms_keeps_credit(sim):
    sim.call("washer", state="idle")  # manual: the busy line never comes
    sim.insert_coin(200)
    sim.insert_coin(100)
    sim.call("button", name="start")
    st = sim.wait_for(lambda s: s["journal"]["last_type"] == "start_failed", timeout=20,
                      what="start failure")
    assert st["relay_pulses"] == 2  # one retry, then give up
    assert st["credit"] == 300 and st["state"] == "credit"
    assert st["firmware"]["starts_failed"] == 1


def test_power_cut_during_start_gives_credit_back(sim):
    sim.call("washer", state="idle")
    sim.insert_coin(200)
    sim.insert_coin(100)
    sim.call("button", name="start")
    sim.wait_for(lambda s: s["state"] == "starting", what="starting")
    sim.call("power", state="cut")
    sim.call("power", state="on")
    st = sim.wait_for(lambda s: s.get("state") == "credit", timeout=20, what="recovery")
    assert st["credit"] == 300
    assert st["journal"]["last_type"] == "boot"


def test_power_cut_while_running_resumes_running(sim):
    sim.call("washer", state="busy")  # the machine keeps running on its own supply
    sim.insert_coin(200)
    sim.insert_coin(100)
    sim.call("button", name="start")
    sim.wait_for(lambda s: s["state"] == "running", what="running")
    sim.call("power", state="cut")
    sim.call("power", state="on")
    st = sim.wait_for(lambda s: s.get("state") == "running", timeout=20, what="recovery")
    assert st["credit"] == 50 and st["relay_pulses"] == 1
    sim.call("washer", state="idle")
    st = sim.wait_for(lambda s: s["state"] == "credit", what="cycle end")
    assert st["credit"] == 50


def test_glitches_add_no_credit(sim):
    sim.call("glitch", count=5)
    st = sim.wait_for(lambda s: s["firmware"]["coin_noise"] >= 1, what="noise seen")
    sim.insert_coin(100)
    st = sim.firmware_status()
    assert st["credit"] == 100


def test_coin_while_running_is_returned(sim):
    sim.call("washer", state="busy")
    sim.insert_coin(200)
    sim.insert_coin(100)
    sim.call("button", name="start")
    sim.wait_for(lambda s: s["state"] == "running", what="running")
    reply = sim.call("coin", value=100)
    assert reply.get("returned") is True
    assert sim.firmware_status()["credit"] == 50


def test_unknown_train_is_rejected_not_credited(sim):
    sim.call("pulses", n=3)  # no coin is 3 pulses
    st = sim.wait_for(lambda s: s["journal"]["last_type"] == "coin_rejected", what="rejection")
    assert st["credit"] == 0
    assert st["firmware"]["faults"] == 1


def factory_board(tmp_path, config):
    """A simulated board whose blank flash gets `config` as its factory config.json."""
    st_dir = tmp_path / "st"
    (st_dir / "provision").mkdir(parents=True)
    (st_dir / "provision" / "config.json").write_text(config)
    return SimBoard(st_dir, log=tmp_path / "sim.log")


def test_max_credit_inhibits_acceptor(tmp_path):
    with factory_board(tmp_path, '{"device_id": "sim-0002", "max_credit": 450}') as board:
        board.wait_ready()
        for _ in range(2):
            board.insert_coin(200)
        assert board.firmware_status()["inhibit"] is False
        board.insert_coin(100)
        st = board.firmware_status()
        assert st["credit"] == 500 and st["inhibit"] is True
        assert board.call("coin", value=50).get("returned") is True
        assert board.firmware_status()["credit"] == 500


def test_bad_config_puts_machine_out_of_order(tmp_path):
    bad = '{"programs": [{"name": "x", "price": -1}]}'
    with factory_board(tmp_path, bad) as board:
        st = board.wait_ready()
        assert st["state"] == "out_of_order"
        assert "programs[0].price" in st["firmware"]["config_error"]
        assert st["inhibit"] is True
        assert st["display"].startswith("Out of order")
        assert board.call("coin", value=100).get("returned") is True


def mpremote(*args, timeout=30):
    return subprocess.run(
        [sys.executable, "-m", "mpremote", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def test_mpremote_exec_and_fs_ls(sim):
    port = sim.status()["console"]
    r = mpremote("connect", port, "exec", "import os; print(sorted(os.listdir('/')))")
    assert r.returncode == 0, r.stderr
    assert "'board.json'" in r.stdout and "'journal'" in r.stdout
    r = mpremote("connect", port, "fs", "ls")
    assert r.returncode == 0, r.stderr
    assert "config.json" in r.stdout
    # mpremote leaves the board in its REPL, as a real board does; a reset runs main.py
    r = mpremote("connect", port, "reset")
    assert r.returncode == 0, r.stderr
    sim.wait_ready()


def test_ctl_without_running_board_says_what_to_do(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "host_tools.cli", "sim", "ctl", "--state", str(tmp_path), "status"],
        capture_output=True, text=True, cwd=Path(__file__).parent.parent,
    )
    assert r.returncode == 2
    assert "washpay sim run --state" in r.stderr
    with pytest.raises(SimError):
        SimBoard(tmp_path).client.status()


def test_journal_full_refuses_coins_but_vends_paid_credit(tmp_path):
    cfg = '{"journal": {"capacity": 100, "warn": 97, "reserve": 95}}'
    with factory_board(tmp_path, cfg) as board:
        st = board.wait_ready()  # boot record: 99 free
        assert st["journal"]["level"] == "ok"
        board.insert_coin(200)  # 98 free
        st = board.insert_coin(200)  # 97 free: warn
        assert st["journal"]["level"] == "low"
        assert "sync required" in st["journal"]["message"]
        st = board.insert_coin(100)  # 96
        st = board.insert_coin(50)  # 95: only the reserve is left
        assert st["journal"]["level"] == "full"
        assert st["inhibit"] is True
        assert "START" in st["display"]  # the customer's credit still buys a wash
        assert board.call("coin", value=100).get("returned") is True
        # the credit already taken is still sold: the reserve records the vend
        board.call("button", name="start")
        st = board.wait_for(lambda s: s["state"] == "running", what="running")
        assert st["credit"] == 300


def journal_records(board, tmp_path):
    """The board's records as the host's decoder reads them (pulled with mpremote)."""
    from host_tools import journal as J
    from host_tools import keys as K

    st = board.firmware_status()
    out = tmp_path / f"pull{len(list(tmp_path.glob('pull*')))}"
    J.pull(st["console"], out)
    report = J.verify(J.load_inputs([out / "journal"]),
                      J.Keys(K.load_site_key(board.state / "site.key"),
                             st["firmware"]["device_id"]))
    assert report.ok, [p.message for p in report.problems]
    board.wait_ready()
    return [dict(r.fields) for r in report.records]


def test_the_machine_runs_on_through_our_power_cut(sim_with_config, tmp_path):
    # `washer auto`: the simulated machine answers the relay with its own program timer. It
    # is on its own supply, so a power cut of our board neither stops nor restarts it: boot
    # recovery finds it busy, the vend goes on, nothing is refunded or charged twice. Its
    # cycle outlasts any boot however loaded the host; the test ends it by hand.
    board_file = json.loads((ROOT / "boards" / "sim" / "board.json").read_text())
    board_file["sim"]["washer"]["cycle_s"] = 600
    sim = sim_with_config({"device_id": "sim-0001"}, board_file=board_file)
    sim.insert_coin(200)
    sim.insert_coin(100)
    sim.call("button", name="start")  # quick, 2.50
    st = sim.wait_for(lambda s: s["state"] == "running", what="running")
    assert st["washer"]["busy"] is True and st["washer"]["starts"] == 1
    sim.call("power", state="cut")
    sim.call("power", state="on")
    # boot recovery has journaled its boot record (the sixth) and shows its verdict
    st = sim.wait_for(lambda s: s["boots"] == 2 and s["journal"].get("count", 0) >= 6,
                      timeout=20, what="boot recovery")
    assert st["boots"] == 2 and st["state"] == "running" and st["credit"] == 50
    assert st["washer"] == {"mode": "auto", "busy": True, "door": "closed", "starts": 1}
    assert st["relay_pulses"] == 1  # not started again
    sim.call("washer", state="idle")  # the program ends
    st = sim.wait_for(lambda s: s["state"] == "credit", what="the cycle's end")
    assert st["credit"] == 50 and st["relay_pulses"] == 1
    recs = journal_records(sim, tmp_path)
    assert [r["type"] for r in recs] == ["boot", "coin", "coin", "vend_start", "vend_running",
                                         "boot", "vend_done"]
    assert [r["credit"] for r in recs] == [0, 200, 300, 50, 50, 50, 50]
