"""Pay by phone: the customer's web pages beside the ledger server (docs/phone-payment.md).

    web = Web(config, store_url, site_key, send=server.send_command).start("127.0.0.1", 8080)
    ...
    web.stop()

The operator console (docs/console.md) is part of the same app, under /console.

`washpay server run --http HOST:PORT [--web-config web.json]` runs it in the server's
process: it sends remote starts through the server's broker connection, and reads the
board's replies and journal from the same database. Its own tables (payments,
payment_events: db.py) are created on the ledger's store.
"""

import json
import threading
from pathlib import Path

from host_tools.server.store import open_store


class WebError(Exception):
    """The web config is wrong; the message says what to do."""


def load_config(path):
    """The web config file (JSON): {"base_url", "provider", "sandbox"|"stripe",
    "machines", "confirm_s", "offline_after_s", "rate_limit", "secret", "console"}; {} without
    one ("console": docs/console.md)."""
    if not path:
        return {}
    p = Path(path)
    try:
        cfg = json.loads(p.read_text())
    except OSError as e:
        raise WebError(f"web config {p}: {e.strerror or e}") from None
    except ValueError as e:
        raise WebError(f"web config {p} is not JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise WebError(f"web config {p}: a JSON object")
    if cfg.get("stripe") and p.stat().st_mode & 0o077:
        raise WebError(f"web config {p} holds payment keys and others may read it: "
                       f"chmod 600 {p}")
    cfg.setdefault("_dir", str(p.resolve().parent))
    return cfg


class Web:
    def __init__(self, config, store_url, site_key, send, log=print, provider=None,
                 clock=None):
        import time

        from host_tools.server.web import app as A
        from host_tools.server.web import providers as P
        from host_tools.server.web.db import PaymentDB
        from host_tools.server.web.flow import Payments
        from host_tools.server.web.machines import Machines

        clock = clock or time.time
        self.config = config
        self.store = open_store(store_url)
        self.db = PaymentDB(self.store)
        self.machines = Machines(self.db, config.get("machines"),
                                 offline_after_s=float(config.get("offline_after_s", 120)),
                                 base_dir=config.get("_dir"), clock=clock)
        try:
            self.provider = provider or P.from_config(config)
        except P.ProviderError as e:
            self.store.close()
            raise WebError(str(e)) from None
        self.payments = Payments(self.db, self.machines, self.provider, send, site_key,
                                 confirm_s=float(config.get("confirm_s", 30)),
                                 token_ttl_s=int(config.get("token_ttl_s", 3600)), clock=clock,
                                 log=log)
        rl = config.get("rate_limit") or {}
        self.app = A.create_app(self.payments, self.machines, secret_key=config.get("secret"),
                                rate=A.RateLimit(int(rl.get("checkouts", 6)),
                                                 float(rl.get("per_s", 60))),
                                base_url=config.get("base_url"))
        from host_tools.server.web import console

        self.console = console.install(self.app, self.db, config.get("console"),
                                       clock=clock, machines=self.machines,
                                       site_key=site_key, send=send)
        self.log = log
        self.httpd = None
        self.url = None

    def start(self, host="127.0.0.1", port=8080):
        import logging

        from werkzeug.serving import make_server

        # no access log line per request (the payment's events are in the ledger)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        import socket

        try:
            # werkzeug exits the process on a port in use: find out first, say it our way
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
            self.httpd = make_server(host, port, self.app, threaded=True)
        except (OSError, SystemExit) as e:
            e = e if isinstance(e, OSError) else OSError("address in use")
            self.store.close()
            raise WebError(f"cannot serve http on {host}:{port}: {e.strerror or e}") from None
        port = self.httpd.server_port
        self.url = f"http://{host}:{port}"
        if hasattr(self.provider, "webhook_url") and not self.provider.webhook_url:
            self.provider.webhook_url = f"{self.url}/webhook/{self.provider.name}"
        threading.Thread(target=self.httpd.serve_forever, name="washpay-web",
                         daemon=True).start()
        self.payments.start()
        return self

    def stop(self):
        self.payments.stop()
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
        join = getattr(self.provider, "join", None)
        if join:
            join(2)
        self.store.close()


def parse_http(text):
    """"HOST:PORT" (or ":PORT", or "PORT") -> (host, port); WebError if not."""
    host, _, port = str(text).rpartition(":")
    try:
        port = int(port)
    except ValueError:
        raise WebError(f"--http {text!r}: give HOST:PORT, e.g. 127.0.0.1:8080") from None
    if not 0 <= port <= 65535:
        raise WebError(f"--http {text!r}: port 0 to 65535")
    return host or "127.0.0.1", port
