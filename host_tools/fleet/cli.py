"""`washpay fleet ...`: the load generator (sim), its device ids (ids) and the scenarios
(bench). host_tools/cli.py adds these commands."""

import asyncio
import json
import sys
import time


def _site_key(path):
    from host_tools.server.cli import _site_key as load

    return load(path)


def cmd_fleet_ids(args):
    from host_tools.fleet.fleet import device_ids

    print(",".join(device_ids(args.devices, args.prefix)))
    return 0


def cmd_fleet_sim(args):
    from host_tools import broker as B
    from host_tools.fleet.bench import _nofile
    from host_tools.fleet.fleet import Fleet, device_ids
    from host_tools.server.service import ServiceError, parse_urls

    if args.devices < 1 or args.records_each < 0 or args.rate < 0 or args.duration < 0:
        print("washpay fleet sim: --devices must be at least 1, and --records-each, --rate "
              "and --duration not negative", file=sys.stderr)
        return 2
    try:
        _, tls = parse_urls(args.broker)
        ids = device_ids(args.devices, args.prefix)
        B.check_device_id(ids[-1])
    except (ServiceError, B.BrokerError) as e:
        print(f"washpay fleet sim: {e}", file=sys.stderr)
        return 2
    if tls:
        print("washpay fleet sim: the generator speaks plain MQTT (mqtt://host:port); TLS "
              "comes in a later increment", file=sys.stderr)
        return 2
    if _nofile() < args.devices + 50:
        print(f"washpay fleet sim: {args.devices} boards need more file descriptors than the "
              f"limit {_nofile()}: raise it (ulimit -n {2 * args.devices + 100})",
              file=sys.stderr)
        return 2
    key = _site_key(args.site_key)
    settings = {"backoff_min_ms": args.backoff_min_ms, "backoff_max_ms": args.backoff_max_ms}
    out = asyncio.run(_sim(Fleet(key, args.broker, ids, settings=settings), args))
    if args.json:
        print(json.dumps(out))
    else:
        print(" ".join(f"{k}={v}" for k, v in out.items()))
    if out["acked"] != out["records"]:
        print(f"washpay fleet sim: {out['records'] - out['acked']} records not acknowledged "
              f"within {args.timeout:.0f} s: is `washpay server run` on {args.broker}, and "
              f"does the broker know the fleet's devices (washpay broker init --device "
              f"$(washpay fleet ids {args.devices}))? First failure: {out['failures']}",
              file=sys.stderr)
        return 2
    return 0


async def _sim(fleet, args):
    fleet.backlog(args.records_each)
    await fleet.start(network=True)
    t0 = time.monotonic()
    sales = 0
    try:
        if args.rate and args.duration:
            await fleet.wait(lambda: fleet.stats.ready >= len(fleet.boards), args.timeout,
                             "every board online")
            sales = await fleet.trade(args.rate, args.duration)
        await fleet.drained(args.timeout)
    except TimeoutError:
        pass
    wall = time.monotonic() - t0
    await fleet.stop()
    lat = sorted(fleet.stats.latency)
    pct = (lambda p: round(1000 * lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 1)
           ) if lat else (lambda p: None)
    return {"boards": len(fleet.boards), "records": fleet.records, "acked": fleet.acked,
            "sales": sales, "seconds": round(wall, 2),
            "connects": len(fleet.stats.connect_times),
            "ack_ms_p50": pct(50), "ack_ms_p99": pct(99),
            "bad_acks": sum(b.bad_acks for b in fleet.boards),
            "failures": dict(fleet.stats.failures.most_common(3))}


def cmd_fleet_bench(args):
    from host_tools.fleet.bench import bench_command

    return bench_command(args)


def add_parsers(sub):
    from host_tools.fleet.bench import add_arguments
    from host_tools.server.cli import SITE_KEY_HELP

    fl = sub.add_parser("fleet", help="many simulated boards against a broker and the server"
                        ).add_subparsers(dest="fleet_command", required=True)
    s = fl.add_parser(
        "sim", help="N simulated boards speaking the board's protocol",
        description="Each board signs in with its own credentials derived from the site key, "
        "uploads journal records sealed as a board seals them, follows the acks, answers "
        "status and clock commands, and reconnects with the board's backoff. The broker must "
        "know the devices: washpay broker init --device $(washpay fleet ids N).")
    s.add_argument("--devices", type=int, required=True, help="how many boards")
    s.add_argument("--broker", required=True,
                   help="mqtt://host:port, or a cluster's nodes: mqtt://a:1,mqtt://b:2")
    s.add_argument("--site-key", default=None, help=SITE_KEY_HELP)
    s.add_argument("--records-each", type=int, default=0,
                   help="each board's journal backlog at the start (default 0)")
    s.add_argument("--rate", type=float, default=0.0,
                   help="sales a second over the whole fleet, after the backlog (default 0)")
    s.add_argument("--duration", type=float, default=10.0, help="seconds of sales (10)")
    s.add_argument("--prefix", default="fleet", help="device ids are PREFIX-00000, ... (fleet)")
    s.add_argument("--backoff-min-ms", type=int, default=1000)
    s.add_argument("--backoff-max-ms", type=int, default=60000)
    s.add_argument("--timeout", type=float, default=600.0,
                   help="give up waiting for the acks after this many seconds (600)")
    s.add_argument("--json", action="store_true", help="the summary as one JSON object")
    s.set_defaults(func=cmd_fleet_sim)
    i = fl.add_parser("ids", help="the fleet's device ids, comma-separated (for broker init)")
    i.add_argument("devices", type=int)
    i.add_argument("--prefix", default="fleet")
    i.set_defaults(func=cmd_fleet_ids)
    b = fl.add_parser("bench", help="the fleet scenarios with Mosquitto and the server "
                      "(steady state, outage): tables")
    add_arguments(b)
    b.set_defaults(func=cmd_fleet_bench)
