"""A broker that is more than one machine: a NATS cluster speaking MQTT (host_tools/cluster/).

Mosquitto (host_tools/broker.py) does not cluster. nats.py configures and runs a cluster of
nats-server nodes (Debian's nats-server) with MQTT on, from the same site key: the same
users and passwords, a per-device ACL, TLS from the same site CA. docs/fleet.md has the
deployment and why it is three nodes.
"""
