"""`washpay server report`: what the ledger says, for the operator.

- revenue per device, day (UTC, from the board's clock; "clock not set" when the board had
  no trusted time) and payment type (cash, card, qr, app), verified records only, read
  from the per-day rollup ingest keeps (rollup.py);
- operator starts: the console's remote starts, free starts given by staff (counted, with
  the machine's price as their value), apart from the revenue and in none of its totals;
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
from host_tools.server import rollup

DEVICE_FAULTS = ("fault", "coin_rejected", "start_failed", "card_refused", "card_fraud",
                 "card_unresolved")


NO_CLOCK = "clock not set"


def _day(t, clock_ok):
    if not clock_ok or not t:
        return NO_CLOCK
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d")


def _utc_day(n):
    return NO_CLOCK if n == rollup.NO_CLOCK else _day(n * rollup.DAY, True)


def build(store, since=None):
    """The report as a dict (what --format json prints)."""
    revenue = defaultdict(lambda: [0, 0])  # (device, day, kind, currency) -> [count, sum]
    operator = defaultdict(lambda: [0, 0])
    refunds = defaultdict(lambda: [0, 0])
    # verified records only: bad tags are in problems, never in the money; voided card
    # debits are not in the rollup (the card was never charged)
    for n, device, kind, currency, count, amount in rollup.read(
            store, rollup.NO_CLOCK, 2**40, kinds=(*rollup.PAYMENT_KINDS, rollup.OPERATOR,
                                                   "refund")):
        day = _utc_day(n)
        if since and day != NO_CLOCK and day < since:
            continue
        r = (revenue if kind in rollup.PAYMENT_KINDS else
             operator if kind == rollup.OPERATOR else refunds)[(device, day, kind, currency)]
        r[0] += count
        r[1] += amount
    faults = defaultdict(int)  # (device, type) -> count
    marks = ", ".join("?" for _ in DEVICE_FAULTS)
    for device, rtype, n, count in store.query(
            f"SELECT r.device, r.type, {rollup.DAY_SQL}, count(*) FROM records r "
            f"WHERE r.type IN ({marks}) AND r.verified = 1 GROUP BY 1, 2, 3", DEVICE_FAULTS):
        day = _utc_day(int(n))
        if not (since and day != NO_CLOCK and day < since):
            faults[(device, rtype)] += int(count)
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
        "operator_starts": money(operator),
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
           "refund": ("refund", "refunds"), "manual": ("manual refund", "manual refunds"),
           rollup.OPERATOR: ("operator start", "operator starts")}


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
    if rep["operator_starts"]:
        table("Operator starts from the console (free: not revenue; value at the machine's "
              "price)", ["device", "day", "starts", "value"],
              [[r["device"], r["day"], _counted(rollup.OPERATOR, r["count"]),
                money(r["amount"], r["currency"])] for r in rep["operator_starts"]])
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
