"""Transactions (viewer and up): the ledger's money records with filters (device, type,
date range, card), newest first, paged by keyset (ledger_queries.transactions), and the
whole filtered list as CSV."""

import csv

from flask import Response, abort, render_template, request, stream_with_context

from host_tools.money import major, money
from host_tools.server.web.console import ledger_queries as Q
from host_tools.server.web.console.auth import console, operator_route, when

PAGE = 50


def _filters():
    """(form as given, query arguments); QueryError on a filter that cannot be used."""
    form = {k: request.args.get(k, "").strip() for k in ("device", "type", "from", "to",
                                                         "card", "after", "n")}
    args = {"device": form["device"] or None, "kind": form["type"] or None}
    if form["from"]:
        args["start"] = Q.parse_day(form["from"], "from")
    if form["to"]:
        args["end"] = Q.parse_day(form["to"], "to") + Q.DAY
    if form["card"]:
        args["card"] = Q.card_uid(form["card"])
    return form, args


@operator_route("/console/transactions", role="viewer", nav="Transactions", nav_order=25)
def transactions():
    db = console().accounts
    try:
        form, args = _filters()
        try:
            n = int(form["n"] or PAGE)
        except ValueError:
            raise Q.QueryError("page size: a whole number") from None
        page = Q.transactions(db, after=form["after"] or None, limit=n, **args)
    except Q.QueryError as e:
        return render_template("console/transactions.html", form=request.args, error=str(e),
                               page=None, kinds=Q.TX_KINDS, devices=Q.devices(db)), 400
    keep = {k: v for k, v in form.items() if v and k != "after"}
    return render_template("console/transactions.html", form=form, error=None, page=page,
                           keep=keep, kinds=Q.TX_KINDS, devices=Q.devices(db), money=money,
                           when=when)


@operator_route("/console/transactions.csv", role="viewer")
def transactions_csv():
    db = console().accounts
    try:
        _form, args = _filters()
    except Q.QueryError as e:
        abort(400, str(e))

    def rows():
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(["time_utc", "device", "seq", "type", "currency", "amount",
                    "amount_minor", "program", "source_kind", "source", "balance_before",
                    "balance_after", "voided", "reason"])
        for r in Q.all_transactions(db, **args):
            w.writerow([when(r["t"]).replace(" UTC", ""), r["device"], r["seq"], r["type"],
                        r["currency"], major(r["amount"], r["currency"]), r["amount"],
                        r["program"] or "", r["source_kind"] or "", r["source"] or "",
                        "" if r["balance_before"] is None else r["balance_before"],
                        "" if r["balance_after"] is None else r["balance_after"],
                        "yes" if r["voided"] else "", r["reason"] or ""])
            if buf.tell() > 65536:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()

    return Response(stream_with_context(rows()), mimetype="text/csv",
                    headers={"Content-Disposition":
                             'attachment; filename="transactions.csv"'})
