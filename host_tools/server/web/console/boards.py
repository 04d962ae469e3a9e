"""Signed commands from the console to the boards: built by host_tools/server/commands.py
(the same bytes `washpay server command` sends), published through the ledger server's
broker connection, kept in the ledger's commands table with the board's reply when it
comes (status, result, done_at: Server.on_message).

    cid = console().boards.send("laundry-7", "status")
    cid = console().boards.send("laundry-7", "price-table", table=table, config=cfg)
    console().boards.command(cid)   # {"id", "kind", "status", "result", ...} or None
"""

import json
import time

from host_tools.server import commands as C


class BoardsError(Exception):
    """The command could not be built or sent; the message says why."""


class Boards:
    def __init__(self, db, site_key, send, clock=time.time):
        self.db = db
        self.site_key = site_key
        self.send_fn = send  # Server.send_command(device, cid, kind, payload, args, expires)
        self.clock = clock

    def send(self, device, kind, ttl_s=300, **args):
        """Build, sign and publish one command; its id (hex). `args` are the
        commands.build arguments, kept as the command's args (JSON) in the ledger."""
        if self.send_fn is None or self.site_key is None:
            raise BoardsError("this web server sends no commands (run it with "
                              "`washpay server run --http`)")
        now = int(self.clock())
        try:
            payload, cid = C.build(self.site_key, device, kind, ttl_s=ttl_s, issued=now,
                                   **args)
        except (C.CommandError, ValueError, KeyError) as e:
            raise BoardsError(f"{kind} for {device}: {e}") from None
        try:
            self.send_fn(device, cid.hex(), kind, payload,
                         json.loads(json.dumps(args, default=str)), now + ttl_s)
        except Exception as e:  # noqa: BLE001 - the broker's error, said to the operator
            raise BoardsError(f"{kind} for {device} not sent: {e}") from None
        return cid.hex()

    def command(self, cid):
        rows = self.db.query("SELECT id, device, kind, args, status, result, created, "
                             "done_at FROM commands WHERE id = ?", (cid,))
        return _command(rows[0]) if rows else None

    def recent(self, device, limit=20):
        rows = self.db.query("SELECT id, device, kind, args, status, result, created, done_at "
                             "FROM commands WHERE device = ? ORDER BY created DESC LIMIT ?",
                             (device, int(limit)))
        return [_command(r) for r in rows]


def _command(row):
    names = ("id", "device", "kind", "args", "status", "result", "created", "done_at")
    out = dict(zip(names, row, strict=True))
    for k in ("args", "result"):
        try:
            out[k] = json.loads(out[k]) if out[k] else None
        except ValueError:
            pass
    return out
