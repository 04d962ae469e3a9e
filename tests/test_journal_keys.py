"""The key hierarchy of docs/keys.md: the firmware (under MicroPython) and the host derive the
same keys, pinned to one vector; site key files are created safely; the simulated board is
provisioned from a site key on its first start."""

import json
import os
import stat
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_micropython

from host_tools import keys as K
from host_tools.sim.client import SimClient

SITE = bytes(range(32))
DEVICE = "sim-0001"
VECTOR = {
    "device_secret": "94ee36cc824e1179f64b3d4c14ed0c4f5f661eb6aa8f39f83548ef34b64960bf",
    "journal_enc": "1465cb352fcf4b14cf7bd330886a422ed0aafd224bdb8df6d6f17414a3e2d651",
    "journal_mac": "f6be0a7ae0f9308e0c449f506dd360d8b2ac8937dbaea5602020c0e4d9096710",
}


def test_host_derives_the_documented_vector():
    secret = K.device_secret(SITE, DEVICE)
    enc, mac = K.journal_keys(secret)
    assert secret.hex() == VECTOR["device_secret"]
    assert enc.hex() == VECTOR["journal_enc"]
    assert mac.hex() == VECTOR["journal_mac"]


def test_vector_is_in_docs():
    text = (ROOT / "docs" / "keys.md").read_text()
    for value in VECTOR.values():
        assert value in text


def test_firmware_derives_the_same_keys():
    out = run_micropython(
        "from washpay import keys\n"
        f"s = keys.device_secret(bytes(range(32)), {DEVICE!r})\n"
        "e, m = keys.journal_keys(s)\n"
        "print(s.hex()); print(e.hex()); print(m.hex())\n"
        "print(keys.load_device_secret({'device_secret': s.hex()}) == s)\n"
        "print(keys.load_device_secret({}), keys.load_device_secret({'device_secret': 'zz'}))\n",
        heap="64k",
    )[1].split()
    assert out[:3] == [VECTOR["device_secret"], VECTOR["journal_enc"], VECTOR["journal_mac"]]
    assert out[3:] == ["True", "None", "None"]


@pytest.mark.parametrize("device_id", ["sim-0002", "wp-0a1b2c", "Ünïcode-id"])
def test_firmware_and_host_agree_for_other_ids(device_id):
    site = os.urandom(32)
    out = run_micropython(
        "from washpay import keys\n"
        f"print(keys.device_secret(bytes.fromhex({site.hex()!r}), {device_id!r}).hex())\n"
    )[1].split()
    assert out == [K.device_secret(site, device_id).hex()]


def test_site_key_file_is_private_and_never_overwritten(tmp_path):
    path = tmp_path / "keys" / "site.key"
    key = K.new_site_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not K.site_key_exposed(path)
    assert K.load_site_key(path) == key
    with pytest.raises(K.KeyFileError, match="never overwritten"):
        K.new_site_key(path)
    assert K.load_site_key(path) == key
    assert K.ensure_site_key(path) == key


def test_bad_key_files_say_what_is_wrong(tmp_path):
    with pytest.raises(K.KeyFileError, match="not found"):
        K.load_site_key(tmp_path / "none.key")
    (tmp_path / "short.key").write_text("00" * 16)
    with pytest.raises(K.KeyFileError, match="16 bytes"):
        K.load_site_key(tmp_path / "short.key")
    (tmp_path / "junk.key").write_text("not hex")
    with pytest.raises(K.KeyFileError, match="64 hex digits"):
        K.load_site_key(tmp_path / "junk.key")


def _start_and_stop_sim(state, *extra):
    cmd = [sys.executable, "-m", "host_tools.cli", "sim", "run", "--state", str(state),
           "--quiet", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 20
        while not (state / "ctl.sock").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the simulator did not come up"
            time.sleep(0.02)
        SimClient(state).call("stop")
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.device
def test_sim_is_provisioned_with_a_new_site_key(tmp_path):
    state = tmp_path / "st"
    _start_and_stop_sim(state)
    key_file = state / "site.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    secrets = json.loads((state / "provision" / "secrets.json").read_text())
    want = K.device_secret(K.load_site_key(key_file), "sim-0001").hex()
    assert secrets["device_secret"] == want
    # a second start keeps the identity
    before = key_file.read_text()
    _start_and_stop_sim(state)
    assert key_file.read_text() == before


@pytest.mark.device
def test_sim_is_provisioned_from_a_given_site_key(tmp_path):
    key_file = tmp_path / "operator.key"
    key = K.new_site_key(key_file)
    state = tmp_path / "st"
    _start_and_stop_sim(state, "--site-key", str(key_file), "--device-id", "laundry-7")
    assert not (state / "site.key").exists()
    secrets = json.loads((state / "provision" / "secrets.json").read_text())
    assert secrets["device_secret"] == K.device_secret(key, "laundry-7").hex()
