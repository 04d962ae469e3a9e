"""Remote start (docs/remote-start.md): the host's builder and the firmware's verifier
against the page's vector; then the firmware on the simulated board, fed command bytes
through the simulator's command port (`washpay sim ctl command`; the MQTT transport of the
sync work hands the same bytes to the same on_command()): executed once, journaled before
the washer moves, refused with a reason otherwise, and still once after a power cut."""

import json

import pytest
import token_env as E  # first: puts the shims and firmware/ on sys.path
from conftest import run_micropython
from washpay.payments import remote as FR
from washpay.payments.signed import RemoteStart
from washpay.payments.token import Refused
from washpay.replay import ReplayCache

from host_tools import cli
from host_tools import token as T

T0 = 1767225600


def vector_command():
    return T.build_command(E.command_key(), E.DEVICE, "quick", T0, T0 + 300, 0,
                           bytes(range(0x10, 0x18)), bytes(range(0x20, 0x28)))


def test_host_builds_the_documented_command():
    cmd = vector_command()
    assert cmd == E.doc_command_vector()
    info = T.decode_command(cmd, E.command_key(), E.DEVICE)
    assert info["tag_ok"] and info["device_ok"]
    assert (info["command_id"], info["nonce"], info["program"], info["action"]) == (
        "1011121314151617", "2021222324252627", "quick", 1)
    # a token key does not make a command, nor a command a token
    assert not T.decode_command(cmd, E.token_key(), E.DEVICE)["tag_ok"]


def test_firmware_verifies_the_documented_command(tmp_path):
    cache = ReplayCache(str(tmp_path / "used"), 32, clock=lambda: T0 + 10)
    v = FR.CommandVerifier(E.command_key(), E.DEVICE, cache)
    cmd = v.check(E.doc_command_vector())
    assert (cmd.cid, cmd.nonce, cmd.issued, cmd.expires, cmd.action, cmd.amount,
            cmd.program) == (bytes(range(0x10, 0x18)), bytes(range(0x20, 0x28)), T0, T0 + 300,
                             1, 0, "quick")
    raw = bytearray(E.doc_command_vector())
    for i in range(len(raw)):  # every single-byte change is refused
        bad = bytearray(raw)
        bad[i] ^= 0x01
        with pytest.raises(Refused):
            v.check(bytes(bad))
    with pytest.raises(Refused) as e:
        FR.CommandVerifier(E.command_key(), "sim-0002", cache).check(bytes(raw))
    assert e.value.code == "other_device"
    late = ReplayCache(str(tmp_path / "late"), 32, clock=lambda: T0 + 301)
    with pytest.raises(Refused) as e:
        FR.CommandVerifier(E.command_key(), E.DEVICE, late).check(bytes(raw))
    assert e.value.code == "expired" and e.value.token.cid == bytes(range(0x10, 0x18))
    for bad in (b"", b"\x12", bytes(raw[:-1]), bytes(raw) + b"\x00", b"\x11" + bytes(raw[1:])):
        with pytest.raises(Refused) as e:
            v.check(bad)
        assert e.value.code == "malformed"


def test_firmware_verifies_the_documented_command_under_micropython(tmp_path):
    code = f"""
from binascii import unhexlify
from washpay.payments.remote import CommandVerifier
from washpay.replay import ReplayCache
cache = ReplayCache({str(tmp_path / 'used')!r}, 32, clock=lambda: {T0 + 10})
v = CommandVerifier(unhexlify({E.command_key().hex()!r}), {E.DEVICE!r}, cache)
c = v.check(unhexlify({E.doc_command_vector().hex()!r}))
print("RESULT", c.cid.hex(), c.program, c.expires)
"""
    out = run_micropython(code, heap="160k")[1]
    assert f"RESULT 1011121314151617 quick {T0 + 300}" in out


def test_ctl_command_words():
    args = cli.build_parser().parse_args(["sim", "ctl", "--state", "x", "command", "12ab", "cd"])
    assert cli._ctl_request(args) == {"op": "command", "hex": "12abcd"}
    args = cli.build_parser().parse_args(["sim", "ctl", "--state", "x", "qr", "WP:ABC"])
    assert cli._ctl_request(args) == {"op": "qr", "text": "WP:ABC"}
    args = cli.build_parser().parse_args(["sim", "ctl", "--state", "x", "qr", "--hex", "00ff"])
    assert cli._ctl_request(args) == {"op": "qr_raw", "hex": "00ff"}


def test_token_command_cli(tmp_path, capsys):
    key = tmp_path / "site.key"
    key.write_text(E.SITE_KEY.hex() + "\n")
    assert cli.main(["token", "command", "--device", E.DEVICE, "--program", "heavy",
                     "--amount", "450", "--ttl", "2m", "--site-key", str(key)]) == 0
    out = capsys.readouterr().out.strip()
    info = T.decode_command(bytes.fromhex(out), E.command_key(), E.DEVICE)
    assert info["tag_ok"] and info["program"] == "heavy" and info["amount"] == 450
    assert info["expires"] - info["issued"] == 120


# ---- on the simulated board
def send(sim, cmd):
    """Hand `cmd` to the board's command port; return the board's reply (a dict)."""
    # the status keeps the last 8 replies: once it has 8, a new one shifts the list (a
    # count that stays at 8 would take the previous reply for this one's)
    before = sim.status()["firmware"]["remote"]["replies"]
    sim.call("command", hex=cmd.hex())
    st = sim.wait_for(lambda s: s["firmware"]["remote"]["replies"] != before,
                      what="the command's reply")
    return st["firmware"]["remote"]["replies"][-1]


def command(sim, program="quick", ttl=300, device=E.DEVICE, **kw):
    cmd, cid = T.remote_start(E.site_key_of(sim.state), device, program, ttl, **kw)
    return cmd, cid.hex()




@pytest.mark.device
def test_remote_start_runs_once(sim):
    E.settle(sim)
    cmd, cid = command(sim, "standard")
    reply = send(sim, cmd)
    assert reply["result"] == "started" and reply["cmd"] == cid
    st = sim.wait_for(lambda s: s["state"] == "running", what="the wash")
    assert st["relay_pulses"] == 1
    # the broker delivers it again (a retransmission, or an attacker's replay)
    assert send(sim, cmd) == {"result": "duplicate", "cmd": cid, "reason": "already executed"}
    E.settle(sim)
    assert send(sim, cmd)["result"] == "duplicate"
    # a power cut does not make it new
    sim.call("power", state="cut")
    sim.call("power", state="on")
    sim.wait_ready()
    assert send(sim, cmd)["result"] == "duplicate"
    st = E.settle(sim)
    assert st["relay_pulses"] == 1
    sim.call("power", state="cut")
    recs = E.journal_records(sim.state)
    starts = [r for r in recs if r["type"] == "remote_start"]
    assert len(starts) == 1
    assert (starts[0]["source"], starts[0]["source_kind"], starts[0]["program"],
            starts[0]["price"], starts[0]["state"]) == (cid, "command", "standard", 350,
                                                        "starting")
    assert starts[0]["seq"] == reply["seq"]
    assert recs[recs.index(starts[0]) + 1]["type"] == "vend_running"


@pytest.mark.device
def test_remote_start_refusals(sim):
    E.settle(sim)
    expired, exp_id = command(sim, issued=E.now() - 600, ttl=300)
    assert send(sim, expired) == {"result": "refused", "cmd": exp_id, "reason": "expired"}
    other, _ = command(sim, device="sim-0002")
    assert send(sim, other) == {"result": "invalid", "reason": "command for another device"}
    tampered = bytearray(command(sim)[0])
    tampered[-1] ^= 0x80
    assert send(sim, bytes(tampered)) == {"result": "invalid", "reason": "bad tag"}
    assert send(sim, b"\x00" * 7) == {"result": "invalid", "reason": "malformed command"}
    unknown, _ = command(sim, "eco")
    assert send(sim, unknown)["reason"] == "unknown program"
    cheap, _ = command(sim, amount=100)
    assert send(sim, cheap)["reason"] == "amount below price"
    # the door is open: refused, journaled, and not used up
    cmd, cid = command(sim)
    sim.call("door", state="open")
    assert send(sim, cmd) == {"result": "refused", "cmd": cid, "reason": "close the door"}
    E.wait_display(sim, "Close the door")
    sim.call("door", state="closed")
    # the machine runs until the test ends the wash, not for the simulated cycle's 4 s
    # only, which a slow host could spend before the next command arrives
    sim.call("washer", state="busy")
    assert send(sim, cmd)["result"] == "started"
    sim.wait_for(lambda s: s["state"] == "running", what="the wash")
    busy, busy_id = command(sim)
    assert send(sim, busy) == {"result": "refused", "cmd": busy_id, "reason": "machine busy"}
    sim.call("washer", state="idle")
    st = E.settle(sim)
    assert st["relay_pulses"] == 1
    sim.call("power", state="cut")
    recs = E.journal_records(sim.state)
    refused = [(r["reason"], r["source"]) for r in recs if r["type"] == "command_refused"]
    assert [r[0] for r in refused] == ["expired", "unknown program", "amount below price",
                                       "close the door", "machine busy"]
    assert refused[0][1] == exp_id and refused[3][1] == cid
    assert len([r for r in recs if r["type"] == "remote_start"]) == 1


def test_reply_is_json_bytes(tmp_path):
    # what the sync link publishes on wp/<id>/res
    class Engine:
        programs = [{"name": "quick", "price": 250}]

    cache = ReplayCache(str(tmp_path / "used"), 32, clock=lambda: T0 + 10)
    # the code itself (signed.RemoteStart.on_command loads it for each command)
    rs = RemoteStart(Engine(), None, E.command_key(), E.DEVICE, cache)
    out = FR.on_command(rs, b"\x12" + b"\x00" * 60)
    assert json.loads(out) == {"result": "invalid", "reason": "malformed command"}
    out = FR.on_command(rs, object())  # not even bytes: an answer, not an exception
    assert json.loads(out)["result"] in ("invalid", "error")


# ---- the washer never confirms a remote start (issue 15: charged and not started is refunded)
def refund_marked(sim, cid, price, credit, reason):
    """The board's journal, read back by the host's decoder: the remote start, then a
    start_failed naming the command (source kind command: the server refunds it), with the
    credit unchanged."""
    sim.call("power", state="cut")
    recs = E.journal_records(sim.state)
    start = next(r for r in recs if r["type"] == "remote_start")
    failed = [r for r in recs if r["type"] == "start_failed"]
    assert len(failed) == 1 and recs.index(failed[0]) > recs.index(start)
    f = failed[0]
    assert (f["source_kind"], f["source"], f["amount"], f["credit"], f["reason"]) == (
        "command", cid, price, credit, reason)
    assert start["credit"] == credit  # the coins in the machine before, and still


@pytest.mark.device
def test_remote_start_not_confirmed_is_not_credited(sim):
    E.settle(sim)
    sim.call("washer", state="idle")  # the busy line never comes
    cmd, cid = command(sim, "standard")
    assert send(sim, cmd)["result"] == "started"
    st = sim.wait_for(lambda s: s["journal"]["last_type"] == "start_failed", timeout=20,
                      what="the start failure")
    assert st["relay_pulses"] == 2  # one retry, then give up
    assert st["credit"] == 0 and st["state"] == "idle"
    assert st["firmware"]["starts_failed"] == 1
    E.wait_display(sim, "refund to phone")
    # nothing to press START with: the next customer gets no free wash
    sim.call("button", name="start")
    st = E.settle(sim)
    assert st["credit"] == 0 and st["relay_pulses"] == 2
    refund_marked(sim, cid, 350, 0, "washer did not confirm start")


@pytest.mark.device
def test_remote_start_not_confirmed_leaves_the_coins_as_credit(sim):
    E.settle(sim)
    sim.call("washer", state="idle")
    sim.insert_coin(200)
    cmd, cid = command(sim, "standard")
    assert send(sim, cmd)["result"] == "started"
    st = sim.wait_for(lambda s: s["journal"]["last_type"] == "start_failed", timeout=20,
                      what="the start failure")
    assert st["credit"] == 200 and st["state"] == "credit"
    refund_marked(sim, cid, 350, 200, "washer did not confirm start")


@pytest.mark.device
def test_power_cut_during_a_remote_start_is_not_credited(sim):
    E.settle(sim)
    sim.call("washer", state="idle")
    sim.insert_coin(100)
    cmd, cid = command(sim, "standard")
    assert send(sim, cmd)["result"] == "started"
    sim.wait_for(lambda s: s["state"] == "starting", what="starting")
    sim.call("power", state="cut")
    sim.call("power", state="on")
    st = sim.wait_for(lambda s: s.get("state") in ("idle", "credit") and
                      s["journal"]["last_type"] == "boot", timeout=20, what="recovery")
    assert st["credit"] == 100 and st["firmware"]["starts_failed"] == 1
    # the command is still used up: a second delivery does not start it now
    assert send(sim, cmd)["result"] == "duplicate"
    refund_marked(sim, cid, 350, 100, "power lost before the washer confirmed")
