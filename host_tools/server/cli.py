"""The `washpay broker ...` and `washpay server ...` commands (host_tools/cli.py adds them),
and the `washpay sim run --broker` option's files."""

import json
import os
import signal
import sys
import time
from pathlib import Path

from host_tools import broker as B
from host_tools import keys as K


def _site_key(path):
    """The site key as every command finds it: --site-key, else $WASHPAY_SITE_KEY, else the
    default file (host_tools/site.py); exit status 2 with what to do when there is none."""
    from host_tools import site

    try:
        return site.load(path)[0]
    except K.KeyFileError as e:
        print(f"washpay: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_broker_init(args):
    key = _site_key(args.site_key)
    devices = [d for item in args.device for d in item.split(",") if d]
    remove = [d for item in args.remove_device for d in item.split(",") if d]
    if args.kind == "nats":
        return _nats_init(args, key, devices, remove)
    if args.nodes != 1 or args.tls:
        print("washpay broker init: --nodes and --tls are for --kind nats (Mosquitto has one "
              "node, with a plain and a TLS listener)", file=sys.stderr)
        return 2
    try:
        s = B.init(args.dir, key, devices, port=args.port, tls_port=args.tls_port,
                   remove=remove, new_ports=args.new_ports)
    except B.BrokerError as e:
        print(f"washpay broker init: {e}", file=sys.stderr)
        return 2
    d = Path(args.dir)
    print(f"broker directory {d}: {len(s['devices'])} device(s), plain port {s['port']}, "
          f"TLS port {s['tls_port']}")
    print(f"  changed: {'; '.join(s['changes']) or 'nothing'}")
    if s["changes"] and not s["changes"][0].startswith("new broker"):
        print("  a running broker takes the change when it is restarted (washpay broker run)")
    print(f"  devices: {', '.join(s['devices']) or 'none'}")
    print(f"  boards:  broker mqtts://{s['host']}:{s['tls_port']}, CA {d / 'ca.der'}")
    keyopt = f" --site-key {args.site_key}" if args.site_key else ""
    print(f"  server:  washpay server run{keyopt} --broker mqtt://{s['host']}:{s['port']}")
    print(f"  start:   washpay broker run --dir {d}")
    return 0


def _nats_init(args, key, devices, remove):
    from host_tools.cluster import nats as N

    if remove or args.port or args.tls_port or args.new_ports:
        print("washpay broker init: --remove-device, --port, --tls-port and --new-ports are "
              "for Mosquitto; a NATS cluster's ports are chosen per node (broker.json)",
              file=sys.stderr)
        return 2
    try:
        N.nats_command()
        s = N.init(args.dir, key, devices, nodes=args.nodes, tls=args.tls)
    except B.BrokerError as e:
        print(f"washpay broker init: {e}", file=sys.stderr)
        return 2
    urls = N.Cluster(args.dir).url()
    print(f"NATS cluster directory {args.dir}: {len(s['nodes'])} node(s), "
          f"{len(s['devices'])} device(s), MQTT {'over TLS' if s['tls'] else 'plain'}")
    print(f"  nodes:   {urls}")
    keyopt = f" --site-key {args.site_key}" if args.site_key else ""
    ca = f" --ca {Path(args.dir) / 'ca.pem'}" if s["tls"] else ""
    print(f"  server:  washpay server run{keyopt}{ca} --broker {urls} "
          "--no-shared-subscription")
    print(f"  start:   washpay broker run --dir {args.dir}")
    return 0


def cmd_broker_run(args):
    if B.load_settings_or_none(args.dir).get("kind") == "nats":
        return _nats_run(args)
    try:
        b = B.Broker(args.dir).start()
    except B.BrokerError as e:
        print(f"washpay broker run: {e}", file=sys.stderr)
        return 2
    print(f"mosquitto running: {b.url()} and {b.url(tls=True)} (Ctrl-C stops it)", flush=True)
    _serve_until_stopped(b.stop, alive=lambda: b.proc.poll() is None)
    return 0


def _nats_run(args):
    from host_tools.cluster import nats as N

    try:
        c = N.Cluster(args.dir).start()
    except B.BrokerError as e:
        print(f"washpay broker run: {e}", file=sys.stderr)
        return 2
    print(f"nats-server cluster running: {c.url()} (Ctrl-C stops it)", flush=True)
    _serve_until_stopped(c.stop, alive=lambda: any(N.nodes_alive(c)))
    return 0


def _serve_until_stopped(stop_fn, alive=lambda: True):
    """Wait for Ctrl-C or SIGTERM (or `alive()` turning false), then call stop_fn."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop and alive():
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        stop_fn()


def cmd_server_run(args):
    from host_tools.server.alerts.config import AlertConfigError
    from host_tools.server.alerts.config import parse as parse_alerts
    from host_tools.server.service import Server, ServiceError
    from host_tools.server.store import StoreError
    from host_tools.server.web import WebError, load_config

    key = _site_key(args.site_key)
    try:
        # the server config file (--web-config): its "alerts" object (docs/alerts.md)
        server_cfg = load_config(args.web_config)
        alerts = parse_alerts(server_cfg.get("alerts"))
        # WASHPAY_INGEST_FULL_PATH=1: every batch through the full path, as before the
        # short path for resends existed (`washpay fleet bench` compares the two)
        full = os.environ.get("WASHPAY_INGEST_FULL_PATH") == "1"
        srv = Server(args.db, key, args.broker, ca=args.ca, instance=args.instance,
                     log=lambda m: print(m, flush=True), alerts=alerts,
                     max_downloads=args.max_downloads, covered_fast=not full,
                     shared=not args.no_shared_subscription).start()
    except (ServiceError, StoreError, OSError, WebError, AlertConfigError) as e:
        print(f"washpay server run: {e}", file=sys.stderr)
        return 2
    web = None
    if args.http:
        from host_tools.server.web import Web, parse_http

        try:
            host, port = parse_http(args.http)
            web = Web(server_cfg, args.db, key, srv.send_command,
                      log=lambda m: print(m, flush=True)).start(host, port)
        except (WebError, StoreError) as e:
            srv.stop()
            print(f"washpay server run: {e}", file=sys.stderr)
            return 2
        print(f"web: customer pages at {web.url}/m/<device id> "
              f"({web.provider.name} payments); operator console at {web.url}/console "
              "(accounts: washpay server user add)", flush=True)
    print(f"server: ledger {srv.store!r}; Ctrl-C stops", flush=True)

    def stop():
        if web:
            web.stop()
        srv.stop()

    _serve_until_stopped(stop)
    return 0


def cmd_sticker(args):
    from host_tools.server.web.sticker import StickerError, sticker

    try:
        url = sticker(args.device, args.base_url, png=args.png, svg=args.svg)
    except StickerError as e:
        print(f"washpay sticker: {e}", file=sys.stderr)
        return 2
    print(url)
    return 0


def cmd_server_report(args):
    from host_tools.server import report

    store = _open_ledger(args.db, "report")
    if store is None:
        return 2
    try:
        rep = report.build(store, since=args.since)
    finally:
        store.close()
    (report.format_json if args.format == "json" else report.format_text)(rep, sys.stdout)
    return 0


def cmd_server_problems(args):
    store = _open_ledger(args.db, "problems")
    if store is None:
        return 2
    try:
        if args.resolve is not None:
            return _resolve_problem(store, args)
        key = store.problem_id
        where = "" if args.all else " WHERE state = 'open'"
        rows = store.query(
            f"SELECT {key}, device, kind, seq, state, data_lost, count, first_at, last_at, "
            f"resolution, detail FROM problems{where} ORDER BY {key}")
    finally:
        store.close()
    names = ("id", "device", "kind", "seq", "state", "data_lost", "times", "first_at",
             "last_at", "resolution", "detail")
    problems = [dict(zip(names, r, strict=True)) for r in rows]
    if args.json:
        json.dump(problems, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if not problems:
        print("no open problems" if not args.all else "no problems")
        return 0
    for p in problems:
        lost = p["data_lost"] or "not yet known"
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(p["last_at"] or 0))
        print(f"{p['id']:>5}  {p['device']}  {p['kind']} at {p['seq']}  {p['state']}, "
              f"data lost: {lost}, {p['times']}x, last {when} UTC")
        print(f"       {p['resolution'] or p['detail'] or ''}")
    return 0


def _resolve_problem(store, args):
    lost = "yes" if args.lost else "no" if args.no_loss else None
    with store.transaction() as tx:
        row = tx.one(f"SELECT data_lost, state FROM problems WHERE {store.problem_id} = ?",
                     (args.resolve,))
        if row is None:
            print(f"washpay server problems: no problem {args.resolve} (list them with "
                  "`washpay server problems --all`)", file=sys.stderr)
            return 2
        if lost is None:
            lost = row[0]
        if lost is None:
            print(f"washpay server problems: say whether data was lost with problem "
                  f"{args.resolve}: --lost or --no-loss", file=sys.stderr)
            return 2
        note = "operator: " + (args.note or ("data lost" if lost == "yes" else "no data lost"))
        p = tx.resolve_problem(args.resolve, lost, note)
    print(f"problem {p['id']} ({p['device']} {p['kind']} at {p['seq']}) resolved, "
          f"data lost: {lost}")
    return 0


def _ledger(db):
    """The ledger store; a ValueError says why there is none."""
    from host_tools.server.store import StoreError, open_store

    if not db.startswith(("postgres", "sqlite:")) and not Path(db).exists():
        raise ValueError(f"no ledger at {db} (start `washpay server run`, or name the "
                         "database with --db)")
    try:
        return open_store(db)
    except StoreError as e:
        raise ValueError(str(e)) from None


def _open_ledger(db, who):
    """The ledger store, or None after saying why not (exit status 2)."""
    try:
        return _ledger(db)
    except ValueError as e:
        print(f"washpay server {who}: {e}", file=sys.stderr)
        return None


def cmd_server_cards(args):
    from host_tools.server import credit

    try:
        policy = credit.load_policy(args.policy) if args.policy else None
    except credit.PolicyError as e:
        print(f"washpay server cards: {e}", file=sys.stderr)
        return 2
    store = _open_ledger(args.db, "cards")
    if store is None:
        return 2
    try:
        rep = credit.build(store, policy)
    finally:
        store.close()
    (credit.format_json if args.json else credit.format_text)(rep, sys.stdout)
    return 0


def _new_password(args, name):
    """The new password: the first line of --password-file (- is stdin), else asked twice
    on the terminal. Never an argument: the command line is visible to every user."""
    import getpass

    if args.password_file:
        try:
            text = (sys.stdin.read() if args.password_file == "-"
                    else Path(args.password_file).read_text(encoding="utf-8"))
        except OSError as e:
            raise ValueError(f"cannot read --password-file {args.password_file}: "
                             f"{e.strerror}") from None
        lines = text.splitlines()
        if not lines or not lines[0]:
            raise ValueError(f"--password-file {args.password_file}: the password is its "
                             "first line, and it is empty")
        return lines[0]
    if not sys.stdin.isatty():
        raise ValueError("no terminal to ask for the password: give --password-file FILE "
                         "(its first line), or - for standard input")
    first = getpass.getpass(f"new password for {name}: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ: nothing changed, try again")
    return first


def cmd_server_user(args):
    """washpay server user add|remove|passwd|list: the operator console's accounts."""
    from host_tools.server.web.console.accounts import AccountError, Accounts
    from host_tools.server.web.db import LockedStore

    who = f"user {args.user_command}"
    try:
        store = _ledger(args.db) if args.user_command != "add" else _ledger_create(args.db)
    except ValueError as e:
        print(f"washpay server {who}: {e}", file=sys.stderr)
        return 2
    actor = "cli:" + (os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid()))
    try:
        acc = Accounts(store, LockedStore(store).lock)
        if args.user_command == "list":
            users = acc.list()
            if args.json:
                json.dump(users, sys.stdout, indent=1)
                sys.stdout.write("\n")
            elif not users:
                print("no operators: add one with `washpay server user add NAME --role owner`")
            for u in [] if args.json else users:
                last = (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(u["last_active"]))
                        if u["last_active"] else "never")
                print(f"{u['name']:<24} {u['role']:<10} last active {last}")
            return 0
        name = args.name.strip().lower()
        if args.user_command == "remove":
            acc.remove(name)
            acc.audit(actor, None, "user_remove", name)
            print(f"operator {name} removed; their sessions ended")
            return 0
        if args.user_command == "add":
            from host_tools.server.web.console.accounts import check_name, check_role

            check_name(name), check_role(args.role)
            if acc.role(name) is not None:
                raise AccountError(f"operator {name} exists: change the password with "
                                   f"`washpay server user passwd {name}`, or remove it first")
            acc.add(name, args.role, _new_password(args, name))
            acc.audit(actor, None, "user_add", name, {"role": args.role})
            print(f"operator {name} added ({args.role}): log in at <server>/console/login")
            return 0
        if acc.role(name) is None:
            raise AccountError(f"no operator {name} (`washpay server user list`)")
        acc.passwd(name, _new_password(args, name), role=args.role)
        acc.audit(actor, None, "user_passwd", name,
                  {"role": args.role} if args.role else None)
        print(f"operator {name}: new password{f', role {args.role}' if args.role else ''}; "
              "their sessions ended and their failed logins cleared")
        return 0
    except (AccountError, ValueError) as e:
        print(f"washpay server {who}: {e}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _ledger_create(db):
    """The ledger store, created if it is a new SQLite file (a user may be added first)."""
    from host_tools.server.store import StoreError, open_store

    try:
        return open_store(db)
    except StoreError as e:
        raise ValueError(str(e)) from None


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


def _login_name():
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (a container): still an operator
        return "unknown"


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


def _tiers_args(args):
    """tiers [UID=TIER | UID=-]... [--from-scores --policy FILE]: {uid: tier or None}.
    The words win over the scores for the same card."""
    from host_tools.server import credit

    tiers = {}
    if args.from_scores:
        try:
            policy = credit.load_policy(args.policy)
        except credit.PolicyError as e:
            raise ValueError(str(e)) from None
        store = _ledger(args.db)
        try:
            tiers = credit.plan(store, args.device, policy)
        finally:
            store.close()
    for w in args.words:
        uid, eq, tier = w.partition("=")
        if not eq or not uid or not tier:
            raise ValueError(f"tiers: {w!r}: write UID=TIER (e.g. 04a1b2c3=late), or UID=- "
                             "to clear the card's override")
        try:
            b = bytes.fromhex(uid)
        except ValueError:
            raise ValueError(f"tiers: {uid!r} is not a card UID in hex") from None
        tiers[b.hex()] = None if tier == "-" else tier
    if not tiers and not args.from_scores:
        raise ValueError("tiers: give UID=TIER or UID=- words, or --from-scores --policy FILE")
    return tiers


def _send_tiers(args, key):
    """A tiers change in as many commands as it takes (each at most COMMAND_MAX bytes),
    one after the other; stops at the first that is not done. Exit status as for one."""
    from host_tools.server import commands as C
    from host_tools.server.service import ServiceError, send_command
    from host_tools.server.store import StoreError

    try:
        tiers = _tiers_args(args)
        chunks = C.tiers_chunks(tiers)
        payloads = [C.build(key, args.device, "tiers", ttl_s=args.ttl, tiers=c) for c in chunks]
    except (C.CommandError, ValueError) as e:
        print(f"washpay server command: {e}", file=sys.stderr)
        return 2
    if not chunks:
        print(json.dumps({"result": "nothing to send",
                          "reason": "no card has a tier by the policy, and the board holds "
                          "no override the server sent"}))
        return 0
    for i, (chunk, (payload, cid)) in enumerate(zip(chunks, payloads, strict=True)):
        try:
            res = send_command(args.db, key, args.broker, args.device, payload, cid.hex(),
                               "tiers", {"tiers": chunk}, ca=args.ca, wait_s=args.wait)
        except (ServiceError, StoreError) as e:
            print(f"washpay server command: {e}" + (
                f" (after {i} of {len(chunks)} commands were done: run it again)" if i
                else ""), file=sys.stderr)
            return 1 if i else 2
        if res is None:
            print(json.dumps({"cmd": cid.hex(), "result": "no reply",
                              "reason": f"the board did not answer within {args.wait:g} s "
                              "(offline? the broker keeps the command for it)"}))
            return 1
        print(json.dumps(res), flush=True)
        if res.get("result") != "done":
            return 1
    return 0


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
    if (args.from_scores or args.policy) and args.kind != "tiers":
        print(f"washpay server command {args.kind}: --from-scores and --policy are the "
              "tiers command's", file=sys.stderr)
        return 2
    if args.kind == "tiers":
        if bool(args.from_scores) != bool(args.policy):
            print("washpay server command tiers: --from-scores and --policy go together "
                  "(the policy maps scores to tiers)", file=sys.stderr)
            return 2
        return _send_tiers(args, key)
    kind = "price-table" if args.table else args.kind
    try:
        cmd_args = _command_args(args)
        payload, cid = C.build(key, args.device, kind, ttl_s=args.ttl, **cmd_args)
        # the ledger keeps the table sent (the config was only for the check)
        cmd_args.pop("config", None)
        if kind == "start" and not args.amount:
            # nothing paid: a free start at the machine's price, given by whoever runs this
            # command, counted as an operator start, not revenue (host_tools/server/rollup.py)
            cmd_args["operator"] = "cli:" + _login_name()
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


def cmd_server_import(args):
    from host_tools.server.importer import import_command

    return import_command(args)


def sim_broker_files(state, device_id, broker=None, ca=None):
    """Factory files for a simulated board's first start: config.json with the broker URL,
    and broker_ca.der. A board whose flash exists already keeps its own config. A ValueError
    says what is wrong with the URL or the CA file; then nothing was written."""
    ca_der = check_sim_broker(broker, ca)
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
    if ca_der is not None:
        (prov / "broker_ca.der").write_bytes(ca_der)


def check_sim_broker(broker=None, ca=None):
    """The CA certificate's DER bytes (None without --broker-ca), once the URL and the file
    are checked; a ValueError says what is wrong. Nothing is written."""
    from host_tools.provision import Refused, check_broker

    try:
        check_broker(broker)
    except Refused as e:
        raise ValueError(str(e)) from None
    return _ca_der(ca) if ca else None


def _ca_der(path):
    """The bytes of a CA certificate file in DER (what the board loads), checked."""
    from cryptography import x509

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"--broker-ca {path}: {e.strerror} (the site CA is BROKER_DIR/ca.der, "
                         "written by `washpay broker init`)") from None
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        raise ValueError(f"--broker-ca {path} is not a certificate in DER form (give "
                         "BROKER_DIR/ca.der, not ca.pem)") from None
    return data


SITE_KEY_HELP = "the site key file (default: $WASHPAY_SITE_KEY, else ~/.config/washpay/site.key)"


def add_parsers(sub):
    br = sub.add_parser("broker", help="the site's MQTT broker (Mosquitto, or a NATS "
                        "cluster)").add_subparsers(
        dest="broker_command", required=True
    )
    init = br.add_parser(
        "init", help="write Mosquitto's config, password file, ACL and TLS certificates",
        description="Writes DIR/mosquitto.conf, passwd (one user per device, passwords "
        "derived from the site key), acl (each device only its own topics), ca.pem/ca.der "
        "and the broker's certificate. Run it again with the new --device after adding "
        "devices: it keeps the ports, the certificates and the devices already there "
        "(--remove-device takes one away, --new-ports picks new ports) and says what "
        "changed.",
    )
    init.add_argument("--dir", required=True, help="the broker's directory")
    init.add_argument("--site-key", default=None, help=SITE_KEY_HELP)
    init.add_argument("--device", action="append", default=[], metavar="ID[,ID...]",
                      help="a device id (repeat, or separate with commas)")
    init.add_argument("--remove-device", action="append", default=[], metavar="ID[,ID...]",
                      help="take a device's user away (repeat, or separate with commas)")
    init.add_argument("--port", type=int, default=None,
                      help="plain port (default: the one already chosen, else a free one)")
    init.add_argument("--tls-port", type=int, default=None,
                      help="TLS port (default: the one already chosen, else a free one)")
    init.add_argument("--new-ports", action="store_true",
                      help="pick new free ports instead of keeping the ones already chosen")
    init.add_argument("--kind", choices=("mosquitto", "nats"), default="mosquitto",
                      help="mosquitto (one node; the default) or nats: a NATS cluster with "
                      "MQTT (docs/fleet.md)")
    init.add_argument("--nodes", type=int, default=1,
                      help="nats: how many nodes (3 survive the loss of one)")
    init.add_argument("--tls", action="store_true",
                      help="nats: the nodes' MQTT listeners speak TLS (the site CA)")
    init.set_defaults(func=cmd_broker_init)
    run = br.add_parser("run", help="run the broker (Mosquitto, or every node of a NATS "
                        "cluster) on loopback in the foreground")
    run.add_argument("--dir", required=True)
    run.set_defaults(func=cmd_broker_run)

    srv = sub.add_parser("server", help="the ledger server: ingest, acks, reports"
                         ).add_subparsers(dest="server_command", required=True)
    r = srv.add_parser(
        "run", help="receive boards' journals, verify, store, acknowledge",
        description="Several `server run` processes (each with its own --instance) may "
        "share one PostgreSQL database: the broker splits the boards' traffic between them.",
    )
    r.add_argument("--site-key", default=None, help=SITE_KEY_HELP)
    r.add_argument("--broker", required=True,
                   help="mqtt://host:port or mqtts://host:port; a cluster's nodes separated "
                   "by commas (a lost node: the server moves to the next)")
    r.add_argument("--no-shared-subscription", action="store_true",
                   help="plain subscriptions, for a broker without MQTT shared subscriptions "
                   "(NATS): run one ingest process then")
    r.add_argument("--ca", default=None, help="the site CA (PEM) for an mqtts:// broker")
    r.add_argument("--db", default=os.environ.get("WASHPAY_DB", "ledger.db"),
                   help="ledger: a SQLite file (default ledger.db) or postgresql://...")
    r.add_argument("--instance", type=int, default=0,
                   help="this process's number when several ingest processes share a database")
    r.add_argument("--max-downloads", type=int, default=8, metavar="N",
                   help="boards downloading a firmware release at once (docs/ota.md, "
                   "\"The server\"); the others are offered it as these finish")
    r.add_argument("--http", default=None, metavar="HOST:PORT",
                   help="also serve the customers' pay-by-phone pages here "
                   "(docs/phone-payment.md), e.g. 127.0.0.1:8080")
    r.add_argument("--web-config", default=os.environ.get("WASHPAY_WEB_CONFIG"),
                   metavar="FILE", help="the server config (JSON: machines, payment "
                   "provider and its keys, \"alerts\": docs/alerts.md); default "
                   "$WASHPAY_WEB_CONFIG, else the sandbox provider, the firmware's default "
                   "programs and no alert destinations")
    r.set_defaults(func=cmd_server_run)
    st = sub.add_parser("sticker", help="a machine's QR sticker: its pay-by-phone page")
    st.add_argument("--device", required=True, help="the board's device id")
    st.add_argument("--base-url", default=os.environ.get("WASHPAY_BASE_URL",
                                                         "http://127.0.0.1:8080"),
                    help="where customers reach `server run --http` (default "
                    "$WASHPAY_BASE_URL, else http://127.0.0.1:8080)")
    st.add_argument("--png", default=None, metavar="FILE", help="write the sticker as PNG")
    st.add_argument("--svg", default=None, metavar="FILE", help="write the sticker as SVG")
    st.set_defaults(func=cmd_sticker)
    rep = srv.add_parser("report", help="revenue, backlog and faults from the ledger")
    rep.add_argument("--db", default=os.environ.get("WASHPAY_DB", "ledger.db"))
    rep.add_argument("--format", choices=("table", "json"), default="table")
    rep.add_argument("--since", default=None, metavar="YYYY-MM-DD",
                     help="revenue from this day on")
    rep.set_defaults(func=cmd_server_report)
    prob = srv.add_parser(
        "problems", help="list the problems the server found; resolve one",
        description="Lists the open problems (--all: resolved ones too). A gap or a "
        "malformed batch resolves by itself once the ledger holds every record it concerned "
        "(nothing was lost); the others (bad_tag, fork, rollback, card findings) stay open "
        "until an operator resolves them after looking: --resolve ID, saying whether data "
        "was lost (docs/sync.md, \"Problems\").")
    prob.add_argument("--db", default=os.environ.get("WASHPAY_DB", "ledger.db"))
    prob.add_argument("--all", action="store_true", help="resolved problems too")
    prob.add_argument("--json", action="store_true", help="print JSON")
    prob.add_argument("--resolve", type=int, default=None, metavar="ID",
                      help="mark problem ID resolved")
    loss = prob.add_mutually_exclusive_group()
    loss.add_argument("--lost", action="store_true", help="--resolve: data was lost")
    loss.add_argument("--no-loss", action="store_true", help="--resolve: no data was lost")
    prob.add_argument("--note", default=None, help="--resolve: what was found or done")
    prob.set_defaults(func=cmd_server_problems)
    cards = srv.add_parser(
        "cards", help="each card's credit score (laundry not collected) and tier by policy",
        description="Per card UID over the policy's window (default 90 days): cycles paid "
        "(card debits not cancelled), cycles whose laundry was not collected, the score "
        "(100 - 20 per cycle not collected, at least 0) and the tier the policy gives it "
        "(docs/pricing.md, \"Credit score and tiers\"). A policy is JSON: {\"window_days\": "
        "90, \"tiers\": [{\"below\": 40, \"tier\": \"late\"}, {\"below\": 70, \"tier\": "
        "\"watch\"}]}.",
    )
    cards.add_argument("--db", default=os.environ.get("WASHPAY_DB", "ledger.db"))
    cards.add_argument("--policy", default=None, metavar="FILE",
                       help="scores to tiers (JSON); without one no tier is shown")
    cards.add_argument("--json", action="store_true", help="print JSON")
    cards.set_defaults(func=cmd_server_cards)
    imp = srv.add_parser(
        "import", help="a pulled journal (washpay journal pull, or a flash dump) into the "
        "ledger, as if it had come over MQTT",
        description="Verifies and stores the records exactly as the MQTT ingest does (same "
        "duplicates, gaps, forks, card checks). Exit status 0: imported; 1: imported with "
        "problems (listed); 2: nothing stored.")
    imp.add_argument("files", nargs="+", metavar="DIR|FILE")
    imp.add_argument("--device", required=True, help="the board's device id")
    imp.add_argument("--site-key", required=True, help="the site key file")
    imp.add_argument("--db", default=os.environ.get("WASHPAY_DB", "ledger.db"),
                     help="ledger: a SQLite file (created if missing) or postgresql://...")
    imp.set_defaults(func=cmd_server_import)
    cmd = srv.add_parser(
        "command", help="send a board a signed command and print its reply",
        description="kinds: start --program P [--amount N] | price PROGRAM=PRICE... | "
        "price --table FILE [--config FILE] | blacklist-add UID[:reason]... | "
        "blacklist-remove UID... | clock | status | tiers [UID=TIER | UID=-]... "
        "[--from-scores --policy FILE]. A price table (docs/pricing.md) replaces "
        "the board's whole table; its version must be newer than the board's, and it is "
        "checked before it is sent as the board checks it. tiers sets (UID=TIER) or clears "
        "(UID=-) cards' tier overrides on the board; --from-scores sets the tier the policy "
        "gives each card's credit score and clears overrides the policy no longer gives "
        "(`washpay server cards` shows them), in as many commands as it takes. "
        "Exit status 0: executed; 1: refused or no reply; 2: not sent.",
    )
    cmd.add_argument("kind", choices=("start", "price", "blacklist-add", "blacklist-remove",
                                      "clock", "status", "tiers"))
    cmd.add_argument("words", nargs="*", help="price: quick=300 ...; blacklist: UIDs (hex); "
                     "tiers: 04a1b2c3=late, 04a1b2c3=- (clear)")
    cmd.add_argument("--device", required=True)
    cmd.add_argument("--site-key", default=None, help=SITE_KEY_HELP)
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
    cmd.add_argument("--from-scores", action="store_true",
                     help="tiers: the tier the --policy gives each card's score (from --db)")
    cmd.add_argument("--policy", default=None, metavar="FILE",
                     help="tiers --from-scores: scores to tiers (JSON, as `server cards`)")
    cmd.add_argument("--ttl", type=int, default=300, help="seconds the command stays valid")
    cmd.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the reply")
    cmd.set_defaults(func=cmd_server_command)
    user = srv.add_parser(
        "user", help="the operator console's accounts: add, remove, passwd, list",
        description="Roles: owner (everything, the audit log), attendant (view, remote "
        "start, refunds), viewer (view only). The password is asked on the terminal, or is "
        "the first line of --password-file (- for standard input); never an argument. "
        "passwd also unlocks an account locked by failed logins and ends its sessions "
        "(docs/console.md).").add_subparsers(dest="user_command", required=True)
    for name, what in (("add", "add an operator"), ("remove", "remove an operator"),
                       ("passwd", "set an operator's password (and --role)"),
                       ("list", "list the operators")):
        u = user.add_parser(name, help=what)
        if name != "list":
            u.add_argument("name", help="the operator's login name (lower case)")
        if name in ("add", "passwd"):
            u.add_argument("--role", choices=("owner", "attendant", "viewer"),
                           required=name == "add", default=None)
            u.add_argument("--password-file", default=None, metavar="FILE",
                           help="read the password from FILE's first line (- : stdin)")
        if name == "list":
            u.add_argument("--json", action="store_true", help="print JSON")
        u.add_argument("--db", default=os.environ.get("WASHPAY_DB", "ledger.db"),
                       help="ledger: a SQLite file or postgresql://...")
        u.set_defaults(func=cmd_server_user)
    from host_tools.server.alerts.cli import add_parsers as alerts_parsers

    alerts_parsers(srv)
    from host_tools.server.ota.cli import add_parsers as add_release_parsers

    add_release_parsers(srv)
    return srv
