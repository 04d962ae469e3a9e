"""Bad sync settings on the board get a clear error and change nothing else: config.json's
"sync" object and broker URL, and the site CA file, under the real micropython."""

import json

import pytest
from conftest import run_micropython

CHECK = """
import json
from washpay import config
from washpay.net.setup import parse_broker
out = []
for raw in json.loads(%r):
    try:
        config.validate(raw)
        out.append("ok")
    except config.ConfigError as e:
        out.append(str(e))
for url in json.loads(%r):
    try:
        out.append(parse_broker(url))
    except ValueError as e:
        out.append(str(e))
print(json.dumps(out))
"""


def run(configs, urls=()):
    _, out, _ = run_micropython(CHECK % (json.dumps(configs), json.dumps(list(urls))))
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("sync", "error"),
    [
        ({"window": 9}, "sync.window must be an integer from 1 to 4, not 9"),
        ({"max_batch": 64}, "sync.max_batch must be an integer from 1 to 32, not 64"),
        ({"keepalive_s": "30"}, "sync.keepalive_s must be an integer from 2 to 600"),
        ({"batchsize": 8}, "unknown sync setting 'batchsize'"),
        ([1, 2], "sync must be an object"),
    ],
)
def test_bad_sync_settings_are_refused_with_the_field(sync, error):
    (got,) = run([{"sync": sync}])
    assert got.startswith(error)


def test_good_sync_settings_pass():
    assert run([{"sync": {"keepalive_s": 5, "batch": 4, "max_batch": 16, "window": 1},
                 "broker": "mqtts://10.0.0.5:8883"}]) == ["ok"]


def test_broker_urls():
    got = run([], ["mqtt://h:port", "mqtts://:8883", "mqtt://10.1.2.3"])
    assert got[0] == "broker 'mqtt://h:port': the port must be a number"
    assert got[1] == "broker 'mqtts://:8883' has no host"
    assert got[2] == {"host": "10.1.2.3", "port": 1883, "tls": False}


SYNC_CA = """
import json
from washpay.net import Sync
class W:
    def isconnected(self):
        return False
class J:
    synced_seq = 0
    last_seq = 0
out = []
for path in %r:
    s = Sync(W(), {"broker": "mqtts://127.0.0.1:1", "broker_ca": path}, bytes(32), J(), "d1")
    st = s.status()
    out.append([st["link"], st["link_error"], s.start() is None])
print(json.dumps(out))
"""


def test_a_missing_or_broken_ca_disables_sync_and_says_why(tmp_path):
    broken = tmp_path / "ca.der"
    broken.write_bytes(b"not a certificate")
    _, out, _ = run_micropython(SYNC_CA % [str(tmp_path / "none.der"), str(broken)])
    missing, bad = json.loads(out.strip().splitlines()[-1])
    assert missing == ["disabled", f"{tmp_path}/none.der is missing: an mqtts:// broker needs "
                       "the site CA", True]
    assert bad[0] == "disabled" and "is not a DER certificate" in bad[1] and bad[2] is True
