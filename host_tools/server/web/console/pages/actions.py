"""Acting on machines from the console: a remote start, and refunds (docs/alerts.md,
"Remote start and refunds from the console"). Attendants and owners; a reason always.

A remote start is the board's own remote start command (docs/remote-start.md), amount 0
(the machine's price, paid by nobody: a courtesy start), sent through the server's broker
connection like a phone payment's: the board journals `remote_start` with the command id as
source, the commands table keeps the operator and the reason in its args, and the audit log
keeps who, when and why.
"""

import time

from flask import abort, current_app, flash, g, redirect, render_template, request, url_for

from host_tools.server.rollup import OPERATOR_ARGS
from host_tools.server.web.console import refunds as R
from host_tools.server.web.console.auth import audit, console, operator_route
from host_tools.server.web.console.boards import BoardsError
from host_tools.server.web.console.pages.alerts import alerts_config, ledger
from host_tools.server.web.machines import MachineError

START_TTL_S = 60  # a console start not executed within a minute is void (the board says
# "expired"): an operator who sees nothing happen must not start it twice by accident
REPLY_WAIT_S = 8.0


def web():
    """The web app (its payments: the phone payments' refund path, its config)."""
    w = current_app.extensions.get("washpay_web")
    if w is None:
        abort(409, "This console runs without the pay-by-phone app.")
    return w


def machines():
    m = console().machines
    if m is None:
        abort(409, "This console has no machine catalogue.")
    return m


def _devices():
    db = console().accounts
    known = [r[0] for r in db.query("SELECT device FROM devices ORDER BY device")]
    return sorted(set(known) | set(machines().catalogue))


def _reply(cid):
    """The board's reply to command `cid` as the server stored it, waiting a few seconds."""
    db = console().accounts
    deadline = time.monotonic() + REPLY_WAIT_S
    while time.monotonic() < deadline:
        rows = db.query("SELECT status, result FROM commands WHERE id = ?", (cid,))
        if rows and rows[0][0] != "sent":
            import json

            try:
                return rows[0][0], json.loads(rows[0][1] or "{}")
            except ValueError:
                return rows[0][0], {}
        time.sleep(0.1)
    return None, {}


@operator_route("/console/remote-start", role="attendant", nav="Remote start", nav_order=30)
def remote_start_page():
    m = machines()
    listed = []
    for d in _devices():
        try:
            progs = [p["name"] for p in m.prices(d)["programs"]]
        except MachineError:
            progs = []
        listed.append({"device": d, "name": m.name(d), "state": m.state(d)["state"],
                       "programs": progs})
    db = console().accounts
    recent = db.query("SELECT id, device, args, status, created FROM commands WHERE "
                      "kind = 'start' AND args LIKE ? ORDER BY created DESC LIMIT 20",
                      (OPERATOR_ARGS,))
    return render_template("console/remote_start.html", machines=listed, recent=recent)


@operator_route("/console/remote-start", role="attendant", methods=("POST",))
def remote_start():
    m = machines()
    device = request.form.get("device", "")
    program = request.form.get("program", "")
    reason = (request.form.get("reason") or "").strip()
    op = g.operator["operator"]

    def refuse(msg):
        audit("remote_start_refused", target=device, program=program, reason=reason, why=msg)
        flash(msg, "error")
        return redirect(url_for("console.remote_start_page"), code=303)

    if len(reason) < 3:
        return refuse("Say why (a reason of at least 3 characters): it goes in the audit "
                      "log and the commands table.")
    if device not in _devices():
        return refuse(f"No machine {device!r}.")
    try:
        if m.price_of(device, program) is None:
            return refuse(f"No program {program!r} on {device}.")
    except MachineError as e:
        return refuse(str(e))
    state = m.state(device)["state"]
    if state == "offline":
        return refuse(f"{device} is offline: a remote start cannot reach it.")
    if state == "running":
        return refuse(f"{device} is running a cycle: start it when it is free.")
    try:
        cid = console().boards.send(device, "start", ttl_s=START_TTL_S, program=program,
                                    amount=0, operator=op, reason=reason[:500])
    except BoardsError as e:  # the broker is down, or no broker: say so, nothing started
        return refuse(f"Could not send the command: {e}")
    audit("remote_start", target=device, program=program, reason=reason, cmd=cid)
    status, res = _reply(cid)
    if status == "started":
        flash(f"{device} started {program} (journal record {res.get('seq')}).", "ok")
    elif status is None:
        flash(f"Sent to {device}; no reply yet: see the machine's journal before trying "
              "again (the command is void after a minute).", "info")
    else:
        flash(f"{device} did not start: {status} ({res.get('reason', '')}).", "error")
    return redirect(url_for("console.remote_start_page"), code=303)


@operator_route("/console/refunds", role="attendant", nav="Refunds", nav_order=32)
def refunds_page():
    w = web()
    db = ledger()
    limit = R.limit_of(w.config.get("console"))
    return render_template("console/refunds.html", payments=R.refundable_payments(w.db),
                           refunds=R.listing(db), limit=limit, devices=_devices(),
                           role=g.operator["role"])


@operator_route("/console/refunds", role="attendant", methods=("POST",))
def refund():
    w = web()
    ledger()
    op, role = g.operator["operator"], g.operator["role"]
    limit = R.limit_of(w.config.get("console"))
    reason = request.form.get("reason", "")
    pid = (request.form.get("payment") or "").strip()
    try:
        if pid:
            row = R.refund_payment(w.db, alerts_config(), pid, reason, op, role, limit)
            audit("refund", target=pid, kind=R.PHONE, amount=row["amount"],
                  device=row["device"], reason=reason.strip())
            flash(f"Payment {pid} is being refunded through the payment provider.", "ok")
        else:
            device = request.form.get("device", "")
            seq = request.form.get("seq", "").strip()
            try:
                seq = int(seq) if seq else None
                amount = int(request.form.get("amount", ""))
            except ValueError:
                raise R.RefundRefused("The amount (and record number): whole numbers; the "
                                      "amount in minor units (250 = 2.50).") from None
            rid = R.refund_manual(w.db, alerts_config(), device, seq, amount,
                                  request.form.get("currency") or "EUR", reason, op, role,
                                  limit)
            audit("refund", target=device, kind=R.MANUAL, refund=rid, seq=seq, amount=amount,
                  reason=reason.strip())
            flash(f"Manual refund {rid} recorded: give the customer the money.", "ok")
    except R.RefundRefused as e:
        audit("refund_refused", target=pid or request.form.get("device"), why=str(e),
              amount=request.form.get("amount"))
        flash(str(e), "error")
    return redirect(url_for("console.refunds_page"), code=303)
