"""The fleet load generator: thousands of simulated boards in one CPython process.

`washpay fleet sim` and `washpay fleet bench` (host_tools/fleet/cli.py). Each simulated
board speaks the board's protocol as the firmware does: its own MQTT credentials derived
from the site key (docs/keys.md, host_tools/broker.py), journal records sealed as a board
seals them (seal.py, docs/journal-format.md), batches, acks and resends as the firmware's
uploader, command replies, and reconnects with the board's backoff and jitter
(docs/sync.md). The server that takes them is the real one.

- seal.py: a board's journal records, sealed (an independent CPython sealer);
- mqtt.py: a minimal asyncio MQTT 3.1.1 client, one socket and no thread per board;
- board.py: one simulated board: journal, link, uploader, commands;
- fleet.py: many boards, the network switch, the figures;
- bench.py: the scenarios (steady state, outage) with Mosquitto and the server;
- update.py: a board's side of a firmware update (docs/ota.md), for the server's rollout
  tests and host_tools/bench/rollout.py.
"""
