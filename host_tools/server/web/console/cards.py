"""What the console says about a card (docs/console.md, "Cards"): its shadow balance (the
ledger's cards table, kept by ingest), credit score (host_tools/server/credit.py), the tier
override each board may hold, fraud flags (the boards' card_fraud / card_refused records
and the server's card problems), top-ups and payments, and its blacklist state on each
board (the blacklist commands sent and each board's reply)."""

from host_tools.server import credit
from host_tools.server.web.console.command_log import command_rows

BLACKLIST_KINDS = ("blacklist-add", "blacklist-remove")
FRAUD_TYPES = ("card_fraud", "card_refused", "card_unresolved")


def card_list(db, prefix=None, after=None, limit=50):
    """One page of cards by UID: ({"uid", "counter", "balance", "device", "updated"},
    next cursor or None)."""
    sql = "SELECT uid, counter, balance, device, updated FROM cards WHERE 1 = 1"
    args = []
    if prefix:
        sql += " AND uid >= ? AND uid < ?"
        args += [prefix, prefix + "~"]
    if after:
        sql += " AND uid > ?"
        args.append(after)
    sql += f" ORDER BY uid LIMIT {int(limit) + 1}"
    rows = [{"uid": u, "counter": c, "balance": b, "device": d, "updated": t}
            for u, c, b, d, t in db.query(sql, args)]
    return rows[:limit], (rows[limit - 1]["uid"] if len(rows) > limit else None)


def blacklist_state(db, uid):
    """{device: {"state": "blacklisted"|"removed", "reason", "status", "at", "id"}}: the
    newest blacklist command naming the card, per board, and the board's reply to it
    ("sent": no reply yet)."""
    out = {}
    for row in reversed(command_rows(db, BLACKLIST_KINDS, limit=5000)):  # oldest first
        a = row["args"]
        if row["kind"] == "blacklist-add":
            hit = [c for c in a.get("cards") or () if c and c[0] == uid]
            if hit:
                out[row["device"]] = {"state": "blacklisted", "reason": hit[0][1],
                                      "status": row["status"], "at": row["created"],
                                      "id": row["id"]}
        elif uid in (a.get("uids") or ()):
            out[row["device"]] = {"state": "removed", "reason": None, "status": row["status"],
                                  "at": row["created"], "id": row["id"]}
    return out


def detail(db, uid, now):
    """Everything the card page shows ("seen": False if the ledger has no record of the
    card: a card reported lost before it was ever used here is blacklisted all the same)."""
    rows = db.query("SELECT uid, counter, balance, device, seq, updated FROM cards "
                    "WHERE uid = ?", (uid,))
    records = db.query(
        "SELECT device, seq, type, t, clock_ok, amount, currency, balance_before, "
        "balance_after, program, reason FROM records WHERE source = ? AND verified = 1 "
        "AND type IN ('card_debit', 'card_topup', 'card_fraud', 'card_refused', "
        "'card_unresolved', 'card_cancel') ORDER BY t DESC, device DESC, seq DESC LIMIT 200",
        (uid,))
    keys = ("device", "seq", "type", "t", "clock_ok", "amount", "currency", "balance_before",
            "balance_after", "program", "reason")
    recs = [dict(zip(keys, r, strict=True)) for r in records]
    card = dict(zip(("uid", "counter", "balance", "device", "seq", "updated"), rows[0],
                    strict=True)) if rows else {"uid": uid, "counter": None, "balance": None}
    score = next((c for c in credit.scores(db, now=now) if c["uid"] == uid), None)
    tiers = {}
    for (device,) in db.query("SELECT DISTINCT device FROM commands WHERE kind = 'tiers'"):
        t = credit.board_tiers(db, device).get(uid)
        if t:
            tiers[device] = t
    problems = [{"device": d, "kind": k, "seq": s, "detail": det, "state": st}
                for d, k, s, det, st in db.query(
                    "SELECT device, kind, seq, detail, state FROM problems "
                    # the patterns are arguments: a literal % is a placeholder to psycopg
                    "WHERE kind LIKE ? AND detail LIKE ? ORDER BY last_at DESC LIMIT 50",
                    ("card%", f"%{uid}%"))]
    currency = next((r["currency"] for r in recs if r["currency"]), None)
    return {"card": card, "currency": currency, "seen": bool(rows or records),
            "score": score or {"uid": uid, "cycles": 0, "not_collected": 0,
                               "score": credit.score(0)},
            "window_days": credit.WINDOW_DAYS, "tiers": tiers,
            "topups": [r for r in recs if r["type"] == "card_topup"],
            "payments": [r for r in recs if r["type"] in ("card_debit", "card_cancel")],
            "flags": [r for r in recs if r["type"] in FRAUD_TYPES], "problems": problems,
            "blacklist": blacklist_state(db, uid)}
