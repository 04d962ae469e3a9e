"""A NATS cluster as the site's MQTT broker (host_tools/cluster/nats.py): the users, ACLs and
TLS `washpay broker init --kind nats` writes, held by a real nats-server; and a three-node
cluster on loopback losing a node (SIGKILL) mid-drain with no record lost, the boards and
the server moving to the nodes left.

Needs Debian's nats-server; skips plainly without it (it is not in the CI's packages: the
cluster is a fleet deployment's broker, not the site's default)."""

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest
from sync_env import ROOT, SITE_KEY

from host_tools import broker as B
from host_tools.cluster import nats as N
from host_tools.fleet.fleet import Fleet, device_ids
from host_tools.fleet.mqtt import MQTTClient, MQTTError
from host_tools.server.service import Server


@pytest.fixture(autouse=True)
def need_nats():
    try:
        N.nats_command()
    except B.BrokerError as e:
        pytest.skip(str(e))


def _port(url):
    return int(url.rsplit(":", 1)[1])


def test_a_node_loss_mid_drain_loses_no_record(tmp_path):
    n = 120
    ids = device_ids(n)
    N.init(tmp_path / "broker", SITE_KEY, ids, nodes=3)
    cluster = N.Cluster(tmp_path / "broker", SITE_KEY).start()
    # the server starts on node 0: the node that is lost, with a third of the boards
    srv = Server(f"sqlite:///{tmp_path}/ledger.db", SITE_KEY, cluster.url(), shared=False,
                 log=lambda *a: None).start()
    try:
        async def scenario():
            fleet = Fleet(SITE_KEY, cluster.url(), ids, seed=11, settings={
                "backoff_min_ms": 200, "backoff_max_ms": 2000, "ack_timeout_ms": 3000})
            fleet.backlog(40)
            await fleet.start(network=False)
            fleet.set_network(True)
            await fleet.wait(lambda: fleet.acked >= 0.3 * fleet.records, 120, "the drain")
            on_node0 = [b for b in fleet.boards if b.node == 0 and b.state == "up"]
            at_kill = fleet.acked
            cluster.kill(0)
            await fleet.drained(timeout=180)
            await fleet.stop()
            return fleet, on_node0, at_kill

        fleet, moved, at_kill = asyncio.run(scenario())
        assert moved and at_kill < fleet.records  # the node died mid-drain, under boards
        assert all(b.node != 0 for b in moved)  # each went on to another node
        assert srv.port != _port(cluster.urls()[0])  # and so did the server
        with srv.lock:
            rows = srv.store.query("SELECT device, seq, raw, verified FROM records")
            high = dict(srv.store.query("SELECT device, high_seq FROM devices"))
        got = {(d, s): bytes(r) for d, s, r, v in rows if v == 1}
        assert len(rows) == len(got)  # every record verified, none twice
        want = {(b.id, s): r for b in fleet.boards for s, r in enumerate(b.journal.records, 1)}
        assert got == want
        for b in fleet.boards:
            assert b.acked == b.journal.last_seq == high[b.id] and b.bad_acks == 0
    finally:
        srv.stop()
        cluster.stop()


@pytest.fixture(scope="module")
def one_node(tmp_path_factory):
    d = tmp_path_factory.mktemp("nats1")
    N.init(d, SITE_KEY, ["dev-1", "dev-2"], nodes=1)
    c = N.Cluster(d, SITE_KEY).start()
    yield c
    c.stop()


def _client(url, device):
    c = MQTTClient(device, user=device, password=B.device_password(SITE_KEY, device))
    return c, "127.0.0.1", _port(url)


def test_each_device_reaches_only_its_own_topics(one_node):
    url = one_node.urls()[0]
    got = []
    obs = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="obs", clean_session=True)
    obs.username_pw_set(B.SERVER_USER, B.server_password(SITE_KEY))
    obs.on_message = lambda c, u, m: got.append((m.topic, bytes(m.payload)))
    obs.connect("127.0.0.1", _port(url))
    obs.loop_start()

    async def scenario():
        c, host, port = _client(url, "dev-1")
        await c.connect(host, port, clean=True)
        assert await c.subscribe("wp/dev-1/ack", 1) == 1
        with pytest.raises(MQTTError, match="refused the subscription"):
            await c.subscribe("wp/dev-2/ack", 1)  # another board's acks
        with pytest.raises(MQTTError, match="refused the subscription"):
            await c.subscribe("$MQTT/sub/#", 1)  # the broker's own delivery subjects
        await c.publish("wp/dev-2/j", b"forged", qos=1, wait=False)  # dropped by the ACL
        await c.publish("wp/dev-1/j", b"mine", qos=1)
        await asyncio.sleep(0.5)
        c.close()
        bad = MQTTClient("dev-2", user="dev-2", password="0" * 32)
        with pytest.raises(MQTTError, match="bad user name or password|not authorised"):
            await bad.connect(host, port, clean=True)

    try:
        obs.subscribe("wp/#", 1)
        time.sleep(0.5)
        asyncio.run(scenario())
        time.sleep(0.3)
    finally:
        obs.loop_stop()
        obs.disconnect()
    assert ("wp/dev-1/j", b"mine") in got
    assert all(t != "wp/dev-2/j" for t, _ in got)


def test_a_device_password_does_not_open_the_nats_protocol(one_node):
    node = one_node.settings["nodes"][0]
    with socket.create_connection(("127.0.0.1", node["client_port"]), timeout=5) as s:
        s.recv(4096)  # INFO
        pw = B.device_password(SITE_KEY, "dev-1")
        s.sendall(b'CONNECT {"user":"dev-1","pass":"%s","verbose":true}\r\n' % pw.encode())
        assert b"Authorization Violation" in s.recv(4096)


def test_tls_nodes_take_the_site_ca(tmp_path):
    N.init(tmp_path, SITE_KEY, ["dev-1"], nodes=1, tls=True)
    c = N.Cluster(tmp_path, SITE_KEY).start()
    try:
        url = c.urls()[0]
        assert url.startswith("mqtts://")
        srv = Server(f"sqlite:///{tmp_path}/l.db", SITE_KEY, url, ca=tmp_path / "ca.pem",
                     shared=False, log=lambda *a: None).start()
        srv.stop()
        # no TLS: no MQTT either
        assert N.mqtt_sign_in("127.0.0.1", _port(url), B.SERVER_USER,
                              B.server_password(SITE_KEY)) is None
        # a CA that is not the site's: refused at the handshake
        other = tmp_path / "other"
        other.mkdir()
        B.make_certificates(other)
        with pytest.raises(ssl.SSLError):
            ctx = ssl.create_default_context(cafile=str(other / "ca.pem"))
            with socket.create_connection(("127.0.0.1", _port(url)), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                pass
    finally:
        c.stop()


def _washpay(*args):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "why"), [
    (["--device", "dev.1"], "cannot take '.'"),
    (["--device", "dev-1", "--nodes", "0"], "give 1 to 9"),
    (["--device", "dev-1", "--port", "1883"], "are for Mosquitto"),
])
def test_broker_init_nats_refuses_bad_input_in_one_line(tmp_path, args, why):
    key = tmp_path / "site.key"
    key.write_text(SITE_KEY.hex() + "\n")
    key.chmod(0o600)
    r = _washpay("broker", "init", "--kind", "nats", "--dir", str(tmp_path / "b"),
                 "--site-key", str(key), *args)
    assert r.returncode == 2 and why in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()


def test_broker_init_nats_says_how_to_run_the_server(tmp_path):
    key = tmp_path / "site.key"
    key.write_text(SITE_KEY.hex() + "\n")
    key.chmod(0o600)
    r = _washpay("broker", "init", "--kind", "nats", "--nodes", "3", "--dir",
                 str(tmp_path / "b"), "--site-key", str(key), "--device", "dev-1,dev-2")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "b" / "broker.json").read_text())
    assert s["kind"] == "nats" and len(s["nodes"]) == 3 and s["devices"] == ["dev-1", "dev-2"]
    assert "--no-shared-subscription" in r.stdout
    assert all(f":{n['mqtt_port']}" in r.stdout for n in s["nodes"])
    users = (tmp_path / "b" / "users.conf").read_text()
    assert B.device_password(SITE_KEY, "dev-1") not in users  # hashed, not in clear
    assert '"wp.dev-1.j"' in users and '"wp.dev-2.ack"' in users
