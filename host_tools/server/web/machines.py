"""What the customer's page says about a machine: its name, its state and the prices it
charges now.

- **Catalogue**: the web config's "machines" ({device id: {"name", "config"}}; "config" is
  the board's config.json as provisioned, a path or an object; none: the firmware's
  defaults). A device neither in the catalogue nor in the ledger is unknown (404).
- **Prices now**: the board's programs and price table, as provisioned, with every price
  and price-table command the board answered `done` applied in order (the commands table:
  what the server last pushed and the board took), evaluated at this minute by the board's
  own code (firmware/washpay/config.py validates, prices.py/pricing.py price) under
  micropython, as commands.check_table does: one definition of a price, no firmware module
  imported into this process. Cached per machine for the minute.
- **State**: offline (the board's last will on wp/<id>/state, retained by the broker; a
  board that never sent a state message: nothing heard for `offline_after_s`) with the
  time last seen; else from the board's newest journal record
  in the ledger: running (with the time left: the program's minutes since the vend_running
  record), out of order, or free.
"""

import hashlib
import json
import subprocess
import threading
import time
from pathlib import Path

from host_tools.server import commands as C

_PRICES = """
import sys, json
from washpay import config
from washpay.vend.prices import price_table, is_timed
req = json.loads(sys.stdin.read())
raw = req["config"]
for kind, args in req["pushed"]:
    if kind == "price":
        progs = [dict(p) for p in raw.get("programs") or config.DEFAULTS["programs"]]
        for p in progs:
            if p["name"] in args["prices"]:
                p["price"] = args["prices"][p["name"]]
        raw["programs"] = progs
    elif kind == "price-table":
        raw["pricing"] = args["table"]
try:
    cfg = config.validate(raw)
except config.ConfigError as e:
    print(json.dumps({"error": str(e)}))
    raise SystemExit
table = price_table(cfg["programs"], cfg["pricing"])
out = []
for p in cfg["programs"]:
    out.append({"name": p["name"], "price": table.price(p["name"], req["now"]),
                "base": p["price"], "minutes": p.get("minutes", 0), "timed": is_timed(p)})
print(json.dumps({"currency": cfg["currency"], "decimals": cfg["decimals"],
                  "version": table.version, "programs": out}))
"""

FAULT_TYPES = ("fault",)
# what a machine's state is read from: its newest verified journal record
_LAST = ("type", "state", "program", "t", "clock_ok", "received_at", "reason")


class MachineError(Exception):
    pass


class Machines:
    def __init__(self, db, catalogue=None, offline_after_s=120, base_dir=None,
                 clock=time.time):
        self.db = db
        self.catalogue = dict(catalogue or {})
        self.offline_after_s = offline_after_s
        self.base_dir = Path(base_dir or ".")
        self.clock = clock
        self._cache = {}
        self._lock = threading.Lock()

    # ---- who
    def known(self, device):
        if device in self.catalogue:
            return True
        return bool(self.db.query("SELECT 1 FROM devices WHERE device = ?", (device,)))

    def name(self, device):
        return (self.catalogue.get(device) or {}).get("name") or device

    def board_config(self, device):
        cfg = (self.catalogue.get(device) or {}).get("config")
        if cfg is None:
            return {}
        if isinstance(cfg, dict):
            return dict(cfg)
        path = Path(cfg)
        if not path.is_absolute():
            path = self.base_dir / path
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise MachineError(f"machine {device}: config {path}: {e}") from None

    # ---- prices
    def pushed(self, device):
        """The price and price-table commands the board took, oldest first."""
        rows = self.db.query(
            "SELECT kind, args FROM commands WHERE device = ? AND status = 'done' AND kind IN "
            "('price', 'price-table') ORDER BY done_at", (device,))
        out = []
        for kind, args in rows:
            try:
                a = json.loads(args or "{}")
            except ValueError:
                continue
            if (kind == "price" and isinstance(a.get("prices"), dict)) or (
                    kind == "price-table" and isinstance(a.get("table"), dict)):
                out.append((kind, a))
        return out

    def prices(self, device):
        """{"currency", "decimals", "version", "programs": [{"name", "price", ...}]}."""
        now = int(self.clock())
        req = {"config": self.board_config(device), "pushed": self.pushed(device)}
        key = hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()
        with self._lock:
            hit = self._cache.get(device)
            if hit and hit[0] == key and hit[1] == now // 60:
                return hit[2]
        req["now"] = now
        code = (f"import sys\nsys.path.append({str(C.FIRMWARE_DIR)!r})\n" + _PRICES)
        try:
            proc = subprocess.run([C._micropython(), "-X", "heapsize=2m", "-c", code],
                                  input=json.dumps(req), capture_output=True, text=True,
                                  timeout=30)
            out = json.loads(proc.stdout.strip().splitlines()[-1])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired,
                C.CommandError) as e:
            raise MachineError(f"machine {device}: prices could not be worked out: "
                               f"{e}") from None
        if "error" in out:
            raise MachineError(f"machine {device}: its config is refused: {out['error']}")
        with self._lock:
            self._cache[device] = (key, now // 60, out)
        return out

    def price_of(self, device, program):
        for p in self.prices(device)["programs"]:
            if p["name"] == program:
                return p
        return None

    # ---- state
    def state(self, device):
        """{"state": free|running|out_of_order|offline|unknown, "left_s", "last_seen"}."""
        rows = self.db.query(
            "SELECT online, state_at, last_seen FROM devices WHERE device = ?", (device,))
        if not rows:
            return {"state": "offline", "last_seen": None, "left_s": None}
        return self._state(device, *rows[0], lambda: self._newest(device))

    def states(self):
        """{device: state()} of every device in the ledger in one query (another only for a
        board whose newest record did not verify), for a page that shows the whole fleet."""
        rows = self.db.query(
            f"SELECT d.device, d.online, d.state_at, d.last_seen, r.verified, "
            f"{', '.join('r.' + c for c in _LAST)} FROM devices d LEFT JOIN records r "
            f"ON r.device = d.device AND r.seq = (SELECT MAX(m.seq) FROM records m "
            f"WHERE m.device = d.device)")
        out = {}
        for device, online, state_at, last_seen, verified, *last in rows:
            newest = (lambda rec=tuple(last): rec) if verified == 1 else (
                lambda d=device: self._newest(d))
            out[device] = self._state(device, online, state_at, last_seen, newest)
        return out

    def _newest(self, device):
        rows = self.db.query(
            f"SELECT {', '.join(_LAST)} FROM records WHERE device = ? AND verified = 1 "
            "ORDER BY seq DESC LIMIT 1", (device,))
        return rows[0] if rows else None

    def _state(self, device, online, state_at, last_seen, newest):
        now = self.clock()
        seen = max(x for x in (state_at, last_seen, 0) if x is not None) or None
        if not online or seen is None or (not state_at and now - seen > self.offline_after_s):
            return {"state": "offline", "last_seen": seen, "left_s": None}
        last = newest()
        out = {"state": "free", "last_seen": seen, "left_s": None}
        if not last:
            return out
        rtype, vstate, program, t, clock_ok, received, reason = last
        if vstate == "out_of_order" or rtype in FAULT_TYPES and vstate == "out_of_order":
            out.update(state="out_of_order", reason=reason)
        elif vstate in ("running", "starting"):
            out["state"] = "running"
            began = t if clock_ok and t else received
            minutes = 0
            try:
                for p in self.prices(device)["programs"]:
                    if p["name"] == program:
                        minutes = p["minutes"]
            except MachineError:
                pass
            if minutes and began:
                out["left_s"] = max(0, int(began + minutes * 60 - now))
        return out

    def online(self, device):
        return self.state(device)["state"] != "offline"
