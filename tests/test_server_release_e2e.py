"""End to end (issue 14): the simulated board (boards/sim, the firmware under micropython)
is updated by the real server through a real Mosquitto: `server run` offers the release
published in its ledger (command 9), serves the board's chunk requests, and records its
reports, offered to healthy; the board boots the new version on trial from its slot and
confirms it (docs/ota.md)."""

import json
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sync_env import SITE_KEY, make_broker, online, write_site_key

from host_tools import provision as P
from host_tools import release as R
from host_tools.server import commands as C
from host_tools.server.ota import rollout as RO
from host_tools.server.service import Server
from host_tools.server.store import open_store


def wait_rollout(store, pred, what, timeout):
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = RO.status(store)
        if pred(st):
            return st
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {st}")


def test_the_simulated_board_is_updated_by_the_real_server(tmp_path):
    from host_tools.sim.client import SimBoard

    key = Ed25519PrivateKey.generate()
    version = P.firmware_version()
    # the same version again: a signed reinstall (`downgrade`), as the board runs this one
    doc = R.build(version, tmp_path / "rel", key, ["sim"], downgrade=True)
    broker = make_broker(tmp_path / "broker").start()
    url = f"mqtt://127.0.0.1:{broker.port}"
    db = f"sqlite:///{tmp_path}/ledger.db"
    logs = []
    server = Server(db, SITE_KEY, url, log=logs.append,
                    ota_options={"poll_s": 0.2}).start()
    st_dir = tmp_path / "st"
    (st_dir / "provision").mkdir(parents=True)
    cfg = {"device_id": "sim-0001", "broker": url,
           "sync": {"keepalive_s": 5, "backoff_min_ms": 200, "backoff_max_ms": 1000},
           "ota": {"healthy_s": 2, "trial_s": 120}}
    (st_dir / "provision" / "config.json").write_text(json.dumps(cfg))
    (st_dir / "provision" / "release.pub").write_text(R.public_text(R.public_bytes(key)))
    write_site_key(st_dir / "site.key")
    sim = SimBoard(st_dir, log=tmp_path / "sim.log").start()
    store = open_store(db)
    try:
        online(sim)
        # the board checks the release's expiry: it needs the time (the clock command)
        payload, cid = C.build(SITE_KEY, "sim-0001", "clock")
        mark = server.send_command("sim-0001", cid.hex(), "clock", payload)
        assert server.result_for(cid.hex(), after=mark, timeout=20)["result"] == "done"
        RO.ensure_schema(store)
        RO.store_release(store, tmp_path / "rel", doc)
        RO.create(store, version, ["sim-0001"], canary=1)
        try:
            st = wait_rollout(store, lambda s: s["devices"][0]["state"] in RO.FINAL,
                              "the board's end state", 300)
        except AssertionError:
            fw = sim.status().get("firmware", {})
            raise AssertionError(json.dumps(
                {"update": fw.get("update"), "counts": server.ota.counts,
                 "rollout": RO.status(store), "logs": logs[-15:]}, default=str)) from None
        d = st["devices"][0]
        assert (d["state"], d["reason"]) == ("healthy", None), (st, logs[-20:])
        assert st["state"] == "done"
        seen = "\n".join(logs)
        for step in ("offered release", "downloading -> staged", "staged -> switched",
                     "switched -> healthy", "rollout 1 done"):
            assert step in seen, seen
        # the board runs the release from its slot, and its journal says so (uploaded
        # after the healthy report: waited for)
        deadline = time.monotonic() + 60
        while not (recs := store.query("SELECT reason FROM records WHERE device = "
                                       "'sim-0001' AND type = 'ota_done'")):
            assert time.monotonic() < deadline, "no ota_done record reached the ledger"
            time.sleep(0.2)
        assert recs[-1][0] == version
        assert server.ota.counts["bytes"] >= sum(f["size"] for f in doc["files"])
    finally:
        store.close()
        sim.stop()
        server.stop()
        broker.stop()
