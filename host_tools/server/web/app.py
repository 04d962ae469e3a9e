"""The customer's web pages (Flask, Jinja2 templates, no JavaScript build, no CDN).

    /m/<device>                 the machine page the sticker points at (404: unknown device)
    POST /m/<device>/pay        open a checkout for one program (CSRF, rate limited)
    /p/<payment id>             the payment's progress (an unguessable id: no list, no
                                other customer's payment can be reached)
    /p/<payment id>/status      the same as JSON, polled by static/poll.js
    POST /webhook/<provider>    the provider's signed webhooks
    /sandbox/checkout/<ref>     the sandbox provider's own checkout page (sandbox only)
"""

import collections
import secrets
import threading
import time

from flask import Flask, abort, jsonify, redirect, render_template, request, session, url_for

from host_tools.server.web.flow import Refused
from host_tools.server.web.machines import MachineError
from host_tools.server.web.providers import SandboxProvider, WebhookError


def money(amount, currency, decimals=2):
    if amount is None:
        return ""
    sign = "-" if amount < 0 else ""
    a = abs(int(amount))
    if decimals:
        return f"{sign}{a // 10 ** decimals}.{a % 10 ** decimals:0{decimals}d} {currency}"
    return f"{sign}{a} {currency}"


def ago(t, now=None):
    if not t:
        return "never"
    s = int((now or time.time()) - t)
    if s < 90:
        return f"{s} s ago"
    if s < 5400:
        return f"{s // 60} min ago"
    if s < 2 * 86400:
        return f"{s // 3600} h ago"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


class RateLimit:
    """At most `n` checkouts per client address per `per_s` seconds."""

    def __init__(self, n=6, per_s=60.0, clock=time.monotonic):
        self.n, self.per_s, self.clock = n, per_s, clock
        self.hits = collections.defaultdict(collections.deque)
        self.lock = threading.Lock()

    def allow(self, who):
        now = self.clock()
        with self.lock:
            q = self.hits[who]
            while q and q[0] <= now - self.per_s:
                q.popleft()
            if len(q) >= self.n:
                return False
            q.append(now)
            return True


def create_app(payments, machines, secret_key=None, rate=None, base_url=None):
    """The Flask app. `base_url`: where customers reach the pages (the provider sends them
    back to base_url/p/<id>); None: the address the request came to."""
    app = Flask(__name__)
    app.config.update(SECRET_KEY=secret_key or secrets.token_hex(32),
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      MAX_CONTENT_LENGTH=64 * 1024)
    app.jinja_env.globals["money"] = money
    app.jinja_env.filters["utc"] = lambda t: time.strftime("%H:%M UTC", time.gmtime(t))
    limiter = rate or RateLimit()
    provider = payments.provider

    def csrf_token():
        tok = session.get("csrf")
        if not tok:
            tok = session["csrf"] = secrets.token_urlsafe(24)
        return tok

    app.jinja_env.globals["csrf_token"] = csrf_token

    def check_csrf():
        want = session.get("csrf")
        got = request.form.get("csrf", "")
        if not want or not secrets.compare_digest(want, got):
            abort(400, "The form expired: go back, reload the page and try again.")

    @app.after_request
    def headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; form-action 'self' https:")
        if request.path.startswith("/p/"):
            resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.errorhandler(400)
    @app.errorhandler(404)
    @app.errorhandler(429)
    def error(e):
        return render_template("error.html", code=e.code, message=e.description), e.code

    @app.get("/")
    def index():
        return render_template("index.html")

    @app.get("/m/<device>")
    def machine(device):
        if not machines.known(device):
            abort(404, "No such machine. Scan the sticker on the machine again.")
        st = machines.state(device)
        try:
            prices = machines.prices(device)
            problem = None
        except MachineError as e:
            prices, problem = None, str(e)
        return render_template("machine.html", device=device, name=machines.name(device),
                               st=st, prices=prices, problem=problem,
                               last_seen=ago(st.get("last_seen")))

    @app.post("/m/<device>/pay")
    def pay(device):
        if not machines.known(device):
            abort(404, "No such machine.")
        check_csrf()
        if not limiter.allow(request.remote_addr or "?"):
            abort(429, "Too many payments started from here: wait a minute and try again.")
        program = request.form.get("program", "")
        kind = request.form.get("kind", "start")
        if base_url:
            back = base_url.rstrip("/") + "/p/{id}"
        else:
            back = url_for("payment", pid="{id}", _external=True).replace("%7Bid%7D", "{id}")
        try:
            pid, url = payments.create(device, program, back, kind=kind)
        except (Refused, MachineError) as e:
            return render_template("error.html", code=409, message=str(e),
                                   back=url_for("machine", device=device)), 409
        return redirect(url, code=303)

    @app.get("/p/<pid>")
    def payment(pid):
        v = payments.view(pid)
        if v is None:
            abort(404, "No such payment.")
        qr = None
        if v["token"]:
            import segno

            qr = segno.make(v["token"], error="m").svg_data_uri(scale=6, border=3)
        return render_template("payment.html", v=v, name=machines.name(v["device"]), qr=qr)

    @app.get("/p/<pid>/status")
    def payment_status(pid):
        v = payments.view(pid)
        if v is None:
            abort(404)
        return jsonify({k: v[k] for k in ("state", "label", "text", "final", "steps")})

    @app.post("/webhook/<name>")
    def webhook(name):
        if name != provider.name:
            abort(404)
        try:
            what = payments.webhook(dict(request.headers), request.get_data())
        except WebhookError as e:
            return jsonify({"error": str(e)}), 400
        return jsonify({"ok": what})

    # ---- the sandbox provider's checkout (what a hosted payment page would be)
    @app.get("/sandbox/checkout/<ref>")
    def sandbox_page(ref):
        if not isinstance(provider, SandboxProvider):
            abort(404)
        s = provider.session(ref)
        if s is None:
            abort(404, "No such checkout.")
        return render_template("sandbox.html", ref=ref, s=s)

    @app.post("/sandbox/checkout/<ref>")
    def sandbox_submit(ref):
        if not isinstance(provider, SandboxProvider):
            abort(404)
        check_csrf()
        s = provider.session(ref)
        if s is None:
            abort(404, "No such checkout.")
        provider.complete(ref, paid=request.form.get("action") == "pay")
        return redirect(s["return_url"], code=303)

    return app
