"""`washpay server`: receives boards' journals over MQTT, verifies and stores them exactly
once, acknowledges them, sends commands and reports revenue and faults (docs/sync.md).

- wire.py: the MQTT topics and message formats, written from docs/sync.md (the firmware's
  washpay/net is the other, independent implementation);
- store.py: the ledger database, SQLite (a file) or PostgreSQL (a URL);
- ingest.py: verification of batches, the exactly-once ledger, gaps, forks, replays and
  shadow card balances;
- service.py: the MQTT side (paho-mqtt), shared subscriptions for several ingest processes;
- report.py: revenue per device, day and payment type; backlog; faults.
"""
