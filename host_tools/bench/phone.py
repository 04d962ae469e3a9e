"""Benchmark of pay by phone (docs/phone-payment.md): figures, not pass/fail.

A signed sandbox webhook POSTed over loopback HTTP to the web app (beside the ledger
server, Mosquitto and the simulated board running the whole firmware under micropython)
→ the relay on the simulated board; and → the payment "running" in the ledger (the
board's vend_running record uploaded and read back). Median and p99 over N payments.

    python -m host_tools.bench.phone [N]      (make bench runs it too, N = 20)
"""

import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"


def _pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def bench(n=20):
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import sync_env

    from host_tools.server.web import Web
    from host_tools.server.web import db as D

    relay_ms, running_ms, publish_ms = [], [], []
    with tempfile.TemporaryDirectory() as tmp, sync_env.command_rig(Path(tmp)) as r:
        sim = r["sim"]
        web = Web({"machines": {"sim-0001": {"name": "bench"}}, "confirm_s": 15},
                  f"sqlite:///{r['db']}", sync_env.SITE_KEY, r["server"].send_command,
                  log=lambda m: None).start("127.0.0.1", 0)
        try:
            p = web.provider
            for _ in range(n):
                sim.wait_for(lambda s: s["state"] in ("idle", "credit"), timeout=30,
                             what="the machine free")
                deadline = time.monotonic() + 30  # and the ledger knows it
                while web.machines.state("sim-0001")["state"] != "free" and \
                        time.monotonic() < deadline:
                    time.sleep(0.01)
                pid, url = web.payments.create("sim-0001", "quick", "http://x/p/{id}")
                ref = url.rsplit("/", 1)[1]
                p.sessions[ref].update(status="paid", charge="bench")
                ev = [e for e in p.events_for(ref) if e["type"] == "checkout.completed"][0]
                body, headers = p.signed(ev)
                before = sim.status()["relay_pulses"]
                t0 = time.monotonic()
                req = urllib.request.Request(f"{web.url}/webhook/sandbox", data=body,
                                             headers=headers, method="POST")
                urllib.request.urlopen(req, timeout=10).read()
                sim.wait_for(lambda s, b=before: s["relay_pulses"] > b, timeout=20,
                             interval=0.002, what="the relay")
                relay_ms.append((time.monotonic() - t0) * 1000)
                deadline = time.monotonic() + 30
                while web.db.get(pid)["state"] != D.RUNNING and time.monotonic() < deadline:
                    time.sleep(0.005)
                running_ms.append((time.monotonic() - t0) * 1000)
                w0, w1 = web.payments.timings[-1]
                publish_ms.append((w1 - w0) * 1000)
                # end the cycle now (the simulated washer would run 4 s)
                sim.call("washer", state="idle")
                sim.wait_for(lambda s: s["state"] in ("idle", "credit"), timeout=30,
                             what="the cycle's end")
                sim.call("washer", state="auto")
        finally:
            web.stop()

    def row(name, xs):
        return (f"{name}: median / p99", f"{statistics.median(xs):.1f} / {_pct(xs, 99):.1f}",
                "ms")

    return [
        row(f"webhook verified → start command published ({n} payments)", publish_ms),
        row("webhook POSTed → relay on (simulated board)", relay_ms),
        row("webhook POSTed → payment 'running' in the ledger (journal uploaded)",
            running_ms),
    ]


def main(argv=None):
    from host_tools.bench import _table

    argv = sys.argv[1:] if argv is None else argv
    _table("Pay by phone (loopback, host figures)", bench(int(argv[0]) if argv else 20))
    return 0


if __name__ == "__main__":
    sys.exit(main())
