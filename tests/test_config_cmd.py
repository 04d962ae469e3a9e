"""`washpay config get|set|push` on the simulated board through the real mpremote: a change
is checked by the firmware's own rules (firmware/washpay/config.py under micropython) before
anything is written, written by rename, and the command returns once the board is back up
with it; a refusal writes nothing and leaves the machine running. A board whose config.json
is broken is put right with `config push`. The KEY=VALUE parsing is tested without a board.
"""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from host_tools import config_cmd as C
from host_tools import provision as P


def washpay(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def config(sim, *args):
    return washpay("config", *args, "--port", str(sim.client.state / "console"))


def board_config(sim):
    r = config(sim, "get", "--json")
    assert r.returncode in (0, 1), r.stderr
    sim.wait_ready()
    return json.loads(r.stdout)


def board_files(sim):
    files = P.probe(str(sim.client.state / "console")).files
    P.restart(str(sim.client.state / "console"))
    sim.wait_ready()
    return files


@pytest.mark.device
def test_get_set_push_on_a_running_board(sim, tmp_path):
    boots = sim.status()["boots"]
    r = config(sim, "get")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["device_id"] == "sim-0001"
    st = sim.status()  # the command waited until the firmware was back
    assert st["boots"] > boots and st["mode"] != "repl" and st["state"] == "idle"

    r = config(sim, "set", "max_credit=3000", "coins.table.8=500", "programs[0].price=300")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "changes:  max_credit=3000, coins.table.8=500, programs[0].price=300" in r.stdout
    assert "up as sim-0001" in r.stdout and r.stdout.endswith("done\n")
    st = sim.status()
    assert st["state"] == "idle" and st["firmware"]["config_error"] is None
    cfg = board_config(sim)
    assert cfg["max_credit"] == 3000 and cfg["programs"][0]["price"] == 300
    # the firmware's default coins are kept beside the new one
    assert cfg["coins"]["table"] == {"1": 50, "2": 100, "4": 200, "8": 500}
    assert "/config.json.new" not in board_files(sim)  # renamed over, nothing left behind
    sim.select_program("quick")
    sim.insert_coin(200)
    sim.insert_coin(100)  # 3.00 pays the new price of quick
    sim.call("button", name="start")
    sim.wait_for(lambda s: s["state"] == "running", what="running")
    sim.wait_for(lambda s: s["state"] == "idle", timeout=20, what="cycle end")

    good = tmp_path / "good.json"
    good.write_text(json.dumps({"programs": [{"name": "eco", "price": 200, "minutes": 40}],
                                "max_credit": 1000}))
    r = config(sim, "push", str(good))
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = board_config(sim)
    # the board's identity is kept; everything else is the file's
    assert cfg == {"device_id": "sim-0001", "max_credit": 1000,
                   "programs": [{"name": "eco", "price": 200, "minutes": 40}]}
    assert sim.wait_ready()["program"] == "eco"
    r = config(sim, "push", str(good))
    assert r.returncode == 0 and "done (nothing changed)" in r.stdout


@pytest.mark.device
def test_refusals_write_nothing_and_leave_the_machine_running(sim, tmp_path):
    files = board_files(sim)
    cases = [
        (["set", "max_credit=100"], "the firmware would refuse this config: max_credit must "
         "cover the dearest program"),
        (["set", "coins.pulse_ms=1"], "coins.pulse_ms must be an integer from 5 to 500"),
        (["set", "bogus=1"], "unknown config key 'bogus'"),
        (["set", "programs[7].price=1"], "programs.7: the list has 3 entries"),
        (["set", "device_id=other-1"], "cannot change a board's identity"),
        (["set", "max_credit"], "write KEY=VALUE"),
    ]
    for args, message in cases:
        r = config(sim, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        st = sim.wait_ready()  # the refusal restarted the firmware
        assert st["state"] == "idle" and st["firmware"]["config_error"] is None
    assert board_files(sim) == files
    boots = sim.status()["boots"]
    for body, message in (("not json", "is not JSON"), ("[1]", "a config is a JSON object")):
        f = tmp_path / "bad.json"
        f.write_text(body)
        r = config(sim, "push", str(f))
        assert r.returncode == 2 and message in r.stderr, r.stderr
    r = config(sim, "push", str(tmp_path / "none.json"))
    assert r.returncode == 2 and "cannot read" in r.stderr
    assert sim.status()["boots"] == boots  # bad files: the board was never touched


@pytest.mark.device
def test_a_board_with_a_broken_config_is_put_right(sim, tmp_path):
    port = str(sim.client.state / "console")
    bad = tmp_path / "config.json"
    bad.write_text('{"device_id": "sim-0001", "max_credit": ')
    r = subprocess.run([*P.mpremote_command(), "connect", port, "fs", "cp", str(bad),
                        ":/config.json", "+", "reset"], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    st = sim.wait_for(lambda s: s["state"] == "out_of_order", what="out of order")
    r = config(sim, "get")
    assert r.returncode == 1 and "the firmware refuses this config" in r.stderr
    assert '"max_credit": ' in r.stdout  # the text as it is on the board
    sim.wait_for(lambda s: s["state"] == "out_of_order" and s["mode"] != "repl",
                 what="back, out of order")
    r = config(sim, "set", "max_credit=3000")
    assert r.returncode == 2 and "config push FILE" in r.stderr
    good = tmp_path / "good.json"
    good.write_text('{"device_id": "sim-0001", "max_credit": 3000}')
    r = config(sim, "push", str(good))
    assert r.returncode == 0, r.stdout + r.stderr
    st = sim.wait_ready()
    assert st["state"] == "idle" and st["firmware"]["config_error"] is None


def test_settings_parse_as_json_paths():
    assert C.parse_path("programs[0].price") == ["programs", "0", "price"]
    assert C.parse_path("$.coins.table.8") == ["coins", "table", "8"]
    for bad in ("", "a..b", "."):
        with pytest.raises(C.ConfigRefused):
            C.parse_path(bad)
    assert C.parse_value("3000") == 3000 and C.parse_value("EUR") == "EUR"
    assert C.parse_value('{"a": 1}') == {"a": 1} and C.parse_value("true") is True
    cfg = {"programs": [{"name": "quick", "price": 250}]}
    new, changes = C.apply_settings(cfg, ["programs.0.price=300", "sync.batch=8"])
    assert new["programs"][0]["price"] == 300 and new["sync"] == {"batch": 8}
    assert cfg["programs"][0]["price"] == 250  # the board's copy is not changed
    with pytest.raises(C.ConfigRefused, match="programs.0.price is not an object"):
        C.apply_settings(cfg, ["programs.0.price.x=1"])
    assert C.pushed({"device_id": "a", "wifi": "net"}, {"max_credit": 5}) == {
        "max_credit": 5, "device_id": "a", "wifi": "net"}


@pytest.mark.device
def test_a_refused_config_keeps_the_board_identity(sim_with_config):
    """Out of order, but still laundry-9 (it used to come up as wp-000001: the MAC-derived
    default), so that `config get`, provisioning and the server still know it."""
    board = sim_with_config({"device_id": "laundry-9", "max_credit": 1}, ready=False)
    st = board.wait_for(lambda s: s["state"] == "out_of_order", what="out of order")
    assert st["firmware"]["device_id"] == "laundry-9"
    assert "max_credit must cover" in st["firmware"]["config_error"]
    r = config(board, "set", "max_credit=3000")
    assert r.returncode == 0, r.stdout + r.stderr
    st = board.wait_ready()
    assert st["state"] == "idle" and st["firmware"]["device_id"] == "laundry-9"
