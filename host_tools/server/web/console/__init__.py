"""The operator console: the laundry's staff log in to see the fleet and act on it, in the
same web application and the same ledger database as the customers' pages (docs/console.md).

    accounts.py   operators (scrypt password hashes), sessions, login failures, audit log
    auth.py       operator_route (role check, CSRF), login/lockout, audit()
    boards.py     signed commands to the boards (console().boards.send)
    fleet.py      what the ledger and the server know of each device
    pages/        one module per page group; every module there is loaded by install()
    ../templates/console/   the pages' templates (base.html: menu, flash messages, role)

install(app, locked_store, config) adds it to the Flask app; `washpay server user ...`
manages the accounts (host_tools/server/cli.py).
"""

import importlib
import pkgutil

from flask import Blueprint, g, render_template, request, url_for

from host_tools.server.web.console import auth, fleet
from host_tools.server.web.console.accounts import RANK, Accounts
from host_tools.server.web.console.boards import Boards


def load_pages():
    """Import every module of console/pages: each registers its routes on import."""
    from host_tools.server.web.console import pages

    for m in sorted(pkgutil.iter_modules(pages.__path__), key=lambda m: m.name):
        importlib.import_module(f"{pages.__name__}.{m.name}")


def install(app, db, config=None, clock=None, machines=None, site_key=None, send=None):
    """Add the console to `app`: its tables on `db`'s store (a LockedStore: the web app's
    PaymentDB, sharing its lock), its routes, its template helpers. `machines`: the web
    app's catalogue (names, state, prices); `site_key` and `send` (Server.send_command):
    how the console signs and sends commands to the boards (console().boards)."""
    load_pages()
    accounts = Accounts(db.store, db.lock, **({"clock": clock} if clock else {}))
    accounts.create_tables(fleet.INDEXES)
    c = auth.Console(accounts, auth.Settings(config), machines=machines,
                     boards=Boards(db, site_key, send, clock=accounts.clock))
    app.extensions["washpay_console"] = c
    bp = Blueprint("console", __name__)
    seen = set()
    for path, methods, view in auth.PUBLIC:
        bp.add_url_rule(path, view.__name__, view, methods=list(methods))
        seen.add(view.__name__)
    for path, _role, methods, _nav, view in auth.ROUTES:
        if view.__name__ in seen:
            raise RuntimeError(f"two console views are named {view.__name__}: rename one "
                               "(the name is its endpoint)")
        seen.add(view.__name__)
        bp.add_url_rule(path, view.__name__, view, methods=list(methods))

    @bp.app_template_global()
    def csrf_field():
        from markupsafe import Markup, escape

        return Markup(f'<input type="hidden" name="csrf" value="{escape(auth.csrf_token())}">')

    @bp.app_template_global()
    def console_nav():
        """[(label, url, active)] the logged-in operator may open."""
        op = auth.current_operator()
        if op is None:
            return []
        out = []
        for path, role, methods, nav, view in auth.ROUTES:
            if nav and "GET" in methods and RANK[op["role"]] >= RANK[role] and "<" not in path:
                out.append((nav, url_for(f"console.{view.__name__}"),
                            request.endpoint == f"console.{view.__name__}"))
        return out

    bp.add_app_template_global(auth.when, "console_when")

    @bp.app_context_processor
    def operator():
        return {"operator": g.get("operator")} if request.path.startswith("/console") else {}

    @bp.errorhandler(400)
    @bp.errorhandler(401)
    @bp.errorhandler(403)
    @bp.errorhandler(404)
    @bp.errorhandler(409)
    @bp.errorhandler(429)
    def error(e):
        return render_template("console/error.html", code=e.code,
                               message=e.description), e.code

    @bp.after_request
    def private(resp):
        resp.headers["Cache-Control"] = "no-store"  # operator pages stay out of caches
        return resp

    app.register_blueprint(bp)
    return c
