"""Benchmark of the operator console (docs/console.md): figures, not pass/fail.

A ledger of D devices holding R journal records in all (decoded columns as ingest stores
them; the raw bytes are filler: the console never re-verifies), an open problem on every
tenth device and a status reply from every other one; the web app served over loopback
HTTP. Times the fleet page, a device page and a login (scrypt), median and p99.

    python -m host_tools.bench.console [DEVICES] [RECORDS] [--db URL]
    (make bench runs it with 100 devices, 100,000 records)
"""

import http.client
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

T0 = 1_780_000_000
TYPES = ("coin", "coin", "coin", "vend_start", "vend_running", "vend_done")


def _pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def fill(store, devices, records):
    """`records` records spread over `devices` devices, problems, status replies."""
    per = max(1, records // devices)
    now = time.time()
    with store.transaction() as tx:
        for d in range(devices):
            dev = f"bench-{d:04d}"
            tx.execute("INSERT INTO devices (device, high_seq, reported_seq, first_seen, "
                       "last_seen, online, state_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (dev, per, per + d % 3, now - 86400, now, 1, now))
            rows = []
            for seq in range(1, per + 1):
                typ = "boot" if seq == 1 else TYPES[seq % len(TYPES)]
                rows.append((dev, seq, b"\0" * 128, 1, {
                    "type": typ, "t": T0 + seq * 60, "clock_ok": True, "amount": 100,
                    "credit": 100, "currency": "EUR", "program": "quick", "state": "idle",
                    "reason": "power on; prices v2" if typ == "boot" else None}, now))
            tx.insert_records(rows)
            if d % 10 == 0:
                tx.problem(dev, per // 2, "gap", f"{per // 2}..{per // 2 + 3} missing",
                           upto=per + 10, now=now)
            if d % 2 == 0:
                tx.execute("INSERT INTO commands (id, device, kind, args, created, status, "
                           "result, done_at) VALUES (?, ?, 'status', '{}', ?, 'done', ?, ?)",
                           (f"c{d:08x}", dev, now, json.dumps({"status": {
                               "version": "0.1.0", "journal": {"level": "ok", "free": 6000,
                                                               "capacity": 6200},
                               "sync": {"backlog": 0}}}), now))
    return per


def _get(url, path, cookie):
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    t0 = time.perf_counter()
    c.request("GET", path, headers={"Cookie": f"washpay_console={cookie}"})
    r = c.getresponse()
    body = r.read()
    ms = (time.perf_counter() - t0) * 1000
    c.close()
    if r.status != 200:
        raise RuntimeError(f"GET {path}: {r.status} {body[:200]!r}")
    return ms


def bench(devices=100, records=100_000, db=None, n=20):
    from host_tools.server.store import open_store
    from host_tools.server.web import Web

    with tempfile.TemporaryDirectory() as tmp:
        url = db or f"sqlite:///{Path(tmp) / 'ledger.db'}"
        side = open_store(url)
        t0 = time.perf_counter()
        per = fill(side, devices, records)
        fill_s = time.perf_counter() - t0
        side.close()
        web = Web({"machines": {}}, url, b"\x01" * 32, send=None,
                  log=lambda m: None).start("127.0.0.1", 0)
        try:
            t0 = time.perf_counter()
            web.console.accounts.add("bench", "owner", "a bench passphrase")
            add_ms = (time.perf_counter() - t0) * 1000
            logins = []
            for _ in range(5):
                t0 = time.perf_counter()
                assert web.console.accounts.verify("bench", "a bench passphrase")
                logins.append((time.perf_counter() - t0) * 1000)
            token, _ = web.console.accounts.open_session("bench", "127.0.0.1")
            fleet = [_get(web.url, "/console/fleet", token) for _ in range(n)]
            dev = [_get(web.url, f"/console/devices/bench-{i % devices:04d}", token)
                   for i in range(n)]
            home = [_get(web.url, "/console/", token) for _ in range(n)]
        finally:
            web.stop()
    rows = [
        (f"ledger: {devices} devices x {per} records, filled in", f"{fill_s:.1f}", "s"),
        ("fleet page p50", f"{statistics.median(fleet):.1f}", "ms"),
        ("fleet page p99", f"{_pct(fleet, 99):.1f}", "ms"),
        ("device page p50", f"{statistics.median(dev):.1f}", "ms"),
        ("device page p99", f"{_pct(dev, 99):.1f}", "ms"),
        ("home page p50", f"{statistics.median(home):.1f}", "ms"),
        ("password check (scrypt N=2^14) p50", f"{statistics.median(logins):.1f}", "ms"),
        ("user add (one scrypt hash + insert)", f"{add_ms:.1f}", "ms"),
    ]
    return rows


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    db = None
    if "--db" in argv:
        i = argv.index("--db")
        db = argv[i + 1]
        del argv[i:i + 2]
    devices = int(argv[0]) if argv else 100
    records = int(argv[1]) if len(argv) > 1 else 100_000
    from host_tools.bench import _table

    _table(f"Operator console ({'SQLite' if not db else db.split('@')[-1]}, loopback HTTP)",
           bench(devices, records, db))
    return 0


if __name__ == "__main__":
    sys.exit(main())
