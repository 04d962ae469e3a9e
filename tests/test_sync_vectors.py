"""The sync protocol's vectors (docs/sync.md): the host (host_tools, `cryptography`/hashlib)
and the firmware (washpay.net under the real micropython) each reproduce them on their own."""

import json

from conftest import run_micropython

from host_tools import broker as B
from host_tools.server import commands as C
from host_tools.server import wire

SITE = bytes(range(32))
DEVICE = "sim-0001"
PASSWORD = "47c0aa84087471a919591cd4d9de28f7"
SERVER_PASSWORD = "6ee713c76055fe8499b727aee32ab2a0"
ACK_KEY = "4dd68c28584151090374593537914fa576e6e6aaac9f112ab631c42f2717fc3b"
ACK_1234 = "01000000000004d2c899c853f0f888ae3044225bba33e02d"
PRICE_CMD = ("12101112131415161720212223242526273d6834536955b9006955ba2c02000a0105717569636b"
             "00012c70959433bbf703e510a637d4c465ee72")


def test_host_side():
    assert B.device_password(SITE, DEVICE) == PASSWORD
    assert B.server_password(SITE) == SERVER_PASSWORD
    key = wire.ack_key(SITE, DEVICE)
    assert key.hex() == ACK_KEY
    assert wire.build_ack(key, DEVICE, 1234).hex() == ACK_1234
    cmd = C.operator_command(C.command_key(SITE, DEVICE), DEVICE, C.PRICE,
                             C.price_body({"quick": 300}), 1767225600, 1767225900,
                             bytes(range(16, 24)), bytes(range(32, 40)))
    assert cmd.hex() == PRICE_CMD


def test_the_vectors_are_in_the_doc():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "sync.md").read_text()
    for v in (PASSWORD, SERVER_PASSWORD, ACK_KEY, ACK_1234, PRICE_CMD):
        assert v in doc


FIRMWARE_SIDE = """
import json
from binascii import hexlify, unhexlify
from washpay.keys import device_secret, derive, command_key
from washpay.net.setup import mqtt_password, parse_broker
from washpay.net.uploader import Uploader
from washpay.net import Commands
from washpay.net.commands import _verify
secret = device_secret(bytes(range(32)), "sim-0001")
out = {"password": mqtt_password(secret).decode(),
       "ack_key": hexlify(derive(secret, b"sync-ack")).decode()}

class FakeJournal:
    synced_seq = 0
    last_seq = 2000
    acked = []
    def ack(self, seq):
        self.acked.append(seq)
        self.synced_seq = seq

j = FakeJournal()
up = Uploader(j, b"sim-0001", derive(secret, b"sync-ack"))
good = unhexlify(%(ack)r)
up.on_ack(memoryview(good))
bad = bytearray(good)
bad[5] ^= 1
up.on_ack(memoryview(bad))
up.on_ack(memoryview(good[:10]))  # cut short
out["short_error"] = up.last_error
other = Uploader(FakeJournal(), b"sim-0002", derive(secret, b"sync-ack"))
other.on_ack(memoryview(good))  # the same bytes are no ack for another board
out["acked"] = j.acked
out["bad_acks"] = up.bad_acks
out["other_bad"] = other.bad_acks

class Remote:
    cache = None

cmds = Commands(Remote(), None, None, command_key(secret), "sim-0001")
cid, action, body, issued, expires = _verify(cmds, unhexlify(%(cmd)r))
out["cmd"] = [hexlify(cid).decode(), action, hexlify(bytes(body)).decode(), issued, expires]
out["broker"] = [parse_broker("mqtts://10.0.0.5"), parse_broker("mqtt://h:1884/"),
                 parse_broker("mqtts://[::1]:9")]
print(json.dumps(out))
"""


def test_firmware_side():
    _, out, _ = run_micropython(FIRMWARE_SIDE % {"ack": ACK_1234, "cmd": PRICE_CMD})
    got = json.loads(out.strip().splitlines()[-1])
    assert got["password"] == PASSWORD
    assert got["ack_key"] == ACK_KEY
    assert got["acked"] == [1234]  # the genuine ack moved the cursor; the altered one did not
    assert got["bad_acks"] == 2 and got["other_bad"] == 1
    assert got["short_error"] == "ack of 10 bytes, not a version-1 ack"
    assert got["cmd"] == ["1011121314151617", 2, C.price_body({"quick": 300}).hex(),
                          1767225600, 1767225900]
    assert got["broker"] == [
        {"host": "10.0.0.5", "port": 8883, "tls": True},
        {"host": "h", "port": 1884, "tls": False},
        {"host": "::1", "port": 9, "tls": True},
    ]
