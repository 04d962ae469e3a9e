"""The Stripe Checkout provider against a local fake of Stripe's documented API (no real
network call): session creation, `Stripe-Signature` webhooks with timestamp tolerance,
refunds by payment intent, errors; and the whole flow through the web app with it."""

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from web_env import DEVICE, csrf, make_web, reply, set_online

from host_tools.server.web import db as D
from host_tools.server.web.providers import ProviderError, StripeProvider, WebhookError, sign

SK = "sk_test_fake_51abc"
WHSEC = "whsec_fake_signing_secret"


class FakeStripe:
    """Stripe's endpoints as documented, on loopback: what they were asked is kept."""

    def __init__(self):
        self.calls = []
        self.fail = None  # (status, message) for the next call
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                form = dict(urllib.parse.parse_qsl(body.decode()))
                fake.calls.append((self.path, dict(self.headers), form))
                if self.headers.get("Authorization") != f"Bearer {SK}":
                    return self.reply(401, {"error": {"message": "Invalid API Key"}})
                if fake.fail:
                    status, msg = fake.fail
                    fake.fail = None
                    return self.reply(status, {"error": {"message": msg}})
                if self.path == "/v1/checkout/sessions":
                    sid = f"cs_test_{len(fake.calls)}"
                    return self.reply(200, {"id": sid, "object": "checkout.session",
                                            "url": f"https://checkout.example/c/pay/{sid}",
                                            "amount_total": int(form["line_items[0][price_data]"
                                                                     "[unit_amount]"]),
                                            "payment_status": "unpaid"})
                if self.path == "/v1/refunds":
                    return self.reply(200, {"id": f"re_{len(fake.calls)}", "object": "refund",
                                            "status": "succeeded",
                                            "amount": int(form["amount"]),
                                            "payment_intent": form["payment_intent"]})
                return self.reply(404, {"error": {"message": "no such endpoint"}})

            def reply(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stripe():
    f = FakeStripe()
    yield f
    f.close()


def event(session_id, etype="checkout.session.completed", paid=True, amount=250,
          evid="evt_1"):
    return {"id": evid, "object": "event", "type": etype,
            "data": {"object": {"id": session_id, "object": "checkout.session",
                                "payment_intent": "pi_123", "amount_total": amount,
                                "payment_status": "paid" if paid else "unpaid"}}}


def signed(ev, t=None, secret=WHSEC):
    body = json.dumps(ev).encode()
    return body, {"Stripe-Signature": sign(secret, body, time.time() if t is None else t)}


def test_checkout_session_as_documented(stripe):
    p = StripeProvider(SK, WHSEC, api=stripe.url)
    co = p.checkout("pay-1", 350, "EUR", "Washer 1: standard", "https://x.example/p/pay-1")
    assert co.ref == "cs_test_1" and co.url.startswith("https://checkout.example/")
    path, headers, form = stripe.calls[0]
    assert path == "/v1/checkout/sessions"
    assert headers["Idempotency-Key"] == "checkout-pay-1"
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form["mode"] == "payment" and form["client_reference_id"] == "pay-1"
    assert form["line_items[0][price_data][currency]"] == "eur"
    assert form["line_items[0][price_data][unit_amount]"] == "350"
    assert form["line_items[0][quantity]"] == "1"
    assert form["success_url"] == form["cancel_url"] == "https://x.example/p/pay-1"


def test_api_errors_are_provider_errors(stripe):
    with pytest.raises(ProviderError, match="Invalid API Key"):
        StripeProvider("sk_wrong", WHSEC, api=stripe.url).checkout("p", 1, "EUR", "d", "u")
    stripe.fail = (402, "Your card was declined.")
    with pytest.raises(ProviderError, match="declined"):
        StripeProvider(SK, WHSEC, api=stripe.url).refund("cs", "pi", 1, "p")
    with pytest.raises(ProviderError, match="secret_key"):
        StripeProvider("", "")
    with pytest.raises(ProviderError, match="stripe"):  # nothing listening: a clear error
        StripeProvider(SK, WHSEC, api="http://127.0.0.1:9").checkout("p", 1, "EUR", "d", "u")


def test_signature_and_tolerance():
    p = StripeProvider(SK, WHSEC)
    ev = event("cs_1")
    body, h = signed(ev)
    got = p.verify(h, body)
    assert got.kind == "paid" and got.ref == "cs_1" and got.charge == "pi_123"
    assert got.amount == 250
    # several v1 signatures (a secret being rolled): one matching is enough
    t = int(time.time())
    both = f"t={t},v1={'0' * 64},v1={sign(WHSEC, body, t).split('v1=')[1]}"
    assert p.verify({"stripe-signature": both}, body).kind == "paid"
    for bad in (signed(ev, secret="whsec_other")[1], signed(ev, t=time.time() - 301)[1],
                signed(ev, t=time.time() + 301)[1], {}, {"Stripe-Signature": "v1=abc"},
                {"Stripe-Signature": f"t={t}"}):
        with pytest.raises(WebhookError):
            p.verify(bad, body)
    with pytest.raises(WebhookError):
        p.verify(h, body + b" ")
    unpaid = event("cs_1", paid=False, evid="evt_2")
    assert p.verify(signed(unpaid)[1], signed(unpaid)[0]).kind == "other"
    exp = event("cs_1", "checkout.session.expired", paid=False, evid="evt_3")
    assert p.verify(signed(exp)[1], signed(exp)[0]).kind == "cancelled"


def test_refund_by_payment_intent(stripe):
    p = StripeProvider(SK, WHSEC, api=stripe.url)
    assert p.refund("cs_1", "pi_123", 250, "pay-1") == "re_1"
    path, headers, form = stripe.calls[0]
    assert path == "/v1/refunds" and form["payment_intent"] == "pi_123"
    assert form["amount"] == "250" and headers["Idempotency-Key"] == "refund-pay-1"


def test_whole_flow_with_stripe(tmp_path, stripe):
    w = make_web(tmp_path, {"provider": "stripe", "base_url": "https://pay.example.org/",
                            "stripe": {"secret_key": SK, "webhook_secret": WHSEC,
                                       "api": stripe.url}})
    try:
        set_online(w)
        c = w.app.test_client()
        page = c.get(f"/m/{DEVICE}").get_data(as_text=True)
        r = c.post(f"/m/{DEVICE}/pay", data={"program": "quick", "csrf": csrf(page)})
        assert r.status_code == 303 and r.headers["Location"].startswith(
            "https://checkout.example/")
        form = stripe.calls[0][2]
        pid = form["client_reference_id"]
        assert form["success_url"] == f"https://pay.example.org/p/{pid}"
        body, h = signed(event("cs_test_1", evid="evt_a"))
        assert c.post("/webhook/stripe", data=body, headers=h).status_code == 200
        assert c.post("/webhook/stripe", data=body, headers=h).get_json()["ok"] == "duplicate"
        assert w.db.get(pid)["state"] == D.SENT and len(w.sender.sent) == 1
        reply(w, w.sender.sent[0][1], "refused", reason="machine busy")
        w.payments.settle()
        w.payments.settle()
        row = w.db.get(pid)
        assert row["state"] == D.REFUNDED and row["refund_ref"] == "re_2"
        assert stripe.calls[1][2]["payment_intent"] == "pi_123"
        # the provider down when the customer pays: a clear page, nothing taken
        stripe.fail = (500, "API down")
        page = c.get(f"/m/{DEVICE}").get_data(as_text=True)
        r = c.post(f"/m/{DEVICE}/pay", data={"program": "quick", "csrf": csrf(page)})
        assert r.status_code == 409 and "not available" in r.get_data(as_text=True)
        for text in (SK, WHSEC):
            assert text not in page and text not in c.get(f"/p/{pid}").get_data(as_text=True)
    finally:
        w.side.close()
        w.stop()


def test_keys_file_must_be_private(tmp_path):
    from host_tools.server.web import WebError, load_config

    f = tmp_path / "web.json"
    f.write_text(json.dumps({"provider": "stripe", "stripe": {"secret_key": SK,
                                                              "webhook_secret": WHSEC}}))
    f.chmod(0o644)
    with pytest.raises(WebError, match="chmod 600"):
        load_config(f)
    f.chmod(0o600)
    assert load_config(f)["stripe"]["secret_key"] == SK
    f.write_text("{nope")
    with pytest.raises(WebError, match="not JSON"):
        load_config(f)
    with pytest.raises(WebError, match="No such file"):
        load_config(tmp_path / "missing.json")
