"""Alerts: what in the ledger and the server's state needs a person (docs/alerts.md).

- config.py: the "alerts" object of the server config file (thresholds, destinations);
- rules.py: the rules (machine offline, start failures, coin-reject bursts, journal nearly
  full, card fraud and lockouts, refunds, release rolled back);
- book.py: the alerts table: raised, deduplicated while live, acknowledged (who, when);
- engine.py: runs the rules, raises, and queues the notices (host_tools/server/notices/);
- service.py: the engine and the notices courier on threads of `washpay server run`.
"""
