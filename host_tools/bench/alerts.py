"""Benchmark of the alerts engine and the notices courier (docs/alerts.md): figures, not
pass/fail, on a SQLite ledger in a temporary directory.

- one look of the engine at a fleet of boards with nothing new (what every ingested batch
  costs the engine's thread), and at a fleet where every board uploaded records, some of
  them failed starts (rows written straight into the ledger: the rules read columns, not
  the sealed bytes);
- the courier sending webhook notices to a receiver on loopback, one POST each.

    python -m host_tools.bench.alerts [BOARDS]      (make bench runs it, BOARDS = 1000)
"""

import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from host_tools.server.alerts.config import parse
from host_tools.server.alerts.engine import Engine
from host_tools.server.notices import outbox
from host_tools.server.notices.courier import Courier
from host_tools.server.store import open_store


def _fill(store, boards, per_board, first_seq, now):
    rows = []
    for b in range(boards):
        dev = f"bench-{b:05d}"
        for i in range(per_board):
            seq = first_seq + i
            rtype = "start_failed" if b % 10 == 0 and i == per_board - 1 else "coin"
            rows.append((dev, seq, b"x", 1, {"type": rtype, "t": int(now), "amount": 100,
                                             "program": "quick", "state": "credit"}, now))
    with store.transaction() as tx:
        for b in range(boards):
            tx.lock_device(f"bench-{b:05d}", now)
        tx.insert_records(rows)
        for b in range(boards):
            tx.update_device(f"bench-{b:05d}", high_seq=first_seq + per_board - 1,
                             reported_seq=first_seq + per_board - 1, online=1, state_at=now)


class _Quiet(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


def bench(boards=1000, notices=200):
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_port}/hook"
        cfg = parse({"webhooks": [{"url": url, "secret": "bench-secret-0123456789"}]})
        store = open_store(Path(tmp) / "ledger.db")
        try:
            now = time.time()
            eng = Engine(store, cfg)
            _fill(store, boards, 10, 1, now)
            t0 = time.perf_counter()
            raised = eng.evaluate(now)
            first = time.perf_counter() - t0
            idle = []
            for _ in range(20):
                t0 = time.perf_counter()
                eng.evaluate(now)
                idle.append(time.perf_counter() - t0)
            _fill(store, boards, 10, 11, now)
            t0 = time.perf_counter()
            eng.evaluate(now)
            again = time.perf_counter() - t0
            out += [
                (f"engine look, {boards} boards x 10 new records ({len(raised)} alerts raised)",
                 round(first * 1000, 1), "ms"),
                (f"engine look, {boards} boards x 10 new records, alerts live (counted again)",
                 round(again * 1000, 1), "ms"),
                (f"engine look, {boards} boards, nothing new (median of 20)",
                 round(statistics.median(idle) * 1000, 2), "ms"),
            ]
            # the courier: the queued notices of those alerts, and more, to the receiver
            with store.transaction() as tx:
                for i in range(max(0, notices - len(raised))):
                    outbox.enqueue(tx, f"bench:{i}", outbox.WEBHOOK, url,
                                   {"type": "alert", "alert": {"id": i}}, now=now)
            queued = len(outbox.listing(store, state=outbox.PENDING, limit=10**6))
            courier = Courier(store, cfg)
            t0 = time.perf_counter()
            while courier.run_once():
                pass
            took = time.perf_counter() - t0
            sent = len(outbox.listing(store, state=outbox.SENT, limit=10**6))
            out.append((f"courier: {sent} of {queued} signed webhooks delivered (loopback)",
                        round(sent / took), "notices/s"))
        finally:
            store.close()
            httpd.shutdown()
            httpd.server_close()
    return out


def main(argv=None):
    from host_tools.bench import _table

    argv = sys.argv[1:] if argv is None else argv
    _table("Alerts and notices (SQLite ledger, loopback HTTP)",
           bench(int(argv[0]) if argv else 1000))


if __name__ == "__main__":
    main()
