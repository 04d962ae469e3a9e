"""The `washpay` command: the simulated board, the demo, and (as issues land) the tools that
flash, provision and audit real boards."""

import argparse
import json
import sys

from host_tools.sim.client import SimClient, SimError


def cmd_sim_run(args):
    from host_tools.sim.runner import SimRunner

    SimRunner(
        args.state,
        heap=args.heap,
        device_id=args.device_id,
        quiet=args.quiet,
        firmware_dir=args.firmware,
    ).serve()
    return 0


def _ctl_request(args):
    """Turn `washpay sim ctl ...` words into one control-channel request."""
    w = args.words
    what = w[0] if w else ""
    rest = w[1:]

    def need(n, usage):
        if len(rest) < n:
            raise SimError(f"usage: washpay sim ctl {usage}")

    if what == "coin":
        need(1, "coin <value in minor units> [count] [gap-ms]")
        req = {"op": "coin", "value": int(rest[0])}
        if len(rest) > 1:
            req["count"] = int(rest[1])
        if len(rest) > 2:
            req["gap_ms"] = int(rest[2])
        return req
    if what == "pulses":
        need(1, "pulses <n> [width-ms] [gap-ms]")
        req = {"op": "pulses", "n": int(rest[0])}
        if len(rest) > 1:
            req["width_ms"] = int(rest[1])
        if len(rest) > 2:
            req["gap_ms"] = int(rest[2])
        return req
    if what == "glitch":
        req = {"op": "glitch", "count": int(rest[0]) if rest else 1}
        if "--inside" in rest:
            req["inside"] = True
        return req
    if what == "button":
        need(1, "button start|select")
        if rest[0] not in ("start", "select"):
            raise SimError("the machine has two buttons: start and select")
        return {"op": "button", "name": rest[0]}
    if what == "washer":
        need(1, "washer busy|idle|auto")
        if rest[0] not in ("busy", "idle", "auto"):
            raise SimError("washer takes busy, idle or auto")
        return {"op": "washer", "state": rest[0]}
    if what == "door":
        need(1, "door open|closed")
        if rest[0] not in ("open", "closed"):
            raise SimError("door takes open or closed")
        return {"op": "door", "state": rest[0]}
    if what == "net":
        need(1, "net up|down")
        if rest[0] not in ("up", "down"):
            raise SimError("net takes up or down")
        return {"op": "net", "state": rest[0]}
    if what == "power":
        need(1, "power cut [--after-ops N] [--torn] | power on")
        if rest[0] == "on":
            return {"op": "power", "state": "on"}
        if rest[0] != "cut":
            raise SimError("power takes cut or on")
        req = {"op": "power", "state": "cut"}
        if "--after-ops" in rest:
            i = rest.index("--after-ops")
            if i + 1 >= len(rest):
                raise SimError("--after-ops needs a number of flash operations")
            req["after_ops"] = int(rest[i + 1])
        if "--torn" in rest:
            if "after_ops" not in req:
                raise SimError("--torn needs --after-ops N: the cut lands on a flash operation")
            req["torn"] = True
        return req
    if what in ("status", "events"):
        return {"op": what}
    raise SimError(
        f"unknown sim command {what!r}: use coin, pulses, glitch, program, button, washer, "
        "door, net, power, status or events"
    )


def cmd_sim_ctl(args):
    client = SimClient(args.state)
    try:
        if args.words and args.words[0] == "program":
            if len(args.words) != 2:
                raise SimError("usage: washpay sim ctl program <name>")
            st = client.select_program(args.words[1])
            print(json.dumps({"ok": True, "program": st["program"]}))
            return 0
        reply = client.call(**_ctl_request(args))
    except (SimError, ValueError) as e:
        print(f"washpay sim ctl: {e}", file=sys.stderr)
        return 2
    print(json.dumps(reply, indent=1 if args.words[0] in ("status", "events") else None))
    return 0


def cmd_demo(args):
    from host_tools.demo import run_demo

    return run_demo(args.state, keep=args.keep)


def cmd_board_check(args):
    from host_tools import boards

    return boards.check_all()


def build_parser():
    p = argparse.ArgumentParser(prog="washpay", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("sim", help="the simulated board").add_subparsers(
        dest="sim_command", required=True
    )
    run = sim.add_parser("run", help="start the simulated board in the foreground")
    run.add_argument("--state", required=True, help="directory keeping the board's flash")
    run.add_argument(
        "--heap", default="512k", help="MicroPython GC heap (make bench shows the ESP32 fit)"
    )
    run.add_argument("--device-id", default="sim-0001", help="device id on first start")
    run.add_argument("--quiet", action="store_true", help="do not narrate events")
    run.add_argument(
        "--firmware",
        default=None,
        help="firmware directory mounted at /rom (default: the repository's firmware/; "
        "e.g. a tree compiled to .mpy)",
    )
    run.set_defaults(func=cmd_sim_run)
    ctl = sim.add_parser(
        "ctl",
        help="drive a running simulated board",
        description="commands: coin <value> [count] [gap-ms] | pulses <n> [width] [gap] | "
        "glitch [count] [--inside] | program <name> | button start|select | "
        "washer busy|idle|auto | door open|closed | net up|down | "
        "power cut [--after-ops N] [--torn] | power on | status | events",
    )
    ctl.add_argument("--state", required=True)
    ctl.add_argument("words", nargs="+")
    ctl.set_defaults(func=cmd_sim_ctl)

    demo = sub.add_parser("demo", help="a scripted purchase on the simulated board, narrated")
    demo.add_argument("--state", default=None, help="state directory (default: a temporary one)")
    demo.add_argument("--keep", action="store_true", help="keep the state directory")
    demo.set_defaults(func=cmd_demo)

    board = sub.add_parser("board", help="board descriptions").add_subparsers(
        dest="board_command", required=True
    )
    check = board.add_parser("check", help="validate every boards/*/board.json")
    check.set_defaults(func=cmd_board_check)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
