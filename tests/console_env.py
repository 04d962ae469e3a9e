"""What the console tests share: operators of each role on a web app's ledger, a session
per role without going through the login form (the login tests do that), and plain HTTP
requests that carry a session's cookie."""

import http.client
import re
import urllib.parse

from host_tools.server.web.console.accounts import ROLES

PASSWORD = "correct horse battery"


def add_operators(web):
    """One operator per role, named after it: {role: name}."""
    for role in ROLES:
        if web.console.accounts.role(role) is None:
            web.console.accounts.add(role, role, PASSWORD)
    return {r: r for r in ROLES}


def open_session(web, name, addr="127.0.0.1"):
    """(cookie token, csrf token) of a new session for operator `name`."""
    return web.console.accounts.open_session(name, addr)


def request(url, method="GET", token=None, form=None):
    """(status, headers, body text) of one request; redirects are not followed."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    headers = {}
    body = None
    if token:
        headers["Cookie"] = f"washpay_console={token}"
    if form is not None:
        body = urllib.parse.urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), body, headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def csrf(html):
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)
