"""Prices (viewer and up): the table each board holds, an editor checked by the firmware's
own rules, a preview of what each program costs at a chosen day and time (for a card of
each tier too), and which board applied which version. Pushing a table to one board or
all is the owner's; the table is checked again against each board's own config before it
is signed, and each board's reply (done, or refused with its reason) shows in the
history."""

import datetime
import json

from flask import abort, flash, redirect, render_template, request, url_for

from host_tools.money import money
from host_tools.server.web.console import prices as P
from host_tools.server.web.console.auth import audit, console, operator_route, when
from host_tools.server.web.console.boards import BoardsError
from host_tools.server.web.console.pages.cards import boards_known as fleet
from host_tools.server.web.machines import MachineError

# a board offline for the night takes the new table when it is back
TTL_S = 2 * 86400


def _machines():
    machines = console().machines
    if machines is None:
        abort(409, "This console has no machine catalogue: run it with `washpay server "
              "run --http`.")
    return machines


def _at(text, now):
    """The preview's time: 'YYYY-MM-DDTHH:MM' in UTC (a datetime-local field), or now."""
    if not text:
        return int(now)
    try:
        d = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise P.PriceError(f"time {text!r}: give it as YYYY-MM-DDTHH:MM (UTC)") from None
    return int(d.replace(tzinfo=datetime.timezone.utc).timestamp())


def _page(device, text, at_text, result=None, error=None, status=200):
    machines = _machines()
    boards = fleet()
    held = []
    for d in boards:
        try:
            table = P.table_in_force(machines, d)
            held.append({"device": d, "version": table.get("version", 0), "error": None})
        except MachineError as e:
            held.append({"device": d, "version": None, "error": str(e)})
    return render_template("console/prices.html", boards=boards, held=held, device=device,
                           text=text, at=at_text, result=result, error=error,
                           history=P.history(console().accounts), money=money,
                           when=when), status


def _device(machines):
    device = request.values.get("device", "").strip()
    boards = fleet()
    if not device:
        device = boards[0] if boards else ""
    if device and device != "all" and device not in boards:
        abort(404, f"No board {device}: choose one of the list.")
    return device


@operator_route("/console/prices", role="viewer", nav="Prices", nav_order=40)
def prices():
    machines = _machines()
    device = _device(machines)
    text = ""
    if device and device != "all":
        try:
            table = P.table_in_force(machines, device)
        except MachineError as e:
            return _page(device, "", "", error=str(e), status=500)
        text = json.dumps(table, indent=1)
    return _page(device, text, "")


def _checked(machines, device):
    """(table, preview) of the form's table on `device`'s config at the form's time;
    PriceError says what is wrong."""
    table = P.parse_table(request.form.get("table", ""))
    at = _at(request.form.get("at", ""), console().clock())
    cfg = machines.board_config(device if device != "all" else fleet()[0]) if fleet() else {}
    return table, P.preview(cfg, table, at)


@operator_route("/console/prices/preview", role="viewer", methods=("POST",))
def preview_prices():
    machines = _machines()
    device = _device(machines)
    text, at_text = request.form.get("table", ""), request.form.get("at", "")
    try:
        _table, result = _checked(machines, device)
    except (P.PriceError, MachineError) as e:
        return _page(device, text, at_text, error=str(e), status=400)
    return _page(device, text, at_text, result=result)


@operator_route("/console/prices/push", role="owner", methods=("POST",))
def push_prices():
    machines = _machines()
    device = _device(machines)
    text, at_text = request.form.get("table", ""), request.form.get("at", "")
    try:
        table, _preview = _checked(machines, device)
    except (P.PriceError, MachineError) as e:
        return _page(device, text, at_text, error=str(e), status=400)
    targets = fleet() if device == "all" else [device]
    # a board takes only a table newer than its own: say so before anything is sent
    stale = []
    for d in targets:
        held = P.table_in_force(machines, d).get("version", 0)
        if not isinstance(table.get("version"), int) or table["version"] <= held:
            stale.append(f"{d} holds v{held}")
    if stale:
        return _page(device, text, at_text, status=400, error=(
            f"version {table.get('version')!r} is not newer than what the board holds "
            f"({'; '.join(stale)}): raise \"version\" (a board refuses an older or equal "
            "table)"))
    sent, failed = [], []
    for d in targets:
        try:
            sent.append((d, console().boards.send(d, "price-table", ttl_s=TTL_S, table=table,
                                                  config=machines.board_config(d))))
        except BoardsError as e:
            failed.append(str(e))
        except MachineError as e:
            failed.append(f"{d}: {e}")
    audit("price_push", target=device, version=table.get("version"),
          boards=[d for d, _c in sent], commands=[c for _d, c in sent], failed=failed or None)
    if sent:
        flash(f"prices v{table.get('version')} sent to {', '.join(d for d, _c in sent)}; "
              "each board's reply shows in the history", "ok")
    for f in failed:
        flash(f"not sent to {f}", "error")
    if not sent:
        return _page(device, text, at_text, status=400, error="; ".join(failed))
    return redirect(url_for("console.prices", device=device), code=303)
