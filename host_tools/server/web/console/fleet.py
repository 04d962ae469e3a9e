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


# What the fleet's lookups need so that a page stays quick with a long journal in the
# ledger: the boards' newest fault or price-table records without walking all their
# records (rare types: a short range of the index), the newest status replies without
# scanning every command.
INDEXES = """
CREATE INDEX IF NOT EXISTS records_type_device ON records (type, device, seq);
CREATE INDEX IF NOT EXISTS commands_device_kind ON commands (device, kind, done_at)
"""


def summary():
    """{"devices", "online", "offline", "problems", "backlog"} for the console's home."""
    rows = fleet()
    online = sum(1 for d in rows if d["online"])
    return {"devices": len(rows), "online": online, "offline": len(rows) - online,
            "problems": sum(d["problems_open"] for d in rows),
            "backlog": sum(d["backlog"] or 0 for d in rows)}


DEVICE_COLUMNS = ("device, first_seen, last_seen, online, state_at, high_seq, reported_seq, "
                  "batches, duplicates")
NEVER_SEEN = (None, None, None, None, 0, 0, 0, 0)


def _status_replies(tx, device=None):
    """{device: (status dict, when)} from the newest `status` reply of each board."""
    where, args = "", ()
    if device is not None:
        where, args = " AND c.device = ?", (device,)
    rows = tx.all(
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


def _ledger_prices_version(tx, device=None):
    """{device: (version, seq)} from each board's newest record that names its price table
    (`device`: that board only)."""
    where, args = ("AND device = ? ", (device,)) if device is not None else ("", ())
    rows = tx.all(
        "SELECT r.device, r.seq, r.reason FROM records r JOIN (SELECT device, MAX(seq) AS seq "
        "FROM records WHERE type IN ('boot', 'command_done') AND verified = 1 "
        f"AND reason LIKE ? {where}GROUP BY device) m "
        "ON m.device = r.device AND m.seq = r.seq", ("%prices v%", *args))
    out = {}
    for dev, seq, reason in rows:
        m = PRICES_V.search(reason or "")
        if m:
            out[dev] = (int(m.group(1)), seq)
    return out


def _last_faults(tx, device=None):
    """{device: (seq, reason, t, received_at)} of each board's newest fault record."""
    where, args = ("AND device = ? ", (device,)) if device is not None else ("", ())
    rows = tx.all(
        "SELECT r.device, r.seq, r.reason, r.t, r.received_at FROM records r JOIN (SELECT "
        f"device, MAX(seq) AS seq FROM records WHERE type = 'fault' {where}GROUP BY device) "
        "m ON m.device = r.device AND m.seq = r.seq", args)
    return {r[0]: r[1:] for r in rows}


def _ledger_facts(names=None):
    """{device: facts} of the ledger, read in one transaction and a few queries: the
    devices row, open problems by kind, newest fault record, price table version, newest
    status reply. `names`: these devices only (None: every device in the ledger)."""
    c = console()
    out = {}
    with c.accounts.tx() as tx:
        if names is None:
            rows = tx.all(f"SELECT {DEVICE_COLUMNS} FROM devices")
            problems = tx.all("SELECT device, kind, COUNT(*) FROM problems "
                              "WHERE state = 'open' GROUP BY device, kind")
            status, faults = _status_replies(tx), _last_faults(tx)
            versions = _ledger_prices_version(tx)
        else:
            rows, problems, status, faults, versions = [], [], {}, {}, {}
            for name in names:
                rows += tx.all(f"SELECT {DEVICE_COLUMNS} FROM devices WHERE device = ?",
                               (name,))
                problems += tx.all("SELECT device, kind, COUNT(*) FROM problems WHERE "
                                   "device = ? AND state = 'open' GROUP BY device, kind",
                                   (name,))
                status.update(_status_replies(tx, name))
                faults.update(_last_faults(tx, name))
                versions.update(_ledger_prices_version(tx, name))
        for row in rows:
            name = row[0]
            out[name] = {"row": row, "problems": {}, "status": status.get(name),
                         "fault": faults.get(name),
                         "version": versions.get(name, (None, None))}
        for name, kind, n in problems:
            if name in out:
                out[name]["problems"][kind] = n
    return out


def device(name):
    """One device's facts (the fleet row's fields), or None if neither the ledger nor the
    catalogue knows it."""
    machines = console().machines
    facts = _ledger_facts([name]).get(name)
    if facts is None:
        if not (machines and name in machines.catalogue):
            return None
        facts = {"row": (name, *NEVER_SEEN), "problems": {}, "status": None, "fault": None,
                 "version": (None, None)}
    return _device(facts)


def fleet():
    """Every device the ledger or the web app's catalogue knows, by name."""
    machines = console().machines
    facts = _ledger_facts()
    for name in (machines.catalogue if machines else ()):
        facts.setdefault(name, {"row": (name, *NEVER_SEEN), "problems": {}, "status": None,
                                "fault": None, "version": (None, None)})
    # Machines.states takes the store's lock itself: after the transaction above
    states = machines.states() if machines else {}
    return [_device(facts[k], states.get(k)) for k in sorted(facts)]


def _device(facts, st=None):
    machines = console().machines
    (name, first_seen, last_seen, _online, state_at, high, reported, batches,
     dups) = facts["row"]
    if st is None:
        st = machines.state(name) if machines else {"state": "unknown",
                                                      "last_seen": last_seen}
    problems, fault, status = facts["problems"], facts["fault"], facts["status"]
    out_of_order = st.get("state") == "out_of_order"
    version, version_seq = facts["version"]
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
        "last_fault": ({"seq": fault[0], "reason": fault[1], "t": fault[2] or fault[3]}
                       if fault else None),
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
