"""What the alerts and notices tests share: a ledger on SQLite or PostgreSQL, and a local
HTTP receiver (a real server on loopback) that keeps what it got and can fail on purpose."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Receiver:
    """POSTs in, kept as (monotonic time, path, headers, body bytes). The next `fail` of
    them are answered `fail_status`; `hold`, when set, is waited on before answering."""

    def __init__(self, fail=0, fail_status=500, token=None):
        import time

        self.got = []
        self.fail = fail
        self.fail_status = fail_status
        self.token = token
        self.hold = None
        self.arrived = 0  # requests read, answered or not
        self.lock = threading.Lock()
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rx.arrived += 1
                if rx.hold is not None:
                    rx.hold.wait(30)
                with rx.lock:
                    rx.got.append((time.monotonic(), self.path, dict(self.headers), body))
                    if rx.token and self.headers.get("Authorization") != f"Bearer {rx.token}":
                        status = 401
                    elif rx.fail:
                        rx.fail -= 1
                        status = rx.fail_status
                    else:
                        status = 201
                out = json.dumps({"ok": status < 300}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    rx = Receiver()
    yield rx
    rx.close()
