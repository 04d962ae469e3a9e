"""The server's memory and threads at N boards (`washpay fleet bench --scenario memory`).

The server (host_tools/server/service.py, the `Server` of `washpay server run`) runs in a
child process of its own with tracemalloc on; N boards of the fleet each upload a backlog
through a real Mosquitto, and the child reports, after a garbage collection:

- the Python heap tracemalloc sees (everything the server allocated, per board as the
  growth over the server before any board), and the allocation sites that grew most;
- its resident memory (VmRSS) and its threads (/proc/self/status): the ingest is one paho
  network thread and the main thread whatever N is, no task or thread per board;
- the per-board entries it keeps: the journal and ack key caches of Ingest.

N grows in steps (100, 1,000, 5,000 by default) on one server, as a fleet's boards show up.
"""

import asyncio
import gc
import multiprocessing
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from host_tools import broker as B
from host_tools.fleet.fleet import Fleet, device_ids

RECORDS_EACH = 16  # one full batch each: every board's state is made, its keys derived


def _status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _serve(conn, db_url, site_key, broker_url):
    """The child: a Server, measured on request."""
    # one frame a trace: five made this server ten times slower (its boards timed out)
    tracemalloc.start(1)
    from host_tools.server.service import Server

    srv = Server(db_url, site_key, broker_url, log=lambda *a: None).start()
    conn.send("ready")
    base = None
    while True:
        msg = conn.recv()
        if msg == "stop":
            srv.stop()
            conn.send("stopped")
            return
        gc.collect()
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)])
        top = []
        if base is not None:
            for d in snap.compare_to(base, "lineno")[:3]:
                f = d.traceback[0]
                top.append(f"{Path(f.filename).name}:{f.lineno} {d.size_diff / 1024:+.0f} KiB")
        else:
            base = snap
        conn.send({
            "traced": tracemalloc.get_traced_memory()[0],
            "rss_kib": _status("VmRSS"),
            "threads": _status("Threads"),
            "python_threads": threading.active_count(),
            "key_caches": len(srv.ingest._keys) + len(srv.ingest._ack_keys),
            "batches": srv.batches,
            "top": top,
        })


def server_memory(site_key, ns, log=print):
    """{"N=n": figures} for each n in ns (ascending), one server throughout."""
    ns = sorted(ns)
    ids = device_ids(ns[-1])
    ctx = multiprocessing.get_context("spawn")
    out = {}
    with tempfile.TemporaryDirectory(prefix="washpay-fleet-mem-") as tmp:
        B.init(Path(tmp) / "broker", site_key, ids)
        broker = B.Broker(Path(tmp) / "broker").start()
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child, f"sqlite:///{tmp}/ledger.db", site_key,
                                                 broker.url()), daemon=True)
        proc.start()
        try:
            if not parent.poll(60):
                raise RuntimeError("the server child did not start within 60 s")
            parent.recv()
            parent.send("measure")
            base = parent.recv()
            done = 0
            for n in ns:
                t = time.monotonic()
                asyncio.run(_upload(site_key, broker.url(), ids[done:n]))
                log(f"  {n} boards uploaded ({n - done} new, {time.monotonic() - t:.1f} s)")
                done = n
                parent.send("measure")
                m = parent.recv()
                grown = m["traced"] - base["traced"]
                out[f"N={n}"] = {
                    "boards the server has seen": n,
                    "batches ingested": m["batches"],
                    "Python heap, traced (MiB)": m["traced"] / 2**20,
                    "growth over no boards (MiB)": grown / 2**20,
                    "per board (KiB)": grown / n / 1024,
                    "resident (VmRSS, MiB)": m["rss_kib"] / 1024,
                    "resident growth (MiB)": (m["rss_kib"] - base["rss_kib"]) / 1024,
                    "threads (OS / Python)": f"{m['threads']} / {m['python_threads']}",
                    "key cache entries": m["key_caches"],
                    "grew most (allocation site)": m["top"][0] if m["top"] else "",
                }
        finally:
            parent.send("stop")
            if parent.poll(20):
                parent.recv()
            proc.join(10)
            if proc.is_alive():
                proc.kill()
            broker.stop()
    return out


async def _upload(site_key, url, ids):
    fleet = Fleet(site_key, url, ids, settings={"keepalive_s": 60})
    fleet.backlog(RECORDS_EACH)
    await fleet.start(network=True)
    try:
        await fleet.drained(timeout=3600)
    finally:
        await fleet.stop()
