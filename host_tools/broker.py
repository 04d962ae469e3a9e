"""The MQTT broker of a site: Mosquitto (Debian's package) configured from the site key.

`washpay broker init` writes everything Mosquitto needs into one directory:

- `passwd`: one line per device (user = device id, password derived from the device's
  secret, docs/sync.md) and one for the server, hashed as Mosquitto's `$7$` (PBKDF2-SHA512);
- `acl`: a device may publish only to wp/<its id>/{j,res,state,fwq,fws} and read only
  wp/<its id>/{ack,cmd,fwd} (fw*: updates, docs/ota.md); the server reads and writes wp/#;
- `ca.pem`/`ca.der` (the CA a board verifies the broker with), `server.pem`/`server.key`
  (an ECDSA P-256 certificate for 127.0.0.1 and localhost, valid from 2000-01-01 so that a
  board whose clock has not been set yet can still verify it);
- `mosquitto.conf`: a plain listener and a TLS listener on loopback, persistence in the
  directory, no anonymous clients.

`Broker(dir).start()` runs it in the foreground of a child process on free loopback ports
(tests and the demo); `stop()` ends that process. Nothing here outlives its caller.
"""

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from host_tools import keys as K

SERVER_USER = "washpay-server"
MQTT_PASSWORD_INFO = b"mqtt-password"
SERVER_PASSWORD_INFO = b"mqtt-server"
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd writes; the password itself is 128 random bits
# A device id becomes an MQTT user name and a topic level: no wildcards, no separators.
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


class BrokerError(Exception):
    """The broker cannot be configured or started; the message says what to do."""


def check_device_id(device_id):
    if not DEVICE_ID.match(device_id or ""):
        raise BrokerError(
            f"device id {device_id!r} cannot be an MQTT user and topic level: use 1-32 "
            "letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if device_id == SERVER_USER:
        raise BrokerError(f"{SERVER_USER!r} is the server's user name, not a device id")
    return device_id


def device_password(site_key, device_id):
    """The MQTT password of one board: 128 bits of its secret's HKDF output, as hex.

    The board derives the same from its device secret (washpay/net/setup.py).
    """
    secret = K.device_secret(site_key, check_device_id(device_id))
    return K.derive(secret, MQTT_PASSWORD_INFO)[:16].hex()


def server_password(site_key):
    """The server's MQTT password, from the site key (never on a board)."""
    hk = HKDF(algorithm=hashes.SHA256(), length=16, salt=K.KEY_SALT, info=SERVER_PASSWORD_INFO)
    return hk.derive(site_key).hex()


def mosquitto_hash(password, salt=None, iterations=PBKDF2_ITERATIONS):
    """A password file entry's hash in Mosquitto 2's `$7$` format (PBKDF2-HMAC-SHA512)."""
    salt = os.urandom(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def password_file(site_key, devices):
    lines = [f"{SERVER_USER}:{mosquitto_hash(server_password(site_key))}"]
    for dev in devices:
        lines.append(f"{check_device_id(dev)}:{mosquitto_hash(device_password(site_key, dev))}")
    return "\n".join(lines) + "\n"


def acl_file():
    # %u is the client's user name; Mosquitto refuses to substitute one holding + # or /.
    return (
        "# written by `washpay broker init`; docs/sync.md has the topic table\n"
        f"user {SERVER_USER}\n"
        "topic readwrite wp/#\n"
        "\n"
        "pattern write wp/%u/j\n"
        "pattern write wp/%u/res\n"
        "pattern write wp/%u/state\n"
        "pattern read wp/%u/ack\n"
        "pattern read wp/%u/cmd\n"
        "# over-the-air updates (docs/ota.md): chunk requests, status, chunks\n"
        "pattern write wp/%u/fwq\n"
        "pattern write wp/%u/fws\n"
        "pattern read wp/%u/fwd\n"
    )


def make_certificates(directory, hostnames=("localhost",), ips=("127.0.0.1",)):
    """A CA and a broker certificate signed by it (ECDSA P-256: fast handshakes on an ESP32)."""
    d = Path(directory)
    start = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    end = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=3650)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "washpay site CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(h) for h in hostnames]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))
    (d / "ca.der").write_bytes(ca.public_bytes(serialization.Encoding.DER))
    (d / "server.pem").write_bytes(cert.public_bytes(pem))
    for name, k in (("server.key", key), ("ca.key", ca_key)):
        path = d / name
        path.write_bytes(
            k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        path.chmod(0o600)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_command():
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if not found:
        raise BrokerError("mosquitto not found: install it (apt-get install mosquitto)")
    return found


def init(directory, site_key, devices, port=None, tls_port=None, remove=(), new_ports=False):
    """Write a broker directory for `devices`; returns its settings (also in broker.json).

    Run again on the same directory it keeps what is there: the ports, the devices already
    admitted (`devices` are added to them; `remove` takes some away), the certificates.
    `port`/`tls_port` or `new_ports` change the ports. settings["changes"] says what changed
    (an empty list: nothing). A BrokerError refuses before anything is written."""
    d = Path(directory)
    for dev in [*devices, *remove]:
        check_device_id(dev)
    old = _previous(d, site_key)
    kept = old["devices"] if old else []
    missing = [dev for dev in remove if dev not in kept and dev not in devices]
    if missing:
        raise BrokerError(f"--remove-device {', '.join(missing)}: not a device of the broker "
                          f"in {d} (it has: {', '.join(kept) or 'none'}); nothing was changed")
    wanted = [dev for dev in dict.fromkeys([*kept, *devices]) if dev not in remove]
    settings = {
        "host": "127.0.0.1",
        "port": port or (old["port"] if old and not new_ports else free_port()),
        "tls_port": tls_port or (old["tls_port"] if old and not new_ports else free_port()),
        "devices": wanted,
    }
    if settings["port"] == settings["tls_port"]:
        raise BrokerError(f"the plain and the TLS port are both {settings['port']}: give two "
                          "ports")
    changes = _changes(old, settings)
    d.mkdir(parents=True, exist_ok=True)
    if (d / "acl").exists() and (d / "acl").read_text() != acl_file():
        changes = [*changes, "acl: the topics of this version"]  # e.g. the update topics
    if changes or not all((d / n).exists() for n in ("passwd", "acl", "mosquitto.conf")):
        (d / "passwd").write_text(password_file(site_key, wanted))
        (d / "passwd").chmod(0o600)
        (d / "acl").write_text(acl_file())
        (d / "broker.json").write_text(json.dumps(settings, indent=1) + "\n")
        write_config(d, settings)
    if not (d / "ca.pem").exists():
        make_certificates(d)
    return {**settings, "changes": changes}


def _previous(d, site_key):
    """The settings of an earlier `broker init` in `d` (None if there is none), refused if
    they were made for another site key or cannot be read."""
    path = d / "broker.json"
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
        old["port"], old["tls_port"] = int(old["port"]), int(old["tls_port"])
        old["devices"] = [str(dev) for dev in old.get("devices", [])]
    except (ValueError, KeyError, TypeError):
        raise BrokerError(f"{path} is damaged: repair it or start a new broker directory"
                          ) from None
    server_entry = None
    if (d / "passwd").exists():
        for line in (d / "passwd").read_text().splitlines():
            user, _, entry = line.partition(":")
            if user == SERVER_USER:
                server_entry = entry
    if server_entry and not password_matches(server_entry, server_password(site_key)):
        raise BrokerError(f"the broker in {d} was set up with another site key: give that "
                          "key (or a new directory for this site)")
    return old


def password_matches(entry, password):
    """True if a `$7$` password file entry (see mosquitto_hash) is the hash of `password`."""
    try:
        _, kind, iterations, salt, _ = entry.split("$")
        salt = base64.b64decode(salt)
    except ValueError:
        return False
    return kind == "7" and mosquitto_hash(password, salt, int(iterations)) == entry


def _changes(old, new):
    """What a run of `broker init` changes, in words (empty: nothing)."""
    if old is None:
        return [f"new broker: {len(new['devices'])} device(s)"]
    out = []
    added = [dev for dev in new["devices"] if dev not in old["devices"]]
    gone = [dev for dev in old["devices"] if dev not in new["devices"]]
    if added:
        out.append(f"added {', '.join(added)}")
    if gone:
        out.append(f"removed {', '.join(gone)}")
    for key, name in (("port", "plain port"), ("tls_port", "TLS port")):
        if old[key] != new[key]:
            out.append(f"{name} {old[key]} -> {new[key]}")
    return out


def write_config(d, settings):
    d = Path(d).resolve()
    (d / "data").mkdir(exist_ok=True)
    conf = f"""# written by `washpay broker init`
per_listener_settings false
allow_anonymous false
password_file {d}/passwd
acl_file {d}/acl
persistence true
persistence_location {d}/data/
autosave_interval 1
# a board may be offline for days: keep what the server sends it (acks, commands), and
# what the boards send while the server is down
max_queued_messages 200000
max_inflight_messages 64
max_packet_size 1048576
# small packets (acks, PUBACKs) go out at once: with Nagle's algorithm each ack round trip
# waits for the peer's delayed ACK (~40 ms on Linux)
set_tcp_nodelay true
log_dest file {d}/mosquitto.log
log_type error
log_type warning
log_type notice
connection_messages true
user root

listener {settings["port"]} {settings["host"]}
protocol mqtt

listener {settings["tls_port"]} {settings["host"]}
protocol mqtt
cafile {d}/ca.pem
certfile {d}/server.pem
keyfile {d}/server.key
tls_version tlsv1.2
"""
    if os.geteuid() != 0:
        conf = conf.replace("user root\n", "")
    (d / "mosquitto.conf").write_text(conf)


def load_settings(directory):
    path = Path(directory) / "broker.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BrokerError(f"{path} not found: run `washpay broker init` first") from None


def load_settings_or_none(directory):
    """broker.json's settings, {} if the directory has none (yet)."""
    try:
        return load_settings(directory)
    except BrokerError:
        return {}


class Broker:
    """A Mosquitto process for one broker directory (see init())."""

    def __init__(self, directory):
        self.dir = Path(directory).resolve()
        self.settings = load_settings(self.dir)
        self.proc = None

    @property
    def host(self):
        return self.settings["host"]

    @property
    def port(self):
        return self.settings["port"]

    @property
    def tls_port(self):
        return self.settings["tls_port"]

    def start(self, timeout=10.0):
        if self.proc is not None and self.proc.poll() is None:
            return self
        cmd = [mosquitto_command(), "-c", str(self.dir / "mosquitto.conf")]
        for port in (self.port, self.tls_port):
            # another process on our port would answer the readiness check below while our
            # Mosquitto exits with "Address already in use"
            if not self._free(port):
                raise BrokerError(
                    f"{self.host}:{port} is already in use: is the broker of {self.dir} "
                    "running already (washpay broker run)? Stop it first, or give this one "
                    "other ports (washpay broker init --new-ports)")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                log = self.dir / "mosquitto.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                self.proc = None
                raise BrokerError(f"mosquitto exited at start: {err.strip()} {tail.strip()}")
            if all(self._listening(p) for p in (self.port, self.tls_port)):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port}")
            time.sleep(0.02)

    def _free(self, port):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Mosquitto binds
            try:
                s.bind((self.host, port))
            except OSError:
                return False
        return True

    def _listening(self, port):
        try:
            with socket.create_connection((self.host, port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self, kill=False):
        """End the broker: SIGTERM (it saves its persistence file), or SIGKILL (a crash)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def url(self, tls=False):
        return f"mqtt{'s' if tls else ''}://{self.host}:{self.tls_port if tls else self.port}"
