"""The console's commands to boards: built and signed by host_tools/server/commands.py (the
operator's `washpay server command` does the same), handed to the server's sender, which
publishes them and keeps each in the ledger's commands table; the board's reply updates
its row (status sent → done / refused / invalid). The pages read those rows back as the
push state of each board."""

import json
import time

from host_tools.server import commands as C

# how long a board may take a command after it is sent: a board offline for the night
# still takes a blacklist or a price table when it is back (a command lives 7 days at most)
TTL_S = {"blacklist-add": 2 * 86400, "blacklist-remove": 2 * 86400,
         "price-table": 2 * 86400}


class Pushes:
    def __init__(self, send, site_key, machines, clock=time.time):
        self._send = send
        self.site_key = site_key
        self.machines = machines  # web/machines.py: names, each board's config.json
        self.clock = clock

    def send(self, device, kind, args, by, **build_args):
        """Build, sign and send one command; returns its id (hex). CommandError if the
        command cannot be built (the firmware's rules refuse it): nothing is sent."""
        ttl = TTL_S.get(kind, 300)
        issued = int(self.clock())
        payload, cid = C.build(self.site_key, device, kind, ttl_s=ttl, issued=issued,
                               **build_args)
        self._send(device, cid.hex(), kind, payload, {**args, "by": by}, issued + ttl)
        return cid.hex()


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
