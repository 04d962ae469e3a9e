"""Server commands over the sync link, on the simulated board: the whole firmware under
micropython, the real broker, the real server sending signed commands and reading the
board's replies. Remote start, prices, blacklist, clock, status; forged, replayed, expired,
misaddressed and malformed commands are refused, and everything is journaled."""

import time

import pytest
from sync_env import SITE_KEY, command_rig, sync_of

from host_tools.server import commands as C

pytestmark = pytest.mark.device

QUIET = lambda *a: None  # noqa: E731


def uploaded(st):
    return sync_of(st).get("acked") == (st.get("journal") or {}).get("last_seq")


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """One board, broker and server for the whole module (a boot costs seconds)."""
    with command_rig(tmp_path_factory.mktemp("cmd")) as r:
        yield r["sim"], r["server"]


def send(server, kind, device="sim-0001", payload=None, **args):
    if payload is None:
        payload, cid = C.build(SITE_KEY, device, kind, **args)
    else:
        cid = payload[1:9]
    mark = server.send_command("sim-0001", cid.hex(), kind, payload, args)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for r in server.results[mark:]:
            # an invalid command has no trustworthy id: its reply names none
            if r.get("cmd") == cid.hex() or "cmd" not in r:
                return r, payload
        time.sleep(0.02)
    raise AssertionError(f"no reply to {kind} within 15 s")


def last_record(sim, rtype):
    st = sim.wait_for(lambda s: s["journal"].get("last_type") == rtype, timeout=10,
                      what=f"a {rtype} record")
    return st


def journal_types(server, since_seq=0):
    return [r[0] for r in server.store.query(
        "SELECT type FROM records WHERE device = 'sim-0001' AND seq > ? ORDER BY seq",
        (since_seq,))]


def test_remote_start_runs_once(rig):
    sim, server = rig
    sim.wait_for(lambda s: s["state"] in ("idle", "credit"), what="an idle machine")
    before = sim.status()["relay_pulses"]
    res, payload = send(server, "start", program="quick")
    assert res["result"] == "started", res
    st = sim.wait_for(lambda s: s["state"] == "running", what="the remote start running")
    assert st["relay_pulses"] == before + 1
    # the same bytes again: a redelivery or a replay; executed once, journaled as refused
    res2, _ = send(server, "start", payload=payload)
    assert res2["result"] == "duplicate" and res2["cmd"] == res["cmd"]
    assert sim.status()["relay_pulses"] == before + 1
    sim.wait_for(lambda s: s["state"] == "idle", timeout=20, what="the cycle's end")
    rows = server.store.query("SELECT status FROM commands WHERE id = ?", (res["cmd"],))
    assert rows == [("duplicate",)]  # the latest reply; the first was "started"


def test_forged_expired_and_misaddressed_commands_are_refused_and_journaled(rig):
    sim, server = rig
    good, _ = C.build(SITE_KEY, "sim-0001", "status")
    forged = bytearray(good)
    forged[-1] ^= 1
    res, _ = send(server, "status", payload=bytes(forged))
    assert res["result"] == "invalid" and res["reason"] == "bad tag"
    st = last_record(sim, "command_refused")
    n_forged = st["journal"]["last_seq"]
    # a second forgery within the minute is counted, not journaled (a flood cannot fill
    # the journal)
    send(server, "status", payload=bytes(forged))
    assert sim.status()["journal"]["last_seq"] == n_forged
    res, _ = send(server, "status", issued=int(time.time()) - 4000, ttl_s=300)
    assert res["result"] == "refused" and res["reason"] == "expired"
    res, _ = send(server, "start", program="quick", issued=int(time.time()) - 4000, ttl_s=300)
    assert res["result"] == "refused" and res["reason"] == "expired"
    other, _ = C.build(SITE_KEY, "sim-0002", "status")
    res, _ = send(server, "status", payload=other)
    assert res["result"] == "invalid" and res["reason"] == "command for another device"
    res, _ = send(server, "price", prices={"nosuch": 100})
    assert res["result"] == "refused" and res["reason"] == "unknown program nosuch"
    assert sim.status()["journal"]["last_type"] == "command_refused"
    st = sim.wait_for(uploaded,
                      timeout=20, what="the refusals uploaded")
    reasons = [r[0] for r in server.store.query(
        "SELECT reason FROM records WHERE device = 'sim-0001' AND type = 'command_refused' "
        "ORDER BY seq")]
    assert "forged: bad tag" in reasons
    assert reasons.count("expired") == 2
    assert "unknown program nosuch" in reasons


def test_prices_change_now_and_after_a_power_cut(rig):
    sim, server = rig
    res, _ = send(server, "price", prices={"quick": 300, "heavy": 500})
    assert res["result"] == "done" and res["prices"] == {"quick": 300, "heavy": 500}
    progs = {p["name"]: p["price"] for p in sim.status()["firmware"]["programs"]}
    assert progs["quick"] == 300 and progs["heavy"] == 500 and progs["standard"] == 350
    assert sim.status()["journal"]["last_type"] == "command_done"
    sim.call("power", state="cut")
    sim.call("power", state="on")
    st = sim.wait_for(lambda s: (s.get("firmware") or {}).get("programs"), timeout=30,
                      what="the board back")
    progs = {p["name"]: p["price"] for p in st["firmware"]["programs"]}
    assert progs["quick"] == 300 and progs["heavy"] == 500
    sim.wait_for(lambda s: sync_of(s).get("link") == "up", timeout=30,
                 what="the board online again")
    # a price the config refuses (above max_credit) changes nothing
    res, _ = send(server, "price", prices={"quick": 999999})
    assert res["result"] == "refused" and "max_credit" in res["reason"]
    progs = {p["name"]: p["price"] for p in sim.status()["firmware"]["programs"]}
    assert progs["quick"] == 300


def test_blacklist_clock_and_status(rig):
    sim, server = rig
    res, _ = send(server, "blacklist-add",
                  cards=[("04a1b2c3", "lost", 1_780_000_000), ("04d5e6f7a8b9c0", "stolen", 0)])
    assert res["result"] == "done" and res["blacklist"] == 2, res
    res, _ = send(server, "blacklist-remove", uids=["04a1b2c3"])
    assert res["result"] == "done" and res["blacklist"] == 1
    res, _ = send(server, "clock")
    assert res["result"] == "done" and abs(res["offset_s"]) <= 5
    res, _ = send(server, "status")
    assert res["result"] == "done"
    assert res["status"]["device_id"] == "sim-0001" and "journal" in res["status"]
    assert res["status"]["sync"]["link"] == "up"
    sim.wait_for(uploaded, timeout=20, what="the commands uploaded")
    done = [r[0] for r in server.store.query(
        "SELECT reason FROM records WHERE device = 'sim-0001' AND type = 'command_done' "
        "ORDER BY seq")]
    # the reason field holds 25 bytes: the journal keeps the start, the server the rest
    assert "blacklist +04a1b2c3,04d5e" in done and "blacklist -04a1b2c3" in done
    assert "status" in done and any(d.startswith("clock") for d in done)


def test_malformed_operator_command_is_invalid(rig):
    sim, server = rig
    good, cid = C.build(SITE_KEY, "sim-0001", "status")
    res, _ = send(server, "status", payload=good[:40])  # cut short
    assert res["result"] == "invalid" and res["reason"] == "malformed command"


def test_an_operators_busy_day_never_locks_out_a_paid_remote_start(rig):
    # 40 admin commands inside their expiry: more than the old 32-slot cache held, after
    # which it refused everything ("replay cache full"), a customer's paid start included
    sim, server = rig
    sent = []
    for _ in range(40):
        res, payload = send(server, "status")
        assert res["result"] == "done", res
        sent.append(payload)
    sim.wait_for(lambda s: s["state"] in ("idle", "credit"), timeout=60, what="an idle machine")
    pulses = sim.status()["relay_pulses"]
    price = {p["name"]: p["price"] for p in sim.status()["firmware"]["programs"]}["quick"]
    res, paid = send(server, "start", program="quick", amount=price)  # what the app took
    assert res["result"] == "started", res
    sim.wait_for(lambda s: s["state"] == "running", what="the paid start running")
    for payloads, state in ((sent, "before"), (sent, "after a power cut")):
        if state != "before":
            sim.call("power", state="cut")
            sim.call("power", state="on")
            sim.wait_for(lambda s: sync_of(s).get("link") == "up", timeout=60,
                         what="the board online again")
        # none of them runs again: the newest are held, the oldest dropped and refused as
        # expired (the admin pool's expiry floor)
        res, _ = send(server, "start", payload=paid)
        assert res["result"] == "duplicate", (state, res)
        res, _ = send(server, "status", payload=payloads[-1])
        assert (res["result"], res["reason"]) == ("refused", "replayed: already executed")
        res, _ = send(server, "status", payload=payloads[0])
        assert (res["result"], res["reason"]) == ("refused", "expired"), (state, res)
    assert sim.status()["relay_pulses"] == pulses + 1
