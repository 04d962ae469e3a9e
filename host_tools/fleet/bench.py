"""`washpay fleet bench` (python -m host_tools.fleet.bench): the fleet scenarios on loopback
with a real Mosquitto, the real server (`washpay server run`, its own process) and SQLite or
a throwaway PostgreSQL cluster. Figures, not pass/fail.

- steady state: N boards online, sales (a coin and its vend: two records) at a fleet-wide
  rate, Poisson; ack latency (record sealed -> its authenticated ack on the board) p50/p99;
- the outage: every board offline with K records, the network back at once: time until
  every record is acknowledged, peak connects a second, records a second into the ledger,
  the server's, the broker's and the generator's CPU (% of one core).

Every run ends by checking the ledger: N x K verified records, each once.
"""

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host_tools import broker as B
from host_tools.fleet.fleet import Fleet, device_ids

ROOT = Path(__file__).resolve().parents[2]
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _own_cpu():
    t = os.times()
    return t.user + t.system


class Rig:
    """Mosquitto for the fleet's devices, and `washpay server run` on a ledger."""

    def __init__(self, tmp, site_key, ids, db_url, log):
        self.tmp = Path(tmp)
        self.log = log
        B.init(self.tmp / "broker", site_key, ids)
        self.broker = B.Broker(self.tmp / "broker").start()
        self.url = self.broker.url()
        key_file = self.tmp / "site.key"
        key_file.write_text(site_key.hex() + "\n")
        key_file.chmod(0o600)
        self.db_url = db_url
        self.server_log = open(self.tmp / "server.log", "w+")  # noqa: SIM115 - closed in stop()
        self.server = subprocess.Popen(
            [sys.executable, "-m", "host_tools.cli", "server", "run", "--site-key",
             str(key_file), "--broker", self.url, "--db", db_url],
            cwd=str(ROOT), stdout=self.server_log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while "ledger" not in (self.tmp / "server.log").read_text():
            if self.server.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start: "
                                   + (self.tmp / "server.log").read_text()[-500:])
            time.sleep(0.05)

    def cpu(self):
        return {"server": cpu_s(self.server.pid), "broker": cpu_s(self.broker.proc.pid),
                "generator": _own_cpu()}

    def ledger_check(self, fleet):
        """(records stored, every record exactly once and equal to the board's copy)."""
        from host_tools.server.store import open_store

        store = open_store(self.db_url)
        try:
            rows = store.query("SELECT device, seq, raw, verified FROM records")
            counts = store.query("SELECT count(*), count(DISTINCT device || ':' || seq) "
                                 "FROM records")[0]
        finally:
            store.close()
        by = {b.id: b for b in fleet.boards}
        ok = counts[0] == counts[1] == fleet.records == len(rows)
        for dev, seq, raw, verified in rows:
            ok = ok and verified == 1 and by[dev].journal.records[seq - 1] == bytes(raw)
        return len(rows), ok

    def problems(self):
        """Lines the server logged besides its start: problems found, messages refused."""
        text = (self.tmp / "server.log").read_text()
        return sum(1 for line in text.splitlines()
                   if not line.startswith(("server: ledger", "server: connected")))

    def stop(self):
        if self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(20)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.server_log.close()
        self.broker.stop()


def _pct(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


SETTINGS = {"keepalive_s": 60}  # the board's defaults otherwise (backoff 1-60 s, batch 8-16)


async def outage(rig, site_key, n, k, log):
    fleet = Fleet(site_key, rig.url, device_ids(n), settings=SETTINGS)
    t = time.monotonic()
    fleet.backlog(k)
    seal_s = time.monotonic() - t
    log(f"  sealed {fleet.records} records in {seal_s:.1f} s")
    await fleet.start(network=False)
    cpu0, t0 = rig.cpu(), time.monotonic()
    fleet.set_network(True)
    await fleet.online(timeout=600)
    t_online = time.monotonic() - t0
    await fleet.drained(timeout=3600)
    wall = time.monotonic() - t0
    cpu1 = rig.cpu()
    await fleet.stop()
    stored, once = rig.ledger_check(fleet)
    st = fleet.stats
    return {
        "boards": n, "records each": k, "records": fleet.records,
        "all online (s)": t_online,
        "drain all (s)": wall,
        "peak connects/s": st.peak_connects_per_s(t0),
        "connect p50/p99 (ms)": (1000 * _pct(st.connect_s, 50), 1000 * _pct(st.connect_s, 99)),
        "failed attempts": sum(st.failures.values()),
        "records/s into the ledger": fleet.records / wall,
        "batches sent / ack timeouts": (sum(b.batches for b in fleet.boards),
                                        sum(b.resends for b in fleet.boards)),
        "records sent per record stored": sum(b.records_sent for b in fleet.boards)
        / fleet.records,
        "server CPU (% of a core)": 100 * (cpu1["server"] - cpu0["server"]) / wall,
        "broker CPU (% of a core)": 100 * (cpu1["broker"] - cpu0["broker"]) / wall,
        "generator CPU (% of a core)": 100 * (cpu1["generator"] - cpu0["generator"]) / wall,
        "ledger: stored once, verified": f"{stored} {'yes' if once else 'NO'}",
        "server log: problems, errors": rig.problems(),
    }


async def steady(rig, site_key, n, rate, duration, log):
    fleet = Fleet(site_key, rig.url, device_ids(n), settings=SETTINGS)
    for b in fleet.boards:
        b.journal.append("boot", t=1_780_000_000, reason="power on")
    await fleet.start(network=True)
    await fleet.online(timeout=600)
    await fleet.drained(timeout=600)
    fleet.stats.latency.clear()
    fleet.stats.round_trip.clear()
    cpu0, t0 = rig.cpu(), time.monotonic()
    sales = await fleet.trade(rate, duration)
    await fleet.drained(timeout=600)
    wall = time.monotonic() - t0
    cpu1 = rig.cpu()
    await fleet.stop()
    stored, once = rig.ledger_check(fleet)
    lat = fleet.stats.latency
    rtt = fleet.stats.round_trip
    achieved = sales / duration
    every_min = n / achieved / 60
    return {
        "boards": n, "sales/s (fleet, achieved)": achieved,
        "a sale per board every (min)": every_min,
        "time compressed (x, at 3 min a sale)": 3 / every_min,
        "sales (2 records each)": sales, "records acked": len(lat),
        "ack latency p50 / p99 (ms)": (1000 * _pct(lat, 50), 1000 * _pct(lat, 99)),
        "ack latency mean / max (ms)": (1000 * statistics.fmean(lat) if lat else float("nan"),
                                        1000 * max(lat, default=float("nan"))),
        "batch sent -> ack p50 / p99 (ms)": (1000 * _pct(rtt, 50), 1000 * _pct(rtt, 99)),
        "server CPU (% of a core)": 100 * (cpu1["server"] - cpu0["server"]) / wall,
        "broker CPU (% of a core)": 100 * (cpu1["broker"] - cpu0["broker"]) / wall,
        "generator CPU (% of a core)": 100 * (cpu1["generator"] - cpu0["generator"]) / wall,
        "ledger: stored once, verified": f"{stored} {'yes' if once else 'NO'}",
        "server log: problems, errors": rig.problems(),
    }


def _fmt(v):
    if isinstance(v, float):
        return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"
    if isinstance(v, tuple):
        return " / ".join(_fmt(x) for x in v)
    return str(v)


def table(title, results):
    """A text table: one column per database."""
    names = list(results)
    rows = list(next(iter(results.values())))
    w = max(len(r) for r in rows)
    cols = [max(14, len(nm)) for nm in names]
    out = [f"\n## {title}\n", f"  {'':<{w}}  " + "  ".join(f"{nm:>{c}}" for nm, c in
                                                            zip(names, cols, strict=True))]
    for r in rows:
        out.append(f"  {r:<{w}}  " + "  ".join(f"{_fmt(results[nm].get(r, '')):>{c}}"
                                               for nm, c in zip(names, cols, strict=True)))
    return "\n".join(out)


@contextlib.contextmanager
def _database(kind, tmp):
    if kind == "sqlite":
        yield f"sqlite:///{tmp}/ledger.db"
        return
    sys.path.insert(0, str(ROOT / "tests"))
    import sync_env  # the test suite's throwaway cluster (initdb + pg_ctl on loopback)

    with sync_env.postgres_cluster() as url:
        yield url


def machine():
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores ({cpu}), load average {load[0]:.1f} at the start "
            f"(shared with other work); Mosquitto {B.mosquitto_command()}, ulimit -n "
            f"{_nofile()}")


def _nofile():
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(scenarios=("steady", "outage"), dbs=("sqlite", "postgresql"), devices=1000,
        records_each=100, steady_devices=1000, rate=50.0, duration=20.0, log=print):
    site_key = os.urandom(32)
    print(f"# Fleet on loopback: {machine()}")
    tables = []
    for scenario in scenarios:
        results = {}
        for db in dbs:
            log(f"# {scenario} on {db} ...")
            with tempfile.TemporaryDirectory(prefix="washpay-fleet-") as tmp, \
                    _database(db, tmp) as url:
                n = devices if scenario == "outage" else steady_devices
                rig = Rig(tmp, site_key, device_ids(n), url, log)
                try:
                    if scenario == "outage":
                        results[db] = asyncio.run(outage(rig, site_key, n, records_each, log))
                    else:
                        results[db] = asyncio.run(steady(rig, site_key, n, rate, duration,
                                                         log))
                finally:
                    rig.stop()
        title = ("steady state: sales trickling in, ack latency" if scenario == "steady"
                 else "outage: every board offline with a backlog, network back at once")
        tables.append(table(title, results))
        print(tables[-1], flush=True)
    return tables


def add_arguments(p):
    p.add_argument("--scenario", action="append", choices=("steady", "outage"),
                   help="steady and/or outage (default: both)")
    p.add_argument("--db", action="append", choices=("sqlite", "postgresql"),
                   help="the ledger (default: both)")
    p.add_argument("--devices", type=int, default=1000, help="boards in the outage (1000)")
    p.add_argument("--records-each", type=int, default=100,
                   help="each board's offline backlog in the outage (100)")
    p.add_argument("--steady-devices", type=int, default=1000,
                   help="boards in the steady state (1000)")
    p.add_argument("--rate", type=float, default=50.0,
                   help="sales a second over the whole fleet in the steady state (50)")
    p.add_argument("--duration", type=float, default=20.0,
                   help="seconds of steady trade (20)")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m host_tools.fleet.bench",
                                description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    return bench_command(args)


def bench_command(args):
    err = check_arguments(args)
    if err:
        print(f"washpay fleet bench: {err}", file=sys.stderr)
        return 2
    try:
        B.mosquitto_command()
    except B.BrokerError as e:
        print(f"washpay fleet bench: {e}", file=sys.stderr)
        return 2
    run(args.scenario or ("steady", "outage"), args.db or ("sqlite", "postgresql"),
        args.devices, args.records_each, args.steady_devices, args.rate, args.duration,
        log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


def check_arguments(args):
    if min(args.devices, args.steady_devices) < 1:
        return "--devices and --steady-devices must be at least 1"
    if not 1 <= args.records_each <= 1_000_000:
        return "--records-each must be between 1 and 1000000"
    if args.rate <= 0 or args.duration <= 0:
        return "--rate and --duration must be positive"
    need = max(args.devices, args.steady_devices) + 100
    if _nofile() < need:
        return (f"{max(args.devices, args.steady_devices)} boards need {need} file "
                f"descriptors, the limit is {_nofile()}: raise it (ulimit -n {need * 2})")
    return None


if __name__ == "__main__":
    sys.exit(main())
