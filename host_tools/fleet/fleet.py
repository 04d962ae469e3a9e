"""Many simulated boards in one asyncio loop: the network switch, the trade, the figures.

    fleet = Fleet(site_key, "mqtt://127.0.0.1:1883", [f"fleet-{i:05d}" for i in range(n)])
    fleet.backlog(100)           # every board offline with 100 records
    await fleet.start(network=False)
    fleet.set_network(True)      # the network comes back at once
    await fleet.drained(timeout=600)
"""

import asyncio
import collections
import random
import time

from host_tools.fleet.board import Board
from host_tools.server.service import parse_url

BASE_T = 1_780_000_000  # the fleet's trade starts here (a trusted clock: 2026)


def device_ids(n, prefix="fleet"):
    return [f"{prefix}-{i:05d}" for i in range(n)]


class Stats:
    """What the fleet saw: connects per second, connect times, acks and their latency."""

    def __init__(self):
        self.connect_times = []  # monotonic time of each CONNACK
        self.connect_s = []  # TCP connect + sign-in duration
        self.latency = []  # seconds from sealing a record to its authenticated ack
        self.round_trip = []  # seconds from publishing a batch to the ack that covers it
        self.acked = 0
        self.ready = 0
        self.failures = collections.Counter()

    def connected(self, at, took):
        self.connect_times.append(at)
        self.connect_s.append(took)

    def failure(self, why):
        self.failures[why.split(":")[0][:60]] += 1

    def peak_connects_per_s(self, since=0.0):
        per = collections.Counter(int(t - since) for t in self.connect_times if t >= since)
        return max(per.values(), default=0)


def sale(board, t):
    """One sale on a board: a coin and the vend it pays (two records)."""
    board.append("coin", amount=100, credit=100, state="credit", t=t)
    board.append("vend_start", price=100, program="quick", credit=0, state="starting", t=t + 1)


class Fleet:
    def __init__(self, site_key, broker_url, devices, settings=None, seed=None):
        # "mqtt://a:1,mqtt://b:2": a broker cluster's nodes. Board i starts on node i mod k
        # and moves to the next node after a failed attempt: what a name that resolves to
        # the nodes still up (DNS, a load balancer) gives a board with one broker address
        self.nodes = []
        for url in broker_url.split(","):
            host, port, tls = parse_url(url.strip())
            if tls:
                raise ValueError("the fleet generator speaks plain MQTT only (mqtt://): TLS "
                                 "for thousands of boards is the next increment")
            self.nodes.append((host, port))
        self.host, self.port = self.nodes[0]
        self.site_key = site_key
        self.stats = Stats()
        self.rng = random.Random(seed)
        self.network = asyncio.Event()
        self.network_down = asyncio.Event()
        self.network_down.set()
        self.boards = [Board(self, d, site_key, settings, node=i % len(self.nodes))
                       for i, d in enumerate(devices)]
        self.tasks = []

    def set_network(self, up):
        """Every board's network up or down at once (a site's uplink, a broker's LAN)."""
        if up:
            self.network_down.clear()
            self.network.set()
        else:
            self.network.clear()
            self.network_down.set()

    def backlog(self, k):
        """Give every board k journal records of trade (a boot, then coins and vends) made
        while offline; sealed now, uploaded when the network is up."""
        for b in self.boards:
            j = b.journal
            t = BASE_T + j.last_seq * 60
            if not j.last_seq:
                j.append("boot", t=t, reason="power on")
            while j.last_seq < k:
                if j.last_seq % 4 == 3:
                    j.append("vend_start", price=250, program="quick", credit=0,
                             state="starting", t=t)
                else:
                    j.append("coin", amount=100, credit=100 * (j.last_seq % 4 + 1),
                             state="credit", t=t)
                t += 60

    async def start(self, network=True):
        self.set_network(network)
        self.tasks = [asyncio.create_task(b.run()) for b in self.boards]

    async def stop(self):
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []

    @property
    def records(self):
        return sum(b.journal.last_seq for b in self.boards)

    @property
    def acked(self):
        return sum(b.acked for b in self.boards)

    def all_acked(self):
        return all(b.acked == b.journal.last_seq for b in self.boards)

    async def wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s ({self.summary()})")
            await asyncio.sleep(0.05)

    async def online(self, timeout=120):
        await self.wait(lambda: all(b.state == "up" for b in self.boards), timeout,
                        "every board online")

    async def drained(self, timeout=600):
        await self.wait(self.all_acked, timeout, "every record acknowledged")

    async def trade(self, rate, duration):
        """Sales at `rate` a second over the whole fleet (a Poisson stream, each on a board
        picked at random) for `duration` seconds; returns the number of sales."""
        loop = asyncio.get_running_loop()
        end = loop.time() + duration
        n = 0
        t = BASE_T + 86_400
        while True:
            await asyncio.sleep(self.rng.expovariate(rate))
            if loop.time() >= end:
                return n
            n += 1
            t += 1
            sale(self.rng.choice(self.boards), t)

    def summary(self):
        states = collections.Counter(b.state for b in self.boards)
        return (f"{len(self.boards)} boards {dict(states)}, records {self.records}, "
                f"acked {self.acked}, failures {dict(self.stats.failures)}")
