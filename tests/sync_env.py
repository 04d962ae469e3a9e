"""What the sync tests share: a site key, a Mosquitto broker on loopback, a throwaway
PostgreSQL cluster when the machine has one, an MQTT observer on the server's side, and
firmware scripts under the real micropython that report one JSON object per line."""

import contextlib
import json
import os
import queue
import selectors
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from host_tools import broker as B

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
SITE_KEY = bytes(range(32))  # the journal tests' key, so their vectors line up
DEVICES = ("sim-0001", "sim-0002", "dev-1", "dev-2")


def micropython():
    from host_tools.interp import micropython as lookup

    return lookup()


def need_mosquitto():
    try:
        B.mosquitto_command()
    except B.BrokerError as e:
        pytest.skip(str(e))


def make_broker(directory, devices=DEVICES):
    need_mosquitto()
    B.init(directory, SITE_KEY, devices)
    return B.Broker(directory)


def write_site_key(path):
    Path(path).write_text(SITE_KEY.hex() + "\n")
    Path(path).chmod(0o600)
    return path


def sync_of(st):
    """The firmware's sync status inside a sim status ({} before it reports one)."""
    return (st.get("firmware") or {}).get("sync") or {}


def online(sim):
    return sim.wait_for(lambda s: sync_of(s).get("link") == "up", timeout=30,
                        what="the board online")


@contextlib.contextmanager
def command_rig(tmp, config=None):
    """A broker, the server on a SQLite ledger and one simulated board (config.json = the
    sync settings plus `config`), online: {"sim", "server", "db", "broker", "state"}."""
    from host_tools.server.service import Server
    from host_tools.sim.client import SimBoard

    broker = make_broker(tmp / "broker").start()
    url = f"mqtt://127.0.0.1:{broker.port}"
    db = tmp / "ledger.db"
    server = Server(f"sqlite:///{db}", SITE_KEY, url, log=lambda *a: None).start()
    st = tmp / "st"
    (st / "provision").mkdir(parents=True)
    cfg = {"device_id": "sim-0001", "broker": url,
           "sync": {"keepalive_s": 5, "backoff_min_ms": 200, "backoff_max_ms": 1000},
           **(config or {})}
    (st / "provision" / "config.json").write_text(json.dumps(cfg))
    write_site_key(st / "site.key")
    sim = SimBoard(st, log=tmp / "sim.log").start()
    try:
        online(sim)
        yield {"sim": sim, "server": server, "db": db, "broker": url, "state": st}
    finally:
        sim.stop()
        with contextlib.suppress(Exception):
            server.stop()
        broker.stop()


class MicroPythonScript:
    """A firmware-side script under micropython, read line by line while it runs.

    Lines that parse as JSON objects are events; others are kept as log.
    """

    def __init__(self, code, heap="256k", extra_path=(), firmware=FIRMWARE):
        paths = [str(firmware), *[str(p) for p in extra_path]]
        prelude = "import sys\n" + "".join(f"sys.path.append({p!r})\n" for p in paths)
        # a file, not -c: a long scenario does not fit a command line
        fd, self.path = tempfile.mkstemp(prefix="washpay-mp-", suffix=".py")
        with os.fdopen(fd, "w") as f:
            f.write(prelude + code)
        self.proc = subprocess.Popen(
            [micropython(), "-X", f"heapsize={heap}", self.path],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(ROOT),
        )
        self.events = []
        self.log = []
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        self._buf = b""
        self._q = queue.SimpleQueue()

    def _pump(self, timeout):
        for _ in self._sel.select(timeout):
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return False
            self._buf += chunk
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                try:
                    ev = json.loads(text)
                except ValueError:
                    ev = None
                if isinstance(ev, dict):
                    self.events.append(ev)
                    self._q.put(ev)
                else:
                    self.log.append(text)
        return True

    def expect(self, pred, timeout=30.0, what="event"):
        """Wait for the next event matching pred (a dict subset or a function)."""
        if isinstance(pred, dict):
            want = pred

            def pred(ev):
                return all(ev.get(k) == v for k, v in want.items())

        deadline = time.monotonic() + timeout
        while True:
            while not self._q.empty():
                ev = self._q.get()
                if pred(ev):
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"timed out waiting for {what}; events: {self.events[-10:]}; "
                    f"log: {self.log[-20:]}"
                )
            if not self._pump(min(left, 0.2)) and self.proc.poll() is not None:
                while self._pump(0):
                    pass
                while not self._q.empty():
                    ev = self._q.get()
                    if pred(ev):
                        return ev
                raise AssertionError(
                    f"micropython exited {self.proc.returncode} before {what}; "
                    f"events: {self.events[-10:]}; log: {self.log[-30:]}"
                )

    def wait(self, timeout=60):
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._pump(0.1)
        while self._pump(0):
            pass
        if self.proc.poll() is None:
            self.kill()
            raise AssertionError(f"micropython still running; log: {self.log[-30:]}")
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self):
        self.kill()
        self._sel.close()
        self.proc.stdout.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class Observer:
    """The server's side of the broker, with paho-mqtt: records what arrives."""

    def __init__(self, broker, topics=("wp/#",), client_id="observer", clean=True):
        import paho.mqtt.client as mqtt

        self.q = queue.SimpleQueue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=clean)
        self.c.username_pw_set(B.SERVER_USER, B.server_password(SITE_KEY))
        self.topics = topics
        self.c.on_message = lambda c, u, m: self.q.put((m.topic, bytes(m.payload), m.retain))
        self.c.on_connect = lambda c, u, f, rc, p=None: [c.subscribe(t, qos=1) for t in topics]
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        deadline = time.monotonic() + 5
        while not self.c.is_connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # the subscription is in

    def publish(self, topic, payload, qos=1, retain=False):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=5)

    def get(self, topic=None, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"nothing on {topic or 'any topic'} within {timeout}s")
            try:
                t, p, r = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if topic is None or t == topic:
                return t, p, r

    def none(self, topic, wait=1.0):
        """True if nothing arrives on `topic` within `wait` seconds."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                t, _, _ = self.q.get(timeout=0.05)
            except queue.Empty:
                continue
            if t == topic:
                return False
        return True

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


# ---- PostgreSQL: a throwaway cluster when the machine has the binaries
def _pg_bin(name):
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


@contextlib.contextmanager
def postgres_cluster():
    """Yield a postgresql:// URL of a fresh cluster on a free loopback port, or skip.

    WASHPAY_PG_URL names an existing server instead (its database is used as is).
    """
    url = os.environ.get("WASHPAY_PG_URL")
    if url:
        yield url
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="washpay-pg-"))
    data = tmp / "data"
    port = B.free_port()
    as_user = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as an unprivileged user
        user = "postgres" if _user_exists("postgres") else "nobody"
        shutil.chown(tmp, user)
        tmp.chmod(0o700)
        as_user = ["runuser", "-u", user, "--"]
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "washpay",
                    "--no-sync"], check=True, capture_output=True)
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-l", str(tmp / "pg.log"), "-w", "-o",
         f"-h 127.0.0.1 -p {port} -k {tmp} -F", "start"],
        check=True, capture_output=True,
    )
    try:
        yield f"postgresql://washpay@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


_db_counter = iter(range(10**6))


def pg_database(base):
    """A fresh database on a test module's PostgreSQL (`pg_url`): its URL."""
    import psycopg

    name = f"ledger_{os.getpid()}_{next(_db_counter)}"
    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    return base.rsplit("/", 1)[0] + "/" + name


def _user_exists(name):
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


# ---- genuine records, sealed by the firmware's own Journal under micropython
JOURNAL_SCRIPT = """
import json, os
from binascii import hexlify, unhexlify
from washpay.journal import Journal
from washpay.keys import device_secret, journal_keys
ARGS = json.loads(%r)
root = ARGS["root"]
j = Journal(root, journal_keys(device_secret(unhexlify(ARGS["site"]), ARGS["device"])),
            capacity=ARGS["capacity"])
def coin_day(n, first):
    # as sync_env.coin_day: made here for long backlogs, which do not fit a script's text
    base = 1780000000 + first * 60
    for i in range(first, first + n):
        if i %% 4 == 3:
            yield "vend_start", {"price": 250, "program": "quick", "credit": 0,
                                 "state": "starting", "t": base + i * 60}
        else:
            yield "coin", {"amount": 100, "credit": 100 * (i %% 4 + 1), "state": "credit",
                           "t": base + i * 60}
steps = ARGS["steps"]
if isinstance(steps, dict):
    j.append("boot")
    steps = coin_day(steps["coin_day"], steps.get("first", 0))
for rtype, fields in steps:
    if "source" in fields:
        fields["source"] = unhexlify(fields["source"])
    j.append(rtype, **fields)
print(json.dumps({"synced": j.synced_seq, "last": j.last_seq}))
for seq, rec in j.sealed(ARGS["after"]):
    print(json.dumps({"seq": seq, "raw": hexlify(rec).decode()}))
"""


def firmware_records(root, steps, device="sim-0001", after=0, capacity=20000):
    """Append `steps` [(type, fields)] to a firmware Journal kept in directory `root` on
    the host's filesystem; return every sealed record after `after` as bytes, in order.

    `steps` may be {"coin_day": n}: a boot record and coin_day(n), made by the script."""
    Path(root).mkdir(parents=True, exist_ok=True)
    events = _journal_script(root, device, steps, after, capacity)
    return [bytes.fromhex(e["raw"]) for e in events if "raw" in e]


def _journal_script(root, device, steps, after, capacity):
    """Run JOURNAL_SCRIPT under micropython on the journal in `root` -> its events."""
    args = {"root": str(root), "site": SITE_KEY.hex(), "device": device, "steps": steps,
            "after": after, "capacity": capacity}
    s = MicroPythonScript(JOURNAL_SCRIPT % json.dumps(args), heap="2m")
    try:
        rc = s.wait(300)
    finally:
        s.close()
    assert rc == 0, s.log
    return s.events


def journal_state(root, device="sim-0001"):
    """({seq: raw} of every record stored in a journal directory, its sync cursor)."""
    events = _journal_script(root, device, [], 0, 20000)
    recs = {e["seq"]: bytes.fromhex(e["raw"]) for e in events if "raw" in e}
    return recs, events[0]["synced"]


def coin_day(n, first=0):
    """n journal steps of ordinary trade: coins and vends, with a trusted clock."""
    base = 1_780_000_000 + first * 60
    steps = []
    for i in range(first, first + n):
        if i % 4 == 3:
            steps.append(("vend_start", {"price": 250, "program": "quick", "credit": 0,
                                         "state": "starting", "t": base + i * 60}))
        else:
            steps.append(("coin", {"amount": 100, "credit": 100 * (i % 4 + 1),
                                   "state": "credit", "t": base + i * 60}))
    return steps


# ---- a board's sync stack (journal + Sync) under micropython, without the vend engine
DEVICE_SCRIPT = """
import asyncio, json, os, time
from binascii import unhexlify
from washpay.journal import Journal
from washpay.keys import device_secret, journal_keys
from washpay.net import Sync
ARGS = json.loads(%r)
secret = device_secret(unhexlify(ARGS["site"]), ARGS["device"])
j = Journal(ARGS["root"], journal_keys(secret), capacity=ARGS["capacity"])

class FileWLAN:
    # up unless the test created the flag file: the board's network, as a file
    def isconnected(self):
        try:
            os.stat(ARGS["down_flag"])
            return False
        except OSError:
            return True

def log(*a):
    print("log:", *a)

sync = Sync(FileWLAN(), {"broker": ARGS["broker"], "sync": ARGS["sync"],
                         "broker_ca": ARGS.get("ca")}, secret, j, ARGS["device"], log=log)

async def trade():
    # payments while the network comes and goes: they never wait on it
    n = ARGS["append"]
    t = 1780000000
    for i in range(n):
        j.append("coin", amount=100, credit=100, state="credit", t=t + i)
        await asyncio.sleep_ms(ARGS["append_ms"])

async def main():
    sync.start()
    asyncio.create_task(trade())
    while True:
        st = sync.status()
        st["last_seq"] = j.last_seq
        st["synced_seq"] = j.synced_seq
        st["count"] = j.count
        print(json.dumps(st))
        await asyncio.sleep_ms(ARGS["report_ms"])

asyncio.run(main())
"""


def device_script(root, broker_url, device="sim-0001", sync=None, append=0, append_ms=20,
                  down_flag=None, ca=None, heap="256k", capacity=20000, report_ms=200):
    args = {
        "root": str(root), "site": SITE_KEY.hex(), "device": device, "broker": broker_url,
        "sync": {"keepalive_s": 5, "backoff_min_ms": 100, "backoff_max_ms": 1000,
                 "ack_timeout_ms": 3000, **(sync or {})},
        "append": append, "append_ms": append_ms,
        "down_flag": str(down_flag or Path(root).parent / "net.down"), "ca": ca,
        "capacity": capacity, "report_ms": report_ms,
    }
    return MicroPythonScript(DEVICE_SCRIPT % json.dumps(args), heap=heap)


def ledger(store, device="sim-0001"):
    """{seq: raw} of the server's verified records of `device`. A running server's store
    is read through a connection of its own: the server's connection belongs to its MQTT
    thread (a second thread's query on it can land inside the server's transaction)."""
    sql = "SELECT seq, raw, verified FROM records WHERE device = ? ORDER BY seq"
    if getattr(store, "path", ":memory:") != ":memory:":
        import sqlite3

        conn = sqlite3.connect(store.path, timeout=30)
        try:
            rows = conn.execute(sql, (device,)).fetchall()
        finally:
            conn.close()
    else:
        rows = store.query(sql, (device,))
    assert all(r[2] == 1 for r in rows), "unverified records in the ledger"
    return {r[0]: bytes(r[1]) for r in rows}


def journal_now(root, device="sim-0001"):
    """Every record still stored in the board's journal directory: {seq: raw}."""
    return {int.from_bytes(r[4:8], "big"): r for r in firmware_records(root, [], device)}
