"""`washpay server release publish|status|halt|resume` (docs/ota.md, "The server").

These commands only change the ledger; the running `washpay server run` reads it within a
second: it offers the release to the boards whose turn it is, serves their chunks and
records their reports. Exit status: 0 done; 2 refused (one line says why), nothing changed.
"""

import json
import os
import sys
import time

from host_tools.server.ota import rollout as RO

DB_HELP = "ledger: a SQLite file (default ledger.db) or postgresql://..."


def _store(db):
    from host_tools.server.cli import _ledger

    store = _ledger(db)
    RO.ensure_schema(store)
    return store


def _devices(store, args):
    if args.all:
        return [d for (d,) in store.query("SELECT device FROM devices ORDER BY device")]
    from host_tools.broker import check_device_id

    out = []
    for item in args.devices:
        for d in filter(None, item.split(",")):
            try:
                out.append(check_device_id(d.strip()))
            except Exception as e:  # noqa: BLE001 - BrokerError says what a device id is
                raise RO.RolloutError(str(e)) from None
    return out


def cmd_publish(args):
    from host_tools import release as R

    pub = args.pub or R.public_path_for(R.default_key_path())
    try:
        public = R.load_public(pub)
        doc = R.verify(args.release, public)
    except R.ReleaseError as e:
        return _refused("publish", e)
    try:
        store = _store(args.db)
    except ValueError as e:
        return _refused("publish", e)
    try:
        devices = _devices(store, args)
        if args.all and not devices:
            raise RO.RolloutError("--all: the ledger has heard from no board yet; name them "
                                  "with --devices ID,...")
        if devices and not 0 <= args.canary <= len(devices):
            raise RO.RolloutError(f"--canary {args.canary}: give 0 to {len(devices)} (the "
                                  f"number of devices)")
        budget = RO.failure_budget(args.max_failures, len(devices))
        boards = set(doc.get("boards") or ())
        digest = RO.store_release(store, args.release, doc)
        rid = RO.create(store, doc["version"], devices, canary=args.canary,
                        max_failures=budget)
        st = RO.status(store, rid)
    except RO.RolloutError as e:
        return _refused("publish", e)
    finally:
        store.close()
    print(f"rollout {rid}: release {doc['version']} (manifest sha256 {digest[:16]}..., "
          f"{st['size']} bytes, for boards {', '.join(sorted(boards)) or '?'}) to "
          f"{len(devices)} device(s)"
          + (f", the first {args.canary} as canaries" if args.canary else "")
          + f"; halts at the {_nth(budget)} board that fails")
    print("  `washpay server run` offers it; `washpay server release status` follows it")
    return 0


def _nth(n):
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _refused(what, e):
    print(f"washpay server release {what}: {e}", file=sys.stderr)
    return 2


def _when(t):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + " UTC" if t else "-"


def format_status(st, out):
    out.write(RO.summary(st) + "\n")
    out.write(f"  published {_when(st['created'])}, {st['size']} bytes, canaries "
              f"{st['canary']}\n")
    for d in st["devices"]:
        out.write(f"  {d['device']:<20} {'canary' if d['canary'] else '':<6} "
                  f"{RO.state_text(d)}"
                  + (" (not eligible: not counted as a failure)" if d["fault"] is False
                     else "") + "\n")


def cmd_status(args):
    try:
        store = _store(args.db)
    except ValueError as e:
        return _refused("status", e)
    try:
        st = RO.status(store, args.rollout)
    except RO.RolloutError as e:
        return _refused("status", e)
    finally:
        store.close()
    if args.json:
        json.dump(st, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        format_status(st, sys.stdout)
    return 0


def cmd_halt(args):
    try:
        store = _store(args.db)
    except ValueError as e:
        return _refused("halt", e)
    try:
        RO.halt(store, args.rollout, "halted by an operator"
                + (f": {args.reason}" if args.reason else ""))
        st = RO.status(store, args.rollout)
    except RO.RolloutError as e:
        return _refused("halt", e)
    finally:
        store.close()
    print(RO.summary(st))
    print("  no board is offered it or served a chunk until `washpay server release resume`")
    return 0


def cmd_resume(args):
    try:
        store = _store(args.db)
    except ValueError as e:
        return _refused("resume", e)
    try:
        budget = None
        if args.max_failures is not None:
            rid = RO.latest(store) if args.rollout is None else args.rollout
            boards = store.query("SELECT count(*) FROM rollout_devices WHERE rollout = ?",
                                 (rid,))[0][0]
            budget = RO.failure_budget(args.max_failures, boards)
        RO.resume(store, args.rollout, max_failures=budget)
        st = RO.status(store, args.rollout)
    except RO.RolloutError as e:
        return _refused("resume", e)
    finally:
        store.close()
    print(RO.summary(st))
    return 0


def add_parsers(srv):
    rel = srv.add_parser(
        "release", help="roll a signed firmware release out to boards (docs/ota.md)",
        description="publish verifies a release (washpay release build) with the release "
        "public key, stores it in the ledger and starts a rollout; the running `washpay "
        "server run` offers it to the boards (the canaries first: the others only after "
        "every canary reported healthy; a canary that rolls back or refuses halts the "
        "rollout, and so does the failure budget, --max-failures), serves their chunk "
        "requests and records each board's state."
    ).add_subparsers(dest="release_command", required=True)
    pub = rel.add_parser("publish", help="verify, store and start rolling out a release")
    pub.add_argument("release", metavar="REL", help="the release directory")
    who = pub.add_mutually_exclusive_group(required=True)
    who.add_argument("--devices", action="append", default=[], metavar="ID[,ID...]",
                     help="the boards to update, in order (repeat, or separate with commas)")
    who.add_argument("--all", action="store_true",
                     help="every board the ledger has heard from")
    pub.add_argument("--canary", type=int, default=0, metavar="N",
                     help="the first N boards get it first; the rest once they are healthy")
    pub.add_argument("--max-failures", default=RO.MAX_FAILURES, metavar="N|P%",
                     help="halt the rollout when N boards (or P%% of them) have failed: "
                     "rolled back, or refused it for a fault; a board the release is not "
                     "for (another board id, not newer, ...) does not count (default "
                     f"{RO.MAX_FAILURES})")
    pub.add_argument("--pub", default=None, metavar="FILE",
                     help="the release public key (default: release.pub next to "
                     "$WASHPAY_RELEASE_KEY, else ~/.config/washpay/release.pub)")
    pub.add_argument("--db", default=os.environ.get("WASHPAY_DB", "ledger.db"), help=DB_HELP)
    pub.set_defaults(func=cmd_publish)
    for name, fn, text in (("status", cmd_status, "a rollout, board by board"),
                           ("halt", cmd_halt, "stop offering and serving a rollout"),
                           ("resume", cmd_resume, "go on with a halted rollout")):
        p = rel.add_parser(name, help=text)
        p.add_argument("rollout", type=int, nargs="?", default=None,
                       help="the rollout's number (default: the latest)")
        p.add_argument("--db", default=os.environ.get("WASHPAY_DB", "ledger.db"),
                       help=DB_HELP)
        if name == "status":
            p.add_argument("--json", action="store_true", help="print JSON")
        if name == "halt":
            p.add_argument("--reason", default=None, help="why (shown in status)")
        if name == "resume":
            p.add_argument("--max-failures", default=None, metavar="N|P%",
                           help="a new failure budget (default: the one it had); it counts "
                           "the failures from the resume on")
        p.set_defaults(func=fn)
