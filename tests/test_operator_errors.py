"""What a person sees when a host command is given something wrong or meets something it
cannot use (issue 12): one clear line that says what to do, exit status 2, no traceback, and
nothing changed; a closed pipe ends a command quietly; `broker init` run again keeps what is
there; one site key rule; money shown in the currency's major units.

Most of these run the `washpay` command as a process, as a person would; the ones that need a
simulated board or Mosquitto say so by their fixtures."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sync_env import firmware_records, need_mosquitto, write_site_key

ROOT = Path(__file__).resolve().parent.parent


def washpay(*args, env=None, timeout=60, **kw):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, **kw)


def refused(r, *words):
    """Exit status 2, one line on stderr holding `words`, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    return r.stderr


def tree(path):
    """Every file under `path` with its bytes: to show that nothing changed."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None
            for p in sorted(path.rglob("*"))}


@pytest.fixture
def no_site_key(tmp_path, monkeypatch):
    """An environment where no site key is found: no $WASHPAY_SITE_KEY, an empty home."""
    home = tmp_path / "home"
    home.mkdir()
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "WASHPAY_SITE_KEY": ""}


# ---- item 9: tracebacks
def test_report_on_a_file_that_is_not_a_ledger(tmp_path):
    junk = tmp_path / "not-a-db.db"
    junk.write_bytes(b"these are someone's notes, not a ledger\n" * 100)
    before = tree(tmp_path)
    for cmd in ("report", "cards"):
        refused(washpay("server", cmd, "--db", junk), "not-a-db.db is not a washpay ledger")
    assert tree(tmp_path) == before


def test_sim_run_with_a_missing_broker_ca(tmp_path):
    st = tmp_path / "st"
    r = washpay("sim", "run", "--state", st, "--broker", "mqtts://127.0.0.1:8883",
                "--broker-ca", tmp_path / "nosuch.der", timeout=30)
    refused(r, "--broker-ca", "nosuch.der", "BROKER_DIR/ca.der")
    assert not st.exists()  # the board was not set up half-way
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    r = washpay("sim", "run", "--state", st, "--broker", "mqtts://127.0.0.1:8883",
                "--broker-ca", pem, timeout=30)
    refused(r, "is not a certificate in DER form")
    assert not st.exists()


def _closed_pipe(*args):
    """Run `washpay args` with its standard output a pipe whose reader is already gone."""
    proc = subprocess.Popen([sys.executable, "-m", "host_tools.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            stdin=subprocess.DEVNULL)
    proc.stdout.close()  # as `| head` does once it has its lines
    err = proc.stderr.read().decode()
    proc.stderr.close()
    return proc.wait(timeout=60), err


def test_a_closed_pipe_ends_every_command_quietly(tmp_path):
    from host_tools.server.store import open_store

    open_store(tmp_path / "ledger.db").close()
    write_site_key(tmp_path / "site.key")
    firmware_records(tmp_path / "journal", [("boot", {})])
    for args in (["server", "report", "--db", tmp_path / "ledger.db"],
                 ["board", "check"],
                 ["journal", "decode", tmp_path / "journal", "--site-key",
                  tmp_path / "site.key", "--device", "sim-0001"],
                 ["site", "show", "--site-key", tmp_path / "site.key"]):
        status, err = _closed_pipe(*args)
        assert err == "", (args, err)
        assert status == 141, args  # as a shell reports a writer whose reader left


# ---- item 10: messages in Python's words
@pytest.mark.parametrize("words,says", [
    (["coin", "abc"], "coin: the value (minor units, e.g. 200): 'abc' is not a whole number"),
    (["coin", "200", "x"], "coin: the number of coins: 'x' is not a whole number"),
    (["pulses", "3", "wide"], "pulses: the pulse width (ms): 'wide' is not a whole number"),
    (["glitch", "lots"], "glitch: the number of glitches"),
    (["power", "cut", "--after-ops", "soon"], "--after-ops: the number of flash operations"),
    (["qr", "--hex", "zz"], "qr --hex: 'zz' is not bytes in hex"),
    (["qr", "--hex", "0"], "qr --hex: '0' is not bytes in hex"),
    (["command", "0g"], "command: '0g' is not bytes in hex"),
    (["card", "tap", "/nonexistent/x.json"], "no card image file /nonexistent/x.json"),
    (["card", "tap", "04zz"], "neither a card image file nor a card UID"),
    (["card", "tap", "04a1b2c3", "--remove-after", "x"], "--remove-after takes a whole number"),
    (["card", "noise", "x"], "card noise takes a whole number"),
])
def test_sim_ctl_words_are_checked_in_the_operators_terms(tmp_path, words, says):
    # refused before any board is asked: no simulated board runs in tmp_path
    err = refused(washpay("sim", "ctl", "--state", tmp_path / "st", *words), says)
    assert "invalid literal" not in err and "non-hex" not in err and "qr_raw" not in err


def _card_image(uid="04a1b2c3", **change):
    image = {"uid": uid, "atqa": "0400", "sak": 8, "blocks": ["00" * 16] * 64}
    image.update(change)
    return image


@pytest.mark.parametrize("image,says", [
    (_card_image(blocks=["zz" * 16] * 64), "block 0 must be 16 bytes in hex"),
    (_card_image(blocks=["00" * 15] * 64), "block 0 must be 16 bytes in hex"),
    (_card_image(uid="04a1b2"), "the uid must be 4 or 7 bytes in hex"),
    (_card_image(atqa="4"), "atqa must be 2 bytes in hex"),
    (_card_image(sak="x"), "sak must be a number 0-255"),
])
def test_a_damaged_card_image_is_named_with_what_is_wrong(tmp_path, image, says):
    f = tmp_path / "card.json"
    f.write_text(json.dumps(image))
    err = refused(washpay("sim", "ctl", "--state", tmp_path / "st", "card", "tap", f), says,
                  "card.json is not a valid card image")
    assert "ValueError" not in err and "non-hex" not in err


def test_a_card_image_that_cannot_be_read(tmp_path):
    (tmp_path / "adir").mkdir()
    refused(washpay("sim", "ctl", "--state", tmp_path / "st", "card", "tap", tmp_path / "adir"),
            "cannot read card image", "Is a directory")


def test_a_damaged_card_image_leaves_the_card_as_it_was(sim, tmp_path):
    """The simulator used to keep a damaged image as the card's memory before the reader
    refused it: that card could never be tapped again."""
    assert sim.call("card", action="tap", uid="04a1b2c3")["ok"]
    card = sim.state / "cards" / "04a1b2c3.json"
    sim.wait_for(lambda s: card.exists(), what="the card seen by the reader")
    before = card.read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_card_image(blocks=["00" * 15] * 64)))
    refused(washpay("sim", "ctl", "--state", sim.state, "card", "tap", bad),
            "not a valid card image")
    assert card.read_bytes() == before
    r = washpay("sim", "ctl", "--state", sim.state, "card", "tap", "04a1b2c3")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stdout + r.stderr


def test_a_missing_port_says_so_before_anything_is_made(tmp_path):
    out = tmp_path / "pulled"
    refused(washpay("journal", "pull", "--port", tmp_path / "ttyUSB9", "-o", out),
            "no such serial port", "STATE/console")
    assert not out.exists()
    write_site_key(tmp_path / "site.key")
    for args in (["read", "--site-key", tmp_path / "site.key"], ["blacklist"]):
        err = refused(washpay("card", *args, "--port", tmp_path / "ttyUSB9"),
                      "no such serial port")
        assert "it may be in use" not in err


def test_a_port_held_by_another_program(tmp_path):
    import serial

    master, slave = os.openpty()
    port = os.ttyname(slave)
    holder = serial.Serial(port, exclusive=True)  # a terminal program holding the board
    try:
        out = tmp_path / "pulled"
        err = refused(washpay("journal", "pull", "--port", port, "-o", out),
                      "another program holds it", "close it and try again")
        assert "it may be in use" not in err
    finally:
        holder.close()
        os.close(master)
        os.close(slave)


# ---- item 11: a broker already running, an image without an application
def test_broker_run_twice_on_one_directory_is_refused(tmp_path):
    need_mosquitto()
    key = write_site_key(tmp_path / "site.key")
    bdir = tmp_path / "broker"
    assert washpay("broker", "init", "--dir", bdir, "--site-key", key,
                   "--device", "sim-0001").returncode == 0
    log = tmp_path / "first.log"
    first = subprocess.Popen([sys.executable, "-m", "host_tools.cli", "broker", "run", "--dir",
                              str(bdir)], stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                             cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while "mosquitto running" not in log.read_text():
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        err = refused(washpay("broker", "run", "--dir", bdir), "already in use",
                      "running already")
        assert "mosquitto running" not in err
        assert first.poll() is None  # the first broker is untouched
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=20)


# ---- item 5: broker init again
def test_broker_init_again_keeps_ports_devices_and_says_what_changed(tmp_path):
    key = write_site_key(tmp_path / "site.key")
    bdir = tmp_path / "broker"
    r = washpay("broker", "init", "--dir", bdir, "--site-key", key, "--device", "wp-1,wp-2")
    assert r.returncode == 0 and "changed: new broker: 2 device(s)" in r.stdout, r.stderr
    first = json.loads((bdir / "broker.json").read_text())
    ca = (bdir / "ca.pem").read_bytes()
    passwd = (bdir / "passwd").read_text()

    r = washpay("broker", "init", "--dir", bdir, "--site-key", key, "--device", "wp-3")
    assert r.returncode == 0 and "changed: added wp-3" in r.stdout, r.stdout
    again = json.loads((bdir / "broker.json").read_text())
    assert (again["port"], again["tls_port"]) == (first["port"], first["tls_port"])
    assert again["devices"] == ["wp-1", "wp-2", "wp-3"]
    users = [line.split(":")[0] for line in (bdir / "passwd").read_text().splitlines()]
    assert users == ["washpay-server", "wp-1", "wp-2", "wp-3"]
    assert (bdir / "ca.pem").read_bytes() == ca
    conf = (bdir / "mosquitto.conf").read_text()
    assert f"listener {first['port']} " in conf and f"listener {first['tls_port']} " in conf

    before = tree(bdir)
    r = washpay("broker", "init", "--dir", bdir, "--site-key", key)
    assert r.returncode == 0 and "changed: nothing" in r.stdout
    assert tree(bdir) == before

    r = washpay("broker", "init", "--dir", bdir, "--site-key", key, "--remove-device", "wp-1",
                "--new-ports")
    assert r.returncode == 0 and "removed wp-1" in r.stdout and "plain port" in r.stdout
    last = json.loads((bdir / "broker.json").read_text())
    assert last["devices"] == ["wp-2", "wp-3"] and last["port"] != first["port"]
    assert "wp-1:" not in (bdir / "passwd").read_text()
    assert passwd  # (the first file had them all)

    before = tree(bdir)
    refused(washpay("broker", "init", "--dir", bdir, "--site-key", key, "--remove-device",
                    "wp-9"), "--remove-device wp-9: not a device", "nothing was changed")
    other = tmp_path / "other.key"
    other.write_text(bytes(range(1, 33)).hex() + "\n")
    refused(washpay("broker", "init", "--dir", bdir, "--site-key", other, "--device", "wp-4"),
            "set up with another site key")
    assert tree(bdir) == before


# ---- item 15: one site key rule
def test_every_command_finds_the_key_the_same_way(tmp_path, no_site_key):
    write_site_key(tmp_path / "site.key")
    firmware_records(tmp_path / "journal", [("boot", {})])
    env = {**no_site_key, "WASHPAY_SITE_KEY": str(tmp_path / "site.key")}
    r = washpay("journal", "decode", tmp_path / "journal", "--device", "sim-0001", env=env)
    assert r.returncode == 0 and "verification: OK" in r.stdout, r.stderr
    r = washpay("broker", "init", "--dir", tmp_path / "b", "--device", "sim-0001", env=env)
    assert r.returncode == 0, r.stderr
    r = washpay("token", "command", "--device", "sim-0001", "--program", "quick", env=env)
    assert r.returncode == 0, r.stderr
    # the default file, with neither option nor variable
    default = Path(no_site_key["XDG_CONFIG_HOME"]) / "washpay" / "site.key"
    default.parent.mkdir(parents=True)
    write_site_key(default)
    r = washpay("journal", "decode", tmp_path / "journal", "--device", "sim-0001",
                env=no_site_key)
    assert r.returncode == 0 and "verification: OK" in r.stdout, r.stderr


@pytest.mark.parametrize("args", [
    ["journal", "decode", "JOURNAL", "--device", "sim-0001"],
    ["broker", "init", "--dir", "BROKER", "--device", "sim-0001"],
    ["server", "run", "--broker", "mqtt://127.0.0.1:9"],
    ["server", "command", "status", "--device", "sim-0001", "--broker", "mqtt://127.0.0.1:9"],
    ["token", "issue", "--device", "sim-0001", "--program", "quick"],
    ["card", "read", "--port", "PORT"],
])
def test_a_missing_site_key_says_how_to_make_one(tmp_path, no_site_key, args):
    firmware_records(tmp_path / "journal", [("boot", {})])
    port = tmp_path / "port"
    port.touch()  # something there, so that it is the key that is missing
    subst = {"JOURNAL": tmp_path / "journal", "BROKER": tmp_path / "broker", "PORT": port}
    args = [subst.get(a, a) for a in args]
    for extra in ([], ["--site-key", tmp_path / "nokey"]):
        err = refused(washpay(*args, *extra, env=no_site_key), "no site key at",
                      "washpay site init")
        assert "Traceback" not in err
    assert not (tmp_path / "broker").exists()


# ---- item 16: money
def test_journal_table_shows_major_units_and_jsonl_keeps_minor(tmp_path):
    key = write_site_key(tmp_path / "site.key")
    firmware_records(tmp_path / "journal", [
        ("boot", {}),
        ("coin", {"amount": 200, "credit": 200, "state": "credit", "t": 1_780_000_000}),
        ("vend_start", {"price": 350, "amount": 350, "program": "standard", "credit": 0,
                        "state": "starting", "t": 1_780_000_060}),
        ("refund", {"amount": -1205, "t": 1_780_000_120}),
    ])
    r = washpay("journal", "decode", tmp_path / "journal", "--site-key", key, "--device",
                "sim-0001")
    head, *rows = r.stdout.splitlines()
    assert "amount EUR" in head and "credit EUR" in head and "price EUR" in head
    coin = next(x for x in rows if " coin " in x).split()
    assert coin[4:6] == ["2.00", "2.00"]
    vend = next(x for x in rows if " vend_start " in x)
    assert "3.50" in vend and "350" not in vend
    assert "-12.05" in next(x for x in rows if " refund " in x)
    r = washpay("journal", "decode", tmp_path / "journal", "--site-key", key, "--device",
                "sim-0001", "--format", "jsonl")
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(x["type"], x["amount"], x["currency"]) for x in recs[1:]] == [
        ("coin", 200, "EUR"), ("vend_start", 350, "EUR"), ("refund", -1205, "EUR")]


def test_money_formatting():
    from host_tools.money import decimals, major, money

    assert money(250) == "2.50 EUR" and money(-5, "eur") == "-0.05 EUR"
    assert money(3000, "EUR") == "30.00 EUR" and money(0) == "0.00 EUR"
    assert money(500, "JPY") == "500 JPY" and money(1234, "KWD") == "1.234 KWD"
    assert money(1234, "EUR", places=3) == "1.234 EUR"  # a board's own config.json says 3
    assert major(None) == "" and money("") == ""
    assert decimals("CHF") == 2 and decimals(None) == 2


def test_demo_prints_no_command_for_a_directory_it_deletes():
    r = washpay("demo", timeout=240)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "washpay journal decode /" not in r.stdout  # its state directory is gone now
    assert "washpay demo --keep" in r.stdout
    assert "Coin 2.00 EUR in -> credit 2.00 EUR" in r.stdout
    assert "amount EUR" in r.stdout


# ---- item 17
def test_sim_run_refuses_a_broker_that_is_not_mqtt(tmp_path):
    st = tmp_path / "st"
    for url in ("ftp://x", "mqtt://", "mqtts://host:99999", "broker.example"):
        refused(washpay("sim", "run", "--state", st, "--broker", url, timeout=30),
                "give an MQTT URL")
        assert not st.exists()


def test_a_bare_board_does_not_say_it_installs_factory_files(tmp_path):
    from host_tools.sim.client import SimBoard

    board = SimBoard(tmp_path / "st", bare=True, log=tmp_path / "sim.log")
    board.start()
    try:
        console = tmp_path / "st" / "console.log"
        board.wait_for(lambda s: console.exists() and b"formatting LittleFS"
                       in console.read_bytes(), what="the blank flash formatted")
        line = next(x for x in console.read_bytes().decode(errors="replace").splitlines()
                    if "formatting LittleFS" in x)
        assert "factory files" not in line
    finally:
        board.stop()


# ---- item 15: the README's lines, as written
def _readme_block(first):
    """The shell lines of the README's code block that holds `first`, continuations joined."""
    text = (ROOT / "README.md").read_text()
    block = next(b for b in text.split("```sh\n")[1:] if first in b.split("```")[0])
    return block.split("```")[0].replace("\\\n", " ").splitlines()


def _run_lines(lines, cwd, env=None):
    (cwd / ".venv").symlink_to(ROOT / ".venv")
    script = "set -e\n" + "\n".join(lines) + "\n"
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT),
                                            **(env or {})})


def test_readme_token_lines_work_against_the_simulated_board(tmp_path, no_site_key):
    from host_tools.sim.client import SimBoard

    lines = [x for x in _readme_block("export WASHPAY_SITE_KEY=state/site.key")
             if "WP:..." not in x]  # the token's text is what the line before prints
    assert any("token issue" in x for x in lines) and any("token command" in x for x in lines)
    board = SimBoard(tmp_path / "state", log=tmp_path / "sim.log")
    board.start()
    try:
        board.wait_ready()
        r = _run_lines(lines, tmp_path, env=no_site_key)
        assert r.returncode == 0, r.stdout + r.stderr
        token = r.stdout.split()[0]
        assert token.startswith("WP:") and (tmp_path / "t.png").exists()
        st = board.wait_for(lambda s: s["state"] in ("starting", "running"),
                            what="the remote start of the README's token command")
        assert st["program"] == "quick"
        r = washpay("token", "decode", token, "--device", "sim-0001",
                    env={**no_site_key, "WASHPAY_SITE_KEY": str(tmp_path / "state/site.key")})
        assert r.returncode == 0, r.stderr  # the token verifies with the board's key
    finally:
        board.stop()


def test_readme_broker_lines_start_from_a_key_they_make(tmp_path, no_site_key):
    lines = _readme_block("washpay broker init --dir broker")[:2]
    assert "site init --site-key site.key" in lines[0] and "broker init" in lines[1]
    r = _run_lines(lines, tmp_path, env=no_site_key)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site.key").exists() and (tmp_path / "broker" / "passwd").exists()
