"""Payment providers behind one small interface:

    checkout(payment_id, amount, currency, description, return_url) -> Checkout(ref, url)
    verify(headers, body) -> Event(id, kind, ref, charge, amount) ; raises WebhookError
    refund(ref, charge, amount, payment_id) -> refund id ; raises ProviderError

`Event.kind` is "paid" (the money is taken: the checkout completed and its payment
succeeded), "cancelled" (the checkout expired unpaid) or "other" (kept, changes nothing).

**SandboxProvider**: built in, for tests and the demo. It behaves like a hosted checkout: its
own page (served by our app under /sandbox/checkout/<ref>) where the customer pays or
cancels, then webhooks to our endpoint, signed as `Sandbox-Signature: t=<unix>,v1=<hex
HMAC-SHA256(secret, "<t>.<body>")>`, delivered by a thread over HTTP like a real provider,
optionally late (`delay_ms`), twice (`duplicates`) and out of order (`reorder`: the
"payment.pending" notice arrives after "checkout.completed").

**StripeProvider**: Stripe Checkout as documented: `POST /v1/checkout/sessions` (form
encoded, `Authorization: Bearer <secret key>`, an `Idempotency-Key`), the customer pays on
the session's `url`; the `checkout.session.completed` event with `payment_status` "paid"
says the money is taken; webhooks carry `Stripe-Signature: t=...,v1=...` (HMAC-SHA256
under the endpoint's signing secret over "<t>.<raw body>", checked with a timestamp
tolerance); `POST /v1/refunds` with the session's `payment_intent`. Keys come from the web
config file, never from the repository. The HTTP function is injected (tests use a local
fake; nothing here calls the network in tests).
"""

import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from host_tools.server.notices import signature
from host_tools.server.notices.signature import sign  # noqa: F401 - the providers' too

TOLERANCE_S = 300  # a webhook signed longer ago (or ahead) than this is refused


class ProviderError(Exception):
    """The provider could not do it (network, refusal); the message says what."""


class WebhookError(Exception):
    """A webhook that is not authentic or not readable: answered 400, nothing changes."""


@dataclass
class Checkout:
    ref: str
    url: str


@dataclass
class Event:
    id: str
    kind: str  # paid | cancelled | other
    ref: str
    charge: str = None
    amount: int = None
    raw_type: str = ""


def check_signature(header, payload, secret, tolerance_s=TOLERANCE_S, now=None):
    """Raise WebhookError unless `header` (t=...,v1=...) signs `payload` within tolerance:
    the scheme of our own notices (host_tools/server/notices/signature.py), one definition."""
    try:
        signature.verify(header, payload, secret, tolerance_s, now)
    except signature.SignatureError as e:
        raise WebhookError(str(e)) from None


def _json(body):
    try:
        ev = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookError("webhook body is not JSON") from None
    if not isinstance(ev, dict) or not isinstance(ev.get("id"), str):
        raise WebhookError("webhook body is not an event")
    return ev


def _header(headers, name):
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


# ---------------------------------------------------------------- sandbox
class SandboxProvider:
    name = "sandbox"
    header = "Sandbox-Signature"

    def __init__(self, secret=None, webhook_url=None, delay_ms=0, duplicates=0,
                 reorder=False, post=None, clock=time.time):
        self.secret = secret or secrets.token_hex(32)
        self.webhook_url = webhook_url  # where the webhooks go (our /webhook/sandbox)
        self.delay_ms = delay_ms
        self.duplicates = duplicates
        self.reorder = reorder
        self.post = post or _http_post
        self.clock = clock
        self.sessions = {}  # ref -> {"payment", "amount", "currency", "description", ...}
        self.refunds = {}  # refund id -> {"ref", "charge", "amount"}
        self.fail_refunds = 0  # the next n refunds fail (tests of a retried refund)
        self.lock = threading.Lock()
        self.threads = []

    def checkout(self, payment_id, amount, currency, description, return_url):
        ref = "sbx_cs_" + secrets.token_urlsafe(12)
        with self.lock:
            self.sessions[ref] = {"payment": payment_id, "amount": amount,
                                  "currency": currency, "description": description,
                                  "return_url": return_url, "status": "open"}
        return Checkout(ref, f"/sandbox/checkout/{ref}")

    def session(self, ref):
        with self.lock:
            s = self.sessions.get(ref)
            return dict(s) if s else None

    def complete(self, ref, paid=True):
        """The customer pressed Pay (or Cancel) on the sandbox page: the session closes and
        its webhooks go out (on a thread, as a real provider's would)."""
        with self.lock:
            s = self.sessions.get(ref)
            if s is None or s["status"] != "open":
                return None
            s["status"] = "paid" if paid else "cancelled"
            if paid:
                s["charge"] = "sbx_ch_" + secrets.token_urlsafe(12)
        events = self.events_for(ref)
        t = threading.Thread(target=self._deliver, args=(events,), daemon=True)
        t.start()
        self.threads.append(t)
        return s

    def events_for(self, ref):
        s = self.sessions[ref]
        obj = {"session": ref, "payment": s["payment"], "amount": s["amount"],
               "currency": s["currency"], "charge": s.get("charge")}
        if s["status"] == "paid":
            events = [{"id": "sbx_evt_" + secrets.token_urlsafe(10), "type": "payment.pending",
                       "data": obj},
                      {"id": "sbx_evt_" + secrets.token_urlsafe(10),
                       "type": "checkout.completed", "data": obj}]
        else:
            events = [{"id": "sbx_evt_" + secrets.token_urlsafe(10),
                       "type": "checkout.cancelled", "data": obj}]
        if self.reorder:
            events.reverse()
        return [e for e in events for _ in range(1 + self.duplicates)]

    def signed(self, event, t=None):
        body = json.dumps(event).encode()
        return body, {"Content-Type": "application/json",
                      self.header: sign(self.secret, body, self.clock() if t is None else t)}

    def _deliver(self, events):
        if self.delay_ms:
            time.sleep(self.delay_ms / 1000)
        for ev in events:
            body, headers = self.signed(ev)
            for _ in range(5):  # a provider retries until it gets a 2xx
                try:
                    status = self.post(self.webhook_url, body, headers)
                except OSError:
                    status = 0
                if 200 <= status < 300:
                    break
                time.sleep(0.2)

    def verify(self, headers, body):
        check_signature(_header(headers, self.header), body, self.secret, now=self.clock())
        ev = _json(body)
        data = ev.get("data") or {}
        kind = {"checkout.completed": "paid",
                "checkout.cancelled": "cancelled"}.get(ev.get("type"), "other")
        return Event(ev["id"], kind, data.get("session"), data.get("charge"),
                     data.get("amount"), ev.get("type", ""))

    def refund(self, ref, charge, amount, payment_id):
        with self.lock:
            if self.fail_refunds:
                self.fail_refunds -= 1
                raise ProviderError("sandbox: refund failed (as asked)")
            s = self.sessions.get(ref)
            if s is None or s.get("status") != "paid":
                raise ProviderError(f"sandbox: no paid session {ref}")
            done = [r for r, v in self.refunds.items() if v["ref"] == ref]
            if done:  # a refund is idempotent per payment
                return done[0]
            rid = "sbx_re_" + secrets.token_urlsafe(10)
            self.refunds[rid] = {"ref": ref, "charge": charge, "amount": amount}
            s["status"] = "refunded"
            return rid

    def join(self, timeout=10):
        for t in self.threads:
            t.join(timeout)


def _http_post(url, body, headers):
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


# ---------------------------------------------------------------- Stripe Checkout
def http_request(method, url, headers, body, timeout=20):
    """(status, parsed JSON body): the one network call of StripeProvider (injectable)."""
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}
    except (OSError, ValueError) as e:
        raise ProviderError(f"stripe: {e}") from None


class StripeProvider:
    name = "stripe"
    header = "Stripe-Signature"
    API = "https://api.stripe.com"

    def __init__(self, secret_key, webhook_secret, api=None, http=http_request,
                 tolerance_s=TOLERANCE_S, clock=time.time):
        if not secret_key or not webhook_secret:
            raise ProviderError("stripe: the web config needs stripe.secret_key and "
                                "stripe.webhook_secret")
        self.secret_key = secret_key
        self.webhook_secret = webhook_secret
        self.api = (api or self.API).rstrip("/")
        self.http = http
        self.tolerance_s = tolerance_s
        self.clock = clock

    def _call(self, path, fields, idem):
        body = urllib.parse.urlencode(fields).encode()
        headers = {"Authorization": f"Bearer {self.secret_key}",
                   "Content-Type": "application/x-www-form-urlencoded",
                   "Idempotency-Key": idem}
        status, out = self.http("POST", self.api + path, headers, body)
        if not 200 <= status < 300:
            msg = ((out or {}).get("error") or {}).get("message") or f"HTTP {status}"
            raise ProviderError(f"stripe {path}: {msg}")
        return out

    def checkout(self, payment_id, amount, currency, description, return_url):
        out = self._call("/v1/checkout/sessions", [
            ("mode", "payment"),
            ("line_items[0][quantity]", "1"),
            ("line_items[0][price_data][currency]", currency.lower()),
            ("line_items[0][price_data][unit_amount]", str(int(amount))),
            ("line_items[0][price_data][product_data][name]", description),
            ("client_reference_id", payment_id),
            ("metadata[payment]", payment_id),
            ("success_url", return_url),
            ("cancel_url", return_url),
        ], idem=f"checkout-{payment_id}")
        if not out.get("id") or not out.get("url"):
            raise ProviderError("stripe: a checkout session without id or url")
        return Checkout(out["id"], out["url"])

    def verify(self, headers, body):
        check_signature(_header(headers, self.header), body, self.webhook_secret,
                        self.tolerance_s, now=self.clock())
        ev = _json(body)
        obj = (ev.get("data") or {}).get("object") or {}
        kind = "other"
        etype = ev.get("type", "")
        if etype in ("checkout.session.completed",
                     "checkout.session.async_payment_succeeded") and \
                obj.get("payment_status") == "paid":
            kind = "paid"
        elif etype == "checkout.session.expired":
            kind = "cancelled"
        return Event(ev["id"], kind, obj.get("id"), obj.get("payment_intent"),
                     obj.get("amount_total"), etype)

    def refund(self, ref, charge, amount, payment_id):
        if not charge:
            raise ProviderError(f"stripe: session {ref} has no payment_intent to refund")
        out = self._call("/v1/refunds", [("payment_intent", charge), ("amount", str(amount)),
                                         ("metadata[payment]", payment_id)],
                         idem=f"refund-{payment_id}")
        if out.get("status") in ("failed", "canceled"):
            raise ProviderError(f"stripe: refund {out.get('id')} {out.get('status')}")
        return out.get("id")


def from_config(cfg, webhook_url=None):
    """The provider the web config names ("provider": "sandbox" | "stripe")."""
    name = cfg.get("provider", "sandbox")
    if name == "sandbox":
        s = cfg.get("sandbox") or {}
        return SandboxProvider(secret=s.get("secret"), webhook_url=webhook_url,
                               delay_ms=int(s.get("delay_ms", 0)),
                               duplicates=int(s.get("duplicates", 0)),
                               reorder=bool(s.get("reorder", False)))
    if name == "stripe":
        s = cfg.get("stripe") or {}
        return StripeProvider(s.get("secret_key"), s.get("webhook_secret"), api=s.get("api"))
    raise ProviderError(f"unknown payment provider {name!r}: sandbox or stripe")
