"""Benchmark of sync: figures, not pass/fail (docs/sync.md).

- records per second drained over loopback from a 10,000-record offline backlog: the
  firmware's journal and sync stack under micropython, Mosquitto, the server's ingest on
  SQLite; plain and TLS;
- the same over a slow link (the fault proxy adding 100 ms each way): batches grow, round
  trips stay few;
- bytes on the wire per record (TCP payload both ways, counted by the proxy; TLS records
  included for TLS) against the 128-byte sealed record;
- server ingest rate with SQLite and with PostgreSQL (a throwaway cluster, when installed);
- the board's GC heap during a TLS session: the high-water mark while uploading, and the
  smallest `micropython -X heapsize=...` that still connects, verifies the broker and
  uploads (on the unix port mbedTLS allocates from the GC heap; on an ESP32 its ~20 KiB of
  buffers live in the IDF heap instead).

    python -m host_tools.bench.sync          (make bench runs it too)

It reuses the test suite's fault proxy and firmware harness (tests/faultproxy.py,
tests/sync_env.py).
"""

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
BACKLOG = 10_000


def _env():
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import faultproxy
    import sync_env

    return sync_env, faultproxy


def _drain(tmp, n, tls=False, latency_ms=0, sync=None):
    """Drain an n-record backlog through the proxy; (records/s, bytes up+down, stats)."""
    env, fp = _env()
    from host_tools.server.service import Server

    tmp = Path(tmp)
    root = tmp / "board" / "journal"
    env.firmware_records(root, {"coin_day": n - 1})
    broker = env.make_broker(tmp / "broker").start()
    srv = None
    dev = None
    try:
        srv = Server(f"sqlite:///{tmp}/ledger.db", env.SITE_KEY,
                     f"mqtt://127.0.0.1:{broker.port}", log=lambda *a: None).start()
        with fp.FaultProxy("127.0.0.1", broker.tls_port if tls else broker.port) as proxy:
            proxy.set(latency_ms=latency_ms)
            scheme = "mqtts" if tls else "mqtt"
            dev = env.device_script(root, f"{scheme}://127.0.0.1:{proxy.port}",
                                    sync={"keepalive_s": 30, "ack_timeout_ms": 20000,
                                          **(sync or {})},
                                    ca=str(broker.dir / "ca.der") if tls else None,
                                    report_ms=50)
            first = dev.expect(lambda e: e["records_sent"] > 0, timeout=60, what="upload")
            t0 = time.monotonic()
            sent0 = first["acked"]
            st = dev.expect(lambda e: e["synced_seq"] == n, timeout=600, what="drained")
            dt = time.monotonic() - t0
            wire = proxy.bytes_up + proxy.bytes_down
        return (n - sent0) / dt, wire, st
    finally:
        if dev is not None:
            dev.close()
        if srv is not None:
            srv.stop()
        broker.stop()


def _ingest_rate(url, records, batch=32):
    from host_tools.server import wire
    from host_tools.server.ingest import Ingest
    from host_tools.server.store import open_store

    env, _ = _env()
    store = open_store(url)
    try:
        ing = Ingest(store, env.SITE_KEY)
        t0 = time.perf_counter()
        for i in range(0, len(records), batch):
            part = records[i : i + batch]
            ing.batch("sim-0001", wire.build_batch(part, len(records)))
        dt = time.perf_counter() - t0
    finally:
        store.close()
    return len(records) / dt


TLS_HEAP = """
import asyncio, gc, json, micropython
from binascii import unhexlify
from washpay.journal import Journal
from washpay.keys import device_secret, journal_keys
from washpay.net import Sync
A = json.loads(%r)
secret = device_secret(unhexlify(A["site"]), "sim-0001")
j = Journal(A["root"], journal_keys(secret), capacity=20000)
class Up:
    def isconnected(self):
        return True
sync = Sync(Up(), {"broker": A["broker"], "broker_ca": A["ca"], "sync": {"max_batch": 32}},
            secret, j, "sim-0001")
peak = [0, 0]
async def main():
    gc.collect()
    base = gc.mem_alloc()
    sync.start()
    while j.synced_seq < j.last_seq:
        a = gc.mem_alloc()  # live objects and garbage not yet collected
        if a > peak[0]:
            peak[0] = a
        gc.collect()
        a = gc.mem_alloc()  # live objects only
        if a > peak[1]:
            peak[1] = a
        await asyncio.sleep_ms(5)
    gc.collect()
    print(json.dumps({"ok": True, "base": base, "peak": peak[0], "live": peak[1],
                      "after": gc.mem_alloc(), "free": gc.mem_free()}))
asyncio.run(main())
"""


def _tls_heap(tmp):
    """(figures of one TLS upload session under a roomy heap, smallest heap in KiB).

    Every run gets its own broker, server and 200-record journal, so none inherits the last
    one's retained acknowledgement."""
    env, _ = _env()
    import json

    from host_tools.server.service import Server

    tmp = Path(tmp)
    from host_tools.bench import compile_firmware

    mpy = compile_firmware(tmp / "rom")  # the firmware as provisioned: .mpy

    def run(heap_k):
        d = tmp / f"h{heap_k}"
        root = d / "journal"
        env.firmware_records(root, [("boot", {})] + env.coin_day(199))
        broker = env.make_broker(d / "broker").start()
        srv = None
        try:
            srv = Server(f"sqlite:///{d}/ledger.db", env.SITE_KEY,
                         f"mqtt://127.0.0.1:{broker.port}", log=lambda *a: None).start()
            args = {"site": env.SITE_KEY.hex(), "root": str(root),
                    "ca": str(broker.dir / "ca.der"),
                    "broker": f"mqtts://127.0.0.1:{broker.tls_port}"}
            s = env.MicroPythonScript(TLS_HEAP % json.dumps(args), heap=f"{heap_k}k",
                                      firmware=mpy)
            try:
                s.wait(60)
            except AssertionError:
                return None
            finally:
                s.close()
            ok = [e for e in s.events if e.get("ok")]
            return ok[0] if ok else None
        finally:
            if srv is not None:
                srv.stop()
            broker.stop()

    full = run(1024)
    lo, hi = 16, 256
    if run(hi) is None:
        return full, None
    while hi - lo > 4:
        mid = (lo + hi) // 2
        if run(mid) is not None:
            hi = mid
        else:
            lo = mid
    return full, hi


def _app_heap(tmp):
    """Smallest GC heap (KiB) in which the whole firmware (.mpy, simulated board) boots,
    takes a coin and, with sync on, gets it acknowledged: without sync, plain, TLS."""
    import json
    import shutil

    env, _ = _env()
    from host_tools.bench import compile_firmware
    from host_tools.server.service import Server
    from host_tools.sim.client import SimBoard, SimError

    tmp = Path(tmp)
    mpy = compile_firmware(tmp / "rom")
    broker = env.make_broker(tmp / "broker").start()
    srv = Server(f"sqlite:///{tmp}/ledger.db", env.SITE_KEY, f"mqtt://127.0.0.1:{broker.port}",
                 log=lambda *a: None).start()
    n = [0]

    def works(heap, mode):
        n[0] += 1
        st = tmp / f"st{n[0]}"
        (st / "provision").mkdir(parents=True)
        cfg = {"device_id": "sim-0001"}
        if mode == "plain":
            cfg["broker"] = f"mqtt://127.0.0.1:{broker.port}"
        elif mode == "tls":
            cfg["broker"] = f"mqtts://127.0.0.1:{broker.tls_port}"
            shutil.copy(broker.dir / "ca.der", st / "provision" / "broker_ca.der")
        (st / "provision" / "config.json").write_text(json.dumps(cfg))
        env.write_site_key(st / "site.key")
        sim = SimBoard(st, heap=f"{heap}k", firmware=mpy)
        try:
            sim.start()
            sim.wait_ready(timeout=20)
            sim.call("coin", value=200)

            def done(s):
                sync = (s.get("firmware") or {}).get("sync") or {}
                acked = mode == "none" or sync.get("acked", 0) >= s["journal"].get("last_seq", 9)
                return s["credit"] == 200 and acked

            sim.wait_for(done, timeout=20)
            return True
        except SimError:
            return False
        finally:
            sim.stop()

    def smallest(mode, lo=128, hi=768):
        if not works(hi, mode):
            return None
        while hi - lo > 8:
            mid = (lo + hi) // 2
            if works(mid, mode):
                hi = mid
            else:
                lo = mid
        return hi

    try:
        return {m: smallest(m) for m in ("none", "plain", "tls")}
    finally:
        srv.stop()
        broker.stop()


def bench():
    rows = []
    env, _ = _env()
    with tempfile.TemporaryDirectory() as tmp:
        rate, wire, st = _drain(Path(tmp) / "plain", BACKLOG)
        rows.append((f"drain {BACKLOG} records over loopback (plain MQTT)", round(rate),
                     "records/s"))
        rows.append(("  batches / round trips", st["batches"], "batches"))
        rows.append(("  bytes on the wire per record (MQTT, both ways)",
                     round(wire / BACKLOG, 1), "B (sealed record: 128 B)"))
    with tempfile.TemporaryDirectory() as tmp:
        rate, wire, st = _drain(Path(tmp) / "tls", BACKLOG, tls=True)
        rows.append((f"drain {BACKLOG} records over loopback (TLS)", round(rate), "records/s"))
        rows.append(("  bytes on the wire per record (TLS, both ways, incl. handshake)",
                     round(wire / BACKLOG, 1), "B"))
    with tempfile.TemporaryDirectory() as tmp:
        rate, wire, st = _drain(Path(tmp) / "slow", 2000, latency_ms=100)
        rows.append(("drain 2000 records, 100 ms added each way", round(rate), "records/s"))
        rows.append(("  batches for 2000 records (batch size grows to max_batch, 16)",
                     st["batches"],
                     "batches"))
    with tempfile.TemporaryDirectory() as tmp:
        rate, wire, st = _drain(Path(tmp) / "slow1", 2000, latency_ms=100,
                                sync={"batch": 1, "max_batch": 1})
        rows.append(("  the same with batches of 1 record", round(rate), "records/s"))
    with tempfile.TemporaryDirectory() as tmp:
        recs = env.firmware_records(Path(tmp) / "j", {"coin_day": BACKLOG - 1})
        rows.append(("server ingest, SQLite (batches of 32, verify + store)",
                     round(_ingest_rate(f"sqlite:///{tmp}/ledger.db", recs)), "records/s"))
        try:
            with env.postgres_cluster() as url:
                rows.append(("server ingest, PostgreSQL (batches of 32, verify + store)",
                             round(_ingest_rate(url, recs)), "records/s"))
        except Exception as e:  # noqa: BLE001 - pytest.skip when PostgreSQL is missing
            rows.append((f"server ingest, PostgreSQL: not measured ({type(e).__name__})",
                         "-", ""))
    with tempfile.TemporaryDirectory() as tmp:
        full, smallest = _tls_heap(tmp)
        if full:
            rows.append(("GC heap live before the TLS session (journal + sync, .mpy)",
                         full["base"], "bytes"))
            rows.append(("GC heap live, high-water mark during a TLS upload session",
                         full["live"], "bytes"))
            rows.append(("  incl. garbage not yet collected", full["peak"], "bytes"))
        rows.append(("smallest -X heapsize for a TLS upload session (sync stack alone)",
                     smallest if smallest else "-", "KiB"))
    with tempfile.TemporaryDirectory() as tmp:
        app = _app_heap(tmp)
        for mode, label in (("none", "sync off"), ("plain", "sync on, mqtt://"),
                            ("tls", "sync on, mqtts://")):
            rows.append((f"whole firmware (.mpy) on the sim, smallest heap, {label}",
                         app[mode] or "-", "KiB (64-bit unix port: about twice an ESP32's)"))
    return rows


def main():
    from host_tools.bench import _table

    _table("Sync (loopback, host figures)", bench())
    return 0


if __name__ == "__main__":
    sys.exit(main())
