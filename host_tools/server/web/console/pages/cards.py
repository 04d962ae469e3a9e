"""Cards (viewer and up): shadow balances, a card's credit score, tier overrides, fraud
flags, top-ups and payments; blacklisting a card on every board, and lifting it, is the
owner's (a card refused at every machine is a customer turned away: the role that answers
for the money decides), sent through the server's blacklist commands with each board's
reply shown as its push state."""

from flask import abort, flash, redirect, render_template, request, url_for

from host_tools.money import money
from host_tools.server import commands as C
from host_tools.server.web.console import cards as K
from host_tools.server.web.console import ledger_queries as Q
from host_tools.server.web.console.auth import audit, console, operator_route, when
from host_tools.server.web.console.boards import BoardsError

# a lost card must be refused by a board that was offline for the night too: the command
# stays valid for two days (a command lives 7 days at most)
TTL_S = 2 * 86400


def boards_known():
    """Every board a blacklist goes to: the ledger's devices and the web config's
    machines."""
    c = console()
    known = set(Q.devices(c.accounts))
    if c.machines is not None:
        known |= set(c.machines.catalogue)
    return sorted(known)


@operator_route("/console/cards", role="viewer", nav="Cards", nav_order=30)
def cards():
    prefix = request.args.get("uid", "").strip()
    try:
        uid = Q.card_uid(prefix) if prefix else None
    except Q.QueryError as e:
        return render_template("console/cards.html", rows=[], more=None, uid=prefix,
                               error=str(e), money=money, when=when), 400
    rows, more = K.card_list(console().accounts, uid, request.args.get("after") or None)
    if uid and len(rows) == 1 and rows[0]["uid"] == uid:
        return redirect(url_for("console.card", uid=uid))
    return render_template("console/cards.html", rows=rows, more=more, uid=prefix,
                           error=None, money=money, when=when)


@operator_route("/console/cards/<uid>", role="viewer")
def card(uid):
    try:
        uid = Q.card_uid(uid)
    except Q.QueryError as e:
        abort(404, str(e))
    d = K.detail(console().accounts, uid, console().clock())
    return render_template("console/card.html", d=d, uid=uid, boards=boards_known(),
                           reasons=C.BLACKLIST_REASONS, money=money, when=when)


def _push_all(uid, kind, args):
    boards = boards_known()
    if not boards:
        abort(409, "No board is known yet: nothing to send the blacklist to.")
    sent, failed = [], []
    for device in boards:
        try:
            sent.append((device, console().boards.send(device, kind, ttl_s=TTL_S, **args)))
        except BoardsError as e:
            failed.append(str(e))
    audit(kind.replace("-", "_"), target=uid, boards=[d for d, _c in sent],
          commands=[c for _d, c in sent], failed=failed or None,
          reason=(args.get("cards") or [[None, None]])[0][1])
    return sent, failed


@operator_route("/console/cards/<uid>/blacklist", role="owner", methods=("POST",))
def blacklist_card(uid):
    try:
        uid = Q.card_uid(uid)
    except Q.QueryError as e:
        abort(400, str(e))
    reason = request.form.get("reason", "")
    if reason not in C.BLACKLIST_REASONS:
        abort(400, f"Choose why the card is blacklisted: one of "
              f"{', '.join(C.BLACKLIST_REASONS)}.")
    since = int(console().clock())
    sent, failed = _push_all(uid, "blacklist-add", {"cards": [(uid, reason, since)]})
    _flash(f"card {uid} blacklisted ({reason})", sent, failed)
    return redirect(url_for("console.card", uid=uid), code=303)


@operator_route("/console/cards/<uid>/unblacklist", role="owner", methods=("POST",))
def unblacklist_card(uid):
    try:
        uid = Q.card_uid(uid)
    except Q.QueryError as e:
        abort(400, str(e))
    sent, failed = _push_all(uid, "blacklist-remove", {"uids": [uid]})
    _flash(f"card {uid} taken off the blacklist", sent, failed)
    return redirect(url_for("console.card", uid=uid), code=303)


def _flash(what, sent, failed):
    if sent:
        flash(f"{what}: sent to {len(sent)} board(s); each board's reply shows below",
              "ok")
    for f in failed:
        flash(f"not sent to {f}", "error")
