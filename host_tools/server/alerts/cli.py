"""`washpay server alerts|notices|phone`: the alerts, the notices outbox and its dead
letters, and the cards linked to a phone number, from a terminal (docs/alerts.md).

    washpay server alerts [--state open|acknowledged|closed|live|all] [--json]
    washpay server alerts ack ID --by NAME [--note TEXT]
    washpay server notices [--state pending|sent|dead] [--json]
    washpay server notices retry ID
    washpay server phone link UID PHONE [--threshold MINOR] | unlink UID | list
"""

import json
import os
import sys
import time

from host_tools.server.alerts import book
from host_tools.server.alerts.engine import create_tables
from host_tools.server.notices import outbox, phones


def _store(args, who):
    from host_tools.server.cli import _open_ledger

    store = _open_ledger(args.db, who)
    if store is not None:
        create_tables(store)
    return store


def _when(t):
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) if t else "-"


def _fail(who, e):
    print(f"washpay server {who}: {e}", file=sys.stderr)
    return 2


def cmd_alerts(args):
    store = _store(args, "alerts")
    if store is None:
        return 2
    try:
        if args.action == "ack":
            if args.id is None or not args.by:
                return _fail("alerts", "ack needs the alert's id and --by NAME (who saw it)")
            try:
                with store.transaction() as tx:
                    a = book.acknowledge(tx, args.id, args.by, args.note)
            except book.AlertError as e:
                return _fail("alerts", e)
            print(f"alert {a['id']} ({a['rule']} {a['device']}) acknowledged by "
                  f"{a['acked_by']}")
            return 0
        state = None if args.state == "all" else args.state
        with store.transaction() as tx:
            rows = book.listing(tx, state=state, limit=args.limit)
    finally:
        store.close()
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if not rows:
        print(f"no {args.state} alerts" if args.state != "all" else "no alerts")
    for a in rows:
        ack = f"acknowledged by {a['acked_by']}" if a["acked_by"] else "not acknowledged"
        print(f"{a['id']:>5}  {a['severity']:<8} {a['rule']:<16} {a['device'] or '-'}  "
              f"{a['count']}x, last {_when(a['last_at'])} UTC, {a['state']}, {ack}")
        print(f"       {a['message']}")
    return 0


def cmd_notices(args):
    store = _store(args, "notices")
    if store is None:
        return 2
    try:
        if args.action == "retry":
            if args.id is None:
                return _fail("notices", "retry needs the dead letter's id")
            try:
                n = outbox.retry(store, args.id)
            except outbox.NoticeError as e:
                return _fail("notices", e)
            print(f"notice {n['id']} to {n['destination']} queued again (a running "
                  "`washpay server run` sends it)")
            return 0
        rows = outbox.listing(store, state=args.state, limit=args.limit)
    except outbox.NoticeError as e:
        return _fail("notices", e)
    finally:
        store.close()
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if not rows:
        print(f"no {args.state or ''} notices".replace("  ", " "))
    for n in rows:
        print(f"{n['id']:>5}  {n['state']:<7} {n['channel']:<7} {n['destination']}  "
              f"{n['attempts']} attempts, created {_when(n['created'])} UTC")
        if n["last_error"]:
            print(f"       last error: {n['last_error']}")
    return 0


def cmd_phone(args):
    store = _store(args, "phone")
    if store is None:
        return 2
    try:
        if args.action == "link":
            if not args.uid or not args.phone:
                return _fail("phone", "link needs the card's UID and the phone number")
            r = phones.link(store, args.uid, args.phone, args.threshold,
                            who=os.environ.get("USER"))
            print(f"card {r['uid']} linked to {r['phone']}" +
                  (f" (threshold {r['threshold']})" if r["threshold"] else ""))
        elif args.action == "unlink":
            if not args.uid:
                return _fail("phone", "unlink needs the card's UID")
            phones.unlink(store, args.uid)
            print(f"card {phones.card_uid(args.uid)} unlinked")
        else:
            rows = phones.listing(store)
            if args.json:
                json.dump(rows, sys.stdout, indent=1)
                sys.stdout.write("\n")
            for r in rows if not args.json else ():
                print(f"{r['uid']}  {r['phone']}  threshold "
                      f"{r['threshold'] if r['threshold'] else 'default'}")
    except phones.PhoneError as e:
        return _fail("phone", e)
    finally:
        store.close()
    return 0


def add_parsers(srv):
    db = {"default": os.environ.get("WASHPAY_DB", "ledger.db"),
          "help": "ledger: a SQLite file (default ledger.db) or postgresql://..."}
    a = srv.add_parser("alerts", help="alerts: list, acknowledge (docs/alerts.md)")
    a.add_argument("action", nargs="?", choices=("list", "ack"), default="list")
    a.add_argument("id", nargs="?", type=int, help="ack: the alert's id")
    a.add_argument("--by", help="ack: who acknowledges (a name)")
    a.add_argument("--note", help="ack: what was done")
    a.add_argument("--state", default="open",
                   choices=("open", "acknowledged", "closed", "live", "all"),
                   help="which alerts (default open: not acknowledged)")
    a.add_argument("--limit", type=int, default=200)
    a.add_argument("--json", action="store_true")
    a.add_argument("--db", **db)
    a.set_defaults(func=cmd_alerts)
    n = srv.add_parser("notices", help="the notices outbox and its dead letters")
    n.add_argument("action", nargs="?", choices=("list", "retry"), default="list")
    n.add_argument("id", nargs="?", type=int, help="retry: the dead letter's id")
    n.add_argument("--state", default=None, choices=(outbox.PENDING, outbox.SENT, outbox.DEAD),
                   help="only these (dead: the dead letters)")
    n.add_argument("--limit", type=int, default=200)
    n.add_argument("--json", action="store_true")
    n.add_argument("--db", **db)
    n.set_defaults(func=cmd_notices)
    p = srv.add_parser("phone", help="cards linked to a phone for the low-balance SMS")
    p.add_argument("action", choices=("link", "unlink", "list"))
    p.add_argument("uid", nargs="?", help="the card's UID in hex")
    p.add_argument("phone", nargs="?", help="link: +country code and number")
    p.add_argument("--threshold", type=int, default=None,
                   help="link: SMS when the balance falls below this (minor units); "
                   "default: alerts.low_balance.threshold of the server config")
    p.add_argument("--json", action="store_true")
    p.add_argument("--db", **db)
    p.set_defaults(func=cmd_phone)
