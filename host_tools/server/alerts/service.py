"""The alerts engine and the notices courier on threads of the server process.

    watch = AlertService(store_url, cfg, log=print).start()
    watch.poke()        # after an ingested batch: look now, not at the next tick
    watch.stop()

Each thread has its own connection to the ledger, so neither waits on ingest's lock nor
holds it: the engine reads what ingest committed, the courier sends while ingest goes on.
"""

import threading
import time

from host_tools.server.alerts.engine import Engine
from host_tools.server.notices.courier import Courier
from host_tools.server.store import open_store


class AlertService:
    def __init__(self, store_url, cfg, clock=time.time, log=print, courier_every_s=0.25,
                 min_gap_s=1.0):
        """min_gap_s: the engine looks at most once per this long however often it is
        poked. A look is one write transaction over every board with new records; poked
        after every batch of a fleet draining its backlog, it held SQLite's write lock
        between most batches and slowed a 5,000-board drain 2-3x (docs/fleet.md). An
        alert comes at most this much later."""
        self.store_url = store_url
        self.min_gap_s = min_gap_s
        self.cfg = cfg
        self.clock = clock
        self.log = log
        self.courier_every_s = courier_every_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads = []
        self._stores = []
        self.evaluations = 0

    def start(self):
        engine_store, courier_store = open_store(self.store_url), open_store(self.store_url)
        self._stores = [engine_store, courier_store]
        self.engine = Engine(engine_store, self.cfg, self.clock)
        self.courier = Courier(courier_store, self.cfg, self.clock, log=self.log)
        for name, fn in (("washpay-alerts", self._engine_loop),
                         ("washpay-notices", self._courier_loop)):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def poke(self):
        self._wake.set()

    def stop(self):
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(15)
        for s in self._stores:
            s.close()

    def _engine_loop(self):
        every = self.cfg["check_every_s"]
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                for aid in self.engine.evaluate():
                    self.log(f"alerts: raised alert {aid}")
                self.evaluations += 1
            except Exception as e:  # noqa: BLE001 - a failed look is tried again next tick
                self.log(f"alerts: {type(e).__name__}: {e}")
            self._wake.wait(every)
            # pokes that come meanwhile are kept: the next look takes them all
            self._stop.wait(max(0.0, self.min_gap_s - (time.monotonic() - began)))
            self._wake.clear()

    def _courier_loop(self):
        while not self._stop.wait(self.courier_every_s):
            try:
                self.courier.run_once()
            except Exception as e:  # noqa: BLE001 - the notice stays in the outbox
                self.log(f"notices: {type(e).__name__}: {e}")
