"""What the console says about the fleet: each device as the ledger and the server know it.

Filled in by the fleet pages (pages/fleet.py)."""

from host_tools.server.web.console.auth import console


def summary():
    """{"devices", "online", "offline", "problems", "backlog"} for the console's home."""
    db = console().accounts
    devices = db.query("SELECT COUNT(*), COALESCE(SUM(online), 0), "
                       "COALESCE(SUM(CASE WHEN reported_seq > high_seq "
                       "THEN reported_seq - high_seq ELSE 0 END), 0) FROM devices")[0]
    problems = db.query("SELECT COUNT(*) FROM problems WHERE state = 'open'")[0][0]
    return {"devices": devices[0], "online": devices[1], "offline": devices[0] - devices[1],
            "problems": problems, "backlog": devices[2]}
