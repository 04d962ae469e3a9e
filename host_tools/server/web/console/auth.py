"""Who may do what in the console: the one route decorator every operator page uses, the
session behind it, CSRF, lockout and the audit log (docs/console.md).

    @operator_route("/console/fleet", role="viewer", nav="Fleet")
    def fleet():
        ...

    @operator_route("/console/devices/<device>/start", role="attendant", methods=("POST",))
    def remote_start(device):
        ...                        # the CSRF token was checked before this runs
        audit("remote_start", target=device, program=..., reason=...)

Every operator route is kept in ROUTES and added to the app by console.install(); a test
walks the app's url map and proves that each /console route is either one of these (and
refuses a request without a session, and one from a role below its own) or a public one
(the login and logout pages).
"""

import functools
import secrets
import time

from flask import abort, current_app, g, redirect, request, session, url_for

from host_tools.server.web.console.accounts import RANK

COOKIE = "washpay_console"
ROUTES = []  # (path, role, methods, nav, view) of every operator route, in menu order
PUBLIC = []  # (path, methods, view): the login and logout pages


class Settings:
    """The web config's "console" object: {"session_idle_s": 1800, "session_max_s": 43200,
    "lockout": {"user_failures": 5, "addr_failures": 20, "window_s": 900},
    "secure_cookie": false}."""

    def __init__(self, cfg=None):
        cfg = dict(cfg or {})
        lock = dict(cfg.get("lockout") or {})
        self.idle_s = float(cfg.get("session_idle_s", 1800))
        self.max_s = float(cfg.get("session_max_s", 12 * 3600))
        self.user_failures = int(lock.get("user_failures", 5))
        self.addr_failures = int(lock.get("addr_failures", 20))
        self.window_s = float(lock.get("window_s", 900))
        # behind a TLS proxy the request looks like http: set it to send the cookie only
        # over https anyway
        self.secure_cookie = bool(cfg.get("secure_cookie", False))


class Console:
    """The console's state in one app: accounts on the ledger (a LockedStore: query, tx),
    settings, the web app's machine catalogue, the boards' command sender, the clock."""

    def __init__(self, accounts, settings, machines=None, boards=None):
        self.accounts = accounts
        self.settings = settings
        self.machines = machines
        self.boards = boards

    @property
    def clock(self):
        return self.accounts.clock

    @clock.setter
    def clock(self, fn):
        self.accounts.clock = fn
        if self.boards is not None:
            self.boards.clock = fn


def console():
    return current_app.extensions["washpay_console"]


def client_addr():
    return request.remote_addr or "?"


def operator_route(path, role, methods=("GET",), nav=None, nav_order=50):
    """Make `view` an operator route at `path` for `role` and the roles above it.

    Before the view runs: no session → a GET goes to the login page (and comes back after),
    anything else gets 401; a role below `role` → 403 (audited as "refused"); a method
    other than GET/HEAD must carry the session's CSRF token (form field "csrf") → else 400.
    The view finds the operator in `g.operator` ({"operator", "role", ...}). `nav`: the
    label of a link in the console's menu (shown to the roles that may open it), placed by
    `nav_order` (Home 0, Fleet 10, the audit log 90)."""
    if role not in RANK:
        raise ValueError(f"operator_route {path}: role {role!r} is not one of {list(RANK)}")
    methods = tuple(m.upper() for m in methods)

    def deco(view):
        @functools.wraps(view)
        def guarded(**kw):
            op = current_operator()
            if op is None:
                if request.method in ("GET", "HEAD"):
                    return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
                abort(401, "Log in first: your session has ended.")
            if RANK[op["role"]] < RANK[role]:
                audit("refused", target=request.path, method=request.method, needs=role)
                abort(403, f"This needs the {role} role; you are {op['role']}.")
            if request.method not in ("GET", "HEAD"):
                check_csrf()
            return view(**kw)

        guarded.operator_role = role
        guarded.nav_order = nav_order
        ROUTES.append((path, role, methods, nav, guarded))
        ROUTES.sort(key=lambda r: r[4].nav_order)
        return guarded

    return deco


def public_route(path, methods=("GET",)):
    """A console page anyone may open (login, logout): the only ones without a role."""

    def deco(view):
        view.console_public = True
        PUBLIC.append((path, tuple(methods), view))
        return view

    return deco


def current_operator():
    """The logged-in operator of this request ({"operator", "role", "csrf", ...}) or None."""
    if "operator" not in g:
        s = console().settings
        g.operator = console().accounts.session(request.cookies.get(COOKIE), s.idle_s,
                                                s.max_s)
    return g.operator


def csrf_token():
    """The token every console form carries (csrf_field() in templates): the session's own;
    before login, one kept in Flask's signed cookie."""
    op = current_operator()
    if op is not None:
        return op["csrf"]
    tok = session.get("csrf")
    if not tok:
        tok = session["csrf"] = secrets.token_urlsafe(24)
    return tok


def check_csrf():
    op = current_operator()
    want = op["csrf"] if op is not None else session.get("csrf")
    got = request.form.get("csrf", "")
    if not want or not secrets.compare_digest(want, got):
        audit("csrf_refused", target=request.path, method=request.method)
        abort(400, "The form expired or did not come from this console: reload the page "
              "and try again.")


def audit(action, target=None, actor=None, role=None, **detail):
    """Write one audit row: who (the logged-in operator unless `actor` says), what
    (`action`, `target`), when (now), from where (the client address), and `detail`."""
    op = current_operator() if actor is None else None
    console().accounts.audit(actor or (op["operator"] if op else "anonymous"),
                             role or (op["role"] if op else None), action, target,
                             detail or None, client_addr())


# ---- log in and out
def login_attempt(name, password):
    """The new session's cookie token, or an abort (401 wrong, 429 locked out)."""
    c = console()
    s, acc = c.settings, c.accounts
    addr = client_addr()
    for kind, who, limit in (("addr", addr, s.addr_failures), ("user", name, s.user_failures)):
        n, until = acc.failures(kind, who, s.window_s)
        if n >= limit:
            wait = max(1, int((until - c.clock() + 59) // 60))
            audit("login_locked", target=name, actor=name or "anonymous", by=kind)
            what = "this account" if kind == "user" else "this address"
            abort(429, f"Too many failed logins for {what}: try again in {wait} min, or ask "
                  "an owner to set a new password (washpay server user passwd).")
    role = acc.verify(name, password)
    if role is None:
        acc.failed((("addr", addr), ("user", name)), s.window_s)
        audit("login_failed", target=name, actor=name or "anonymous")
        abort(401, "Wrong name or password.")
    acc.clear_failures("user", name)
    token, _csrf = acc.open_session(name, addr)
    audit("login", target=name, actor=name, role=role)
    return token


def set_cookie(resp, token, max_age=None):
    s = console().settings
    resp.set_cookie(COOKIE, token, max_age=max_age, path="/console", httponly=True,
                    samesite="Strict", secure=s.secure_cookie or request.is_secure)
    return resp


def logout():
    token = request.cookies.get(COOKIE)
    op = current_operator()
    if token:
        console().accounts.close_session(token)
    if op is not None:
        audit("logout", target=op["operator"])
    g.operator = None


def when(t):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "never"
