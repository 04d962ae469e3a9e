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
import collections
import contextlib
import os
import signal
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
    """Mosquitto for the fleet's devices, and `washpay server run` on a ledger: one process
    or several (`servers`, each its own --instance on the shared subscription), each of
    which can be killed (SIGKILL) and started again; the broker can be restarted."""

    def __init__(self, tmp, site_key, ids, db_url, log, servers=1, full_path=False,
                 nats_nodes=0):
        self.tmp = Path(tmp)
        self.log = log
        self.full_path = full_path  # every batch the full way (before the short path)
        self.cluster = None
        if nats_nodes:  # a NATS cluster instead of Mosquitto (host_tools/cluster/nats.py)
            from host_tools.cluster import nats as N

            N.init(self.tmp / "broker", site_key, ids, nodes=nats_nodes)
            self.cluster = N.Cluster(self.tmp / "broker", site_key).start()
            self.url = self.cluster.url()
            self.broker = None
        else:
            B.init(self.tmp / "broker", site_key, ids)
            self.broker = B.Broker(self.tmp / "broker").start()
            self.url = self.broker.url()
        self.key_file = self.tmp / "site.key"
        self.key_file.write_text(site_key.hex() + "\n")
        self.key_file.chmod(0o600)
        self.db_url = db_url
        self.servers = [None] * servers
        self.logs = []
        self.dead_cpu = {"server": 0.0, "broker": 0.0}  # CPU of processes that ended
        try:
            for i in range(servers):
                self.start_server(i)
        except BaseException:
            self.stop()
            raise

    def start_server(self, i):
        """`washpay server run --instance i`; returns once it is connected."""
        path = self.tmp / f"server-{i}-{len(self.logs)}.log"
        out = open(path, "w+")  # noqa: SIM115 - closed in stop()
        self.logs.append((path, out))
        env = dict(os.environ)
        if self.full_path:
            env["WASHPAY_INGEST_FULL_PATH"] = "1"
        shared = ["--no-shared-subscription"] if self.cluster else []
        proc = subprocess.Popen(
            [sys.executable, "-m", "host_tools.cli", "server", "run", "--site-key",
             str(self.key_file), "--broker", self.url, "--db", self.db_url,
             "--instance", str(i), *shared],
            cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT, env=env)
        self.servers[i] = proc
        deadline = time.monotonic() + 60
        while "server: ledger" not in path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server {i} did not start: " + path.read_text()[-500:])
            time.sleep(0.05)
        return proc

    def kill_server(self, i):
        """SIGKILL: no DISCONNECT, no transaction finished, nothing flushed."""
        proc = self.servers[i]
        self.dead_cpu["server"] += cpu_s(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.servers[i] = None

    def restart_broker(self, down_s, kill=False):
        """Stop Mosquitto (SIGTERM: it saves its sessions; `kill`: SIGKILL, a crash: it comes
        back with the sessions it saved last, up to a second old, and delivers again what
        the server took in that second), wait, start it on the same ports. Returns the
        monotonic time it listened again."""
        self.dead_cpu["broker"] += cpu_s(self.broker.proc.pid)
        self.broker.stop(kill=kill)
        time.sleep(down_s)
        at = time.monotonic()
        self.broker.start()
        return at

    def kill_node(self, i):
        """SIGKILL one node of the NATS cluster: a broker machine lost."""
        pid = self.cluster.pids()[i]
        self.dead_cpu["broker"] += cpu_s(pid)
        self.cluster.kill(i)

    def broker_pids(self):
        if self.cluster:
            return [pid for pid in self.cluster.pids() if pid is not None]
        return [self.broker.proc.pid]

    def cpu(self):
        live = [p for p in self.servers if p is not None]
        return {"server": self.dead_cpu["server"] + sum(cpu_s(p.pid) for p in live),
                "broker": self.dead_cpu["broker"] + sum(cpu_s(p) for p in self.broker_pids()),
                "generator": _own_cpu()}

    def server_cpu(self):
        return [cpu_s(p.pid) if p is not None else float("nan") for p in self.servers]

    def ledger_check(self, fleet):
        """(records stored, every record exactly once and equal to the board's copy, and
        every board's cursor the server's high-water mark)."""
        from host_tools.server.store import open_store

        store = open_store(self.db_url)
        try:
            rows = store.query("SELECT device, seq, raw, verified FROM records")
            counts = store.query("SELECT count(*), count(DISTINCT device || ':' || seq) "
                                 "FROM records")[0]
            high = dict(store.query("SELECT device, high_seq FROM devices"))
        finally:
            store.close()
        by = {b.id: b for b in fleet.boards}
        ok = counts[0] == counts[1] == fleet.records == len(rows)
        for dev, seq, raw, verified in rows:
            ok = ok and verified == 1 and by[dev].journal.records[seq - 1] == bytes(raw)
        ok = ok and all(high.get(b.id) == b.acked == b.journal.last_seq and not b.bad_acks
                        for b in fleet.boards)
        return len(rows), ok

    def _log_lines(self):
        return [line for path, _ in self.logs for line in path.read_text().splitlines()
                if line.strip()]

    def problems(self):
        """Lines the servers logged besides their start, the broker going away under them
        and stale batches: problems found, messages refused."""
        lines = [line for line in self._log_lines()
                 if not line.startswith(("server: ledger", "server: connected",
                                         "server: disconnected"))
                 and ": stale batch " not in line]
        for line in lines[:5]:
            self.log(f"  server log: {line}")
        return len(lines)

    def dropped(self):
        """Times a server lost its broker connection (a keepalive missed, a broker gone)."""
        return sum(line.startswith("server: disconnected") for line in self._log_lines())

    def stale(self):
        """Batches the servers took as stale deliveries (ingest.py's rollback rule)."""
        return sum(": stale batch " in line for line in self._log_lines())

    def stop(self):
        for i, proc in enumerate(self.servers):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.servers[i] = None
        for _, out in self.logs:
            out.close()
        if self.cluster:
            self.cluster.stop()
        else:
            self.broker.stop()


def _pct(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


SETTINGS = {"keepalive_s": 60}  # the board's defaults otherwise (backoff 1-60 s, batch 8-16)


async def outage(rig, site_key, n, k, log, fault=None):
    """`fault(fleet, figures)`: a coroutine run beside the drain (a server killed, ...)."""
    fleet = Fleet(site_key, rig.url, device_ids(n), settings=SETTINGS)
    t = time.monotonic()
    fleet.backlog(k)
    seal_s = time.monotonic() - t
    log(f"  sealed {fleet.records} records in {seal_s:.1f} s")
    await fleet.start(network=False)
    cpu0, t0 = rig.cpu(), time.monotonic()
    server0 = rig.server_cpu()
    fleet.set_network(True)
    extra = {}
    faulty = asyncio.create_task(fault(fleet, extra)) if fault else None
    await fleet.online(timeout=600)
    t_online = time.monotonic() - t0
    await fleet.drained(timeout=3600)
    wall = time.monotonic() - t0
    if faulty:
        await faulty
    cpu1 = rig.cpu()
    each = [100 * (b - a) / wall for a, b in zip(server0, rig.server_cpu(), strict=True)]
    await fleet.stop()
    stored, once = rig.ledger_check(fleet)
    st = fleet.stats
    return {
        "boards": n, "records each": k, "records": fleet.records,
        "ingest processes": len(rig.servers),
        **extra,
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
        "each ingest process's CPU (%)": tuple(each) if len(each) > 1 else each[0],
        "broker CPU (% of a core)": 100 * (cpu1["broker"] - cpu0["broker"]) / wall,
        "generator CPU (% of a core)": 100 * (cpu1["generator"] - cpu0["generator"]) / wall,
        "ledger: stored once, verified, acks right": f"{stored} {'yes' if once else 'NO'}",
        "server log: problems, errors": rig.problems(),
        "stale batches (no problem)": rig.stale(),
        "server connections lost": rig.dropped(),
    }


def kill_server(rig, fraction=0.3, down_s=1.0):
    """A fault for outage(): SIGKILL the ingest process once `fraction` of the records are
    acknowledged, start it again (same instance: the broker kept its session and what it
    had not acknowledged) after `down_s`."""
    async def fault(fleet, out):
        await fleet.wait(lambda: fleet.acked >= fraction * fleet.records, 3600,
                         "the drain under way")
        out["killed at records acked"] = fleet.acked
        t = time.monotonic()
        rig.kill_server(0)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(rig.start_server, 0)
        out["server down, restart included (s)"] = time.monotonic() - t
        out["acked while it was down"] = fleet.acked - out["killed at records acked"]
    return fault


def kill_node(rig, node=0, fraction=0.3):
    """A fault for outage() on a NATS cluster: SIGKILL one node (the server's first, and a
    third of the boards') once `fraction` of the records are acknowledged."""
    async def fault(fleet, out):
        await fleet.wait(lambda: fleet.acked >= fraction * fleet.records, 3600,
                         "the drain under way")
        out["node killed at records acked"] = fleet.acked
        on_it = {b: b.connects for b in fleet.boards if b.node == node and b.state == "up"}
        before = sum(b.connects for b in fleet.boards)
        rig.kill_node(node)
        t = time.monotonic()
        # each board that was on it signed in again (elsewhere), and all are up
        await fleet.wait(lambda: all(b.connects > n for b, n in on_it.items())
                         and all(b.state == "up" for b in fleet.boards), 600,
                         "the lost node's boards back on the others")
        out["boards on the lost node"] = len(on_it)
        out["its boards all back, on other nodes (s)"] = time.monotonic() - t
        out["reconnects after the loss"] = sum(b.connects for b in fleet.boards) - before
    return fault


async def broker_restart(rig, site_key, n, rate, down_s, log, after_s=10.0, kill=False):
    """N boards online and trading; Mosquitto stopped for `down_s` and started again: how
    the boards' backoff spreads their reconnects, how long until all are back, and that
    the trade made meanwhile reaches the ledger."""
    fleet = Fleet(site_key, rig.url, device_ids(n), settings=SETTINGS)
    for b in fleet.boards:
        b.journal.append("boot", t=1_780_000_000, reason="power on")
    await fleet.start(network=True)
    await fleet.online(timeout=600)
    await fleet.drained(timeout=600)
    cpu0, t0 = rig.cpu(), time.monotonic()
    trade = asyncio.create_task(fleet.trade(rate, 2.0 + down_s + after_s))
    await asyncio.sleep(2.0)
    failed0 = sum(fleet.stats.failures.values())
    back = await asyncio.to_thread(rig.restart_broker, down_s, kill)
    failed_down = sum(fleet.stats.failures.values()) - failed0
    await fleet.online(timeout=600)
    t_online = time.monotonic() - back
    failed_after = sum(fleet.stats.failures.values()) - failed0 - failed_down
    sales = await trade
    t_end = time.monotonic()
    await fleet.drained(timeout=600)
    t_drain = time.monotonic() - t_end
    wall = time.monotonic() - t0
    cpu1 = rig.cpu()
    await fleet.stop()
    stored, once = rig.ledger_check(fleet)
    per = collections.Counter(int(t - back) for t in fleet.stats.connect_times if t >= back)
    spread = [per.get(i, 0) for i in range(max(per, default=0) + 1)]
    return {
        "boards": n, "broker down (s)": down_s,
        "broker stopped by": "SIGKILL" if kill else "SIGTERM",
        "sales during the run (2 records each)": sales,
        "failed attempts while down / after": (failed_down, failed_after),
        "every board back (s after the broker)": t_online,
        "peak reconnects a second": max(spread, default=0),
        "reconnects in each second after": " ".join(str(x) for x in spread[:12])
        + (" ..." if len(spread) > 12 else ""),
        "every record acked, after the trade ended (s)": t_drain,
        "server / broker CPU (% of a core)": (100 * (cpu1["server"] - cpu0["server"]) / wall,
                                              100 * (cpu1["broker"] - cpu0["broker"]) / wall),
        "ledger: stored once, verified, acks right": f"{stored} {'yes' if once else 'NO'}",
        "server log: problems, errors": rig.problems(),
        "stale batches (no problem)": rig.stale(),
        "server connections lost": rig.dropped(),
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
        "ledger: stored once, verified, acks right": f"{stored} {'yes' if once else 'NO'}",
        "server log: problems, errors": rig.problems(),
        "stale batches (no problem)": rig.stale(),
        "server connections lost": rig.dropped(),
    }


def _fmt(v):
    if isinstance(v, float):
        return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"
    if isinstance(v, tuple):
        return " / ".join(_fmt(x) for x in v)
    return str(v)


def table(title, results, markdown=False):
    """A text table (or a Markdown one, for docs/fleet.md): one column per run."""
    names = list(results)
    rows = list(dict.fromkeys(r for res in results.values() for r in res))
    if markdown:
        out = [f"\n{title}:\n", "| | " + " | ".join(names) + " |",
               "|---|" + "---|" * len(names)]
        out += ["| " + r + " | " + " | ".join(_fmt(results[nm].get(r, "")) for nm in names)
                + " |" for r in rows]
        return "\n".join(out)
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


SCENARIOS = ("steady", "outage", "storm", "restart", "ingest", "kill", "memory", "cluster")
TITLES = {
    "steady": "steady state: sales trickling in, ack latency",
    "outage": "outage: every board offline with a backlog, network back at once",
    "storm": "outage, before and after the short path for resends (WASHPAY_INGEST_FULL_PATH=1 "
             "is before)",
    "restart": "broker restart: Mosquitto stopped and started under a trading fleet",
    "ingest": "outage drained by one and more ingest processes ($share/washpay/ subscription)",
    "kill": "outage with the ingest process killed (SIGKILL) at 30 % and started again",
    "memory": "the server's memory and threads at N boards",
    "cluster": "outage on a three-node NATS cluster (MQTT), and with a node killed (SIGKILL) "
               "at 30 %: its boards and the server move to the other nodes",
}


def _columns(scenario, dbs, args):
    """(column name, db, rig keywords, coroutine maker(rig, site_key, log)) of a scenario."""
    n, k = args.devices, args.records_each
    for db in dbs:
        if scenario == "steady":
            yield db, db, {}, lambda rig, key, log: steady(
                rig, key, args.steady_devices, args.rate, args.duration, log)
        elif scenario == "outage":
            yield db, db, {}, lambda rig, key, log: outage(rig, key, n, k, log)
        elif scenario == "storm":
            for full in (True, False):
                yield (f"{db} {'before' if full else 'after'}", db, {"full_path": full},
                       lambda rig, key, log: outage(rig, key, n, k, log))
        elif scenario == "restart":
            yield db, db, {}, lambda rig, key, log: broker_restart(
                rig, key, args.steady_devices, args.rate, args.down, log,
                kill=args.broker_kill)
        elif scenario == "ingest":
            for m in args.ingest:
                yield (f"{db} x{m}", db, {"servers": m},
                       lambda rig, key, log: outage(rig, key, n, k, log))
        elif scenario == "cluster":
            yield (f"{db}, nats x3", db, {"nats_nodes": 3},
                   lambda rig, key, log: outage(rig, key, n, k, log))
            yield (f"{db}, nats x3, node lost", db, {"nats_nodes": 3},
                   lambda rig, key, log: outage(rig, key, n, k, log, fault=kill_node(rig)))
        elif scenario == "kill":
            yield db, db, {}, lambda rig, key, log: outage(
                rig, key, n, k, log, fault=kill_server(rig))


def run(args, log=print):
    site_key = os.urandom(32)
    print(f"# Fleet on loopback: {machine()}")
    tables = []
    dbs = args.db or ("sqlite", "postgresql")
    for scenario in args.scenario or DEFAULT_SCENARIOS:
        if scenario == "memory":
            from host_tools.fleet.memory import server_memory

            results = server_memory(site_key, args.memory_devices, log)
            tables.append(table(TITLES[scenario], results, args.markdown))
            print(tables[-1], flush=True)
            continue
        results = {}
        for name, db, rig_kw, make in _columns(scenario, dbs, args):
            log(f"# {scenario}: {name} ...")
            n = args.steady_devices if scenario in ("steady", "restart") else args.devices
            with tempfile.TemporaryDirectory(prefix="washpay-fleet-") as tmp, \
                    _database(db, tmp) as url:
                rig = Rig(tmp, site_key, device_ids(n), url, log, **rig_kw)
                try:
                    results[name] = asyncio.run(make(rig, site_key, log))
                finally:
                    rig.stop()
        tables.append(table(TITLES[scenario], results, args.markdown))
        print(tables[-1], flush=True)
    return tables


DEFAULT_SCENARIOS = ("steady", "outage", "restart", "ingest", "kill")


def add_arguments(p):
    p.add_argument("--scenario", action="append", choices=SCENARIOS,
                   help="which scenarios, one table each (default: "
                   + ", ".join(DEFAULT_SCENARIOS) + "; storm and memory are long; cluster "
                   "needs nats-server)")
    p.add_argument("--db", action="append", choices=("sqlite", "postgresql"),
                   help="the ledger (default: both)")
    p.add_argument("--devices", type=int, default=1000,
                   help="boards in the outage, storm, ingest and kill scenarios (1000)")
    p.add_argument("--records-each", type=int, default=100,
                   help="each board's offline backlog in those (100)")
    p.add_argument("--steady-devices", type=int, default=1000,
                   help="boards in the steady state and the broker restart (1000)")
    p.add_argument("--rate", type=float, default=50.0,
                   help="sales a second over the whole fleet in those (50)")
    p.add_argument("--duration", type=float, default=20.0,
                   help="seconds of steady trade (20)")
    p.add_argument("--down", type=float, default=5.0,
                   help="seconds the broker stays down in the restart scenario (5)")
    p.add_argument("--broker-kill", action="store_true",
                   help="restart scenario: SIGKILL the broker (a crash) instead of SIGTERM")
    p.add_argument("--ingest", type=int, action="append",
                   help="ingest processes in the ingest scenario, one column each "
                   "(default: 1, 2 and 3)")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    p.add_argument("--memory-devices", type=int, action="append",
                   help="N of the memory scenario, one column each (default: 100, 1000, 5000)")


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
        if "cluster" in (args.scenario or ()):
            from host_tools.cluster.nats import nats_command

            nats_command()
    except B.BrokerError as e:
        print(f"washpay fleet bench: {e}", file=sys.stderr)
        return 2
    run(args, log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


def check_arguments(args):
    if min(args.devices, args.steady_devices) < 1:
        return "--devices and --steady-devices must be at least 1"
    if not 1 <= args.records_each <= 1_000_000:
        return "--records-each must be between 1 and 1000000"
    if args.rate <= 0 or args.duration <= 0:
        return "--rate and --duration must be positive"
    if args.down < 0:
        return "--down must not be negative"
    args.ingest = args.ingest or [1, 2, 3]
    if not all(1 <= m <= 16 for m in args.ingest):
        return "--ingest must be between 1 and 16 processes"
    args.memory_devices = sorted(set(args.memory_devices or [100, 1000, 5000]))
    if args.memory_devices[0] < 1:
        return "--memory-devices must be at least 1"
    most = max(args.devices, args.steady_devices,
               args.memory_devices[-1] if "memory" in (args.scenario or ()) else 0)
    need = most + 100
    if _nofile() < need:
        return (f"{most} boards need {need} file descriptors, the limit is {_nofile()}: "
                f"raise it (ulimit -n {need * 2})")
    return None


if __name__ == "__main__":
    sys.exit(main())
