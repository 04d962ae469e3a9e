"""Price tables in the console (docs/console.md, "Prices"): the table each board holds as
far as the server knows, a proposed table checked and priced by the firmware's own code
under micropython (config.py validates, vend/pricing.py prices: one definition of a valid
table and of a price, no firmware module imported into this process), and which board
applied which version (the price commands' rows and the boards' replies)."""

import json
import subprocess

from host_tools.server import commands as C
from host_tools.server.web.console.command_log import command_rows

# the board's config with the proposed table, validated as at boot; then every program's
# price at the chosen time for a card with no tier (coins and tokens too) and each tier
_PREVIEW = """
import sys, json
from washpay import config
from washpay.vend.prices import price_table
req = json.loads(sys.stdin.read())
raw = req["config"]
raw["pricing"] = req["table"]
try:
    cfg = config.validate(raw)
except config.ConfigError as e:
    print(json.dumps({"error": str(e)}))
    raise SystemExit
table = price_table(cfg["programs"], cfg["pricing"])
tiers = sorted((cfg["pricing"] or {}).get("tiers") or {})
out = []
for p in cfg["programs"]:
    row = {"name": p["name"], "base": p["price"], "minutes": p.get("minutes", 0),
           "prices": {}}
    for tier in [None] + tiers:
        ok = table.allowed(p["name"], tier) is None
        row["prices"][tier or ""] = table.price(p["name"], req["at"], tier) if ok else None
    out.append(row)
print(json.dumps({"currency": cfg["currency"], "tiers": tiers, "programs": out,
                  "version": table.version}))
"""


class PriceError(ValueError):
    """A table or a time the console cannot use; the message says what to fix."""


def parse_table(text):
    """The editor's text as a table (a JSON object), or PriceError saying where it is
    wrong."""
    try:
        table = json.loads(text)
    except ValueError as e:
        raise PriceError(f"the table is not JSON: {e}") from None
    if not isinstance(table, dict):
        raise PriceError("a price table is a JSON object (docs/pricing.md)")
    return table


def preview(config, table, at):
    """What each program costs at unix time `at` under `table` on a board with `config`:
    {"currency", "tiers", "programs": [{"name", "base", "prices": {tier or "": price or
    None (not for this tier)}}], "version"}; PriceError with the board's own words if the
    board would refuse the table."""
    code = f"import sys\nsys.path.append({str(C.FIRMWARE_DIR)!r})\n" + _PREVIEW
    try:
        proc = subprocess.run([C._micropython(), "-X", "heapsize=2m", "-c", code],
                              input=json.dumps({"config": dict(config or {}), "table": table,
                                                "at": int(at)}),
                              capture_output=True, text=True, timeout=30)
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as e:
        raise PriceError(f"the table could not be priced: {e}") from None
    if "error" in out:
        raise PriceError(f"a board would refuse this table: {out['error']}")
    return out


def table_in_force(machines, device):
    """The price table `device` holds as far as the server knows: the last price table it
    took (reply "done"), else its provisioned config's, else none ({})."""
    table = None
    for kind, args in machines.pushed(device):
        if kind == "price-table":
            table = args["table"]
    if table is None:
        table = machines.board_config(device).get("pricing") or {}
    return table


def history(db, device=None, limit=100):
    """Price commands, newest first: [{"device", "version", "status", "reason", "created",
    "done_at"}]: which board applied (done) or refused which version."""
    out = []
    for row in command_rows(db, ("price-table", "price"), device, limit):
        a, res = row["args"], row["result"]
        version = (a.get("table") or {}).get("version") if row["kind"] == "price-table" else None
        out.append({"device": row["device"], "kind": row["kind"], "version": version,
                    "prices": a.get("prices"), "status": row["status"],
                    "reason": res.get("reason") or "", "created": row["created"],
                    "done_at": row["done_at"], "id": row["id"]})
    return out
