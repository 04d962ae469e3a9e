"""Firmware updates, the server's side (docs/ota.md, "The server").

- rollout.py: the release and its rollout in the ledger; canaries, halts, each board's state;
- wire.py: the update messages on MQTT (offers, chunk requests and replies, reports);
- serve.py: inside `washpay server run`: offers within the download limit, chunks, reports;
- cli.py: `washpay server release publish|status|halt|resume`.
"""
