"""Pay by phone, without a browser or a broker: the machine page, checkout, the sandbox
provider's signed webhooks, the payment's way to started / credit kept / refunded, and the
security rules (docs/phone-payment.md). The board's part is played in the ledger: the
command's reply in the commands table, its journal records in the records table."""

import json
import time

import pytest
from web_env import DEVICE, SITE_KEY, Clock, add_record, csrf, make_web, reply, set_online

from host_tools import keys as K
from host_tools import token as T
from host_tools.server.web import db as D
from host_tools.server.web.providers import sign


@pytest.fixture
def web(tmp_path):
    clock = Clock()
    w = make_web(tmp_path, clock=clock)
    w.clock = clock
    set_online(w)
    yield w
    w.side.close()
    w.stop()


def client(web):
    c = web.app.test_client()
    return c


def checkout(web, c, program="quick"):
    """(payment id, sandbox ref) of a new checkout for `program` through the pages."""
    page = c.get(f"/m/{DEVICE}").get_data(as_text=True)
    r = c.post(f"/m/{DEVICE}/pay", data={"program": program, "csrf": csrf(page)})
    assert r.status_code == 303, r.get_data(as_text=True)
    ref = r.headers["Location"].rsplit("/", 1)[1]
    pid = web.provider.session(ref)["payment"]
    return pid, ref


def pay(web, ref):
    """The customer pays in the sandbox; the webhooks are delivered here, in order."""
    web.provider.sessions[ref]["status"] = "paid"
    web.provider.sessions[ref]["charge"] = "sbx_ch_test"
    out = []
    for ev in web.provider.events_for(ref):
        body, headers = web.provider.signed(ev)
        out.append(client(web).post("/webhook/sandbox", data=body, headers=headers))
    return out


def state(web, pid):
    return web.db.get(pid)["state"]


# ---- the machine page
def test_machine_page_shows_name_state_and_prices(web):
    html = client(web).get(f"/m/{DEVICE}").get_data(as_text=True)
    assert "Washer 1" in html and 'data-state="free"' in html
    for name, price in (("quick", "2.50 EUR"), ("standard", "3.50 EUR"), ("heavy", "4.50 EUR")):
        assert f'id="pay-{name}"' in html and price in html


def test_prices_follow_what_the_board_took(web):
    """A price command the board answered done re-prices; a price table's rule applies
    now; a refused push changes nothing."""
    for cid, kind, args, status in (
            ("01", "price", {"prices": {"quick": 300}}, "done"),
            ("02", "price", {"prices": {"quick": 999}}, "refused"),
            ("03", "price-table", {"table": {"version": 2, "rules": [
                {"days": "mon-sun", "from": "00:00", "to": "24:00", "percent": 10}]}}, "done")):
        with web.side.transaction() as tx:
            tx.execute("INSERT INTO commands (id, device, kind, args, created, status, "
                       "done_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (cid, DEVICE, kind, json.dumps(args), time.time(), status,
                        time.time() + int(cid)))
    html = client(web).get(f"/m/{DEVICE}").get_data(as_text=True)
    assert "3.30 EUR" in html  # 300 + 10 %
    assert "3.85 EUR" in html and "(base 3.50 EUR)" in html
    assert "9.99" not in html and "10.99" not in html


def test_unknown_device_is_404(web):
    r = client(web).get("/m/no-such-board")
    assert r.status_code == 404 and "No such machine" in r.get_data(as_text=True)
    assert client(web).post("/m/no-such-board/pay", data={"program": "quick"}).status_code \
        == 404


def test_offline_board_takes_no_money(web):
    set_online(web, online=False)
    c = client(web)
    html = c.get(f"/m/{DEVICE}").get_data(as_text=True)
    assert 'data-state="offline"' in html and "last seen" in html
    assert 'id="pay-quick"' not in html
    # a form posted anyway (an old page) opens no checkout
    c.get("/")
    with c.session_transaction() as s:
        s["csrf"] = "tok"
    r = c.post(f"/m/{DEVICE}/pay", data={"program": "quick", "csrf": "tok"})
    assert r.status_code == 409 and "offline" in r.get_data(as_text=True)
    assert web.db.query("SELECT COUNT(*) FROM payments")[0][0] == 0


def test_running_machine_shows_time_left_and_no_pay_button(web):
    add_record(web, DEVICE, "vend_running", "running", program="quick",
               t=time.time() - 10 * 60)
    html = client(web).get(f"/m/{DEVICE}").get_data(as_text=True)
    assert 'data-state="running"' in html and "20 min left" in html
    assert 'id="pay-quick"' not in html


def test_out_of_order(web):
    add_record(web, DEVICE, "fault", "out_of_order", reason="coin line stuck")
    html = client(web).get(f"/m/{DEVICE}").get_data(as_text=True)
    assert 'data-state="out_of_order"' in html and 'id="pay-quick"' not in html


# ---- security
def test_csrf_missing_or_wrong_opens_no_checkout(web):
    c = client(web)
    c.get(f"/m/{DEVICE}")
    assert c.post(f"/m/{DEVICE}/pay", data={"program": "quick"}).status_code == 400
    assert c.post(f"/m/{DEVICE}/pay", data={"program": "quick", "csrf": "x"}
                  ).status_code == 400
    assert web.db.query("SELECT COUNT(*) FROM payments")[0][0] == 0


def test_checkout_creation_is_rate_limited(web):
    c = client(web)
    for _ in range(6):
        checkout(web, c)
    page = c.get(f"/m/{DEVICE}").get_data(as_text=True)
    r = c.post(f"/m/{DEVICE}/pay", data={"program": "quick", "csrf": csrf(page)})
    assert r.status_code == 429
    assert web.db.query("SELECT COUNT(*) FROM payments")[0][0] == 6


def test_unknown_program_is_refused(web):
    c = client(web)
    page = c.get(f"/m/{DEVICE}").get_data(as_text=True)
    r = c.post(f"/m/{DEVICE}/pay", data={"program": "nosuch", "csrf": csrf(page)})
    assert r.status_code == 409


def test_forged_stale_and_unsigned_webhooks_change_nothing(web):
    c = client(web)
    pid, ref = checkout(web, c)
    web.provider.sessions[ref].update(status="paid", charge="ch")
    ev = web.provider.events_for(ref)[-1]
    body, headers = web.provider.signed(ev)
    forged = dict(headers, **{"Sandbox-Signature": sign("wrong", body, time.time())})
    stale = web.provider.signed(ev, t=time.time() - 3600)[1]
    altered = body.replace(b'"amount": 250', b'"amount": 1')
    for h, b in ((forged, body), (stale, body), ({}, body), (headers, altered),
                 (headers, b"not json")):
        r = c.post("/webhook/sandbox", data=b, headers=h)
        assert r.status_code == 400, r.get_data(as_text=True)
    assert state(web, pid) == D.CREATED and web.sender.sent == []
    assert c.post("/webhook/stripe", data=body, headers=headers).status_code == 404


def test_pages_show_no_secrets_and_no_other_payment(web):
    c = client(web)
    pid, ref = checkout(web, c)
    pid2, _ = checkout(web, client(web))
    pay(web, ref)
    pages = [c.get(f"/m/{DEVICE}"), c.get(f"/p/{pid}"), c.get(f"/p/{pid}/status"),
             c.get(f"/sandbox/checkout/{ref}")]
    secret = K.device_secret(SITE_KEY, DEVICE)
    for r in pages:
        text = r.get_data(as_text=True)
        for s in ("s3cr3t-sandbox-key", SITE_KEY.hex(), secret.hex(), pid2,
                  web.app.config["SECRET_KEY"]):
            assert s not in text
    assert len(pid) >= 24  # 18 random bytes, URL-safe base64
    assert c.get("/p/" + pid[:-1] + ("A" if pid[-1] != "A" else "B")).status_code == 404
    assert c.get("/p/").status_code == 404


# ---- paid -> started, credit kept or refunded
def test_paid_sends_one_signed_start_and_runs(web):
    c = client(web)
    pid, ref = checkout(web, c, "standard")
    assert c.get(f"/p/{pid}/status").get_json()["state"] == D.CREATED
    rs = pay(web, ref)
    assert [r.status_code for r in rs] == [200, 200]
    assert state(web, pid) == D.SENT
    [(device, cid, kind, body, args, expires)] = web.sender.sent
    key = K.command_key(K.device_secret(SITE_KEY, DEVICE))
    cmd = T.decode_command(body, key, DEVICE)
    assert cmd["tag_ok"] and cmd["program"] == "standard" and cmd["amount"] == 350
    assert cmd["expires"] - cmd["issued"] == 20 and kind == "start"
    # the board answers started and journals remote_start, then the washer confirms
    reply(web, cid, "started", seq=1)
    assert web.payments.step(pid) == D.STARTED
    seq = add_record(web, DEVICE, "remote_start", "starting", source=cid, amount=350)
    add_record(web, DEVICE, "vend_running", "running")
    assert web.payments.step(pid) == D.RUNNING
    s = c.get(f"/p/{pid}/status").get_json()
    assert s["final"] and s["label"] == "Started" and all(done for _, done in s["steps"])
    row = web.db.get(pid)
    assert row["start_seq"] == seq and row["refund_ref"] is None
    kinds = [e["kind"] for e in web.db.events(pid)]
    for k in ("created", "paid", "command", "start", "running"):
        assert k in kinds


def test_duplicate_and_reordered_webhooks_send_one_start(tmp_path):
    w = make_web(tmp_path, {"sandbox": {"secret": "k", "duplicates": 2, "reorder": True}})
    try:
        set_online(w)
        pid, ref = checkout(w, client(w))
        rs = pay(w, ref)
        assert len(rs) == 6 and all(r.status_code == 200 for r in rs)
        assert [r.get_json()["ok"] for r in rs].count("paid") == 1
        assert len(w.sender.sent) == 1 and state(w, pid) == D.SENT
        # the "pending" notice arriving after the payment does not move it back
        assert w.db.get(pid)["paid_at"] is not None
    finally:
        w.side.close()
        w.stop()


def test_refused_start_is_refunded(web):
    c = client(web)
    pid, ref = checkout(web, c)
    pay(web, ref)
    cid = web.sender.sent[0][1]
    reply(web, cid, "refused", reason="close the door")
    assert web.payments.step(pid) == D.REFUNDING
    assert web.payments.step(pid) == D.REFUNDED
    [(rid, refund)] = web.provider.refunds.items()
    assert refund["amount"] == 250 and web.db.get(pid)["refund_ref"] == rid
    s = c.get(f"/p/{pid}/status").get_json()
    assert s["label"] == "Refunded" and s["final"]
    html = c.get(f"/p/{pid}").get_data(as_text=True)
    assert "refunded" in html


def test_no_answer_within_the_window_is_refunded_once(web):
    pid, ref = checkout(web, client(web))
    pay(web, ref)
    web.clock.t += 10
    assert web.payments.step(pid) == D.SENT  # still inside the window
    web.clock.t += 15
    web.provider.fail_refunds = 1  # the provider fails once: the refund is retried
    assert web.payments.step(pid) == D.REFUNDING
    assert web.payments.step(pid) == D.REFUNDING
    assert [e["kind"] for e in web.db.events(pid)].count("refund_error") == 1
    web.clock.t += 6
    assert web.payments.step(pid) == D.REFUNDED
    web.payments.settle()
    assert len(web.provider.refunds) == 1
    # a late reply changes nothing: the command had expired at the board
    cid = web.sender.sent[0][1]
    reply(web, cid, "started")
    web.payments.settle()
    assert state(web, pid) == D.REFUNDED


def test_washer_not_started_is_refunded(web):
    """Issue 15: the board does not credit a remote start whose washer never confirmed
    (firmware/washpay/vend/engine.py start_failed()): its start_failed names the command, and the
    server refunds through the provider, once."""
    c = client(web)
    pid, ref = checkout(web, c)
    pay(web, ref)
    cid = web.sender.sent[0][1]
    reply(web, cid, "started", seq=1)
    add_record(web, DEVICE, "remote_start", "starting", source=cid, amount=250)
    web.payments.settle()
    assert state(web, pid) == D.STARTED
    s = c.get(f"/p/{pid}/status").get_json()
    assert s["label"] == "Starting" and not s["final"]
    add_record(web, DEVICE, "start_failed", "idle", amount=250, source=cid,
               source_kind="command", reason="washer did not confirm start")
    web.payments.settle()
    web.payments.settle()
    web.payments.settle()
    assert state(web, pid) == D.REFUNDED
    [(rid, refund)] = web.provider.refunds.items()
    assert refund["amount"] == 250 and web.db.get(pid)["refund_ref"] == rid
    s = c.get(f"/p/{pid}/status").get_json()
    assert s["label"] == "Not started: refunded" and s["final"]
    assert "did not start" in c.get(f"/p/{pid}").get_data(as_text=True)
    kinds = [e["kind"] for e in web.db.events(pid)]
    assert kinds.count("start_failed") == 1 and kinds.count("refund") == 1


def test_start_failed_of_another_payer_is_not_this_refund(web):
    """A start_failed naming no payer is a board before issue 15, which kept the price as
    machine credit: refunding too would pay twice. One naming another command is not this
    payment's."""
    pid, ref = checkout(web, client(web))
    pay(web, ref)
    cid = web.sender.sent[0][1]
    reply(web, cid, "started", seq=1)
    add_record(web, DEVICE, "remote_start", "starting", source=cid, amount=250)
    add_record(web, DEVICE, "start_failed", "credit", amount=250)
    web.payments.settle()
    web.payments.settle()
    assert state(web, pid) == D.CREDIT_KEPT
    assert web.provider.refunds == {}
    s = client(web).get(f"/p/{pid}/status").get_json()
    assert s["label"] == "Credit kept on the machine" and s["final"]
    other, ref = checkout(web, client(web))
    pay(web, ref)
    cid = web.sender.sent[-1][1]
    add_record(web, DEVICE, "remote_start", "starting", source=cid, amount=250)
    add_record(web, DEVICE, "start_failed", "idle", amount=250, source="00" * 8,
               source_kind="command")
    web.payments.settle()
    web.payments.settle()
    assert state(web, other) == D.CREDIT_KEPT and web.provider.refunds == {}


def test_journal_start_without_a_reply_counts_as_started(web):
    pid, ref = checkout(web, client(web))
    pay(web, ref)
    cid = web.sender.sent[0][1]
    add_record(web, DEVICE, "remote_start", "starting", source=cid, amount=250)
    web.clock.t += 60  # the reply was lost; the journal says the board started
    assert web.payments.step(pid) == D.STARTED


def test_cancelled_checkout_takes_nothing(web):
    c = client(web)
    pid, ref = checkout(web, c)
    page = c.get(f"/sandbox/checkout/{ref}").get_data(as_text=True)
    web.provider.post = lambda url, body, headers: client(web).post(
        "/webhook/sandbox", data=body, headers=headers).status_code
    r = c.post(f"/sandbox/checkout/{ref}", data={"action": "cancel", "csrf": csrf(page)})
    assert r.status_code == 303 and r.headers["Location"].endswith(f"/p/{pid}")
    web.provider.join()
    assert state(web, pid) == D.CANCELLED and web.sender.sent == []


def test_sandbox_checkout_form_needs_csrf(web):
    c = client(web)
    pid, ref = checkout(web, c)
    assert c.post(f"/sandbox/checkout/{ref}", data={"action": "pay"}).status_code == 400
    assert web.provider.session(ref)["status"] == "open"


# ---- offline: a QR token instead of a remote start
def token_checkout(web, c, program="quick"):
    page = c.get(f"/m/{DEVICE}").get_data(as_text=True)
    assert f'id="token-{program}"' in page
    r = c.post(f"/m/{DEVICE}/pay", data={"program": program, "kind": "token",
                                         "csrf": csrf(page)})
    assert r.status_code == 303, r.get_data(as_text=True)
    ref = r.headers["Location"].rsplit("/", 1)[1]
    return web.provider.session(ref)["payment"], ref


def test_offline_board_sells_a_token_bound_to_device_and_program(web):
    set_online(web, online=False)
    c = client(web)
    pid, ref = token_checkout(web, c, "standard")
    pay(web, ref)
    assert state(web, pid) == D.TOKEN and web.sender.sent == []  # no command to the board
    row = web.db.get(pid)
    key = K.token_key(K.device_secret(SITE_KEY, DEVICE))
    tok = T.decode_token(row["token"], key, DEVICE)
    assert tok["tag_ok"] and tok["program"] == "standard" and tok["amount"] == 350
    assert tok["expires"] - tok["issued"] == 3600
    html = c.get(f"/p/{pid}").get_data(as_text=True)
    assert 'id="token-qr" src="data:image/svg+xml' in html and row["token"] in html
    # the board redeems it offline; its journal arrives later
    web.payments.settle()
    assert state(web, pid) == D.TOKEN
    add_record(web, DEVICE, "token_redeem", "starting", program="standard",
               source=row["token_id"], amount=350)
    web.payments.settle()
    assert state(web, pid) == D.USED
    s = c.get(f"/p/{pid}/status").get_json()
    assert s["final"] and s["label"] == "Code used"
    assert row["token"] not in c.get(f"/p/{pid}").get_data(as_text=True)


def test_unused_token_is_refunded_only_once_the_board_has_reported_since(web):
    set_online(web, online=False)
    pid, ref = token_checkout(web, client(web))
    pay(web, ref)
    web.clock.t += 3700  # expired, but the board has not been heard from since
    web.payments.settle()
    assert state(web, pid) == D.TOKEN
    with web.side.transaction() as tx:  # the board's journal uploaded after the expiry
        tx.execute("UPDATE devices SET last_seen = ?, high_seq = 5, reported_seq = 5",
                   (web.clock.t,))
    web.payments.settle()
    web.payments.settle()
    assert state(web, pid) == D.REFUNDED and len(web.provider.refunds) == 1
    assert "expired" in web.db.get(pid)["detail"]


@pytest.mark.parametrize("same_upload", [True, False])
def test_token_whose_washer_did_not_start_is_refunded(web, same_upload):
    """A token's start_failed naming it (not credited on the board): refunded, whether it
    arrives with the redemption or in a later upload (after the payment showed "used")."""
    set_online(web, online=False)
    c = client(web)
    pid, ref = token_checkout(web, c)
    pay(web, ref)
    tid = web.db.get(pid)["token_id"]
    add_record(web, DEVICE, "token_redeem", "starting", source=tid, amount=250)
    if not same_upload:
        web.payments.settle()
        assert state(web, pid) == D.USED
    add_record(web, DEVICE, "start_failed", "idle", amount=250, source=tid,
               source_kind="token")
    for _ in range(3):
        web.payments.settle()
    assert state(web, pid) == D.REFUNDED and len(web.provider.refunds) == 1
    s = c.get(f"/p/{pid}/status").get_json()
    assert s["label"] == "Not started: refunded" and s["final"]
    from host_tools.server.web import reconcile

    rep = reconcile.build(web.side)
    assert rep["anomalies"] == [] and rep["days"][0]["refunded"]["count"] == 1


def test_token_refused_for_an_online_machine(web):
    c = client(web)
    page = c.get(f"/m/{DEVICE}").get_data(as_text=True)
    assert 'id="token-quick"' not in page
    r = c.post(f"/m/{DEVICE}/pay", data={"program": "quick", "kind": "token",
                                         "csrf": csrf(page)})
    assert r.status_code == 409
    r = c.post(f"/m/{DEVICE}/pay", data={"program": "quick", "kind": "bogus",
                                         "csrf": csrf(page)})
    assert r.status_code == 409


# ---- server report: payments reconciled against starts and refunds
def test_report_reconciles_payments_starts_and_refunds(web):
    import io

    from host_tools.server import report

    c = client(web)
    done, ref = checkout(web, c)
    pay(web, ref)
    cid = web.sender.sent[-1][1]
    reply(web, cid, "started")
    add_record(web, DEVICE, "remote_start", "starting", source=cid, amount=250)
    add_record(web, DEVICE, "vend_running", "running")
    web.payments.settle()
    web.payments.settle()
    add_record(web, DEVICE, "vend_done", "idle")
    refused, ref = checkout(web, c)
    pay(web, ref)
    reply(web, web.sender.sent[-1][1], "refused", reason="machine busy")
    web.payments.settle()
    web.payments.settle()
    hanging, ref = checkout(web, c, "heavy")
    pay(web, ref)
    checkout(web, c)  # never paid: not in the money
    assert [state(web, p) for p in (done, refused, hanging)] == [D.RUNNING, D.REFUNDED,
                                                                 D.SENT]
    rep = report.build(web.side)
    [day] = rep["phone_payments"]["days"]
    assert day["paid"] == {"count": 3, "amount": 950}
    assert day["started"] == {"count": 1, "amount": 250}
    assert day["refunded"] == {"count": 1, "amount": 250}
    assert day["open"] == {"count": 1, "amount": 450}
    assert day["balanced"] and rep["phone_payments"]["anomalies"] == []
    out = io.StringIO()
    report.format_text(rep, out)
    assert "Phone payments" in out.getvalue() and "3 / 9.50 EUR" in out.getvalue()
    # an hour later the open one hangs; a refunded payment whose start the board journaled
    # anyway (a late command) is paid back and washed: both are shown
    r_cid = web.db.get(refused)["command_id"]
    add_record(web, DEVICE, "remote_start", "starting", source=r_cid, amount=250)
    rep = report.build(web.side)
    later = __import__("host_tools.server.web.reconcile", fromlist=["build"]).build(
        web.side, now=time.time() + 7200)
    problems = sorted(a["problem"] for a in later["anomalies"])
    assert any(p.startswith("refunded, but the board journaled") for p in problems)
    assert any(p.startswith("sent for ") for p in problems)
    assert not rep["phone_payments"]["days"][0]["balanced"]


def test_report_reconciles_a_start_the_washer_did_not_make(web):
    """Paid, started on the board, not started by the washer, refunded: it adds up (the
    board's remote_start of a refunded payment is no "paid back and washed" here). A token
    issued by hand whose washer did not start has no payment to refund: shown, to refund
    by hand."""
    from host_tools.server.web import reconcile

    pid, ref = checkout(web, client(web))
    pay(web, ref)
    cid = web.sender.sent[0][1]
    add_record(web, DEVICE, "remote_start", "starting", source=cid, amount=250)
    add_record(web, DEVICE, "start_failed", "idle", amount=250, source=cid,
               source_kind="command")
    for _ in range(4):
        web.payments.settle()
    assert state(web, pid) == D.REFUNDED
    rep = reconcile.build(web.side)
    [day] = rep["days"]
    assert day["paid"] == day["refunded"] == {"count": 1, "amount": 250}
    assert day["balanced"] and rep["anomalies"] == []
    add_record(web, DEVICE, "token_redeem", "starting", source="ab" * 8, amount=350)
    add_record(web, DEVICE, "start_failed", "idle", amount=350, source="ab" * 8,
               source_kind="token")
    rep = reconcile.build(web.side)
    [a] = rep["anomalies"]
    assert a["device"] == DEVICE and "refund it by hand" in a["problem"]
    assert a["problem"].startswith("token abababab... did not start the washer (350")
    assert not rep["days"][0]["balanced"]


def test_report_without_payments_table_is_unchanged(tmp_path):
    from host_tools.server import report
    from host_tools.server.store import open_store

    store = open_store(tmp_path / "plain.db")
    try:
        assert "phone_payments" not in report.build(store)
    finally:
        store.close()


def test_the_flow_on_postgresql(tmp_path):
    """The same tables and moves on PostgreSQL (a throwaway cluster): one start for a
    duplicated webhook, a refusal refunded once, the reconciliation."""
    from sync_env import postgres_cluster

    from host_tools.server import report

    with postgres_cluster() as url:
        w = make_web(tmp_path, {"sandbox": {"secret": "k", "duplicates": 1}}, store_url=url)
        try:
            set_online(w)
            pid, ref = checkout(w, client(w))
            assert [r.get_json()["ok"] for r in pay(w, ref)].count("paid") == 1
            assert len(w.sender.sent) == 1
            reply(w, w.sender.sent[0][1], "refused", reason="machine busy")
            w.payments.settle()
            w.payments.settle()
            assert state(w, pid) == D.REFUNDED and len(w.provider.refunds) == 1
            [day] = report.build(w.side)["phone_payments"]["days"]
            assert day["refunded"]["count"] == 1 and day["balanced"]
        finally:
            w.side.close()
            w.stop()


def test_sandbox_delivers_late_twice_and_reordered_until_accepted():
    """The sandbox's own delivery thread: after delay_ms, each event 1 + duplicates times,
    the pending notice after the completion when reordered, retried until a 2xx."""
    from host_tools.server.web.providers import SandboxProvider

    got, answers = [], [500, 200]  # the first delivery fails: it is sent again

    def post(url, body, headers):
        got.append((time.monotonic(), json.loads(body)["type"], headers, body))
        return answers.pop(0) if answers else 200

    p = SandboxProvider(secret="k", webhook_url="http://x/webhook/sandbox", delay_ms=300,
                        duplicates=1, reorder=True, post=post)
    co = p.checkout("pid", 250, "EUR", "d", "http://x/p/pid")
    t0 = time.monotonic()
    p.complete(co.ref)
    assert p.complete(co.ref) is None  # a second press changes nothing
    p.join()
    assert got[0][0] - t0 >= 0.3
    assert [g[1] for g in got] == ["checkout.completed"] * 3 + ["payment.pending"] * 2
    for _, _, headers, body in got:  # each one signed
        assert p.verify(headers, body).ref == co.ref


# ---- washpay sticker
def test_sticker_points_at_the_machine_page(tmp_path):
    import io
    import subprocess
    import sys

    import segno

    png = tmp_path / "s.png"
    p = subprocess.run([sys.executable, "-m", "host_tools.cli", "sticker", "--device",
                        "laundry-7", "--base-url", "https://pay.example.org/", "--png",
                        str(png)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "https://pay.example.org/m/laundry-7"
    want = io.BytesIO()
    segno.make("https://pay.example.org/m/laundry-7", error="m").save(
        want, kind="png", scale=10, border=4)
    assert png.read_bytes() == want.getvalue()
    p = subprocess.run([sys.executable, "-m", "host_tools.cli", "sticker", "--device", "d1"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "http://127.0.0.1:8080/m/d1" in p.stdout
    assert "█" in p.stdout or "▀" in p.stdout  # drawn on the terminal
    for args, msg in ((["--device", "a/b"], "device id"),
                      (["--device", "d1", "--base-url", "ftp://x"], "--base-url"),
                      (["--device", "d1", "--png", str(tmp_path / "no" / "dir.png")],
                       "cannot write")):
        p = subprocess.run([sys.executable, "-m", "host_tools.cli", "sticker", *args],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr
