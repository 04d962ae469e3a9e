"""The alert rules (docs/alerts.md, "Rules"): what in the ledger and the server's state
needs a person. Each rule reads the store in the engine's transaction and says what to
raise; the engine raises, deduplicates and fans out the notices.

Record rules read each board's new verified records once: a cursor per board (the last
sequence number looked at) in alert_cursors, so a restart neither misses nor repeats one.
Records reach the ledger in sequence order (ingest stores high + 1 only), so "seq above
the cursor" is exactly "not looked at yet".
"""

import json

from host_tools.money import money

# journal record types the record rules read (docs/journal-format.md), and the OTA
# rollback record kind: no firmware journals it yet (a release that rolls back is to
# journal a record of kind "ota_rollback"; the rule matches that name when it comes)
OTA_ROLLBACK = "ota_rollback"
RECORD_TYPES = ("start_failed", "coin_rejected", "fault", "card_fraud", "card_refused",
                "refund", "card_debit", OTA_ROLLBACK)
# the server's card fraud findings (host_tools/server/ingest.py, docs/sync.md "Problems")
CARD_PROBLEMS = ("card_counter_reuse", "card_balance_mismatch", "card_balance_rise",
                 "card_arith")
COIN_BURST_FAULT = "coin rejects:"  # the board's own burst detector (vend/watch.py)
LOCKOUT = "lockout:"  # card_refused reason of the payment that locked a card out


class Alert:
    __slots__ = ("rule", "device", "subject", "severity", "message", "detail")

    def __init__(self, rule, device, subject, severity, message, detail=None):
        self.rule, self.device, self.subject = rule, device, subject or ""
        self.severity, self.message, self.detail = severity, message, detail


def offline(tx, cfg, now):
    """{(device, ""): Alert} of every board that said it went offline (its last will) more
    than offline_after_min ago and was not heard from since."""
    after = cfg["offline_after_min"] * 60
    out = {}
    for device, online, state_at, last_seen in tx.all(
            "SELECT device, online, state_at, last_seen FROM devices"):
        if online == 0 and state_at is not None and state_at <= now - after and (
                last_seen is None or last_seen <= state_at):
            mins = int((now - state_at) // 60)
            out[(device, "")] = Alert("offline", device, "", "warning",
                                      f"offline for {mins} min", {"since": state_at})
    return out


def journal_full(tx, cfg, now):
    """{(device, ""): Alert} of boards whose journal is filling: the board's newest status
    reply says level low or full, or the server is missing journal_backlog records or more
    that the board says it has (they wait on the board, taking its flash)."""
    status = {}
    # each board's newest status reply only
    for device, result in tx.all(
            "SELECT device, result FROM commands c WHERE kind = 'status' AND result IS NOT "
            "NULL AND done_at = (SELECT max(done_at) FROM commands WHERE device = c.device "
            "AND kind = 'status' AND result IS NOT NULL)"):
        try:
            j = (json.loads(result).get("status") or {}).get("journal") or {}
        except (ValueError, AttributeError):
            continue
        if j.get("level"):
            status[device] = j
    out = {}
    for device, high, reported in tx.all(
            "SELECT device, high_seq, reported_seq FROM devices"):
        backlog = (reported or 0) - (high or 0)
        j = status.get(device) or {}
        if j.get("level") in ("low", "full"):
            sev = "critical" if j["level"] == "full" else "warning"
            out[(device, "")] = Alert(
                "journal_full", device, "", sev,
                j.get("message") or f"journal {j['level']}: sync required",
                {"level": j["level"], "free": j.get("free"), "backlog": backlog})
        elif backlog >= cfg["journal_backlog"]:
            out[(device, "")] = Alert(
                "journal_full", device, "", "warning",
                f"{backlog} records not uploaded: the journal is filling",
                {"backlog": backlog})
    return out


def records(tx, cfg, device, after):
    """[(seq, Alert or None, low-balance fact or None)] for `device`'s verified records
    above `after`, in order; and the highest sequence number looked at."""
    # the high-water mark first: on PostgreSQL each statement sees what was committed
    # when it began, and records above it are the next look's
    row = tx.one("SELECT high_seq FROM devices WHERE device = ?", (device,))
    high = row[0] if row else after
    marks = ", ".join("?" for _ in RECORD_TYPES)
    rows = tx.all(
        f"SELECT seq, type, t, amount, price, currency, program, source_kind, source, "
        f"card_counter, balance_before, balance_after, reason FROM records "
        f"WHERE device = ? AND seq > ? AND seq <= ? AND verified = 1 AND type IN ({marks}) "
        f"ORDER BY seq", (device, after, high, *RECORD_TYPES))
    out = []
    for (seq, rtype, t, amount, _price, cur, program, skind, source, counter, before, after_,
         text) in rows:
        a, low = None, None
        reason = text or ""
        at = {"seq": seq, "t": t}
        if rtype == "start_failed":
            paid = {"token": "QR token", "command": "phone"}.get(skind)
            what = f"refund due to the {paid} payer" if paid else "price given back as credit"
            a = Alert("start_failed", device, "", "warning",
                      f"washer did not start {program or ''} ({reason or 'no confirm'}): "
                      f"{what}", {**at, "amount": amount, "source": source})
        elif rtype == "coin_rejected":
            n = tx.one("SELECT count(*) FROM records WHERE device = ? AND type = "
                       "'coin_rejected' AND verified = 1 AND seq <= ? AND t > ?",
                       (device, seq, (t or 0) - cfg["coin_rejects"]["window_s"]))[0]
            if n >= cfg["coin_rejects"]["burst"]:
                a = Alert("coin_rejects", device, "", "warning",
                          f"{n} coins rejected within {cfg['coin_rejects']['window_s']} s: "
                          "a jammed acceptor or someone trying slugs", {**at, "count": n})
        elif rtype == "fault" and reason.startswith(COIN_BURST_FAULT):
            a = Alert("coin_rejects", device, "", "warning",
                      f"the board blocked coins: {reason}", at)
        elif rtype == "card_fraud":
            a = Alert("card_fraud", device, source, "critical",
                      f"card {source}: {reason}", at)
        elif rtype == "card_refused" and reason.startswith(LOCKOUT):
            a = Alert("card_lockout", device, source, "warning",
                      f"card {source} locked out ({reason[len(LOCKOUT):].strip()})", at)
        elif rtype == "refund":
            a = Alert("refund", device, "", "info",
                      f"the board refunded {money(amount, cur)}" +
                      (f": {reason}" if reason else ""), {**at, "amount": amount})
        elif rtype == OTA_ROLLBACK:
            a = Alert("release_rollback", device, "", "critical",
                      f"the new firmware rolled back: {reason or 'no reason given'}", at)
        elif rtype == "card_debit" and source:
            low = {"uid": source.lower(), "counter": counter, "before": before,
                   "after": after_, "currency": cur, "seq": seq}
        out.append((seq, a, low))
    return out, max(high, after)


def card_problems(tx, after, problem_id):
    """[(id, Alert)] of the server's card fraud findings with a problem id above `after`."""
    marks = ", ".join("?" for _ in CARD_PROBLEMS)
    out = []
    for pid, device, kind, seq, detail in tx.all(
            f"SELECT {problem_id}, device, kind, seq, detail FROM problems WHERE "
            f"{problem_id} > ? AND kind IN ({marks}) ORDER BY {problem_id}",
            (after, *CARD_PROBLEMS)):
        # the detail names the card first: "card 04a1b2c3: ..."
        uid = detail.split(":", 1)[0].removeprefix("card ") if detail else ""
        out.append((pid, Alert("card_fraud", device, uid, "critical", detail or kind,
                               {"problem": pid, "kind": kind, "seq": seq})))
    return out


def phone_refunds(tx, after):
    """[(settled_at, Alert)] of phone payments the provider refunded after `after`."""
    if not _has_table(tx, "payments"):
        return []
    return [(at, Alert("refund", device, pid, "info",
                       f"phone payment refunded: {money(amount, cur)} ({detail or 'refund'})",
                       {"payment": pid, "amount": amount}))
            for pid, device, amount, cur, detail, at in tx.all(
                "SELECT id, device, amount, currency, detail, settled_at FROM payments "
                "WHERE state = 'refunded' AND settled_at > ? ORDER BY settled_at", (after,))]


def _has_table(tx, name):
    if tx.store.dialect == "sqlite":
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    else:
        sql = "SELECT 1 FROM information_schema.tables WHERE table_name = ?"
    return tx.one(sql, (name,)) is not None
