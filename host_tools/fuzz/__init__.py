"""Fuzzing the firmware's parsers under the real micropython (`make fuzz`, tests/test_fuzz.py).

One long-running micropython process per target runs mpy/harness.py, which makes and mutates
inputs itself from a seed and feeds them to the firmware's own code; this package signs the
seed inputs with `cryptography` (host_tools.token, host_tools.server.commands), starts the
processes, and reads back inputs, findings and inputs per second. A finding is an input the
firmware accepted though it was forged, refused though it was valid, or answered with an
exception other than the parser's own refusal; its hex is printed for replay. A run is
deterministic: `python -m host_tools.fuzz TARGET --inputs N --seed S` makes the same inputs
again (but the nonces the journal draws when it seals a record).

Targets: token, remote (start), commands (server commands), pricing (price table), config,
gm65 (scanner bytes), journal (record seal and body), wallet (card copies and header),
mfrc522 (the reader's answers). `make fuzz` runs 120000 inputs of each.
"""
