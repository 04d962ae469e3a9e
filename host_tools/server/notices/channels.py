"""Where notices go out: a signed webhook, or an SMS through a gateway's HTTP API.

Both are one HTTP POST; `send` returns on delivery (a 2xx answer) and raises
DeliveryError otherwise, saying whether trying again can help (`permanent`: a 4xx answer
other than 408/429, i.e. the request itself is refused, so retrying cannot succeed).

SMS gateway (docs/alerts.md, "SMS gateway"): `POST <url>/messages` with
`Authorization: Bearer <token>` and the JSON `{"to": "+4915...", "text": "...", "from":
...}`; the shape that hosted gateways (and a small relay in front of any other) take.
"""

import json
import time
import urllib.error
import urllib.request

from host_tools.server.notices import signature


class DeliveryError(Exception):
    def __init__(self, message, permanent=False):
        super().__init__(message)
        self.permanent = permanent


def post(url, body, headers, timeout):
    """POST `body` (bytes); the HTTP status. DeliveryError when there is no answer."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read(4096)
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DeliveryError(f"no answer from {url}: {reason}") from None


def _check(status, what):
    if 200 <= status < 300:
        return
    permanent = 400 <= status < 500 and status not in (408, 429)
    raise DeliveryError(f"{what} answered HTTP {status}", permanent=permanent)


class Webhook:
    def __init__(self, url, secret, timeout=10.0, clock=time.time):
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.clock = clock

    def send(self, notice_id, body):
        """`body`: the notice's JSON bytes; signed now (each attempt has a fresh time)."""
        headers = {"Content-Type": "application/json",
                   signature.HEADER: signature.sign(self.secret, body, self.clock()),
                   "X-Washpay-Notice": str(notice_id)}
        _check(post(self.url, body, headers, self.timeout), f"webhook {self.url}")


class SmsGateway:
    def __init__(self, url, token, sender=None, timeout=10.0):
        self.url = url.rstrip("/") + "/messages"
        self.token = token
        self.sender = sender
        self.timeout = timeout

    def send(self, notice_id, to, text):
        msg = {"to": to, "text": text}
        if self.sender:
            msg["from"] = self.sender
        headers = {"Content-Type": "application/json",
                   "Authorization": f"Bearer {self.token}",
                   # a gateway that deduplicates by key sends a retried notice once
                   "Idempotency-Key": f"washpay-notice-{notice_id}"}
        _check(post(self.url, json.dumps(msg).encode(), headers, self.timeout),
               "the SMS gateway")
