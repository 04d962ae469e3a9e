"""`washpay config get|set|push --port P`: read and change a board's /config.json.

    washpay config get  --port P [--json]
    washpay config set  --port P max_credit=3000 coins.table.8=500 'programs[0].price=300'
    washpay config push --port P config.json

Every change is checked before anything is written, by the firmware's own rules
(firmware/washpay/config.py, run under micropython on this machine through
host_tools/server/commands.py: this process imports no firmware module), written atomically
(a temporary file renamed over /config.json: LittleFS renames in one commit, so a power cut
leaves the old or the new file), and the board is restarted and waited for: the command ends
when the firmware has come up with the new config, or says why not.

The device id is the board's identity (its keys and its journal are derived from it): a
config that would change it is refused here; `washpay provision` changes identities.

Exit status: 0 done (and the board up with it); 1 written, but the board did not come up
with it; 2 refused, nothing written.
"""

import json
import re
import sys
import tempfile
from pathlib import Path

from host_tools import provision as P
from host_tools.console import Console, ConsoleError

CONFIG_PATH = "/config.json"
TEMP_PATH = "/config.json.new"

# run on the board: the config file's text (None: no file); the watchdog stretched as
# provisioning does, since the firmware that feeds it is stopped
READ = r"""
import sys, json
try:
    if sys.platform == "esp32":
        import machine
        machine.WDT(timeout=%(wdt)d).feed()
except Exception:
    pass
try:
    with open("/config.json") as f:
        _t = f.read()
except OSError:
    _t = None
print("WPCONFIG " + json.dumps({"text": _t}))
"""
RENAME = f"import os\nos.rename({TEMP_PATH!r}, {CONFIG_PATH!r})\nprint('WPRENAMED')"


class ConfigRefused(Exception):
    """Nothing was written; exit status 2."""


def read_config(port):
    """(text of /config.json or None, the config as a dict or None if it is not one). The
    firmware is stopped afterwards: restart the board."""
    try:
        out = P.mpremote(port, "exec", READ % {"wdt": P.MAINTENANCE_WDT_MS}, resume=False)
    except P.Refused as e:
        raise ConfigRefused(str(e)) from None
    for line in out.splitlines():
        if line.startswith("WPCONFIG "):
            text = json.loads(line[len("WPCONFIG "):])["text"]
            break
    else:
        raise ConfigRefused(f"the board at {port} did not show its config: "
                            f"{out.strip()[-200:]}")
    if text is None:
        return None, {}
    try:
        cfg = json.loads(text)
    except ValueError:
        return text, None
    return text, cfg if isinstance(cfg, dict) else None


def write_config(port, cfg):
    """Write `cfg` as /config.json: to a temporary file, then renamed over it."""
    data = P.canonical_json(cfg)
    with tempfile.TemporaryDirectory(prefix="washpay-config-") as tmp:
        local = Path(tmp) / "config.json"
        local.write_bytes(data)
        out = P.mpremote(port, "fs", "cp", str(local), ":" + TEMP_PATH, "+", "exec", RENAME)
    if "WPRENAMED" not in out:
        raise P.NotUp(f"the board did not confirm the rename of {TEMP_PATH}: {out[-200:]}")


def restart_and_wait(port, timeout):
    """Reset the board and wait for the firmware's boot report (None: it did not come)."""
    try:
        with Console(port) as con:
            return con.reset_and_wait_boot(timeout)
    except ConsoleError:
        return None


# ---- KEY=VALUE
def parse_path(text):
    """"coins.table.8", "programs[0].price", "$.max_credit" -> ["coins", "table", "8"] ..."""
    t = text[2:] if text.startswith("$.") else text
    t = re.sub(r"\[(\d+)\]", r".\1", t)
    parts = t.split(".")
    if not t or any(not p for p in parts):
        raise ConfigRefused(f"{text!r} is not a config key: write max_credit, coins.table.8 "
                            "or programs[0].price")
    return parts


def parse_value(text):
    """JSON if it reads as JSON (3000, true, {"a": 1}, "x"), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def assign(cfg, path, value):
    """Set `path` (parse_path's list) in the nested config `cfg` to `value`."""
    node = cfg
    for i, name in enumerate(path):
        last = i == len(path) - 1
        where = ".".join(path[: i + 1])
        key = name
        if isinstance(node, list):
            if not name.isdigit() or int(name) >= len(node):
                raise ConfigRefused(f"{where}: the list has {len(node)} entries (0 to "
                                    f"{len(node) - 1})")
            key = int(name)
        elif not isinstance(node, dict):
            raise ConfigRefused(f"{'.'.join(path[:i])} is not an object: cannot set {where}")
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and key not in node:
                node[key] = {}
            node = node[key]


def apply_settings(cfg, words):
    """A copy of `cfg` with each KEY=VALUE of `words` set -> (new config, changes text)."""
    new = json.loads(json.dumps(cfg))
    changes = []
    for w in words:
        key, eq, value = w.partition("=")
        if not eq:
            raise ConfigRefused(f"{w!r}: write KEY=VALUE, e.g. max_credit=3000")
        path = parse_path(key)
        if len(path) > 1 and path[0] not in new:
            # the firmware's default fills what the file leaves out: change that, not {}
            # (a coin added to an empty table would drop the default coins)
            new[path[0]] = firmware_default(path[0])
        assign(new, path, parse_value(value))
        changes.append(f"{key}={json.dumps(parse_value(value))}")
    return new, changes


def firmware_default(key):
    """The firmware's default for a top-level config key (washpay/config.py DEFAULTS),
    read under micropython as the checks are."""
    from host_tools.server.commands import CommandError, firmware_check

    code = ("import sys, json\nfrom washpay import config\nk = json.loads(sys.stdin.read())\n"
            "print(json.dumps(config.DEFAULTS[k]) if k in config.DEFAULTS else 'null')\n")
    try:
        value = json.loads(firmware_check(code, key, "the config") or "null")
    except (CommandError, ValueError) as e:
        raise ConfigRefused(str(e)) from None
    if value is None:
        raise ConfigRefused(f"unknown config key {key!r}")
    return value


# ---- the commands
def _check(cfg, board_cfg, port):
    """Refuse `cfg` unless the firmware takes it and it keeps the board's device id."""
    from host_tools.server.commands import CommandError, check_config

    have = (board_cfg or {}).get("device_id")
    if have and cfg.get("device_id", have) != have:
        raise ConfigRefused(f"the board at {port} is {have}; a config cannot change a board's "
                            f"identity (its keys and journal): washpay provision does")
    try:
        why = check_config(cfg)
    except CommandError as e:
        raise ConfigRefused(str(e)) from None
    if why:
        raise ConfigRefused(f"the firmware would refuse this config: {why}")


def _up(port, timeout, device_id, say):
    report = restart_and_wait(port, timeout)
    if report is None:
        raise P.NotUp(f"the board at {port} did not report its boot within {timeout:g} s")
    say(f"  boot:     {P.boot_text(report)}")
    if report.get("config_error"):
        raise P.NotUp(f"the board refused the config ({report['config_error']}): out of order")
    if device_id and report.get("device_id") != device_id:
        raise P.NotUp(f"the board came up as {report.get('device_id')!r}, not {device_id!r}")
    return report


def change(port, make, timeout=30.0, say=print):
    """Read the board's config, `make(text, cfg)` -> (new config, what changed), check it,
    write it, restart the board and wait for it. Returns the boot report, None if nothing
    changed."""
    P.check_port(port)
    try:
        text, cfg = read_config(port)
        new, what = make(text, cfg)
        _check(new, cfg, port)
    except ConfigRefused:
        restart_and_wait(port, timeout)  # a refusal leaves the machine running as it was
        raise
    if cfg is not None and new == cfg:
        say("  changes:  none: the board has this config")
        restart_and_wait(port, timeout)
        return None
    say(f"  changes:  {what}")
    try:
        write_config(port, new)
    except P.Refused as e:
        raise P.NotUp(f"writing stopped ({e}); /config.json is the old or the new one: "
                      "washpay config get shows which") from None
    return _up(port, timeout, new.get("device_id"), say)


def get(port, timeout=30.0):
    """(text, config dict or None, why the firmware refuses it or None); restarts the board."""
    from host_tools.server.commands import CommandError, check_config

    P.check_port(port)
    try:
        text, cfg = read_config(port)
    finally:
        restart_and_wait(port, timeout)
    if cfg is None:
        return text, None, "config.json is not a JSON object"
    try:
        why = check_config(cfg)
    except CommandError as e:
        why = f"not checked: {e}"
    return text, cfg, why


def _load_file(path):
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigRefused(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigRefused(f"{path} is not JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigRefused(f"{path}: a config is a JSON object (docs: README, Configuration)")
    return cfg


def pushed(cfg, file_cfg):
    """The config a push writes: the file, with the board's device id (and Wi-Fi, broker)
    where the file has none: a pushed price list does not take the board off its network."""
    new = dict(file_cfg)
    for key in ("device_id", "wifi", "broker"):
        if key not in new and (cfg or {}).get(key):
            new[key] = cfg[key]
    return new


def main(args, out=None, err=None):
    out = out or sys.stdout
    err = err or sys.stderr

    def say(text):
        out.write(text + "\n")
        out.flush()

    name = f"washpay config {args.config_command}"
    try:
        if args.config_command == "get":
            text, cfg, why = get(args.port, args.timeout)
            if args.json:
                out.write(json.dumps(cfg if cfg is not None else {"unreadable": text}) + "\n")
            elif text is None:
                say("{}  (no /config.json: the firmware's defaults)")
            else:
                say(json.dumps(cfg, indent=1, sort_keys=True) if cfg is not None else text)
            if why:
                err.write(f"{name}: the firmware refuses this config ({why}): the board is "
                          "out of order; fix it with washpay config set or push\n")
                return 1
            return 0
        if args.config_command == "set":
            if not args.settings:
                raise ConfigRefused("give KEY=VALUE settings, e.g. max_credit=3000")

            def make(text, cfg):
                if cfg is None:
                    raise ConfigRefused("the board's config.json is not a JSON object: "
                                        "replace it whole with washpay config push FILE")
                new, changes = apply_settings(cfg, args.settings)
                return new, ", ".join(changes)
        else:
            file_cfg = _load_file(args.file)

            def make(text, cfg):
                return pushed(cfg, file_cfg), f"/config.json replaced by {args.file}"
        say(f"{name} on {args.port}")
        report = change(args.port, make, args.timeout, say)
    except (ConfigRefused, P.Refused) as e:
        err.write(f"{name}: {e}\n")
        return 2
    except P.NotUp as e:
        err.write(f"{name}: {e}\n")
        return 1
    say("done" if report is not None else "done (nothing changed)")
    return 0


def add_parsers(sub):
    cfg = sub.add_parser(
        "config", help="read or change a board's config.json (checked by the firmware's "
        "rules, written atomically, board restarted)").add_subparsers(
        dest="config_command", required=True)
    common = {"help": "serial port of the board (a simulated board: STATE/console)"}
    g = cfg.add_parser("get", help="print the board's config.json and whether it is taken")
    g.add_argument("--port", required=True, **common)
    g.add_argument("--json", action="store_true", help="one line of JSON")
    s = cfg.add_parser("set", help="change settings: max_credit=3000 coins.table.8=500 "
                       "'programs[0].price=300' (values are JSON, else text)")
    s.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    s.add_argument("--port", required=True, **common)
    p = cfg.add_parser("push", help="replace config.json with FILE (device id, Wi-Fi and "
                       "broker kept from the board unless FILE sets them)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--port", required=True, **common)
    for c in (g, s, p):
        c.add_argument("--timeout", type=float, default=30.0,
                       help="seconds to wait for the board to come back up")
        c.set_defaults(func=main)
