"""The commands the console sent, read back from the ledger's commands table: each board's
reply (status sent → done / refused / invalid, and its result) is the push state the cards
and prices pages show. Sending is console().boards (boards.py)."""

import json


def command_rows(db, kinds, device=None, limit=200):
    """[{"id", "device", "kind", "args", "created", "status", "result", "done_at"}],
    newest first."""
    marks = ", ".join("?" for _ in kinds)
    sql = (f"SELECT id, device, kind, args, created, status, result, done_at FROM commands "
           f"WHERE kind IN ({marks})")
    args = list(kinds)
    if device:
        sql += " AND device = ?"
        args.append(device)
    sql += f" ORDER BY created DESC LIMIT {int(limit)}"
    out = []
    for cid, dev, kind, a, created, status, result, done in db.query(sql, args):
        out.append({"id": cid, "device": dev, "kind": kind, "args": _json(a),
                    "created": created, "status": status, "result": _json(result),
                    "done_at": done})
    return out


def _json(text):
    try:
        v = json.loads(text or "{}")
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}
