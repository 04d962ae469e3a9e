"""The fleet and device pages against a ledger filled by the server's own ingest with
records sealed by the firmware's Journal under micropython, on SQLite and PostgreSQL:
backlog, faults, the price table version, the journal verification status (bad tags, gaps,
forks), a board's status reply, and asking for it. The browser test
(test_console_browser.py) does the same end to end with a simulated board and Mosquitto."""

import re

import pytest
from console_env import add_operators, csrf
from sync_env import SITE_KEY, coin_day, firmware_records
from web_env import DEVICE, make_web, reply, set_online

from host_tools.server import wire
from host_tools.server.ingest import Ingest


def batch(recs, last):
    return wire.build_batch(recs, last)


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """30 genuine records of sim-0001: a boot naming price table v3, trade, a fault."""
    steps = [("boot", {"reason": "power on; prices v3"})] + coin_day(27) + [
        ("fault", {"reason": "coin jam", "state": "out_of_order"}),
        ("coin", {"amount": 100, "credit": 100, "state": "credit"})]
    return firmware_records(tmp_path_factory.mktemp("j") / "journal", steps)


@pytest.fixture(params=["sqlite", "postgresql"])
def web(request, tmp_path):
    url = None
    if request.param == "postgresql":
        import psycopg

        base = request.getfixturevalue("pg_url")
        with psycopg.connect(base, autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS fleet")
            c.execute("CREATE DATABASE fleet")
        url = base.rsplit("/", 1)[0] + "/fleet"
    w = make_web(tmp_path, config={"machines": {DEVICE: {"name": "Washer 1"},
                                                "dryer-2": {"name": "Dryer 2"}}},
                 store_url=url)
    add_operators(w)
    yield w
    w.store.close()
    w.side.close()


def logged_in(web, name):
    c = web.app.test_client()
    token, _ = web.console.accounts.open_session(name, "127.0.0.1")
    c.set_cookie("washpay_console", token, path="/console")
    return c


def text(html):
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def cell(html, device, cls):
    row = re.search(rf'<tr class="device-row" id="dev-{device}".*?</tr>', html, re.S).group(0)
    return text(re.search(rf'<td class="{cls}">(.*?)</td>', row, re.S).group(1)).strip()


def test_fleet_shows_what_the_ledger_knows(web, day):
    ingest = Ingest(web.side, SITE_KEY)
    # the board has 40 records and sent the first 28: 12 waiting on the board
    assert ingest.batch(DEVICE, batch(day[:28], 40)).ack == 28
    set_online(web)
    c = logged_in(web, "viewer")
    page = c.get("/console/fleet").text
    assert cell(page, DEVICE, "backlog") == "12"
    assert cell(page, DEVICE, "prices") == "v3"  # from the boot record
    assert cell(page, DEVICE, "problems") == "none"
    assert cell(page, DEVICE, "firmware") == "?"  # never asked
    assert 'id="dev-sim-0001" data-online="1"' in page
    # a machine of the catalogue the ledger never heard from: offline, never seen
    assert 'id="dev-dryer-2" data-online="0"' in page
    assert cell(page, "dryer-2", "last-seen") == "never"
    # the fault record arrives: the board is out of order, and says why
    ingest.batch(DEVICE, batch(day[28:29], 40))
    page = c.get("/console/fleet").text
    assert cell(page, DEVICE, "faults") == "out of order coin jam"
    assert cell(page, DEVICE, "backlog") == "11"
    home = text(c.get("/console/").text)
    assert "2 devices" in home and "1 online, 1 offline" in home


def test_device_page_shows_the_journal_verification(web, day, tmp_path, monkeypatch):
    from host_tools.server import ingest as ingest_mod

    ingest = Ingest(web.side, SITE_KEY)
    bad = bytearray(day[5])
    bad[40] ^= 0x01  # one bit of record 6's encrypted body
    ingest.batch(DEVICE, batch(day[:5] + [bytes(bad)] + day[6:10], 30))
    # the same board's journal written again from scratch: a fork of records 1..3
    other = firmware_records(tmp_path / "again", [("boot", {})] + coin_day(5, first=9))
    ingest.batch(DEVICE, batch(other[:3], 30))
    # a batch too far ahead to park: a gap
    monkeypatch.setattr(ingest_mod, "MAX_AHEAD", 5)
    ingest.batch(DEVICE, batch(day[20:25], 30))
    c = logged_in(web, "viewer")
    page = c.get(f"/console/devices/{DEVICE}").text
    t = text(page)
    assert "Look at the problems below" in t
    assert "10 (9 verified)" in t
    assert "1 records failed their tag; 1 open, 0 resolved" in t
    assert re.search(r"Gaps 1 open, 0 resolved; 20 records waiting", t)
    assert "Forks 3 open, 0 resolved" in t
    kinds = re.findall(r'class="problem-row" data-kind="(\w+)" data-state="open"', page)
    assert sorted(kinds) == ["bad_tag", "fork", "fork", "fork", "gap"]
    # the events, newest first; the altered record shown as unverified
    seqs = [int(s) for s in re.findall(r'data-seq="(\d+)"', page)]
    assert seqs == list(range(10, 0, -1))
    assert re.search(r'class="event-row bad" data-type="\w*" data-seq="6"', page)
    # the gap closes when the missing records come: resolved by itself
    monkeypatch.setattr(ingest_mod, "MAX_AHEAD", 4096)
    ingest.batch(DEVICE, batch(day[10:25], 30))
    t = text(c.get(f"/console/devices/{DEVICE}").text)
    assert "Gaps 0 open, 1 resolved; 5 records waiting" in t


def test_asking_for_status_and_showing_the_reply(web, day):
    Ingest(web.side, SITE_KEY).batch(DEVICE, batch(day[:3], 3))
    c = logged_in(web, "attendant")
    page = c.get(f"/console/devices/{DEVICE}").text
    assert "? (ask for status)" in page
    r = c.post(f"/console/devices/{DEVICE}/status", data={"csrf": csrf(page)})
    assert r.status_code == 303
    device, cid, kind, _body, _args, _exp = web.sender.sent[-1]
    assert (device, kind) == (DEVICE, "status")
    status = {"version": "0.1.0", "prices_version": 3, "fault": None, "faults": 0,
              "journal": {"level": "low", "free": 40, "capacity": 6200,
                          "message": "journal nearly full: sync required"},
              "sync": {"backlog": 7}}
    reply(web, cid, "done", reason="status", status=status)
    page = c.get(f"/console/devices/{DEVICE}").text
    t = text(page)
    assert "Firmware 0.1.0" in t
    assert "low, 40 of 6200 free: journal nearly full: sync required" in t
    assert "(the board said 7)" in t
    fleet = c.get("/console/fleet").text
    assert cell(fleet, DEVICE, "journal") == "low"
    assert cell(fleet, DEVICE, "firmware") == "0.1.0"
    row = web.console.accounts.audit_rows(action="status_request")[0]
    assert (row["actor"], row["target"], row["detail"]["command"]) == ("attendant", DEVICE,
                                                                       cid)


def test_asking_every_online_board(web, day):
    Ingest(web.side, SITE_KEY).batch(DEVICE, batch(day[:3], 3))
    set_online(web)
    c = logged_in(web, "attendant")
    page = c.get("/console/fleet").text
    r = c.post("/console/fleet/status", data={"csrf": csrf(page)}, follow_redirects=True)
    assert "Status asked of 1 online board(s)" in r.text
    # dryer-2 is offline (never heard from): asked nothing
    assert [(d, k) for d, _c, k, *_ in web.sender.sent] == [(DEVICE, "status")]
    row = web.console.accounts.audit_rows(action="status_request")[0]
    assert row["target"] == "fleet" and list(row["detail"]["commands"]) == [DEVICE]
    set_online(web, online=False)
    r = c.post("/console/fleet/status", data={"csrf": csrf(page)}, follow_redirects=True)
    assert "No board is online: nothing asked." in r.text and len(web.sender.sent) == 1
    # a viewer sees no such button
    assert "ask-fleet-status" not in logged_in(web, "viewer").get("/console/fleet").text


def test_a_status_request_that_cannot_be_sent_says_why(web, day):
    def down(*a, **kw):
        raise OSError("no connection to the broker")

    web.console.boards.send_fn = down
    c = logged_in(web, "owner")
    page = c.get(f"/console/devices/{DEVICE}").text
    r = c.post(f"/console/devices/{DEVICE}/status", data={"csrf": csrf(page)},
               follow_redirects=True)
    assert "status for sim-0001 not sent: no connection to the broker" in r.text
    assert web.console.accounts.audit_rows(action="status_request_failed")


def test_the_fleets_states_are_the_customer_pages_states(web):
    """Machines.states (the fleet, in one query) says what Machines.state (each machine's
    page) says, whatever the newest record: a fault, trade, an unverified record."""
    from web_env import add_record

    m = web.machines
    for dev in ("a-1", "b-2", "c-3", "d-4"):
        set_online(web, dev)
    set_online(web, "d-4", online=False)
    add_record(web, "a-1", "fault", "out_of_order", reason="door sensor")
    add_record(web, "b-2", "coin", "credit", amount=100)
    add_record(web, "c-3", "fault", "out_of_order", reason="coin jam")
    with web.side.transaction() as tx:  # c-3's newest record failed its tag
        tx.execute("INSERT INTO records (device, seq, raw, verified, type, state) "
                   "VALUES ('c-3', 2, ?, 0, 'coin', 'credit')", (b"x",))
    states = m.states()
    for dev in ("a-1", "b-2", "c-3", "d-4"):
        assert states[dev] == m.state(dev), dev
    assert [states[d]["state"] for d in ("a-1", "b-2", "c-3", "d-4")] == [
        "out_of_order", "free", "out_of_order", "offline"]


def test_unknown_device_is_404(web):
    c = logged_in(web, "viewer")
    r = c.get("/console/devices/nope")
    assert r.status_code == 404 and "No device nope" in r.text
    a = logged_in(web, "attendant")
    page = a.get(f"/console/devices/{DEVICE}").text  # known from the catalogue
    r = a.post("/console/devices/nope/status", data={"csrf": csrf(page)})
    assert r.status_code == 404 and not web.sender.sent
