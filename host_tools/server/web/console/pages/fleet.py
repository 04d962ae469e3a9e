"""The fleet page (every device) and a device's page (its facts, journal verification,
recent events and commands), and asking a board for its status."""

from flask import abort, flash, redirect, render_template, request, url_for

from host_tools.server.web.console import fleet as F
from host_tools.server.web.console.auth import audit, console, operator_route
from host_tools.server.web.console.boards import BoardsError


@operator_route("/console/fleet", role="viewer", nav="Fleet", nav_order=10)
def fleet():
    return render_template("console/fleet.html", devices=F.fleet())


@operator_route("/console/fleet/status", role="attendant", methods=("POST",))
def ask_fleet_status():
    """Ask every online board for its status (firmware, journal level): one command each."""
    asked, failed = [], []
    for d in F.fleet():
        if not d["online"]:
            continue
        try:
            asked.append((d["device"], console().boards.send(d["device"], "status",
                                                             ttl_s=120)))
        except BoardsError as e:
            failed.append(f"{d['device']}: {e}")
    audit("status_request", target="fleet", commands=dict(asked), failed=failed or None)
    if asked:
        flash(f"Status asked of {len(asked)} online board(s): reload in a few seconds.", "ok")
    elif not failed:
        flash("No board is online: nothing asked.", "info")
    for f in failed:
        flash(f, "error")
    return redirect(url_for("console.fleet"), code=303)


@operator_route("/console/devices/<device>", role="viewer")
def device(device):
    d = F.device(device)
    if d is None:
        abort(404, f"No device {device} in the ledger or the machine catalogue.")
    before = request.args.get("before", type=int)
    events = F.events(device, limit=51, before=before)
    more = events[49]["seq"] if len(events) > 50 else None
    return render_template("console/device.html", d=d, v=F.verification(device),
                           events=events[:50], more=more,
                           commands=console().boards.recent(device, 10))


@operator_route("/console/devices/<device>/status", role="attendant", methods=("POST",))
def ask_status(device):
    if F.device(device) is None:
        abort(404, f"No device {device} in the ledger or the machine catalogue.")
    try:
        cid = console().boards.send(device, "status", ttl_s=120)
    except BoardsError as e:
        audit("status_request_failed", target=device, error=str(e))
        flash(str(e), "error")
    else:
        audit("status_request", target=device, command=cid)
        flash(f"Status asked of {device} (command {cid[:8]}): reload in a few seconds.",
              "ok")
    return redirect(url_for("console.device", device=device), code=303)
