"""Benchmark of a firmware rollout, the server's side (docs/ota.md, "The server"): figures,
not pass/fail.

Mosquitto and `washpay server run` (a process of its own, SQLite ledger) on loopback; a
real release (`washpay release build`: mpy-cross, signed) published with `washpay server
release publish` to N simulated boards (host_tools/fleet/update.py: one request in flight
each, 960-byte chunks, as the firmware asks); each board downloads, checks every hash and
reports staged, switched, healthy. Reported: the time from publish to the last board
healthy, per-board download time, bytes on the wire (MQTT packets both ways, counted at
the boards' sockets) against the release's size, and the server's and broker's CPU.

    python -m host_tools.bench.rollout [--devices 50] [--max-downloads 8] [--canary 0]
"""

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host_tools import broker as B
from host_tools import provision as P
from host_tools import release as R
from host_tools.fleet import update as U
from host_tools.fleet.bench import cpu_s
from host_tools.fleet.mqtt import MQTTClient

ROOT = Path(__file__).resolve().parents[2]
SITE_KEY = bytes(range(32))


class CountingClient(MQTTClient):
    """The fleet's MQTT client, counting every byte it writes and reads."""

    sent = received = 0

    def _send(self, data):
        CountingClient.sent += len(data)
        super()._send(data)

    async def _read_packet(self):
        kind, flags, data = await super()._read_packet()
        n = len(data)
        CountingClient.received += 2 + len(data) + (n >= 128) + (n >= 16384)
        return kind, flags, data


def _washpay(*args):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


async def _fleet(ids, port):
    return [await U.UpdatingBoard(d, SITE_KEY, client_class=CountingClient).connect(
        "127.0.0.1", port) for d in ids]


async def _update(b, t0, times):
    offer = await b.offer(timeout=3600)
    start = time.monotonic()
    await b.download(offer)
    times["download"].append(time.monotonic() - start)
    times["wait"].append(start - t0)
    await b.report(offer, "switched")
    await b.report(offer, "healthy")


def run(devices=50, max_downloads=8, canary=0, log=print):
    tmp = Path(tempfile.mkdtemp(prefix="washpay-rollout-bench-"))
    ids = [f"ota-{i:04d}" for i in range(devices)]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    doc = R.build(P.firmware_version(), tmp / "rel", key, ["sim"])
    (tmp / "release.pub").write_text(R.public_text(R.public_bytes(key)))
    manifest = (tmp / "rel" / "manifest.json").read_bytes()
    size = sum(f["size"] for f in doc["files"])
    B.init(tmp / "broker", SITE_KEY, ids)
    broker = B.Broker(tmp / "broker").start()
    (tmp / "site.key").write_text(SITE_KEY.hex() + "\n")
    (tmp / "site.key").chmod(0o600)
    db = tmp / "ledger.db"
    server_log = open(tmp / "server.log", "w+")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "host_tools.cli", "server", "run", "--site-key",
         tmp / "site.key", "--broker", broker.url(), "--db", db, "--max-downloads",
         str(max_downloads)], cwd=ROOT, stdout=server_log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "ledger" not in (tmp / "server.log").read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start: "
                                   + (tmp / "server.log").read_text()[-500:])
            time.sleep(0.05)
        times = {"download": [], "wait": []}

        async def main():
            boards = await _fleet(ids, broker.port)
            cpu0 = (cpu_s(server.pid), cpu_s(broker.proc.pid))
            t0 = time.monotonic()
            r = _washpay("server", "release", "publish", tmp / "rel", "--devices",
                         ",".join(ids), "--canary", canary, "--pub", tmp / "release.pub",
                         "--db", db)
            if r.returncode:
                raise RuntimeError(r.stderr)
            await asyncio.gather(*(_update(b, t0, times) for b in boards))
            elapsed = time.monotonic() - t0
            # the server has recorded every board healthy
            while True:
                st = _washpay("server", "release", "status", "--db", db).stdout
                if f"{devices} healthy" in st:
                    break
                await asyncio.sleep(0.2)
            cpu1 = (cpu_s(server.pid), cpu_s(broker.proc.pid))
            stats = {"requests": sum(b.requests for b in boards),
                     "resent": sum(b.resent for b in boards)}
            for b in boards:
                b.close()
            return elapsed, cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], stats

        elapsed, server_cpu, broker_cpu, stats = asyncio.run(main())
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server_log.close()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    wire = CountingClient.sent + CountingClient.received
    per_board = len(manifest) + size
    return [
        ("boards / download slots (--max-downloads) / canaries",
         f"{devices} / {max_downloads} / {canary}", ""),
        ("release: files, bytes (+ manifest)", f"{len(doc['files'])}, {size} (+{len(manifest)})",
         "B"),
        ("publish to every board healthy", f"{elapsed:.1f}", "s"),
        ("one board's download (median / max)",
         f"{statistics.median(times['download']):.2f} / {max(times['download']):.2f}", "s"),
        ("a board's wait for its offer (median / max)",
         f"{statistics.median(times['wait']):.2f} / {max(times['wait']):.2f}", "s"),
        ("chunk requests (asked again after 5 s)", f"{stats['requests']} ({stats['resent']})",
         ""),
        ("bytes on the wire, both ways, per board", f"{wire / devices:,.0f}", "B"),
        ("  against the release (manifest + files)", f"{wire / devices / per_board:.3f}", "x"),
        ("server CPU (whole rollout) / per board", f"{server_cpu:.2f} / "
         f"{server_cpu / devices * 1000:.0f}", "s / ms"),
        ("broker CPU (whole rollout)", f"{broker_cpu:.2f}", "s"),
        ("aggregate download rate", f"{devices * per_board / elapsed / 1024:,.0f}", "KiB/s"),
    ]


def bench():
    return run()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m host_tools.bench.rollout",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--max-downloads", type=int, default=8)
    p.add_argument("--canary", type=int, default=0)
    a = p.parse_args(argv)
    from host_tools.bench import _table

    _table("Firmware rollout over MQTT (loopback, host figures)",
           run(a.devices, a.max_downloads, a.canary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
