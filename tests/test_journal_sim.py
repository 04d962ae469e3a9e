"""The journal on the simulated board, end to end: `washpay journal pull` copies it through the
board's console with mpremote, `washpay journal decode` verifies it (pulled, or straight from
a flash dump), and a power cut at a flash operation in the middle of a payment leaves the
credit and the journal intact."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from host_tools import journal as J
from host_tools import keys as K

pytestmark = pytest.mark.device


def washpay(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def decode(state, *paths, fmt="jsonl"):
    """`washpay journal decode` -> (exit status, rows, summary text)."""
    proc = washpay("journal", "decode", *map(str, paths), "--site-key", str(state / "site.key"),
                   "--device", "sim-0001", "--format", fmt)
    rows = [json.loads(line) for line in proc.stdout.splitlines()] if fmt == "jsonl" else []
    return proc.returncode, rows, proc.stderr


def test_pull_and_decode(sim, tmp_path):
    state = tmp_path / "st"
    for coin in (200, 100, 50):
        sim.insert_coin(coin)
    st = sim.status()
    last = st["journal"]["last_seq"]
    proc = washpay("journal", "pull", "--port", str(state / "console"), "-o",
                   str(tmp_path / "pulled"))
    assert proc.returncode == 0, proc.stderr
    assert "pulled" in proc.stdout
    rc, rows, summary = decode(state, tmp_path / "pulled" / "journal")
    assert rc == 0, summary
    assert [r["type"] for r in rows] == ["boot", "coin", "coin", "coin"]
    assert rows[-1]["seq"] == last and rows[-1]["credit"] == 350
    assert "verification: OK" in summary
    # the pull ends with a reset: the board comes back with its credit
    st = sim.wait_ready()
    assert st["credit"] == 350 and st["journal"]["last_seq"] == last + 1
    # a pull into a directory that already has one is refused before the board is touched:
    # the firmware is not stopped, nothing is copied, the board is not reset
    boots = st["boots"]
    proc = washpay("journal", "pull", "--port", str(state / "console"), "-o",
                   str(tmp_path / "pulled"))
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert "nothing was read from the board" in proc.stderr
    st = sim.status()
    assert st["boots"] == boots and st["mode"] != "repl" and st["credit"] == 350
    assert st["journal"]["last_seq"] == last + 1


def test_flash_dumps_decode(sim, tmp_path):
    state = tmp_path / "st"
    sim.insert_coin(100)
    sim.call("power", state="cut")
    flash = (state / "flash.bin").read_bytes()
    # the vfs partition as `esptool read-flash 0x200000 0x200000` gives it, and the whole
    # 4 MiB flash with the partition at its stock offset
    whole = tmp_path / "whole.bin"
    whole.write_bytes(b"\xff" * 0x200000 + flash)
    for dump in (state / "flash.bin", whole):
        rc, rows, summary = decode(state, dump)
        assert rc == 0, summary
        assert [(r["type"], r["credit"]) for r in rows] == [("boot", 0), ("coin", 100)]
    # a wrong device id: no record verifies, so no decrypted body is shown (it would be
    # garbage: years 2041-2103, "type141"), one line says what is wrong
    proc = washpay("journal", "decode", str(whole), "--site-key", str(state / "site.key"),
                   "--device", "sim-0002")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "washpay journal decode: no record verifies with this key and device id: wrong site "
        "key or --device? (2 records read, device sim-0002)"]


def cut_and_restart(sim, after_ops, torn, action):
    sim.call("power", state="cut", after_ops=after_ops, torn=torn)
    action()
    # a vend whose washer never confirms writes again only after its start window (twice 5 s)
    sim.wait_for(lambda s: s["power"] == "off", timeout=30, what="the power cut")
    sim.call("power", state="on")
    return sim.wait_ready()


# a staged record is a couple of page programs: the cut lands inside the coin's append
@pytest.mark.parametrize("after_ops,torn", [(1, False), (1, True), (2, False), (2, True)])
def test_power_cut_at_a_flash_operation_during_a_coin(sim, tmp_path, after_ops, torn):
    state = tmp_path / "st"
    sim.insert_coin(100)
    st = cut_and_restart(sim, after_ops, torn, lambda: sim.call("coin", value=200))
    # the coin's record was being written: it is there whole (credit 300) or not at all
    assert st["credit"] in (100, 300), st
    rc, rows, summary = decode(state, state / "flash.bin")
    assert rc == 0, summary
    coins = [r for r in rows if r["type"] == "coin"]
    assert coins[0]["credit"] == 100
    assert len(coins) == (2 if st["credit"] == 300 else 1)
    assert rows[-1]["type"] == "boot" and rows[-1]["credit"] == st["credit"]
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))


# 1, 2: inside the vend_start append; 6: vend_start is durable, the relay ran, and the cut
# lands on the start_failed record after the washer's silence
@pytest.mark.parametrize("after_ops,torn", [(1, True), (2, False), (6, False)])
def test_power_cut_at_a_flash_operation_during_a_vend(sim, tmp_path, after_ops, torn):
    state = tmp_path / "st"
    sim.call("washer", state="idle")  # the washer will not confirm before the cut
    for coin in (200, 50):
        sim.insert_coin(coin)
    st = cut_and_restart(sim, after_ops, torn, lambda: sim.call("button", name="start"))
    # paid but never confirmed: the price is credit again, whichever records made it
    assert (st["state"], st["credit"]) == ("credit", 250), st
    rc, rows, summary = decode(state, state / "flash.bin")
    assert rc == 0, summary
    types = [r["type"] for r in rows]
    if "vend_start" in types:
        i = types.index("vend_start")
        assert types[i + 1 :] == ["start_failed", "boot"]
        assert rows[i + 1]["amount"] == 250 and rows[i + 1]["recovered"] is False
    else:
        assert types[-1] == "boot" and types.count("boot") == 2
    assert rows[-1]["credit"] == 250


def test_sim_site_key_decodes_and_others_do_not(sim, tmp_path):
    state = tmp_path / "st"
    sim.insert_coin(50)
    sim.call("power", state="cut")
    other = tmp_path / "other.key"
    K.new_site_key(other)
    report = J.verify(J.load_inputs([state / "flash.bin"]),
                      J.Keys(K.load_site_key(state / "site.key"), "sim-0001"))
    assert report.ok and report.records[-1].fields["credit"] == 50
    report = J.verify(J.load_inputs([state / "flash.bin"]),
                      J.Keys(K.load_site_key(other), "sim-0001"))
    assert not report.ok and report.count("bad_tag") == len(report.records)
