"""A TCP proxy on loopback that misbehaves on request: the network between a board and its
broker, for the sync fault tests.

    proxy = FaultProxy("127.0.0.1", broker_port).start()
    ... point the board at 127.0.0.1:proxy.port ...
    proxy.set(latency_ms=300, rate=20_000)    # a slow link
    proxy.blackhole()     # connections stay open, nothing gets through (half-open)
    proxy.refuse()        # new connections are reset at once
    proxy.reset_all()     # every open connection gets a TCP RST now
    proxy.drop_all()      # every open connection is closed (FIN)
    proxy.reset_after(n)  # reset a connection once it has carried n bytes towards the broker
    proxy.heal()          # back to a clean pass-through
    proxy.stop()

One thread, one selector, non-blocking sockets: a peer that stops reading never blocks the
proxy. Counters (bytes each way, connections) let benchmarks measure bytes on the wire.
"""

import selectors
import socket
import struct
import threading
import time

PASS = "pass"
BLACKHOLE = "blackhole"
REFUSE = "refuse"


def _rst(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Pipe:
    """One proxied connection: client side `c`, broker side `u`."""

    def __init__(self, c, u):
        self.c = c
        self.u = u
        self.out = {c: bytearray(), u: bytearray()}  # what is waiting to be written to each
        self.pending = []  # (due time, destination, data) for latency
        self.up_bytes = 0
        self.budget_at = time.monotonic()
        self.last_due = {c: 0.0, u: 0.0}  # keeps each direction in order when settings change

    def other(self, s):
        return self.u if s is self.c else self.c


class FaultProxy:
    def __init__(self, target_host, target_port, host="127.0.0.1", port=0):
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.host, self.port = self.listener.getsockname()
        self.mode = PASS
        self.latency_ms = 0
        self.rate = 0  # bytes per second each way, 0 = unlimited
        self._reset_after = 0
        self.pipes = []
        self.lock = threading.Lock()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self._stop = False
        self._actions = []
        self.thread = threading.Thread(target=self._loop, name="faultproxy", daemon=True)
        self.bytes_up = 0  # client -> broker, as delivered
        self.bytes_down = 0
        self.accepted = 0
        self.resets = 0

    # ---- control (any thread)
    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self._stop = True
        self.thread.join(timeout=5)
        for p in list(self.pipes):
            self._close(p, rst=True)
        self.listener.close()
        self.sel.close()

    close = stop

    def _do(self, fn):
        done = threading.Event()
        with self.lock:
            self._actions.append((fn, done))
        done.wait(timeout=5)

    def set(self, latency_ms=None, rate=None):
        if latency_ms is not None:
            self.latency_ms = latency_ms
        if rate is not None:
            self.rate = rate

    def heal(self):
        self.mode = PASS
        self.latency_ms = 0
        self.rate = 0
        self._reset_after = 0

    def blackhole(self):
        self.mode = BLACKHOLE

    def refuse(self):
        self.mode = REFUSE

    def reset_all(self):
        self._do(lambda: [self._close(p, rst=True) for p in list(self.pipes)])

    def drop_all(self):
        self._do(lambda: [self._close(p, rst=False) for p in list(self.pipes)])

    def reset_after(self, n):
        """Reset each connection once it has carried `n` bytes towards the broker."""
        self._reset_after = n

    def connections(self):
        return len(self.pipes)

    # ---- the loop
    def _close(self, p, rst):
        if p not in self.pipes:
            return
        self.pipes.remove(p)
        for s in (p.c, p.u):
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            if rst:
                _rst(s)
            else:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        if rst:
            self.resets += 1

    def _accept(self):
        try:
            c, _ = self.listener.accept()
        except OSError:
            return
        self.accepted += 1
        if self.mode == REFUSE:
            _rst(c)
            return
        try:
            u = socket.create_connection(self.target, timeout=2)
        except OSError:
            _rst(c)
            return
        for s in (c, u):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        p = _Pipe(c, u)
        self.pipes.append(p)
        self.sel.register(c, selectors.EVENT_READ, p)
        self.sel.register(u, selectors.EVENT_READ, p)

    def _interest(self, p, s):
        ev = selectors.EVENT_READ
        if p.out[s]:
            ev |= selectors.EVENT_WRITE
        try:
            self.sel.modify(s, ev, p)
        except (KeyError, ValueError):
            pass

    def _deliver(self, p, dst, data):
        if self.mode == BLACKHOLE:
            return
        if dst is p.u:
            self.bytes_up += len(data)
            p.up_bytes += len(data)
        else:
            self.bytes_down += len(data)
        p.out[dst] += data
        self._flush(p, dst)

    def _flush(self, p, s):
        buf = p.out[s]
        if buf:
            try:
                n = s.send(buf)
                del buf[:n]
            except BlockingIOError:
                pass
            except OSError:
                self._close(p, rst=True)
                return
        self._interest(p, s)

    def _readable(self, p, s):
        try:
            data = s.recv(65536 if not self.rate else max(1, min(65536, self.rate // 20)))
        except BlockingIOError:
            return
        except OSError:
            self._close(p, rst=True)
            return
        if not data:
            self._close(p, rst=False)
            return
        if self.mode == BLACKHOLE:
            return  # swallowed: the sender believes it went out
        dst = p.other(s)
        if dst is p.u and self._reset_after and p.up_bytes + len(data) > self._reset_after:
            # deliver a part, then cut the connection mid-stream
            part = self._reset_after - p.up_bytes
            if part > 0:
                self._deliver(p, dst, data[:part])
                self._flush(p, dst)
            self._close(p, rst=True)
            return
        due = time.monotonic()
        if self.rate:
            p.budget_at = max(p.budget_at, due) + len(data) / self.rate
            due = p.budget_at
        if self.latency_ms:
            due += self.latency_ms / 1000
        due = max(due, p.last_due[dst])
        p.last_due[dst] = due
        # behind data still waiting for the same side, even if due now: delivered straight
        # away it would overtake it (a short read right after a long one, at a set rate)
        if due > time.monotonic() + 0.0005 or any(d is dst for _, d, _ in p.pending):
            p.pending.append((due, dst, data))
        else:
            self._deliver(p, dst, data)

    def _loop(self):
        while not self._stop:
            with self.lock:
                actions, self._actions = self._actions, []
            for fn, done in actions:
                try:
                    fn()
                finally:
                    done.set()
            now = time.monotonic()
            timeout = 0.05
            for p in list(self.pipes):
                keep = []
                for due, dst, data in p.pending:
                    if due <= now and p in self.pipes:
                        self._deliver(p, dst, data)
                    else:
                        keep.append((due, dst, data))
                        timeout = min(timeout, max(0.0, due - now))
                p.pending = keep
            for key, ev in self.sel.select(timeout=timeout):
                p = key.data
                if p is None:
                    self._accept()
                    continue
                if p not in self.pipes:
                    continue
                s = key.fileobj
                if ev & selectors.EVENT_WRITE:
                    self._flush(p, s)
                if ev & selectors.EVENT_READ and p in self.pipes:
                    self._readable(p, s)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
