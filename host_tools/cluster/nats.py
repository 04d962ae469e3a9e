"""A NATS cluster as the site's MQTT broker: `washpay broker init --kind nats --nodes 3`.

`init()` writes one directory for the whole cluster:

- `node-<i>.conf` per node: its NATS client port (the nodes' own business, not the boards'),
  its route port, its MQTT listener (plain, or TLS with `tls=True`: NATS has one MQTT
  listener a node), JetStream in `js-<i>/` (MQTT sessions, retained acks and QoS 1
  messages live there, replicated over min(nodes, 3) nodes);
- `users.conf`, included by every node: the server's user and one per device, passwords as
  bcrypt hashes (NATS's format; cost 4: the passwords are 128 random bits, the hash only
  keeps them out of the file), each device allowed to publish only wp.<id>.{j,res,state}
  and to subscribe only wp.<id>.{ack,cmd}, over MQTT only (a NATS-protocol connection with
  a device's password is refused). `$MQTT.sub.>` is the delivery subject NATS gives a QoS 1
  subscription; an MQTT client cannot subscribe to a `$MQTT` topic itself.
- the routes between nodes authenticate with a password derived from the site key;
- `ca.pem`, `server.pem`, `server.key`: the same kind of site CA as Mosquitto's.

Why three nodes: NATS keeps MQTT state in JetStream, replicated by Raft, which needs a
majority of the nodes: a cluster of two stops taking connections when one is lost (tried:
"no suitable peers for placement"). Three survive the loss of any one.

What NATS's MQTT (2.9) does not do: shared subscriptions. `$share/washpay/...` is taken as
a plain topic that matches nothing, so the server runs one ingest process with plain
subscriptions (`washpay server run --no-shared-subscription`) on a NATS broker.

`Cluster(dir).start()` runs every node as a child process on loopback; `kill(i)` ends one
with SIGKILL (a machine lost), `start_node(i)` brings it back; `stop()` ends them all.
"""

import json
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

from host_tools import broker as B
from host_tools import keys as K

ROUTE_USER = "washpay-route"
ROUTE_PASSWORD_INFO = b"nats-route"
BCRYPT_COST = 4
MAX_NODES = 9


class ClusterError(B.BrokerError):
    """The cluster cannot be configured or started; the message says what to do."""


def nats_command():
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)
    if not found:
        raise ClusterError("nats-server not found: install it (apt-get install nats-server)")
    return found


def check_device_id(device_id):
    B.check_device_id(device_id)
    if "." in device_id:
        # NATS maps MQTT's / to its own . separator: a dot would split the device's topic
        raise ClusterError(f"device id {device_id!r}: a NATS broker cannot take '.' in a "
                           "device id (it separates NATS subjects); use '-' or '_'")
    return device_id


def route_password(site_key):
    return K.derive(site_key, ROUTE_PASSWORD_INFO)[:16].hex()


def bcrypt_hash(password):
    import bcrypt

    h = bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()
    return "$2a$" + h[4:]  # the same hash; $2a$ is the prefix every NATS release takes


def _q(s):
    return json.dumps(s)  # NATS's config reads JSON strings


def users_conf(site_key, devices):
    lines = ["# written by `washpay broker init --kind nats`; docs/fleet.md", "users = ["]
    lines.append(f"  {{user: {_q(B.SERVER_USER)}, password: "
                 f"{_q(bcrypt_hash(B.server_password(site_key)))}, "
                 'permissions: {publish: ">", subscribe: ">"}, '
                 'allowed_connection_types: ["MQTT"]}')
    for dev in devices:
        check_device_id(dev)
        pub = [f"wp.{dev}.j", f"wp.{dev}.res", f"wp.{dev}.state"]
        sub = [f"wp.{dev}.ack", f"wp.{dev}.cmd", "$MQTT.sub.>"]
        lines.append(f"  {{user: {_q(dev)}, password: "
                     f"{_q(bcrypt_hash(B.device_password(site_key, dev)))}, "
                     f"permissions: {{publish: {json.dumps(pub)}, subscribe: "
                     f"{json.dumps(sub)}}}, allowed_connection_types: [\"MQTT\"]}}")
    lines.append("]")
    return "\n".join(lines) + "\n"


def init(directory, site_key, devices, nodes=3, tls=False):
    """Write the cluster's directory; returns its settings (also in broker.json)."""
    d = Path(directory).resolve()
    if not 1 <= nodes <= MAX_NODES:
        raise ClusterError(f"--nodes {nodes}: give 1 to {MAX_NODES} (3 survive losing one)")
    for dev in devices:
        check_device_id(dev)
    old = None
    if (d / "broker.json").exists():
        old = B.load_settings(d)
        if old.get("kind") != "nats":
            raise ClusterError(f"{d} holds a Mosquitto broker: give a new directory for the "
                               "NATS cluster")
    wanted = list(dict.fromkeys([*(old["devices"] if old else []), *devices]))
    if old and len(old["nodes"]) == nodes and old.get("tls") == tls:
        node_list = old["nodes"]
    else:
        node_list = [{"name": f"n{i}", "mqtt_port": B.free_port(), "client_port": B.free_port(),
                      "route_port": B.free_port()} for i in range(nodes)]
    settings = {"kind": "nats", "host": "127.0.0.1", "tls": tls, "nodes": node_list,
                "devices": wanted}
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "ca.pem").exists():
        B.make_certificates(d)
    (d / "users.conf").write_text(users_conf(site_key, wanted))
    (d / "users.conf").chmod(0o600)
    for i in range(nodes):
        conf = d / f"node-{i}.conf"
        conf.write_text(node_conf(d, settings, i, route_password(site_key)))
        conf.chmod(0o600)
    (d / "broker.json").write_text(json.dumps(settings, indent=1) + "\n")
    return settings


def node_conf(d, settings, i, route_pw):
    node = settings["nodes"][i]
    host = settings["host"]
    routes = ", ".join(_q(f"nats-route://{ROUTE_USER}:{route_pw}@{host}:{n['route_port']}")
                       for j, n in enumerate(settings["nodes"]) if j != i)
    cluster = ""
    if len(settings["nodes"]) > 1:
        cluster = f"""
cluster {{
  name: "washpay"
  listen: "{host}:{node['route_port']}"
  authorization {{ user: {_q(ROUTE_USER)}, password: {_q(route_pw)} }}
  routes: [{routes}]
}}
"""
    tls = ""
    if settings["tls"]:
        tls = f"""
  tls {{
    cert_file: "{d}/server.pem"
    key_file: "{d}/server.key"
  }}"""
    return f"""# written by `washpay broker init --kind nats`; docs/fleet.md
server_name: "{node['name']}"
listen: "{host}:{node['client_port']}"
jetstream {{
  store_dir: "{d}/js-{i}"
}}
{cluster}
authorization {{
  include "users.conf"
}}
mqtt {{
  listen: "{host}:{node['mqtt_port']}"
  # every QoS 1 stream replicated on min(nodes, 3): a lost node loses nothing
  stream_replicas: {min(3, len(settings['nodes']))}
  # a board's batch that was not acknowledged (the server died) goes again after this
  ack_wait: "30s"{tls}
}}
"""


class Cluster:
    """The nats-server processes of one cluster directory (see init())."""

    def __init__(self, directory, site_key=None):
        # with the site key, readiness is the server user's sign-in being taken (JetStream
        # has a leader, the MQTT streams exist); without, a refused anonymous sign-in
        self.site_key = site_key
        self.dir = Path(directory).resolve()
        self.settings = B.load_settings(self.dir)
        if self.settings.get("kind") != "nats":
            raise ClusterError(f"{self.dir} is not a NATS cluster (washpay broker init "
                               "--kind nats)")
        self.procs = [None] * len(self.settings["nodes"])

    @property
    def host(self):
        return self.settings["host"]

    def urls(self):
        scheme = "mqtts" if self.settings["tls"] else "mqtt"
        return [f"{scheme}://{self.host}:{n['mqtt_port']}" for n in self.settings["nodes"]]

    def url(self):
        return ",".join(self.urls())

    def start(self, timeout=60.0):
        for i in range(len(self.procs)):
            self.start_node(i, wait=False)
        self.wait_ready(timeout)
        return self

    def start_node(self, i, wait=True, timeout=60.0):
        node = self.settings["nodes"][i]
        if self.procs[i] is not None and self.procs[i].poll() is None:
            return
        for port in (node["mqtt_port"], node["client_port"], node["route_port"]):
            if not _free(self.host, port):
                raise ClusterError(f"{self.host}:{port} is already in use: is node {i} of "
                                   f"{self.dir} running already? Stop it first")
        log = open(self.dir / f"node-{i}.log", "ab")  # noqa: SIM115 - the child holds it
        self.procs[i] = subprocess.Popen(
            [nats_command(), "-c", str(self.dir / f"node-{i}.conf")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        log.close()
        if wait:
            self.wait_ready(timeout, [i])

    def wait_ready(self, timeout=60.0, nodes=None):
        """Until every node listens for MQTT and takes an MQTT sign-in (JetStream has a
        leader and the MQTT streams exist)."""
        nodes = range(len(self.procs)) if nodes is None else nodes
        deadline = time.monotonic() + timeout
        for i in nodes:
            port = self.settings["nodes"][i]["mqtt_port"]
            while not self._answers(port):
                p = self.procs[i]
                if p is None or p.poll() is not None:
                    raise ClusterError(f"nats-server node {i} exited at start: "
                                       + self.log_tail(i))
                if time.monotonic() > deadline:
                    raise ClusterError(f"nats-server node {i} did not take MQTT sign-ins on "
                                       f"{self.host}:{port} within {timeout:.0f} s: "
                                       + self.log_tail(i))
                time.sleep(0.2)

    def _answers(self, port):
        user = pw = None
        if self.site_key is not None:
            user, pw = B.SERVER_USER, B.server_password(self.site_key)
        ca = self.dir / "ca.pem" if self.settings["tls"] else None
        return mqtt_sign_in(self.host, port, user, pw, ca) in ((0,) if user else (0, 4, 5))

    def log_tail(self, i):
        path = self.dir / f"node-{i}.log"
        return path.read_text(errors="replace")[-800:] if path.exists() else ""

    def kill(self, i):
        """SIGKILL one node: the machine is gone."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
        self.procs[i] = None

    def pids(self):
        return [p.pid if p is not None else None for p in self.procs]

    def stop(self):
        for i, p in enumerate(self.procs):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            self.procs[i] = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _free(host, port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def mqtt_sign_in(host, port, user=None, password=None, ca=None, timeout=3.0):
    """One MQTT CONNECT (clean session): the CONNACK's return code, or None if the node
    closed the connection or did not answer (down, or its JetStream not ready)."""
    def text(b):
        b = b.encode()
        return struct.pack(">H", len(b)) + b

    flags, payload = 0x02, text(f"washpay-ready-{port}")
    if user is not None:
        flags |= 0xC0
        payload += text(user) + text(password)
    body = text("MQTT") + bytes([4, flags]) + struct.pack(">H", 10) + payload
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            s = raw
            if ca is not None:
                ctx = ssl.create_default_context(cafile=str(ca))
                s = ctx.wrap_socket(raw, server_hostname=host)
            s.settimeout(timeout)
            s.sendall(bytes([0x10, len(body)]) + body)
            ack = s.recv(4)
            if len(ack) == 4 and ack[0] == 0x20:
                if ack[3] == 0:
                    s.sendall(b"\xe0\x00")  # DISCONNECT
                return ack[3]
    except OSError:
        pass
    return None


def nodes_alive(cluster):
    return [p is not None and p.poll() is None for p in cluster.procs]
