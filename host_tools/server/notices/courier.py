"""The courier: sends the outbox's due notices, one attempt each, and records what came of
it (outbox.delivered / outbox.failed). It holds no database transaction while a request
is in flight, so a slow receiver delays notices, never ingest.

The destination's secret and the gateway's token are read from the config at send time,
never stored with the notice: a rotated secret is used at once, and a webhook taken out of
the config is a dead letter ("not in the config any more") instead of a secret left behind.
"""

import json
import random
import time

from host_tools.server.notices import outbox
from host_tools.server.notices.channels import DeliveryError, SmsGateway, Webhook


class Courier:
    def __init__(self, store, cfg, clock=time.time, rng=random.random, log=None):
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self.rng = rng
        self.log = log or (lambda m: None)

    def run_once(self):
        """Try every notice that is due now; how many were tried."""
        n = 0
        for nid in outbox.due(self.store, self.clock()):
            row = outbox.claim(self.store, nid, self.clock())
            if row is None:
                continue  # another server process has it
            n += 1
            try:
                self.send(row)
            except DeliveryError as e:
                state = outbox.failed(self.store, nid, str(e), self.clock(),
                                      self.cfg["delivery"], e.permanent, self.rng)
                self.log(f"notices: {row['channel']} {nid} to {row['destination']}: {e}"
                         + ("; dead letter" if state == outbox.DEAD else "; will retry"))
            else:
                outbox.delivered(self.store, nid, self.clock())
        return n

    def send(self, row):
        timeout = self.cfg["delivery"]["timeout_s"]
        if row["channel"] == outbox.WEBHOOK:
            hook = next((h for h in self.cfg["webhooks"] if h["url"] == row["destination"]),
                        None)
            if hook is None:
                raise DeliveryError(f"webhook {row['destination']} is not in the config any "
                                    "more", permanent=True)
            body = json.dumps({"notice": row["id"], **row["body"]}, sort_keys=True).encode()
            Webhook(hook["url"], hook["secret"], timeout, self.clock).send(row["id"], body)
        elif row["channel"] == outbox.SMS:
            gw = self.cfg.get("sms_gateway")
            if not gw:
                raise DeliveryError("no alerts.sms_gateway in the config", permanent=True)
            SmsGateway(gw["url"], gw["token"], gw.get("from"), timeout).send(
                row["id"], row["destination"], row["body"]["text"])
        else:
            raise DeliveryError(f"unknown channel {row['channel']!r}", permanent=True)
