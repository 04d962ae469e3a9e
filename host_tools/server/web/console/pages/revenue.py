"""Revenue (viewer and up): per day, week or month, per device and per payment type, as
server-drawn SVG charts and tables, the reconciliation of payments, starts and refunds
(and the phone payments', web/reconcile.py), and the same figures as CSV. The operators'
free starts from the console are shown apart: counted, valued, in no revenue figure."""

import csv
import io

from flask import Response, render_template, request

from host_tools.money import major, money
from host_tools.server.web import reconcile
from host_tools.server.web.console import charts
from host_tools.server.web.console import ledger_queries as Q
from host_tools.server.web.console.auth import console, operator_route

# the per period/device/type table is left out of the page above this many rows (a month
# of 40 boards is 4,800: most of the page's time and a megabyte of HTML); the CSV has them
DETAIL_MAX = 400


def _form():
    return {"from": request.args.get("from", "").strip(),
            "to": request.args.get("to", "").strip(),
            "period": request.args.get("period", "day"),
            "device": request.args.get("device", "").strip()}


def _revenue(form):
    start, end = Q.date_range(form["from"], form["to"], console().clock())
    return Q.revenue(console().accounts, start, end, form["period"], form["device"] or None)


@operator_route("/console/revenue", role="viewer", nav="Revenue", nav_order=20)
def revenue():
    form = _form()
    db = console().accounts
    try:
        rev = _revenue(form)
    except Q.QueryError as e:
        return render_template("console/revenue.html", form=form, error=str(e), rev=None,
                               devices=Q.devices(db)), 400
    labels = Q.KIND_LABELS
    charts_ = []
    for currency in sorted(rev["totals"]):
        values = {p: kinds for (p, c), kinds in rev["by_period"].items() if c == currency}

        def fmt(v, c=currency):
            return money(v, c)

        per_device = sorted(((d, v) for (d, c), v in rev["by_device"].items() if c == currency),
                            key=lambda dv: (-dv[1], dv[0]))
        charts_.append({
            "currency": currency,
            "by_period": charts.stacked_bars(rev["periods"], values, Q.PAYMENT_KINDS, labels,
                                             fmt, f"Revenue per {rev['period']} ({currency})"),
            "by_device": charts.hbars(per_device, fmt, f"Revenue per device ({currency})"),
        })
    # through the LockedStore: the request threads and the settler share one connection
    phone = reconcile.build(db, since=Q.day_text(rev["start"]), now=console().clock())
    if phone:
        end_day = Q.day_text(rev["end"] - 1)
        phone = {"days": [d for d in phone["days"] if d["day"] <= end_day],
                 "anomalies": [a for a in phone["anomalies"] if a["day"] <= end_day]}
    return render_template("console/revenue.html", form=form, error=None, rev=rev,
                           charts=charts_, labels=labels, kinds=Q.PAYMENT_KINDS,
                           operator_label=Q.OPERATOR_LABEL,
                           recon=Q.reconciliation(rev), phone=phone, devices=Q.devices(db),
                           detail_max=DETAIL_MAX, first_day=Q.day_text(rev["start"]),
                           last_day=Q.day_text(rev["end"] - 1), money=money)


@operator_route("/console/revenue.csv", role="viewer")
def revenue_csv():
    form = _form()
    try:
        rev = _revenue(form)
    except Q.QueryError as e:
        from flask import abort

        abort(400, str(e))
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    # amounts in major units under a column that names the currency, and in minor units;
    # "revenue" says whether a line is money taken: an operator's free starts (their value
    # at the machine's price) are lines of their own, "no"
    w.writerow(["period", "device", "type", "currency", "payments", "amount",
                "amount_minor", "revenue"])
    for r in rev["rows"]:
        w.writerow([r["period"], r["device"], Q.KIND_LABELS[r["kind"]], r["currency"],
                    r["count"], major(r["amount"], r["currency"]), r["amount"], "yes"])
    for r in rev["operator"]["rows"]:
        w.writerow([r["period"], r["device"], Q.OPERATOR_LABEL, r["currency"], r["count"],
                    major(r["amount"], r["currency"]), r["amount"], "no"])
    name = f"revenue-{rev['period']}-{Q.day_text(rev['start'])}-{Q.day_text(rev['end'] - 1)}"
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
