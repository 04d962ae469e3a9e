"""Every operator route refuses a request without a session, and one from every role below
its own: the test enumerates the /console rules of the running app's url map (pages added
later are covered without editing it), over real HTTP to the served app."""

import re

import pytest
from console_env import add_operators, open_session, request
from web_env import make_web

from host_tools.server.web.console.accounts import RANK, ROLES

PUBLIC = {"console.login", "console.logout"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    web = make_web(tmp_path_factory.mktemp("routes"))
    add_operators(web)
    web.start("127.0.0.1", 0)
    try:
        yield web
    finally:
        web.stop()
        web.side.close()


def operator_routes(app):
    """[(rule, endpoint, role, methods)] of every /console rule; fails on a /console rule
    that is neither an operator route nor one of the public pages."""
    out = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/console"):
            continue
        view = app.view_functions[rule.endpoint]
        if getattr(view, "console_public", False):
            assert rule.endpoint in PUBLIC, f"{rule.rule} is public: only login/logout are"
            continue
        role = getattr(view, "operator_role", None)
        assert role in RANK, f"{rule.rule} ({rule.endpoint}) is not an @operator_route"
        methods = sorted(rule.methods - {"HEAD", "OPTIONS"})
        out.append((rule, rule.endpoint, role, methods))
    return out


def sample_url(base, rule):
    # a value for each URL parameter: the route must refuse before it looks at them
    path = re.sub(r"<(?:int:)?[^>]+>", lambda m: "1" if "int:" in m.group(0) else "x",
                  rule.rule)
    return base + path


def test_the_console_has_operator_routes_of_each_kind(served):
    routes = operator_routes(served.app)
    endpoints = {e for _r, e, _role, _m in routes}
    # the foundation's own pages: if these vanish the enumeration proves nothing
    assert {"console.home", "console.audit_log"} <= endpoints
    assert any(role == "owner" for *_x, role, _m in routes)


def test_every_operator_route_refuses_without_a_session(served):
    checked = 0
    for rule, endpoint, _role, methods in operator_routes(served.app):
        url = sample_url(served.url, rule)
        for method in methods:
            status, headers, _ = request(url, method, form={} if method != "GET" else None)
            if method == "GET":
                assert status == 302, (endpoint, method, status)
                assert headers["Location"].startswith("/console/login?next="), endpoint
            else:
                assert status == 401, (endpoint, method, status)
            checked += 1
    assert checked >= 2


def test_every_operator_route_refuses_a_role_below_its_own(served):
    sessions = {role: open_session(served, role) for role in ROLES}
    refused = allowed = 0
    for rule, endpoint, role, methods in operator_routes(served.app):
        url = sample_url(served.url, rule)
        for method in methods:
            for who in ROLES:
                token, csrf = sessions[who]
                # a valid CSRF token: a refusal is the role's, not the form's
                form = {"csrf": csrf} if method != "GET" else None
                status, headers, body = request(url, method, token=token, form=form)
                if RANK[who] < RANK[role]:
                    assert status == 403, (endpoint, method, who, status)
                    assert f"needs the {role} role" in body
                    refused += 1
                else:
                    # the role passes the gate (the sample URL may still be a 404, a
                    # missing form field a 400)
                    assert status not in (401, 403), (endpoint, method, who, status)
                    assert "/console/login" not in headers.get("Location", ""), endpoint
                    allowed += 1
    assert refused and allowed


def test_a_refusal_is_audited(served):
    token, _ = open_session(served, "viewer")
    status, _, _ = request(served.url + "/console/audit", token=token)
    assert status == 403
    rows = served.console.accounts.audit_rows(actor="viewer", action="refused")
    assert rows and rows[0]["target"] == "/console/audit"
    assert rows[0]["detail"]["needs"] == "owner"
