"""Phone payments reconciled against the boards' starts and the refunds, per day (UTC, of
the payment) and currency, for `washpay server report`:

    paid = started (journal: remote_start then vend_running) + credit kept (start_failed
         of a board before issue 15, which credited it) + tokens used + refunded (the
         board refused or never answered, or its washer did not start) + open

each settled payment checked against the ledger (a start or a used token has its journal
record, a refund its provider's refund id), and what does not add up, by payment: a start
the board journaled for a refunded payment (a late command: paid back and washed; not when
the board journaled that its washer did not start it), a settled payment without its
record or refund id, a payment open for longer than `stale_s` (something hangs: the server
should have refunded or seen the start), a token past its expiry still open; and by board
record: a token or remote start whose washer did not start (start_failed naming it, not
credited on the board) that no phone payment refunds (a token issued by hand, `washpay
token`): the operator refunds it.
"""

import time
from collections import defaultdict
from datetime import datetime, timezone

from host_tools.server.web import db as D

COLUMNS = ("paid", "started", "credit_kept", "token_used", "refunded", "open")


def _day(t):
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d")


def build(store, since=None, stale_s=3600, now=None):
    """{"days": [...], "anomalies": [...]}, or None if the ledger has no payments table."""
    now = time.time() if now is None else now
    try:
        rows = store.query(
            "SELECT id, device, state, amount, currency, paid_at, command_id, "
            "refund_ref, kind, token_id, token_expires, updated FROM payments "
            "WHERE paid_at IS NOT NULL")
    except Exception:  # noqa: BLE001 - no web application ever ran on this ledger
        return None
    days = defaultdict(lambda: {c: [0, 0] for c in COLUMNS})
    anomalies = []
    for (pid, device, state, amount, currency, paid_at, cid, refund, kind, tid, texp,
         updated) in rows:
        day = _day(paid_at)
        if since and day < since:
            continue
        d = days[(day, currency)]
        d["paid"][0] += 1
        d["paid"][1] += amount
        col = {D.RUNNING: "started", D.CREDIT_KEPT: "credit_kept", D.USED: "token_used",
               D.REFUNDED: "refunded"}.get(state, "open")
        d[col][0] += 1
        d[col][1] += amount
        short = pid[:8] + "..."

        def flag(problem, short=short, device=device, day=day):
            anomalies.append({"payment": short, "device": device, "day": day,
                              "problem": problem})

        src = tid if kind == "token" else cid
        rtype = "token_redeem" if kind == "token" else "remote_start"
        journaled = bool(src and store.query(
            "SELECT 1 FROM records WHERE device = ? AND type = ? AND source = ? AND "
            "verified = 1", (device, rtype, src)))
        if col in ("started", "credit_kept", "token_used") and not journaled:
            flag(f"{state}, but the ledger holds no {rtype} of it")
        if col == "refunded" and not refund:
            flag("refunded without a refund id from the provider")
        if col == "refunded" and journaled and not store.query(
                "SELECT 1 FROM records WHERE device = ? AND type = 'start_failed' AND "
                "source_kind = ? AND source = ? AND verified = 1",
                (device, "token" if kind == "token" else "command", src)):
            flag(f"refunded, but the board journaled its {rtype}: paid back and washed")
        if col == "open":
            if kind == "token" and texp and now > texp:
                flag("token expired, not redeemed: refunded when the board uploads its "
                     "journal")
            elif now - (updated or paid_at) > stale_s:
                flag(f"{state} for {int((now - (updated or paid_at)) // 60)} min")
    # not started, not credited on the board, and no phone payment of it: refund by hand
    for device, t, skind, source, amount in store.query(
            "SELECT r.device, r.t, r.source_kind, r.source, r.amount FROM records r "
            "WHERE r.type = 'start_failed' AND r.source_kind IN ('token', 'command') AND "
            "r.verified = 1 AND NOT EXISTS (SELECT 1 FROM payments p WHERE "
            "p.device = r.device AND p.paid_at IS NOT NULL AND "
            "(p.token_id = r.source OR p.command_id = r.source))"):
        day = _day(t or 0)
        if since and day < since:
            continue
        anomalies.append({"payment": "-", "device": device, "day": day,
                          "problem": f"{skind} {source[:8]}... did not start the washer "
                                     f"({amount}, not credited on the board) and no phone "
                                     "payment refunds it: refund it by hand"})
    out = []
    for (day, currency), d in sorted(days.items()):
        row = {"day": day, "currency": currency}
        for c in COLUMNS:
            row[c] = {"count": d[c][0], "amount": d[c][1]}
        # every payment of the day is settled as the ledger shows it, or on its way
        row["balanced"] = not any(a["day"] == day for a in anomalies)
        out.append(row)
    return {"days": out, "anomalies": anomalies}
