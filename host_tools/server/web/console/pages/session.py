"""Logging in and out: the console's only pages without a role."""

from flask import abort, make_response, redirect, render_template, request, url_for

from host_tools.server.web.console import auth


def _next_url():
    # only back into the console, never to another site ("//evil.example")
    nxt = request.values.get("next", "")
    if nxt.startswith("/console") and not nxt.startswith("//") and "\\" not in nxt:
        return nxt
    return url_for("console.home")


@auth.public_route("/console/login", methods=("GET", "POST"))
def login():
    if request.method == "GET":
        if auth.current_operator() is not None:
            return redirect(_next_url())
        return render_template("console/login.html", next=request.args.get("next", ""))
    auth.check_csrf()
    name = request.form.get("name", "").strip().lower()
    password = request.form.get("password", "")
    if not name or not password:
        abort(400, "Give your operator name and password.")
    token = auth.login_attempt(name, password)
    return auth.set_cookie(redirect(_next_url(), code=303), token)


@auth.public_route("/console/logout", methods=("POST",))
def logout():
    if auth.current_operator() is not None:
        auth.check_csrf()
    auth.logout()
    resp = make_response(redirect(url_for("console.login", bye=1), code=303))
    resp.delete_cookie(auth.COOKIE, path="/console")
    return resp
