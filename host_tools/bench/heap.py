"""The firmware's GC heap at ESP32 object sizes (issue 13): figures, not pass/fail.

For each interpreter there is (the environment's 64-bit one; the 32-bit build with ESP32's
word and GC block sizes when host_tools.interp finds it) and each layout (.mpy files in the
filesystem, as stock MicroPython runs them; bytecode in place, as a ROMFS image or a frozen
build runs it):

- the firmware's live heap after the full scenario (host_tools/bench/scenario.py), over TLS
  and over plain MQTT: on the unix port mbedTLS allocates in the GC heap, on an ESP32 it
  does not, so the difference is the TLS share an ESP32 keeps outside the GC heap;
- the smallest firmware heap (`sim run --fw-heap`: what is free when main.py starts) the
  scenario passes in, found by bisection;
- a budget per subsystem: the heap each group of modules takes at import (code and module
  globals), and what each subsystem costs a running board (code and state, after first use:
  the scenario with and without it);
- with --state: the firmware's state, made at boot and kept: what each object the app
  builds holds once built (its buffers, dicts and the objects it makes), with every module
  imported beforehand so that no code is counted, and what starting the tasks adds.

    python -m host_tools.bench.heap [--only 32] [--layout romfs] [--quick] [--state]
"""

import argparse
import contextlib
import subprocess
import sys
import tempfile
from pathlib import Path

from host_tools.bench import scenario
from host_tools.interp import micropython, micropython32

LAYOUTS = (("mpy", ".mpy files"), ("romfs", "bytecode in place (ROMFS)"))

# the subsystems of the budget and their modules, imported in this order (a group's delta
# leaves out what an earlier group already imported)
GROUPS = (
    # what a running board keeps
    ("boot/config/journal", "washpay washpay.chip washpay.crypto washpay.journal "
     "washpay.journal.records washpay.journal.seal washpay.journal.recent"),
    ("coin + vend engine", "washpay.drivers.coin_acceptor washpay.payments.coin "
     "washpay.drivers.washer washpay.drivers.keypad washpay.vend.prices washpay.vend.engine "
     "washpay.vend.timed"),
    ("display", "washpay.ui washpay.drivers.lcd1602"),
    ("pricing/lists", "washpay.vend.pricing washpay.cardlists washpay.cardlists.blacklist "
     "washpay.cardlists.tierlist"),
    ("card", "washpay.drivers.mfrc522 washpay.payments.card_state washpay.payments.card"),
    ("QR/token/remote", "washpay.replay washpay.drivers.gm65 washpay.payments.signed"),
    ("sync/MQTT", "washpay.net.link washpay.net.mqtt washpay.net.uploader washpay.net"),
    ("TLS (module)", "tls"),
    ("app", "washpay.app"),
    # run at boot and dropped at the end of the start (wiring.py, journal/boot.py, ...)
    ("boot only (dropped)", "washpay.config washpay.board washpay.keys washpay.journal.boot "
     "washpay.vend.boot washpay.vend.price_parser washpay.net.setup "
     "washpay.drivers.gm65_setup washpay.wiring"),
    # loaded for one card tap, scan, command or coin-line event and dropped after
    # (washpay.use): a board holds them only while it answers one
    ("per tap/scan/command/event", "washpay.payments.card_tap washpay.drivers.mifare "
     "washpay.payments.wallet washpay.payments.token washpay.payments.remote "
     "washpay.net.commands washpay.vend.watch"),
)

# the firmware on the path: a ROMFS image mounted, or a directory of .mpy
_MOUNT = """
import gc, sys, vfs
src = %(src)r
if src.endswith(".romfs"):
    f = open(src, "rb")
    img = f.read()
    f.close()
    vfs.mount(vfs.VfsRom(img), "/rom")
    sys.path.insert(0, "/rom")
else:
    sys.path.insert(0, src)
"""
_IMPORTS = _MOUNT + """
# MicroPython interns every name in a pool that grows by doubling: a group that happens to
# cross a doubling would be charged kilobytes of pool the others fill. Names made up front
# until a pool of at least 2560 entries has just been made leave room for the firmware's
# (~1300), so the groups are charged their code and objects; the names are a line of their
# own (entries x the pool's bytes per entry, measured here).
class _O:
    pass
_o = _O()
gc.collect()
last = gc.mem_alloc()
i = 0
per = 0
while True:
    getattr(_o, "_bench_q%%d" %% i, None)
    i += 1
    gc.collect()
    a = gc.mem_alloc()
    if a - last > 1000:
        per = (a - last) / (i - 1)  # one entry's share of the pool just made
        if i > 2500:
            break
    last = a
import micropython
print("per|" + str(int(per * 100)))
micropython.qstr_info()
for name, mods in %(groups)r:
    gc.collect()
    a = gc.mem_alloc()
    for m in mods.split():
        __import__(m)
    gc.collect()
    print(name + "|" + str(gc.mem_alloc() - a))
micropython.qstr_info()
"""


# The classes App builds at boot (a name missing in this firmware is left out of the table)
STATE_CLASSES = (
    ("washpay.board", "Board"), ("washpay.journal", "Journal"), ("washpay.ui", "Screen"),
    ("washpay.drivers.lcd1602", "LCD1602"), ("washpay.drivers.washer", "Washer"),
    ("washpay.payments.coin", "PulseTrainDecoder"),
    ("washpay.drivers.coin_acceptor", "CoinAcceptor"), ("washpay.drivers.keypad", "Keypad"),
    ("washpay.vend.engine", "VendEngine"), ("washpay.net", "Sync"),
    ("washpay.net.mqtt", "MQTTClient"), ("washpay.net.uploader", "Uploader"),
    ("washpay.net.link", "Link"), ("washpay.drivers.mfrc522", "MFRC522"),
    ("washpay.cardlists.blacklist", "Blacklist"), ("washpay.cardlists.tierlist", "TierList"),
    ("washpay.payments.card", "CardPayment"), ("washpay.drivers.gm65", "GM65"),
    ("washpay.replay", "ReplayCache"), ("washpay.payments.token", "TokenVerifier"),
    ("washpay.payments.token", "TokenPayments"), ("washpay.payments.remote", "RemoteStart"),
    ("washpay.net.commands", "Commands"), ("washpay.app", "App"),
)
# ... and the functions whose result it keeps (the board file, the config)
STATE_FUNCTIONS = (("washpay.board", "load"), ("washpay.config", "load"))

# main.py for the state table: imports every module of GROUPS first, then counts what each
# constructor of STATE_CLASSES leaves on the heap (after a collection on both sides; an
# object built inside another's constructor is counted in both, indented under it), and
# what the app's start (its tasks, the first screen, the boot record) adds
_STATE_MAIN = """
import gc, sys
for _m in %(mods)r.split():
    try:
        __import__(_m)
    except ImportError:
        pass
_depth = [0]
def _count(cls, label):
    init = cls.__init__
    def counted(self, *a, **k):
        _depth[0] += 1
        gc.collect()
        before = gc.mem_alloc()
        try:
            init(self, *a, **k)
        finally:
            _depth[0] -= 1
        gc.collect()
        print("state|%%d|%%s|%%d" %% (_depth[0], label, gc.mem_alloc() - before))
    cls.__init__ = counted
for _mod, _name in %(classes)r:
    _cls = getattr(sys.modules.get(_mod), _name, None)
    if _cls is not None:
        _count(_cls, _name)
def _kept(mod, name):
    fn = getattr(mod, name)
    def counted(*a, **k):
        _depth[0] += 1
        gc.collect()
        before = gc.mem_alloc()
        try:
            r = fn(*a, **k)
        finally:
            _depth[0] -= 1
        gc.collect()
        print("state|%%d|%%s.%%s()|%%d" %% (_depth[0], mod.__name__.split(".")[-1], name,
                                        gc.mem_alloc() - before))
        return r
    setattr(mod, name, counted)
for _mod, _name in %(functions)r:
    if hasattr(sys.modules.get(_mod), _name):
        _kept(sys.modules[_mod], _name)
import asyncio
from washpay import app
_main = app.App.main
async def _started(self):
    gc.collect()
    before = gc.mem_alloc()
    async def later():
        await asyncio.sleep_ms(3000)
        gc.collect()
        print("state|0|App.main: tasks started, first 3 s|%%d" %% (gc.mem_alloc() - before))
    asyncio.create_task(later())
    await _main(self)
app.App.main = _started
app.run()
"""


def state_table(interp, fw, tmp):
    """[(depth, what, bytes)]: the state the app makes at boot and keeps (the full scenario
    runs, plain MQTT, so that the figures are those of a board that has done it all)."""
    # asyncio's classes are loaded on first use: imported here, they are not counted as state
    mods = "json asyncio asyncio.event asyncio.lock asyncio.stream asyncio.funcs " + " ".join(
        m for _, ms in GROUPS for m in ms.split() if m != "tls")
    main = _STATE_MAIN % {"mods": mods, "classes": STATE_CLASSES,
                          "functions": STATE_FUNCTIONS}
    for _ in range(3):  # as scenario.attempt: a run that fails for want of time is run again
        with tempfile.TemporaryDirectory(dir=tmp) as d:
            r = scenario.run(d, firmware=fw, micropython=interp, tls=False,
                             files={"main.py": main})
            log = (Path(d) / "st" / "console.log").read_text(errors="replace")
        if r.ok or r.oom:
            break
    if not r.ok:
        raise RuntimeError(f"the state run failed at {r.step}: {r.error}")
    rows = []
    for ln in log.splitlines():
        if ln.startswith("state|"):
            _, depth, what, n = ln.split("|")
            rows.append((int(depth), what, int(n)))
    # constructors print when they end: a nested one before its parent; parents first
    out, stack = [], []
    for row in rows:
        kids = []
        while stack and stack[-1][0][0] > row[0]:
            kids.insert(0, stack.pop())
        stack.append((row, kids))

    def flat(node):
        out.append(node[0])
        for k in node[1]:
            flat(k)

    for node in stack:
        flat(node)
    return out


def print_state(rows, label, layout):
    print(f"\n## The firmware's state after boot ({label}, {layout}): what each object the app"
          " builds keeps, code excluded, bytes\n")
    for depth, what, n in rows:
        print(f"  {'  ' * depth + what:<48} {n:>7}")


def interpreters():
    """[(label, path)]: the environment's micropython, and the 32-bit one when found."""
    out = [("64-bit", micropython())]
    p32 = micropython32()
    if p32:
        out.append(("32-bit", p32))
    return out


def builds(tmp):
    """{layout: firmware for SimBoard}: .mpy tree and ROMFS image."""
    from host_tools.bench import build_romfs, compile_firmware

    tmp = Path(tmp)
    return {"mpy": compile_firmware(tmp / "mpy"), "romfs": build_romfs(tmp / "fw.romfs")}


def import_budget(interp, firmware):
    """[(subsystem, bytes)] taken at import, in GROUPS' order, and the names the firmware
    interns (qstr pool entries; a frozen build keeps them in flash)."""
    code = _IMPORTS % {"src": str(firmware), "groups": GROUPS}
    proc = subprocess.run([interp, "-X", "heapsize=4m", "-c", code], capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"import budget failed under {interp}:\n{proc.stdout}{proc.stderr}")
    rows = [ln.split("|") for ln in proc.stdout.splitlines() if "|" in ln]
    per = int(rows.pop(0)[1]) / 100
    counts = [int(ln.split("n_qstr=")[1].split(",")[0]) for ln in proc.stdout.splitlines()
              if "n_qstr=" in ln]
    out = [(n, int(v)) for n, v in rows]
    out.append((f"names ({counts[-1] - counts[0]} qstrs)", round((counts[-1] - counts[0]) * per)))
    return out


# what a tap, a scan or a command loads before it is answered (washpay.use): the modules
# each imports, the rest already loaded at boot
PER_USE = (
    ("card tap", "washpay.payments.card_tap washpay.drivers.mifare washpay.payments.wallet",
     "washpay.payments.card"),
    ("QR scan", "washpay.payments.token", "washpay.payments.signed"),
    ("remote start", "washpay.payments.remote washpay.payments.token",
     "washpay.payments.signed"),
    ("operator command", "washpay.net.commands washpay.payments.token", "washpay.net"),
)

_LOADS = """
import gc, sys, time, vfs
from washpay import forget
for name, mods, first in %(per_use)r:
    for m in first.split():
        __import__(m)
    mods = mods.split()
    best = None
    for _ in range(%(n)d):
        gc.collect()
        t0 = time.ticks_us()
        for m in mods:
            __import__(m)
        t = time.ticks_diff(time.ticks_us(), t0)
        best = t if best is None else min(best, t)
        for m in mods:
            forget(m)
    print(name + "|" + str(best))
"""


def load_times(interp, firmware, n=10):
    """[(use, microseconds)]: the least of n loads of what each use loads (host figures:
    the load is the same work on an ESP32, some 10-20 times slower)."""
    code = _LOADS % {"per_use": PER_USE, "n": n}
    prelude = _MOUNT % {"src": str(firmware)}
    proc = subprocess.run([interp, "-X", "heapsize=4m", "-c", prelude + code],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"load times failed under {interp}:\n{proc.stdout}{proc.stderr}")
    return [(a, int(b)) for a, b in (ln.split("|") for ln in proc.stdout.splitlines()
                                     if "|" in ln)]


def _once(tmp, **kw):
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        return scenario.attempt(d, **kw)


def smallest(tmp, lo=32, hi=256, step=4, **kw):
    """Smallest firmware heap (KiB) the scenario passes in, to `step` KiB; None if it does
    not pass in 1 MiB."""
    while not _once(tmp, fw_heap=f"{hi}k", **kw).ok:
        lo, hi = hi, hi * 2
        if hi > 1024:
            return None
    while hi - lo > step:
        mid = (lo + hi) // 2
        if _once(tmp, fw_heap=f"{mid}k", **kw).ok:
            hi = mid
        else:
            lo = mid
    return hi


def measure(interp, fw, tmp, bisect=True, hint=None):
    """{figure: value} for one interpreter and one firmware layout."""
    out = {}
    for tls in (True, False):
        r = _once(tmp, firmware=fw, micropython=interp, tls=tls)
        out["live_tls" if tls else "live_plain"] = r.live if r.ok else None
        if not tls and r.ok:
            out["after"] = r.after  # the live heap after each step: its first use
        if not r.ok:
            out["error"] = f"{r.step}: {r.error}"
        if bisect and r.ok:
            lo = max(16, (r.live or 0) // 1024)
            hi = hint or lo * 2
            out["least_tls" if tls else "least_plain"] = smallest(
                tmp, lo=lo, hi=max(hi, lo + 8), firmware=fw, micropython=interp, tls=tls)
    return out


def subsystem_costs(interp, fw, tmp):
    """{subsystem: bytes}: live heap after the scenario with it minus without it (plain
    MQTT; sync's figure leaves out the steps that need it)."""
    full = _once(tmp, firmware=fw, micropython=interp, tls=False)
    costs = {}
    for part in scenario.SUBSYSTEMS:
        r = _once(tmp, firmware=fw, micropython=interp, tls=False, without=(part,))
        costs[part] = (full.live - r.live) if (full.ok and r.ok) else None
    return costs


def kib(n):
    return "-" if n is None else f"{n / 1024:.1f}"


def bench(only=None, layouts=("mpy", "romfs"), bisect=True):
    """Print the heap tables; return the figures."""
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        fws = builds(tmp)
        interps = [(lbl, p) for lbl, p in interpreters() if not only or lbl.startswith(only)]
        if not interps:
            print(f"no {only} micropython: set $WASHPAY_MICROPYTHON32 (the 32-bit build) "
                  "or put it at ../shared/tools/micropython-i386", file=sys.stderr)
            return figures
        for lbl, interp in interps:
            for layout in layouts:
                figures[(lbl, layout)] = measure(interp, fws[layout], tmp, bisect=bisect)
            figures[(lbl, "budget")] = {lay: import_budget(interp, fws[lay]) for lay in layouts}
            figures[(lbl, "loads")] = {lay: load_times(interp, fws[lay]) for lay in layouts}
            figures[(lbl, "costs")] = subsystem_costs(interp, fws["romfs"], tmp)
    print_tables(figures, [lbl for lbl, _ in interps], layouts)
    return figures


def print_tables(figures, labels, layouts):
    names = dict(LAYOUTS)
    print("\n## Firmware GC heap, full scenario (coin, card, QR token, offline backlog synced, "
          "remote start, price and blacklist push)\n")
    print("  KiB; live = after the scenario and a collection; least = smallest firmware heap "
          "it passes in (free at main.py, 4 KiB steps)")
    head = "  {:<28} {:<9}" + " {:>10}" * 5
    print(head.format("layout", "interp", "live TLS", "live plain", "TLS share", "least TLS",
                      "least plain"))
    for layout in layouts:
        for lbl in labels:
            f = figures.get((lbl, layout), {})
            share = (f["live_tls"] - f["live_plain"]
                     if f.get("live_tls") is not None and f.get("live_plain") is not None
                     else None)
            print(head.format(names[layout], lbl, kib(f.get("live_tls")),
                              kib(f.get("live_plain")), kib(share),
                              f.get("least_tls") or "-", f.get("least_plain") or "-"))
            if f.get("error"):
                print(f"    failed: {f['error']}")
    print("\n  targets (32-bit, TLS share excluded): ROMFS live <= 64 KiB and passes in 96 KiB;"
          " .mpy passes in 160 KiB")
    print("\n## Budget per subsystem: heap taken at import (code + module globals), KiB\n")
    cols = [(lbl, lay) for lbl in labels for lay in layouts]
    head = "  {:<22}" + " {:>14}" * len(cols)
    print(head.format("subsystem", *[f"{lbl} {lay}" for lbl, lay in cols]))
    rows = {}
    for lbl, lay in cols:
        for name, n in figures[(lbl, "budget")][lay]:
            rows.setdefault(name, {})[(lbl, lay)] = n
    for name, vals in rows.items():
        print(head.format(name, *[kib(vals.get(c)) for c in cols]))
    print(head.format("total", *[kib(sum(v.get(c, 0) for v in rows.values())) for c in cols]))
    print("\n## Loaded on use (washpay.use): ms per load, host CPU (an ESP32 takes ~10-20x)\n")
    print(head.format("use", *[f"{lbl} {lay}" for lbl, lay in cols]))
    loads = {}
    for lbl, lay in cols:
        for name, us in figures[(lbl, "loads")][lay]:
            loads.setdefault(name, {})[(lbl, lay)] = us
    for name, vals in loads.items():
        print(head.format(name, *[f"{vals[c] / 1000:.2f}" if c in vals else "-"
                                  for c in cols]))
    print("\n## Live heap after each step of the scenario (plain MQTT): what first use adds, "
          "KiB\n")
    cols = [(lbl, lay) for lay in layouts for lbl in labels]
    head = "  {:<18}" + " {:>14}" * len(cols)
    print(head.format("step", *[f"{lbl} {lay}" for lbl, lay in cols]))
    steps = next((f["after"] for f in (figures.get(c, {}) for c in cols) if f.get("after")), {})
    for step in steps:
        print(head.format(step, *[kib((figures.get(c, {}).get("after") or {}).get(step))
                                  for c in cols]))
    print("\n## What each subsystem costs a running board (ROMFS, plain MQTT): live heap after"
          " the scenario with it minus without it, KiB\n")
    head = "  {:<22}" + " {:>10}" * len(labels)
    print(head.format("subsystem", *labels))
    for part in scenario.SUBSYSTEMS:
        print(head.format(part, *[kib(figures[(lbl, "costs")].get(part)) for lbl in labels]))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m host_tools.bench.heap")
    ap.add_argument("--only", choices=("32", "64"), help="one interpreter")
    ap.add_argument("--layout", choices=("mpy", "romfs"), help="one layout")
    ap.add_argument("--quick", action="store_true", help="no bisection")
    ap.add_argument("--state", action="store_true",
                    help="only the table of what the app's objects keep after boot")
    a = ap.parse_args(argv)
    if a.state:
        layout = a.layout or "romfs"
        with tempfile.TemporaryDirectory() as tmp:
            fw = builds(tmp)[layout]
            interps = [(lbl, p) for lbl, p in interpreters()
                       if not a.only or lbl.startswith(a.only)]
            if not interps:
                print("no 32-bit micropython: set $WASHPAY_MICROPYTHON32 (the 32-bit build) "
                      "or put it at ../shared/tools/micropython-i386", file=sys.stderr)
                return 2
            for lbl, interp in interps:
                print_state(state_table(interp, fw, tmp), lbl, layout)
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        bench(only=a.only and f"{a.only}-bit", layouts=(a.layout,) if a.layout else
              ("mpy", "romfs"), bisect=not a.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
