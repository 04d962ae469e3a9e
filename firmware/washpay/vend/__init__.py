# The vend engine (engine.py) and what it runs on: boot recovery, timed programs, the
# watch for coin bursts and uncollected laundry, and prices (prices.py, pricing.py). Empty,
# so that importing washpay.vend.prices on a host does not load the engine.
