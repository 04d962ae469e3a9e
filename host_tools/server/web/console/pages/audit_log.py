"""The audit log: every operator action, login and refusal, newest first (owners only)."""

from flask import render_template, request

from host_tools.server.web.console.auth import console, operator_route

PAGE = 100


@operator_route("/console/audit", role="owner", nav="Audit log", nav_order=90)
def audit_log():
    before = request.args.get("before", type=int)
    actor = request.args.get("actor") or None
    action = request.args.get("action") or None
    rows = console().accounts.audit_rows(limit=PAGE + 1, before=before, actor=actor,
                                         action=action)
    more = rows[PAGE - 1]["id"] if len(rows) > PAGE else None
    return render_template("console/audit.html", rows=rows[:PAGE], more=more, actor=actor,
                           action=action)
