"""What the console says about the fleet: each device as the ledger and the server know it
(docs/console.md, "Fleet": which field comes from where).

- the ledger's `devices` row (ingest): last batch received (last seen), the newest journal
  seq the board reported with it and the server's high-water mark (their difference is the
  backlog: records on the board not yet in the ledger), batches, duplicates;
- the board's retained `state` message (online / its last will offline), read through the
  web app's Machines.state (the same online/offline the customers' page shows);
- its journal records in the ledger: faults, the vend state, the price table version
  (boot records say `prices v<N>`, a price-table command_done `prices v<new> (was ...)`);
- the server's problems (chain, tags, gaps, forks, rollbacks, card checks);
- the newest reply to a `status` command (firmware version, journal level and free space,
  the board's own backlog, its current fault, prices version) as of its time: the board
  sends its status only when asked (the device page's "Ask for status").
"""

import json
import re

from host_tools.server.web.console.auth import console

PRICES_V = re.compile(r"prices v(\d+)")
# problem kinds by what they say about the journal (docs/sync.md, "Problems")
CHAIN_KINDS = {"chain": ("bad_tag",), "gaps": ("gap", "malformed"), "forks": ("fork",),
               "rollbacks": ("rollback",),
               "cards": ("card_arith", "card_counter_reuse", "card_balance_rise",
                         "card_balance_mismatch")}


def summary():
    """{"devices", "online", "offline", "problems", "backlog"} for the console's home."""
    rows = fleet()
    online = sum(1 for d in rows if d["online"])
    return {"devices": len(rows), "online": online, "offline": len(rows) - online,
            "problems": sum(d["problems_open"] for d in rows),
            "backlog": sum(d["backlog"] or 0 for d in rows)}


def _status_replies(db, device=None):
    """{device: (status dict, when)} from the newest `status` reply of each board."""
    where, args = "", ()
    if device is not None:
        where, args = " AND c.device = ?", (device,)
    rows = db.query(
        "SELECT c.device, c.result, c.done_at FROM commands c WHERE c.kind = 'status' "
        "AND c.status = 'done'" + where + " AND c.done_at = (SELECT MAX(d.done_at) FROM "
        "commands d WHERE d.device = c.device AND d.kind = 'status' AND d.status = 'done')",
        args)
    out = {}
    for dev, result, at in rows:
        try:
            st = (json.loads(result or "{}") or {}).get("status")
        except ValueError:
            st = None
        if isinstance(st, dict):
            out[dev] = (st, at)
    return out


def _ledger_prices_version(db, device):
    """(version, seq) from the board's newest record that names its price table."""
    rows = db.query(
        "SELECT reason, seq FROM records WHERE device = ? AND verified = 1 AND type IN "
        "('boot', 'command_done') AND reason LIKE '%prices v%' ORDER BY seq DESC LIMIT 1",
        (device,))
    if not rows:
        return None, None
    m = PRICES_V.search(rows[0][0] or "")
    return (int(m.group(1)), rows[0][1]) if m else (None, None)


def device(name):
    """One device's facts (the fleet row's fields), or None if neither the ledger nor the
    catalogue knows it."""
    c = console()
    db = c.accounts
    rows = db.query("SELECT device, first_seen, last_seen, online, state_at, high_seq, "
                    "reported_seq, batches, duplicates FROM devices WHERE device = ?", (name,))
    machines = c.machines
    if not rows and not (machines and name in machines.catalogue):
        return None
    row = rows[0] if rows else (name, None, None, None, None, 0, 0, 0, 0)
    return _device(db, row, _status_replies(db, name).get(name))


def fleet():
    """Every device the ledger or the web app's catalogue knows, by name."""
    c = console()
    db = c.accounts
    rows = {r[0]: r for r in db.query(
        "SELECT device, first_seen, last_seen, online, state_at, high_seq, reported_seq, "
        "batches, duplicates FROM devices")}
    for name in (c.machines.catalogue if c.machines else ()):
        rows.setdefault(name, (name, None, None, None, None, 0, 0, 0, 0))
    status = _status_replies(db)
    return [_device(db, rows[k], status.get(k)) for k in sorted(rows)]


def _device(db, row, status):
    machines = console().machines
    (name, first_seen, last_seen, _online, state_at, high, reported, batches, dups) = row
    st = machines.state(name) if machines else {"state": "unknown", "last_seen": last_seen}
    problems = {}
    for kind, n in db.query("SELECT kind, COUNT(*) FROM problems WHERE device = ? AND "
                            "state = 'open' GROUP BY kind", (name,)):
        problems[kind] = n
    fault = db.query("SELECT seq, type, reason, t, received_at FROM records WHERE device = ? "
                     "AND type = 'fault' ORDER BY seq DESC LIMIT 1", (name,))
    out_of_order = st.get("state") == "out_of_order"
    version, version_seq = _ledger_prices_version(db, name)
    board = status[0] if status else {}
    journal = board.get("journal") or {}
    sync = board.get("sync") or {}
    return {
        "device": name,
        "name": machines.name(name) if machines else name,
        "state": st.get("state"),
        "online": st.get("state") not in ("offline", "unknown", None),
        "last_seen": st.get("last_seen") or last_seen,
        "first_seen": first_seen,
        "state_at": state_at,
        "high_seq": high,
        "reported_seq": reported,
        "backlog": max(0, (reported or 0) - (high or 0)),
        "batches": batches,
        "duplicates": dups,
        "problems": problems,
        "problems_open": sum(problems.values()),
        "last_fault": ({"seq": fault[0][0], "reason": fault[0][2],
                        "t": fault[0][3] or fault[0][4]} if fault else None),
        "out_of_order": out_of_order,
        "out_of_order_reason": st.get("reason") if out_of_order else None,
        "prices_version": version if version is not None else board.get("prices_version"),
        "prices_version_from": ("journal" if version is not None
                                else "status" if board.get("prices_version") is not None
                                else None),
        "prices_version_seq": version_seq,
        # from the newest status reply (None: never asked)
        "status_at": status[1] if status else None,
        "firmware": board.get("version"),
        "journal_level": journal.get("level"),
        "journal_free": journal.get("free"),
        "journal_capacity": journal.get("capacity"),
        "journal_message": journal.get("message"),
        "board_backlog": sync.get("backlog"),
        "board_fault": board.get("fault"),
        "board_faults": board.get("faults"),
    }


def verification(name):
    """The journal verification status of a device: what ingest checked and found.

    {"stored", "verified", "unverified", "high_seq", "reported_seq", "waiting",
     "duplicates", "chain"|"gaps"|"forks"|"rollbacks"|"cards": {"open", "resolved"},
     "problems": [every problem, newest first]}"""
    db = console().accounts
    stored, verified = db.query(
        "SELECT COUNT(*), COALESCE(SUM(verified), 0) FROM records WHERE device = ?",
        (name,))[0]
    row = db.query("SELECT high_seq, reported_seq, duplicates FROM devices WHERE device = ?",
                   (name,))
    high, reported, dups = row[0] if row else (0, 0, 0)
    key = db.store.problem_id
    problems = [dict(zip(("id", "kind", "seq", "detail", "state", "data_lost", "count",
                          "first_at", "last_at", "resolution", "upto"), r, strict=True))
                for r in db.query(
                    f"SELECT {key}, kind, seq, detail, state, data_lost, count, first_at, "
                    f"last_at, resolution, upto FROM problems WHERE device = ? "
                    f"ORDER BY last_at DESC", (name,))]
    out = {"stored": stored, "verified": verified, "unverified": stored - verified,
           "high_seq": high, "reported_seq": reported,
           "waiting": max(0, (reported or 0) - (high or 0)), "duplicates": dups,
           "problems": problems}
    for label, kinds in CHAIN_KINDS.items():
        out[label] = {"open": sum(1 for p in problems if p["kind"] in kinds
                                  and p["state"] == "open"),
                      "resolved": sum(1 for p in problems if p["kind"] in kinds
                                      and p["state"] != "open")}
    out["ok"] = not any(p["state"] == "open" for p in problems) and out["unverified"] == 0
    return out


EVENT_COLUMNS = ("seq", "type", "t", "clock_ok", "amount", "credit", "price", "currency",
                 "program", "source_kind", "source", "reason", "state", "verified",
                 "received_at")


def events(name, limit=50, before=None):
    """The device's newest journal records in the ledger, newest first."""
    db = console().accounts
    where, args = "device = ?", [name]
    if before is not None:
        where += " AND seq < ?"
        args.append(int(before))
    rows = db.query(f"SELECT {', '.join(EVENT_COLUMNS)} FROM records WHERE {where} "
                    "ORDER BY seq DESC LIMIT ?", (*args, int(limit)))
    return [dict(zip(EVENT_COLUMNS, r, strict=True)) for r in rows]
