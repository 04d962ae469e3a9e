"""Alerts and notices in the console (docs/alerts.md): the alerts, acknowledged by an
attendant or an owner; the notices outbox with its dead letters to retry; the cards linked
to a customer's phone for the low-balance SMS."""

from flask import abort, current_app, flash, g, redirect, render_template, request, url_for

from host_tools.server.alerts import book
from host_tools.server.alerts.config import AlertConfigError, parse
from host_tools.server.alerts.engine import create_tables
from host_tools.server.notices import outbox, phones
from host_tools.server.web.console.auth import audit, console, operator_route

STATES = ("open", "live", "acknowledged", "closed", "all")


def ledger():
    """The console's LockedStore, with the alerts tables made once per app."""
    db = console().accounts
    ext = current_app.extensions
    if not ext.get("washpay_alert_tables"):
        with db.lock:
            create_tables(db.store)
            from host_tools.server.web.console import refunds

            with db.store.transaction() as tx:
                sqlite = db.store.dialect == "sqlite"
                tx.execute(refunds.SCHEMA.format(
                    real="REAL" if sqlite else "DOUBLE PRECISION",
                    serial="INTEGER PRIMARY KEY" if sqlite else "BIGSERIAL PRIMARY KEY"))
        ext["washpay_alert_tables"] = True
    return db


def alerts_config():
    """The server config's "alerts" object, parsed (destinations, low balance)."""
    web = current_app.extensions.get("washpay_web")
    try:
        return parse((web.config if web else {}).get("alerts"))
    except AlertConfigError as e:
        abort(409, f"The server config's alerts are wrong: {e}")


@operator_route("/console/alerts", role="viewer", nav="Alerts", nav_order=20)
def alerts():
    state = request.args.get("state", "open")
    if state not in STATES:
        abort(400, f"state: one of {', '.join(STATES)}")
    db = ledger()
    with db.tx() as tx:
        rows = book.listing(tx, state=None if state == "all" else state, limit=300)
    return render_template("console/alerts.html", rows=rows, state=state, states=STATES)


@operator_route("/console/alerts/<int:aid>/ack", role="attendant", methods=("POST",))
def alert_ack(aid):
    note = (request.form.get("note") or "").strip()[:500] or None
    db = ledger()
    try:
        with db.tx() as tx:
            a = book.acknowledge(tx, aid, g.operator["operator"], note)
    except book.AlertError as e:
        flash(str(e), "error")
    else:
        audit("alert_ack", target=str(aid), rule=a["rule"], device=a["device"], note=note)
        flash(f"Alert {aid} ({a['rule']}, {a['device'] or 'server'}) acknowledged.", "ok")
    return redirect(url_for("console.alerts", state=request.form.get("state", "open")),
                    code=303)


@operator_route("/console/notices", role="attendant", nav="Notices", nav_order=22)
def notices():
    state = request.args.get("state") or None
    if state not in (None, outbox.PENDING, outbox.SENT, outbox.DEAD):
        abort(400, "state: pending, sent or dead")
    db = ledger()
    with db.lock:
        rows = outbox.listing(db.store, state=state, limit=300)
        dead = len(outbox.listing(db.store, state=outbox.DEAD, limit=10000))
    return render_template("console/notices.html", rows=rows, state=state, dead=dead)


@operator_route("/console/notices/<int:nid>/retry", role="attendant", methods=("POST",))
def notice_retry(nid):
    db = ledger()
    try:
        with db.lock:
            n = outbox.retry(db.store, nid)
    except outbox.NoticeError as e:
        flash(str(e), "error")
    else:
        audit("notice_retry", target=str(nid), channel=n["channel"],
              destination=n["destination"])
        flash(f"Notice {nid} to {n['destination']} queued again.", "ok")
    return redirect(url_for("console.notices", state="dead"), code=303)


@operator_route("/console/phones", role="attendant", nav="Card phones", nav_order=24)
def card_phones():
    db = ledger()
    with db.lock:
        rows = phones.listing(db.store)
    return render_template("console/phones.html", rows=rows,
                           low_balance=alerts_config()["low_balance"])


@operator_route("/console/phones/link", role="attendant", methods=("POST",))
def card_phone_link():
    db = ledger()
    thr = (request.form.get("threshold") or "").strip()
    try:
        threshold = int(thr) if thr else None
    except ValueError:
        threshold = -1  # refused below, with what to write
    try:
        with db.lock:
            r = phones.link(db.store, request.form.get("uid", ""),
                            request.form.get("phone", ""), threshold,
                            who=g.operator["operator"])
    except phones.PhoneError as e:
        flash(str(e), "error")
    else:
        audit("card_phone_link", target=r["uid"], phone=r["phone"], threshold=r["threshold"])
        flash(f"Card {r['uid']} linked to {r['phone']}.", "ok")
    return redirect(url_for("console.card_phones"), code=303)


@operator_route("/console/phones/<uid>/unlink", role="attendant", methods=("POST",))
def card_phone_unlink(uid):
    db = ledger()
    try:
        with db.lock:
            phones.unlink(db.store, uid)
    except phones.PhoneError as e:
        flash(str(e), "error")
    else:
        audit("card_phone_unlink", target=uid)
        flash(f"Card {uid} unlinked.", "ok")
    return redirect(url_for("console.card_phones"), code=303)
