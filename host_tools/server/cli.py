"""The `washpay broker ...` and `washpay server ...` commands (host_tools/cli.py adds them),
and the `washpay sim run --broker` option's files."""

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from host_tools import broker as B
from host_tools import keys as K


def _site_key(path):
    try:
        return K.load_site_key(path)
    except K.KeyFileError as e:
        raise SystemExit(f"washpay: {e}") from None


def cmd_broker_init(args):
    key = _site_key(args.site_key)
    devices = [d for item in args.device for d in item.split(",") if d]
    try:
        s = B.init(args.dir, key, devices, port=args.port, tls_port=args.tls_port)
    except B.BrokerError as e:
        print(f"washpay broker init: {e}", file=sys.stderr)
        return 2
    d = Path(args.dir)
    print(f"broker directory {d}: {len(devices)} device(s), plain port {s['port']}, "
          f"TLS port {s['tls_port']}")
    print(f"  boards:  broker mqtts://{s['host']}:{s['tls_port']}, CA {d / 'ca.der'}")
    print(f"  server:  washpay server run --site-key {args.site_key} "
          f"--broker mqtt://{s['host']}:{s['port']}")
    print(f"  start:   washpay broker run --dir {d}")
    return 0


def cmd_broker_run(args):
    try:
        b = B.Broker(args.dir).start()
    except B.BrokerError as e:
        print(f"washpay broker run: {e}", file=sys.stderr)
        return 2
    print(f"mosquitto running: {b.url()} and {b.url(tls=True)} (Ctrl-C stops it)", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop and b.proc.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        b.stop()
    return 0


def cmd_server_run(args):
    from host_tools.server.service import Server, ServiceError
    from host_tools.server.store import StoreError

    key = _site_key(args.site_key)
    try:
        srv = Server(args.db, key, args.broker, ca=args.ca, instance=args.instance,
                     log=lambda m: print(m, flush=True)).start()
    except (ServiceError, StoreError, OSError) as e:
        print(f"washpay server run: {e}", file=sys.stderr)
        return 2
    print(f"server: ledger {srv.store!r}; Ctrl-C stops", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


def cmd_server_report(args):
    from host_tools.server import report
    from host_tools.server.store import StoreError, open_store

    if not args.db.startswith(("postgres", "sqlite:")) and not Path(args.db).exists():
        print(f"washpay server report: no ledger at {args.db} (start `washpay server run`, "
              "or name the database with --db)", file=sys.stderr)
        return 2
    try:
        store = open_store(args.db)
    except StoreError as e:
        print(f"washpay server report: {e}", file=sys.stderr)
        return 2
    try:
        rep = report.build(store, since=args.since)
    finally:
        store.close()
    (report.format_json if args.format == "json" else report.format_text)(rep, sys.stdout)
    return 0


# the command's arguments: a ValueError says what is wrong (exit status 2, nothing sent)
def _json_file(path, what):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"cannot read {what} {path}: {e.strerror}") from None
    except ValueError as e:
        raise ValueError(f"{what} {path} is not JSON: {e}") from None


def _table_args(args):
    """price --table FILE [--config FILE]: the table (a "pricing" object, or a whole
    config.json holding one) and the board's config to check it against."""
    if args.words:
        raise ValueError("price: give PROGRAM=PRICE words or --table FILE, not both")
    table = _json_file(args.table, "price table")
    config = _json_file(args.config, "config") if args.config else None
    if isinstance(table, dict) and isinstance(table.get("pricing"), dict):
        config = table if config is None else config  # a whole config.json
        table = table["pricing"]
    return {"table": table, "config": config}


def _command_args(args):
    """The command's arguments from the words after its name."""
    kind, words = args.kind, args.words
    if kind == "start":
        return {"program": args.program, "amount": args.amount}
    if kind == "price" and args.table:
        return _table_args(args)
    if kind == "price":
        prices = {}
        for w in words:
            name, _, price = w.partition("=")
            if not name or not price.isdigit():
                raise ValueError(f"price: {w!r}: write PROGRAM=PRICE (minor units), "
                                 "e.g. quick=300")
            prices[name] = int(price)
        return {"prices": prices}
    if kind == "blacklist-add":
        cards = []
        for w in words:
            uid, _, reason = w.partition(":")
            cards.append((uid, reason or "blocked", int(time.time())))
        return {"cards": cards}
    if kind == "blacklist-remove":
        return {"uids": list(words)}
    return {}


def cmd_server_command(args):
    from host_tools.server import commands as C
    from host_tools.server.service import ServiceError, send_command
    from host_tools.server.store import StoreError

    key = _site_key(args.site_key)
    if args.kind == "start" and not args.program:
        print("washpay server command start: --program is required", file=sys.stderr)
        return 2
    if (args.table or args.config) and args.kind != "price":
        print(f"washpay server command {args.kind}: --table and --config are the price "
              "command's", file=sys.stderr)
        return 2
    if args.config and not args.table:
        print("washpay server command price: --config is what a --table is checked "
              "against; give the table too", file=sys.stderr)
        return 2
    kind = "price-table" if args.table else args.kind
    try:
        cmd_args = _command_args(args)
        payload, cid = C.build(key, args.device, kind, ttl_s=args.ttl, **cmd_args)
        # the ledger keeps the table sent (the config was only for the check)
        cmd_args.pop("config", None)
        res = send_command(args.db, key, args.broker, args.device, payload, cid.hex(),
                           kind, cmd_args, ca=args.ca, wait_s=args.wait)
    except (C.CommandError, ValueError, ServiceError, StoreError) as e:
        print(f"washpay server command: {e}", file=sys.stderr)
        return 2
    if res is None:
        print(json.dumps({"cmd": cid.hex(), "result": "no reply",
                          "reason": f"the board did not answer within {args.wait:g} s "
                          "(offline? the broker keeps the command for it)"}))
        return 1
    print(json.dumps(res))
    return 0 if res.get("result") in ("started", "done") else 1


def sim_broker_files(state, device_id, broker=None, ca=None):
    """Factory files for a simulated board's first start: config.json with the broker URL,
    and broker_ca.der. A board whose flash exists already keeps its own config."""
    st = Path(state)
    if (st / "flash.bin").exists():
        print("washpay sim run: the board's flash exists; --broker applies to a blank flash "
              "(delete STATE/flash.bin, or change /config.json with mpremote)", file=sys.stderr)
        return
    prov = st / "provision"
    prov.mkdir(parents=True, exist_ok=True)
    cfg_path = prov / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {"device_id": device_id}
    if broker:
        cfg["broker"] = broker
    cfg_path.write_text(json.dumps(cfg, indent=1))
    if ca:
        shutil.copy(ca, prov / "broker_ca.der")


def add_parsers(sub):
    br = sub.add_parser("broker", help="the site's MQTT broker (Mosquitto)").add_subparsers(
        dest="broker_command", required=True
    )
    init = br.add_parser(
        "init", help="write Mosquitto's config, password file, ACL and TLS certificates",
        description="Writes DIR/mosquitto.conf, passwd (one user per device, passwords "
        "derived from the site key), acl (each device only its own topics), ca.pem/ca.der "
        "and the broker's certificate. Run it again after adding devices.",
    )
    init.add_argument("--dir", required=True, help="the broker's directory")
    init.add_argument("--site-key", required=True, help="the site key file")
    init.add_argument("--device", action="append", default=[], metavar="ID[,ID...]",
                      help="a device id (repeat, or separate with commas)")
    init.add_argument("--port", type=int, default=None, help="plain port (default: free)")
    init.add_argument("--tls-port", type=int, default=None, help="TLS port (default: free)")
    init.set_defaults(func=cmd_broker_init)
    run = br.add_parser("run", help="run Mosquitto on loopback in the foreground")
    run.add_argument("--dir", required=True)
    run.set_defaults(func=cmd_broker_run)

    srv = sub.add_parser("server", help="the ledger server: ingest, acks, reports"
                         ).add_subparsers(dest="server_command", required=True)
    r = srv.add_parser(
        "run", help="receive boards' journals, verify, store, acknowledge",
        description="Several `server run` processes (each with its own --instance) may "
        "share one PostgreSQL database: the broker splits the boards' traffic between them.",
    )
    r.add_argument("--site-key", required=True, help="the site key file")
    r.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    r.add_argument("--ca", default=None, help="the site CA (PEM) for an mqtts:// broker")
    r.add_argument("--db", default=os.environ.get("WASHPAY_DB", "ledger.db"),
                   help="ledger: a SQLite file (default ledger.db) or postgresql://...")
    r.add_argument("--instance", type=int, default=0,
                   help="this process's number when several ingest processes share a database")
    r.set_defaults(func=cmd_server_run)
    rep = srv.add_parser("report", help="revenue, backlog and faults from the ledger")
    rep.add_argument("--db", default=os.environ.get("WASHPAY_DB", "ledger.db"))
    rep.add_argument("--format", choices=("table", "json"), default="table")
    rep.add_argument("--since", default=None, metavar="YYYY-MM-DD",
                     help="revenue from this day on")
    rep.set_defaults(func=cmd_server_report)
    cmd = srv.add_parser(
        "command", help="send a board a signed command and print its reply",
        description="kinds: start --program P [--amount N] | price PROGRAM=PRICE... | "
        "price --table FILE [--config FILE] | blacklist-add UID[:reason]... | "
        "blacklist-remove UID... | clock | status. A price table (docs/pricing.md) replaces "
        "the board's whole table; its version must be newer than the board's, and it is "
        "checked before it is sent as the board checks it. "
        "Exit status 0: executed; 1: refused or no reply; 2: not sent.",
    )
    cmd.add_argument("kind", choices=("start", "price", "blacklist-add", "blacklist-remove",
                                      "clock", "status"))
    cmd.add_argument("words", nargs="*", help="price: quick=300 ...; blacklist: UIDs (hex)")
    cmd.add_argument("--device", required=True)
    cmd.add_argument("--site-key", required=True)
    cmd.add_argument("--broker", required=True)
    cmd.add_argument("--ca", default=None)
    cmd.add_argument("--db", default=os.environ.get("WASHPAY_DB", "ledger.db"))
    cmd.add_argument("--program", default=None, help="start: the program")
    cmd.add_argument("--amount", type=int, default=0, help="start: amount paid (minor units)")
    cmd.add_argument("--table", default=None, metavar="FILE",
                     help="price: send this whole price table (JSON: a \"pricing\" object, or "
                     "a config.json holding one)")
    cmd.add_argument("--config", default=None, metavar="FILE",
                     help="price --table: the board's config.json, whose programs the table "
                     "is checked against (default: the table's file if it is a whole "
                     "config, else the firmware's default programs)")
    cmd.add_argument("--ttl", type=int, default=300, help="seconds the command stays valid")
    cmd.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the reply")
    cmd.set_defaults(func=cmd_server_command)
    return srv
