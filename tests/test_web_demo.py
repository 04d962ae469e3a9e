"""`washpay demo --phone --auto`: broker, server with the customer's pages and a simulated
board, the customer played over HTTP: paid, started. And its operator errors."""

import socket
import subprocess
import sys

import pytest
from sync_env import need_mosquitto

pytestmark = pytest.mark.device


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "host_tools.cli", "demo", "--phone", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_demo_phone_pays_and_starts():
    need_mosquitto()
    p = run("--auto", "--http", "127.0.0.1:0")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Open the machine page (the sticker's URL): http://127.0.0.1:" in p.stdout
    assert "page: Started" in p.stdout and "The washer started." in p.stdout


def test_demo_phone_port_taken_or_malformed_is_one_line():
    need_mosquitto()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        p = run("--auto", "--http", f"127.0.0.1:{s.getsockname()[1]}")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("washpay demo --phone: cannot serve http on")
    p = run("--http", "nonsense")
    assert p.returncode == 2 and "give HOST:PORT" in p.stderr and "Traceback" not in p.stderr


def test_server_run_serves_the_pages(tmp_path):
    import json
    import signal
    import urllib.error
    import urllib.request

    from sync_env import make_broker, write_site_key

    broker = make_broker(tmp_path / "broker").start()
    key = write_site_key(tmp_path / "site.key")
    cfg = tmp_path / "web.json"
    cfg.write_text(json.dumps({"machines": {"laundry-7": {"name": "Washer 7"}}}))
    base = [sys.executable, "-m", "host_tools.cli", "server", "run", "--site-key", str(key),
            "--broker", f"mqtt://127.0.0.1:{broker.port}", "--db", str(tmp_path / "l.db")]
    try:
        p = subprocess.run([*base, "--http", "127.0.0.1:0", "--web-config",
                            str(tmp_path / "missing.json")], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 2 and "missing.json" in p.stderr and "Traceback" not in p.stderr
        proc = subprocess.Popen([*base, "--http", "127.0.0.1:0", "--web-config", str(cfg)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            url = None
            for line in proc.stdout:
                if line.startswith("web: customer pages at "):
                    url = line.split()[4].split("/m/")[0]
                    break
            assert url, "no web line"
            html = urllib.request.urlopen(f"{url}/m/laundry-7", timeout=10).read().decode()
            assert "Washer 7" in html and 'data-state="offline"' in html
            try:
                urllib.request.urlopen(f"{url}/m/nope", timeout=10)
                raise AssertionError("no 404")
            except urllib.error.HTTPError as e:
                assert e.code == 404
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            proc.stdout.close()
    finally:
        broker.stop()
