"""The console's alerts, notices, card-phone, remote start and refund pages over real HTTP
(the served app, a session per role), on SQLite: acknowledging names who and when,
dead letters are retried, a remote start needs a reason and sends the board's own command,
refunds keep to the attendant's limit, go through the phone payment's refund path or are
recorded as manual refunds, once each, and every action is audited."""

import json
import time

import pytest
from console_env import add_operators, csrf, open_session, request
from web_env import DEVICE, add_record, make_web, set_online

from host_tools import token as T
from host_tools.server.alerts import book, rules
from host_tools.server.alerts.config import parse
from host_tools.server.alerts.engine import create_tables, raise_and_notify
from host_tools.server.notices import outbox
from host_tools.server.web import db as D

HOOK = {"url": "http://127.0.0.1:9/hook", "secret": "s" * 20}


@pytest.fixture
def served(tmp_path):
    web = make_web(tmp_path, {"alerts": {"webhooks": [HOOK]},
                              "console": {"attendant_refund_limit": 300}})
    add_operators(web)
    create_tables(web.side)
    web.start("127.0.0.1", 0)
    try:
        yield web
    finally:
        web.stop()
        web.side.close()


def session(web, role):
    token, _ = open_session(web, role)
    return token


def post(web, path, role, token=None, **form):
    token = token or session(web, role)
    _, _, html = request(web.url + "/console/", token=token)
    return request(web.url + path, "POST", token=token, form={"csrf": csrf(html), **form})


def page(web, path, role):
    return request(web.url + path, token=session(web, role))


def audits(web, action):
    return [r for r in web.console.accounts.audit_rows(limit=100) if r["action"] == action]


def an_alert(web, rule="start_failed"):
    with web.side.transaction() as tx:
        (aid,) = raise_and_notify(tx, parse({"webhooks": [HOOK]}), rules.Alert(
            rule, DEVICE, "", "warning", "washer did not start quick (no confirm)"))
    return aid


def test_an_attendant_acknowledges_an_alert(served):
    aid = an_alert(served)
    status, _, html = page(served, "/console/alerts", "viewer")
    assert status == 200 and "washer did not start quick" in html
    assert "Acknowledge" not in html  # a viewer sees, does not act
    status, headers, _ = post(served, f"/console/alerts/{aid}/ack", "attendant",
                              note="door latch replaced")
    assert status == 303
    with served.side.transaction() as tx:
        a = book.get(tx, aid)
    assert (a["acked_by"], a["ack_note"], a["state"]) == \
        ("attendant", "door latch replaced", "acknowledged")
    (row,) = audits(served, "alert_ack")
    assert (row["actor"], row["target"]) == ("attendant", str(aid))
    # a second acknowledgement changes nothing
    post(served, f"/console/alerts/{aid}/ack", "owner")
    with served.side.transaction() as tx:
        assert book.get(tx, aid)["acked_by"] == "attendant"
    assert len(audits(served, "alert_ack")) == 1
    _, _, html = page(served, "/console/alerts?state=all", "viewer")
    assert "by attendant" in html and "door latch replaced" in html


def test_dead_letters_are_listed_and_retried(served):
    an_alert(served)
    (n,) = outbox.listing(served.side)
    with served.side.transaction() as tx:
        tx.execute("UPDATE notices SET state = 'dead', attempts = 6, last_error = ? "
                   "WHERE id = ?", ("webhook answered HTTP 500", n["id"]))
    status, _, html = page(served, "/console/notices?state=dead", "attendant")
    assert status == 200 and "Dead letters (1)" in html and "HTTP 500" in html
    assert page(served, "/console/notices", "viewer")[0] == 403
    post(served, f"/console/notices/{n['id']}/retry", "attendant")
    (n,) = outbox.listing(served.side)
    assert (n["state"], n["attempts"]) == ("pending", 0)
    assert audits(served, "notice_retry")[0]["target"] == str(n["id"])


def test_a_card_is_linked_to_a_phone_from_the_console(served):
    post(served, "/console/phones/link", "attendant", uid="04A1B2C3", phone="+49 151 2345678",
         threshold="")
    _, _, html = page(served, "/console/phones", "attendant")
    assert "04a1b2c3" in html and "+491512345678" in html
    # a number an SMS gateway cannot take is refused: the link stays as it was
    post(served, "/console/phones/link", "attendant", uid="04a1b2c3", phone="0151 2345678")
    from host_tools.server.notices import phones

    assert [(r["uid"], r["phone"], r["linked_by"]) for r in phones.listing(served.side)] == \
        [("04a1b2c3", "+491512345678", "attendant")]
    assert len(audits(served, "card_phone_link")) == 1


def test_a_remote_start_needs_a_reason_and_sends_the_boards_command(served):
    set_online(served)
    status, _, _ = post(served, "/console/remote-start", "attendant", device=DEVICE,
                        program="quick", reason=" ")
    assert status == 303 and served.sender.sent == []
    assert audits(served, "remote_start_refused")[0]["detail"]["why"].startswith("Say why")
    assert page(served, "/console/remote-start", "viewer")[0] == 403
    post(served, "/console/remote-start", "attendant", device=DEVICE, program="quick",
         reason="customer's coins jammed")
    ((device, cid, kind, body, args, expires),) = served.sender.sent
    assert (device, kind) == (DEVICE, "start")
    assert args == {"program": "quick", "amount": 0, "operator": "attendant",
                    "reason": "customer's coins jammed"}
    # the board's own command format (docs/remote-start.md), under this board's key
    assert body[0] == 0x12 and body[1:9].hex() == cid
    assert body[17:21] == T.device_hash(DEVICE)
    (a,) = audits(served, "remote_start")
    assert a["detail"] == {"program": "quick", "reason": "customer's coins jammed",
                           "cmd": cid}


def _settled_payment(web, pid, amount):
    """A phone payment the sandbox provider took and whose wash ran."""
    web.db.create(pid, DEVICE, "quick", amount, "EUR", "sandbox")
    co = web.provider.checkout(pid, amount, "EUR", "quick", "http://shop/{id}")
    web.provider.sessions[co.ref].update(status="paid", charge=f"sbx_ch_{pid}")
    web.db.set_ref(pid, co.ref)
    assert web.db.move(pid, D.CREATED, D.RUNNING, "running", provider_charge=f"sbx_ch_{pid}")


def test_refunds_keep_to_the_attendants_limit(served):
    _settled_payment(served, "big", 450)
    _settled_payment(served, "small", 250)
    post(served, "/console/refunds", "attendant", payment="big", reason="machine flooded")
    assert served.db.get("big")["state"] == D.RUNNING
    assert "Over your limit" in audits(served, "refund_refused")[0]["detail"]["why"]
    post(served, "/console/refunds", "attendant", payment="small", reason="washer stopped")
    assert served.db.get("small")["state"] in (D.REFUNDING, D.REFUNDED)
    post(served, "/console/refunds", "owner", payment="big", reason="machine flooded")
    assert served.db.get("big")["state"] in (D.REFUNDING, D.REFUNDED)
    # the payment flow's settler refunds it with the provider
    deadline = time.monotonic() + 10
    while served.db.get("big")["state"] != D.REFUNDED:
        assert time.monotonic() < deadline, served.db.events("big")
        time.sleep(0.1)
    assert [e["kind"] for e in served.db.events("big")][-2:] == ["operator_refund", "refund"]
    assert sorted((v["charge"], v["amount"]) for v in served.provider.refunds.values()) == \
        [("sbx_ch_big", 450), ("sbx_ch_small", 250)]
    # once only
    post(served, "/console/refunds", "owner", payment="big", reason="again")
    assert "refunded already" in audits(served, "refund_refused")[0]["detail"]["why"]


def test_a_payment_at_the_machine_is_refunded_by_hand_once(served):
    seq = add_record(served, DEVICE, "coin", "credit", amount=200)
    vend = add_record(served, DEVICE, "vend_start", "starting", amount=None)
    post(served, "/console/refunds", "attendant", device=DEVICE, seq=str(seq), amount="200",
         reason="coin swallowed")
    (r,) = served.db.query("SELECT kind, device, seq, amount, operator FROM console_refunds")
    assert tuple(r) == ("manual", DEVICE, seq, 200, "attendant")
    post(served, "/console/refunds", "attendant", device=DEVICE, seq=str(seq), amount="200",
         reason="coin swallowed")
    assert "refunded by attendant already" in audits(served, "refund_refused")[0]["detail"][
        "why"]
    post(served, "/console/refunds", "attendant", device=DEVICE, seq=str(vend), amount="900",
         reason="no price on record")  # over the record's price/none: limit applies
    post(served, "/console/refunds", "attendant", device=DEVICE, amount="abc", reason="x y z")
    whys = [a["detail"]["why"] for a in audits(served, "refund_refused")][:2]
    assert whys[0].startswith("The amount") and "Over your limit" in whys[1]
    # `washpay server report` counts it among the refunds
    from host_tools.server import report

    (m,) = [r for r in report.build(served.side)["refunds"] if r["type"] == "manual"]
    assert (m["device"], m["count"], m["amount"], m["currency"]) == (DEVICE, 1, 200, "EUR")
    # the manual refund is an alert, with its webhook notice
    with served.side.transaction() as tx:
        (a,) = book.listing(tx, rule="refund")
    assert a["message"] == "2.00 EUR refunded by hand by attendant: coin swallowed"
    assert any(n["alert_id"] == a["id"] for n in outbox.listing(served.side))
    _, _, html = page(served, "/console/refunds", "viewer")
    assert "This needs the attendant role" in html
    assert json.dumps("coin swallowed")[1:-1] in page(served, "/console/refunds",
                                                       "attendant")[2]
