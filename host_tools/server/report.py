"""`washpay server report`: what the ledger says, for the operator.

- revenue per device, day (UTC, from the board's clock; "clock not set" when the board had
  no trusted time) and payment type (cash, card, qr, app), verified records only;
- refunds, the same way;
- offline backlog per device: records the board said it had that the server does not,
  when it was last heard from, whether it is online;
- firmware rollouts (docs/ota.md): each board's state in each rollout, and why a rollout
  halted;
- faults: fault records on the boards (rejected coins, failed starts, faults) and what the
  server found (gaps, forks, bad tags, rollbacks, card fraud), with counts: the open
  problems in full, the resolved ones by whether data was lost (docs/sync.md, "Problems").
"""

import json
import time
from collections import defaultdict
from datetime import datetime, timezone

from host_tools.money import money

PAYMENT_TYPES = {"coin": "cash", "card_debit": "card", "token_redeem": "qr",
                 "remote_start": "app"}
DEVICE_FAULTS = ("fault", "coin_rejected", "start_failed", "card_refused", "card_fraud",
                 "card_unresolved")


def _day(t, clock_ok):
    if not clock_ok or not t:
        return "clock not set"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d")


def build(store, since=None):
    """The report as a dict (what --format json prints)."""
    types = tuple(PAYMENT_TYPES) + ("refund",) + DEVICE_FAULTS
    marks = ", ".join("?" for _ in types)
    rows = store.query(
        f"SELECT device, seq, type, t, clock_ok, currency, amount, verified FROM records "
        f"WHERE type IN ({marks})",
        types,
    )
    voided = store.voided_card_debits()  # cancelled: the card was never charged
    revenue = defaultdict(lambda: [0, 0])  # (device, day, kind, currency) -> [count, sum]
    refunds = defaultdict(lambda: [0, 0])
    faults = defaultdict(int)  # (device, type) -> count
    for device, seq, rtype, t, clock_ok, currency, amount, verified in rows:
        if not verified or (device, seq) in voided:
            continue  # bad tags are in problems, never in the money
        day = _day(t, clock_ok)
        if since and day != "clock not set" and day < since:
            continue
        if rtype in PAYMENT_TYPES:
            r = revenue[(device, day, PAYMENT_TYPES[rtype], currency)]
        elif rtype == "refund":
            r = refunds[(device, day, "refund", currency)]
        else:
            faults[(device, rtype)] += 1
            continue
        r[0] += 1
        r[1] += amount or 0
    for device, at, currency, amount in _manual_refunds(store):
        # given back by hand in the console (docs/alerts.md): no board record says so
        day = _day(at, True)
        if since and day < since:
            continue
        r = refunds[(device, day, "manual", currency)]
        r[0] += 1
        r[1] += amount or 0
    devices = store.query(
        "SELECT device, high_seq, reported_seq, last_seen, online, batches, duplicates "
        "FROM devices ORDER BY device"
    )
    waiting = {d: (n, lo) for d, n, lo in store.query(
        "SELECT device, count(*), min(seq) FROM pending GROUP BY device")}
    key = store.problem_id
    open_ = defaultdict(lambda: {"ids": [], "records": 0, "times": 0, "lost": set()})
    resolved = defaultdict(lambda: {"records": 0, "times": 0, "last": 0.0})
    latest = {}
    for pid, device, kind, seq, detail, n, state, lost, at in store.query(
        f"SELECT {key}, device, kind, seq, detail, count, state, data_lost, "
        f"coalesce(resolved_at, last_at) FROM problems ORDER BY last_at, {key}"
    ):
        if state == "resolved":
            r = resolved[(device, kind, lost or "unknown")]
            r["last"] = max(r["last"], at or 0)
        else:
            r = open_[(device, kind)]
            r["ids"].append(pid)
            r["lost"].add(lost)
            latest[(device, kind)] = (seq, detail)
        r["records"] += 1
        r["times"] += n

    def money(d):
        return [{"device": k[0], "day": k[1], "type": k[2], "currency": k[3],
                 "count": v[0], "amount": v[1]} for k, v in sorted(d.items())]

    now = time.time()
    from host_tools.server.web import reconcile

    phone = reconcile.build(store, since=since, now=now)
    from host_tools.server.ota import rollout

    rollouts = rollout.all_status(store)
    return {
        **({"rollouts": rollouts} if rollouts else {}),
        **({"phone_payments": phone} if phone is not None else {}),
        "revenue": money(revenue),
        "refunds": money(refunds),
        "devices": [
            {"device": d, "stored": hi, "board_newest": rep, "backlog": max(0, rep - hi),
             "last_seen": seen, "silent_s": round(now - seen) if seen else None,
             "online": None if online is None else bool(online), "batches": b,
             "duplicates": dup, "waiting": waiting.get(d, (0, None))[0],
             "missing": (f"{hi + 1}..{waiting[d][1] - 1}" if d in waiting else None)}
            for d, hi, rep, seen, online, b, dup in devices
        ],
        "faults": [{"device": k[0], "type": k[1], "count": v}
                   for k, v in sorted(faults.items())],
        "problems": [
            {"device": d, "kind": k, "state": "open", "ids": v["ids"],
             "records": v["records"], "times": v["times"], "data_lost": _lost(v["lost"]),
             "last_seq": latest[(d, k)][0], "last": latest[(d, k)][1]}
            for (d, k), v in sorted(open_.items())
        ],
        "resolved": [
            {"device": d, "kind": k, "state": "resolved", "data_lost": lost,
             "records": v["records"], "times": v["times"], "last_resolved": v["last"]}
            for (d, k, lost), v in sorted(resolved.items())
        ],
    }


def _manual_refunds(store):
    """(device, at, currency, amount) of the console's manual refunds; none on a ledger
    that never ran the console."""
    if store.dialect == "sqlite":
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'console_refunds'"
    else:
        sql = "SELECT 1 FROM information_schema.tables WHERE table_name = 'console_refunds'"
    if not store.query(sql):
        return []
    return store.query("SELECT device, at, currency, amount FROM console_refunds "
                       "WHERE kind = 'manual'")


# what one record of each kind of payment is: a cash figure counts coins, not washes
COUNTED = {"cash": ("coin", "coins"), "card": ("card payment", "card payments"),
           "qr": ("QR token", "QR tokens"), "app": ("remote start", "remote starts"),
           "refund": ("refund", "refunds"), "manual": ("manual refund", "manual refunds")}


def _counted(kind, n):
    one, many = COUNTED.get(kind, ("record", "records"))
    return f"{n} {one if n == 1 else many}"


def _lost(values):
    """Whether open problems of one kind lost data: yes if any did, else not yet known if
    any may still heal, else no."""
    if "yes" in values:
        return "yes"
    if None in values or "unknown" in values:
        return "not yet known"
    return "no"


def format_text(rep, out):
    from host_tools.server.ota import rollout

    def table(title, header, rows):
        out.write(f"\n{title}\n")
        if not rows:
            out.write("  (none)\n")
            return
        cells = [header] + [[str(c) for c in r] for r in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
        for r in cells:
            out.write("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                      .rstrip() + "\n")

    table("Revenue (verified records)",
          ["device", "day", "type", "payments", "amount"],
          [[r["device"], r["day"], r["type"], _counted(r["type"], r["count"]),
            money(r["amount"], r["currency"])] for r in rep["revenue"]])
    totals = defaultdict(int)
    for r in rep["revenue"]:
        totals[(r["device"], r["currency"])] += r["amount"]
    table("Revenue per device", ["device", "amount"],
          [[d, money(v, c)] for (d, c), v in sorted(totals.items())])
    if rep["refunds"]:
        table("Refunds", ["device", "day", "refunds", "amount"],
              [[r["device"], r["day"], _counted("refund", r["count"]),
                money(r["amount"], r["currency"])] for r in rep["refunds"]])
    table("Boards: offline backlog", ["device", "stored", "board newest", "backlog",
                                      "online", "last heard", "missing (waiting)"],
          [[d["device"], d["stored"], d["board_newest"], d["backlog"],
            {True: "yes", False: "no", None: "?"}[d["online"]],
            f"{d['silent_s']} s ago" if d["silent_s"] is not None else "never",
            f"{d['missing']} ({d['waiting']})" if d["missing"] else ""]
           for d in rep["devices"]])
    table("Faults on the boards", ["device", "record type", "records"],
          [[f["device"], f["type"], f["count"]] for f in rep["faults"]])
    phone = rep.get("phone_payments")
    if phone and phone["days"]:
        def cell(r, c):
            v = r[c]
            return f"{v['count']} / {money(v['amount'], r['currency'])}" if v["count"] else "-"

        table("Phone payments (docs/phone-payment.md): paid = started + credit kept + "
              "tokens used + refunded + open",
              ["day", "paid", "started", "credit kept", "token used", "refunded", "open",
               "adds up"],
              [[r["day"], *[cell(r, c) for c in ("paid", "started", "credit_kept",
                                                 "token_used", "refunded", "open")],
                "yes" if r["balanced"] else "NO"] for r in phone["days"]])
        if phone["anomalies"]:
            table("Phone payments to look at", ["payment", "device", "what"],
                  [[a["payment"], a["device"], a["problem"]] for a in phone["anomalies"]])
    for st in rep.get("rollouts", ()):
        table(f"Firmware {rollout.summary(st)}", ["device", "canary", "state", "since"],
              [[d["device"], "yes" if d["canary"] else "", rollout.state_text(d),
                time.strftime("%Y-%m-%d %H:%M", time.gmtime(d["updated"] or 0))]
               for d in st["devices"]])
    table("Problems found by the server, open (`washpay server problems` to list and "
          "resolve)", ["device", "kind", "ids", "records", "times", "data lost", "latest"],
          [[p["device"], p["kind"], _ids(p["ids"]), p["records"], p["times"], p["data_lost"],
            (p["last"] or "")[:60]] for p in rep["problems"]])
    if rep["resolved"]:
        table("Problems resolved", ["device", "kind", "records", "data lost"],
              [[p["device"], p["kind"], p["records"], p["data_lost"]]
               for p in rep["resolved"]])


def _ids(ids):
    return ",".join(str(i) for i in ids[:5]) + (f" +{len(ids) - 5}" if len(ids) > 5 else "")


def format_json(rep, out):
    # amounts stay minor units of each row's currency ("amount": 250 with "currency": "EUR"
    # is 2.50 EUR); "count" is records: coins for cash, card payments for card, ...
    json.dump({"amounts": "minor units of the row's currency", **rep}, out, indent=1)
    out.write("\n")
