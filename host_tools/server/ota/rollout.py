"""A release rollout in the ledger: which board gets which release when, and where each
board is (docs/ota.md, "The server").

    releases        the signed release as published: manifest, signature, its files
    rollouts        one per `washpay server release publish`: release, canaries, state
    rollout_devices one row per board of a rollout: its state, progress, why it stopped

A rollout is `canary` while its first N boards try the release alone, `open` once every
canary reported healthy (the rest are offered it), `halted` (by an operator, because a
canary rolled back or refused, or because its failure budget is used up: the reason says
which and why), and `done` when every board reached an end state. The tables live in the
same database as the journal ledger (SQLite or PostgreSQL) so that every server process
sees the same rollout.
"""

import hashlib
import math
import time
from fractions import Fraction

SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    version TEXT PRIMARY KEY,
    release_id TEXT NOT NULL,
    manifest {blob} NOT NULL,
    signature {blob} NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    files BIGINT NOT NULL,
    expires BIGINT,
    published {real}
);
CREATE TABLE IF NOT EXISTS release_files (
    version TEXT NOT NULL,
    idx BIGINT NOT NULL,
    path TEXT NOT NULL,
    data {blob} NOT NULL,
    UNIQUE (version, idx)
);
CREATE TABLE IF NOT EXISTS rollouts (
    id {serial},
    version TEXT NOT NULL,
    canary BIGINT NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    reason TEXT,
    created {real},
    changed {real},
    max_failures BIGINT,
    failures_base BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout BIGINT NOT NULL,
    device TEXT NOT NULL,
    position BIGINT NOT NULL,
    canary INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'waiting',
    progress BIGINT,
    reason TEXT,
    offers BIGINT NOT NULL DEFAULT 0,
    offered_at {real},
    next_offer {real},
    command TEXT,
    updated {real},
    UNIQUE (rollout, device)
);
"""

# A board's states, in the order an update goes (docs/ota.md). `waiting`: not offered yet
# (not its turn, or the limit on concurrent downloads); the last three are where a board's
# part of a rollout ends.
STATES = ("waiting", "offered", "downloading", "staged", "switched", "healthy",
          "rolled_back", "refused")
ACTIVE = ("offered", "downloading")  # holding one of the concurrent-download slots
IN_FLIGHT = ("offered", "downloading", "staged", "switched")
FINAL = ("healthy", "rolled_back", "refused")
FAILED = ("rolled_back", "refused")

# The failure budget (docs/ota.md, "The failure budget"): faults a rollout takes before it
# halts itself. A fault is a board that rolled back, or refused the release for any reason
# but one: the release is not meant for it. These are the board's texts for that
# (firmware/washpay/ota/release.py, release-format.md checks 4 to 8: another board, another
# .mpy version, another journal format, too old to update from, not newer): such a board is
# not eligible, and neither the release nor the board is at fault.
NOT_ELIGIBLE = (" is for boards ", " is compiled for .mpy v", " reads journal formats ",
                " updates from ", " is not newer than the running ")
MAX_FAILURES = "3"  # the default budget of `publish --max-failures`
_BUDGET_COLUMNS = (("max_failures", "BIGINT"),
                   ("failures_base", "BIGINT NOT NULL DEFAULT 0"))


class RolloutError(Exception):
    """Refused: the message says what to do instead."""


def ensure_schema(store):
    """Create the rollout tables if the ledger has none yet (idempotent)."""
    if getattr(store, "_ota_schema", False):
        return
    if store.dialect == "postgresql":
        sql = SCHEMA.format(blob="BYTEA", real="DOUBLE PRECISION",
                            serial="BIGSERIAL PRIMARY KEY")
        with store.transaction() as tx:
            tx.execute("SELECT pg_advisory_xact_lock(727461)")
            for stmt in filter(str.strip, sql.split(";")):
                tx.execute(stmt)
            for name, decl in _BUDGET_COLUMNS:  # a ledger made before the failure budget
                tx.execute(f"ALTER TABLE rollouts ADD COLUMN IF NOT EXISTS {name} {decl}")
    else:
        store.conn.executescript(SCHEMA.format(blob="BLOB", real="REAL",
                                               serial="INTEGER PRIMARY KEY"))
        have = {r[1] for r in store.conn.execute("PRAGMA table_info(rollouts)")}
        for name, decl in _BUDGET_COLUMNS:
            if name not in have:
                store.conn.execute(f"ALTER TABLE rollouts ADD COLUMN {name} {decl}")
    store._ota_schema = True


def is_fault(state, reason):
    """True when a board's end state counts against the failure budget: it rolled back, or
    it refused the release for a reason other than not being eligible for it."""
    if state == "rolled_back":
        return True
    return state == "refused" and not any(p in (reason or "") for p in NOT_ELIGIBLE)


def failure_budget(text, boards):
    """`--max-failures` as given (`N`: that many boards; `P%`: that share of the rollout's
    `boards`, rounded up, at least 1) -> the number of faults that halts the rollout."""
    t = str(text).strip()
    try:
        if t.endswith("%"):
            pct = Fraction(t[:-1])  # exact: 10% of 30 boards is 3, not 3.0000000000000004
            if not 0 < pct <= 100:
                raise ValueError
            return max(1, math.ceil(pct * boards / 100))
        n = int(t)
        if n < 1:
            raise ValueError
        return n
    except (ValueError, ZeroDivisionError):
        raise RolloutError(f"--max-failures {text}: give a number of boards (1 or more) or "
                           f"a share of them (1% to 100%)") from None


def store_release(store, release_dir, doc, now=None):
    """Put a verified release (its directory and its manifest `doc`) into the ledger. The
    same version published again must be the same manifest, byte for byte."""
    from pathlib import Path

    now = time.time() if now is None else now
    d = Path(release_dir)
    manifest = (d / "manifest.json").read_bytes()
    signature = bytes.fromhex((d / "manifest.sig").read_text().strip())
    digest = hashlib.sha256(manifest).hexdigest()
    # in the manifest's order: a board asks for a file by its index in that list
    files = [(f["path"], (d / "files" / f["path"].lstrip("/")).read_bytes())
             for f in doc["files"]]
    with store.transaction() as tx:
        row = tx.one("SELECT manifest_sha256 FROM releases WHERE version = ?",
                     (doc["version"],))
        if row is not None:
            if row[0] != digest:
                raise RolloutError(
                    f"release {doc['version']} is already published with another manifest "
                    f"(sha256 {row[0][:16]}...): build the new one with a new version")
            return digest
        tx.execute(
            "INSERT INTO releases (version, release_id, manifest, signature, "
            "manifest_sha256, size, files, expires, published) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (doc["version"], digest[:16], manifest, signature, digest,
             sum(len(data) for _, data in files), len(files), doc.get("expires"), now))
        for i, (path, data) in enumerate(files):
            tx.execute("INSERT INTO release_files (version, idx, path, data) "
                       "VALUES (?, ?, ?, ?)", (doc["version"], i, path, data))
    return digest


def create(store, version, devices, canary=0, max_failures=int(MAX_FAILURES), now=None):
    """A new rollout of the published `version` to `devices` (in order; the first `canary`
    of them are the canaries) that halts at its `max_failures`-th fault (None: never).
    Returns its id. A board already in a rollout that goes on
    (canary or open) and has not reached an end state is refused: one update at a time per
    board. A halted rollout's boards may be given another release (a fixed one)."""
    now = time.time() if now is None else now
    devices = list(dict.fromkeys(devices))
    if not devices:
        raise RolloutError("no devices to update: name them with --devices ID,... or use "
                           "--all (every board the ledger has heard from)")
    if canary < 0 or canary > len(devices):
        raise RolloutError(f"--canary {canary}: give 0 to {len(devices)} (the number of "
                           f"devices)")
    if max_failures is not None and max_failures < 1:
        raise RolloutError(f"--max-failures {max_failures}: give 1 or more")
    with store.transaction() as tx:
        busy = tx.all(
            "SELECT d.device, r.id, r.version FROM rollout_devices d JOIN rollouts r "
            "ON r.id = d.rollout WHERE r.state IN ('canary', 'open') AND d.state NOT IN "
            "('healthy', 'rolled_back', 'refused')")
        taken = {dev: (rid, ver) for dev, rid, ver in busy if dev in devices}
        if taken:
            dev, (rid, ver) = sorted(taken.items())[0]
            raise RolloutError(
                f"{dev} is in unfinished rollout {rid} (release {ver}), {len(taken)} "
                f"board(s) in all: let it finish, or halt it (`washpay server release halt "
                f"{rid}`)")
        state = "canary" if canary else "open"
        rid = tx.one(
            "INSERT INTO rollouts (version, canary, state, created, changed, max_failures) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (version, canary, state, now, now, max_failures))[0]
        for i, dev in enumerate(devices):
            tx.execute(
                "INSERT INTO rollout_devices (rollout, device, position, canary, state, "
                "updated) VALUES (?, ?, ?, ?, 'waiting', ?)",
                (rid, dev, i, int(i < canary), now))
    return rid


def latest(store):
    row = store.query("SELECT max(id) FROM rollouts")
    return row[0][0] if row and row[0][0] is not None else None


def status(store, rid=None):
    """The rollout `rid` (default: the latest) as a dict, or RolloutError."""
    ensure_schema(store)
    rid = latest(store) if rid is None else rid
    if rid is None:
        raise RolloutError("no rollout yet: `washpay server release publish REL --devices ...`")
    rows = store.query("SELECT r.id, r.version, r.canary, r.state, r.reason, r.created, "
                       "r.changed, x.size, x.manifest_sha256, r.max_failures, "
                       "r.failures_base FROM rollouts r JOIN releases x "
                       "ON x.version = r.version WHERE r.id = ?", (rid,))
    if not rows:
        raise RolloutError(f"no rollout {rid} (`washpay server release status` shows the "
                           f"latest)")
    (rid, version, canary, state, reason, created, changed, size, digest, budget,
     base) = rows[0]
    devices = [
        {"device": d, "canary": bool(c), "state": s, "progress": p, "reason": why,
         "offers": n, "updated": at, "fault": is_fault(s, why) if s in FAILED else None}
        for d, c, s, p, why, n, at in store.query(
            "SELECT device, canary, state, progress, reason, offers, updated "
            "FROM rollout_devices WHERE rollout = ? ORDER BY position", (rid,))
    ]
    counts = {}
    for d in devices:
        counts[d["state"]] = counts.get(d["state"], 0) + 1
    faults = sum(1 for d in devices if d["fault"])
    # failures: the faults the budget counts (those since the last resume)
    return {"rollout": rid, "version": version, "state": state, "reason": reason,
            "canary": canary, "created": created, "changed": changed, "size": size,
            "manifest_sha256": digest, "counts": counts, "devices": devices,
            "max_failures": budget, "failures": faults - base, "faults": faults,
            "not_eligible": sum(1 for d in devices if d["fault"] is False)}


def all_status(store):
    """Every rollout, newest first (for `washpay server report`); [] when there is none."""
    ensure_schema(store)
    ids = [r[0] for r in store.query("SELECT id FROM rollouts ORDER BY id DESC")]
    return [status(store, rid) for rid in ids]


def halt(store, rid=None, reason="halted by an operator", now=None):
    return _set_state(store, rid, "halted", reason, now,
                      allowed=("canary", "open"), verb="halt")


def resume(store, rid=None, max_failures=None, now=None):
    """Back to offering: canary if the canaries are not all healthy yet, else open (done
    if no board is left). The canaries that failed stay as they are (their reasons stay in
    the status). The failure budget starts again: it counts the faults from now on, up to
    `max_failures` if given (else the one the rollout had)."""
    ensure_schema(store)
    rid = latest(store) if rid is None else rid
    if max_failures is not None and max_failures < 1:
        raise RolloutError(f"--max-failures {max_failures}: give 1 or more")
    with store.transaction() as tx:
        row = tx.one("SELECT state, canary, max_failures FROM rollouts WHERE id = ?"
                     + store.for_update, (rid,))
        if row is None:
            raise RolloutError(f"no rollout {rid}")
        if row[0] != "halted":
            raise RolloutError(f"rollout {rid} is {row[0]}, not halted: nothing to resume")
        settled = tx.one("SELECT count(*) FROM rollout_devices WHERE rollout = ? AND "
                         "canary = 1 AND state IN ('healthy', 'rolled_back', 'refused')",
                         (rid,))[0]
        state = "canary" if settled < row[1] else "open"
        reason = "resumed by an operator"
        if not _unfinished(tx, rid):  # halted by its last board: nothing left to offer
            state, reason = "done", "every board reached an end state"
        tx.execute("UPDATE rollouts SET state = ?, reason = ?, changed = ?, "
                   "max_failures = ?, failures_base = ? WHERE id = ?",
                   (state, reason, time.time() if now is None else now,
                    row[2] if max_failures is None else max_failures,
                    _faults(tx, rid), rid))
    return state


def _faults(tx, rid):
    return sum(1 for s, why in tx.all(
        "SELECT state, reason FROM rollout_devices WHERE rollout = ? AND state IN "
        "('rolled_back', 'refused')", (rid,)) if is_fault(s, why))


def _unfinished(tx, rid):
    return tx.one("SELECT count(*) FROM rollout_devices WHERE rollout = ? AND state NOT IN "
                  "('healthy', 'rolled_back', 'refused')", (rid,))[0]


def _set_state(store, rid, state, reason, now, allowed, verb):
    ensure_schema(store)
    rid = latest(store) if rid is None else rid
    with store.transaction() as tx:
        row = tx.one("SELECT state FROM rollouts WHERE id = ?" + store.for_update, (rid,))
        if row is None:
            raise RolloutError(f"no rollout {rid}")
        if row[0] not in allowed:
            raise RolloutError(f"rollout {rid} is {row[0]}: cannot {verb} it")
        tx.execute("UPDATE rollouts SET state = ?, reason = ?, changed = ? WHERE id = ?",
                   (state, reason, time.time() if now is None else now, rid))
    return state


def to_offer(store, limit, stall_s, now=None):
    """The boards to offer a release now: [(rollout, device, version)].

    At most `limit` boards download at once, counted over every rollout: a board holds a
    slot from its offer until it reports `staged` (or an end state), or until it has been
    silent for `stall_s` (offline, most likely: the offer waits in the broker's persistent
    session). A silent board is offered again after stall_s, then twice as long each time
    up to 32 x stall_s, so an offline board does not pile up offers in its session; boards
    not offered yet go before those offered again. Canaries first; the rest only once every
    canary is healthy. Claimed in one transaction, so two server processes on one database
    never offer the same board twice at once."""
    now = time.time() if now is None else now
    offers = []
    with store.transaction() as tx:
        # one server process at a time hands out slots (SQLite: BEGIN IMMEDIATE already)
        if store.dialect == "postgresql":
            tx.execute("SELECT pg_advisory_xact_lock(727462)")
        active = tx.one(
            "SELECT count(*) FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout "
            "WHERE r.state IN ('canary', 'open') AND d.state IN ('offered', 'downloading') "
            "AND d.updated > ?", (now - stall_s,))[0]
        free = max(0, limit - active)
        if not free:
            return offers
        rows = tx.all(
            "SELECT d.rollout, d.device, r.version, d.state, d.offers FROM rollout_devices d "
            "JOIN rollouts r ON r.id = d.rollout WHERE ((r.state = 'canary' AND d.canary = 1) "
            "OR r.state = 'open') AND (d.state = 'waiting' OR (d.state IN ('offered', "
            "'downloading') AND d.updated <= ? AND d.next_offer <= ?)) "
            # boards never offered before those offered again: a silent board must not
            # keep a slot from the others
            "ORDER BY d.rollout, d.state != 'waiting', d.position LIMIT ?",
            (now - stall_s, now, free))
        for rid, dev, version, state, n in rows:
            tx.execute("UPDATE rollout_devices SET state = ?, offers = offers + 1, "
                       "offered_at = ?, next_offer = ?, updated = ? "
                       "WHERE rollout = ? AND device = ?",
                       ("offered" if state == "waiting" else state, now,
                        now + stall_s * min(32, 2 ** n), now, rid, dev))
            offers.append((rid, dev, version))
    return offers


def offer_sent(store, rid, device, command_id):
    """Remember the offer's command id: the board's reply to it names it."""
    with store.transaction() as tx:
        tx.execute("UPDATE rollout_devices SET command = ? WHERE rollout = ? AND device = ?",
                   (command_id, rid, device))


def by_command(store, command_id):
    """(rollout, device) of the offer sent as command `command_id` (hex), or None."""
    rows = store.query("SELECT rollout, device FROM rollout_devices WHERE command = ?",
                       (command_id,))
    return tuple(rows[0]) if rows else None


def current(store, device):
    """(rollout id, version, rollout state, board state) of the board's newest rollout, or
    None."""
    row = store.query(
        "SELECT r.id, r.version, r.state, d.state FROM rollout_devices d JOIN rollouts r ON "
        "r.id = d.rollout WHERE d.device = ? ORDER BY r.id DESC LIMIT 1", (device,))
    return tuple(row[0]) if row else None


def report(store, device, rid, state, progress=None, reason=None, now=None):
    """A board's report: its new state in rollout `rid`. Returns what changed, for the log:
    a dict with the board's old and new state and, when the rollout's state changed, its
    new state and why. RolloutError when the board is not in that rollout."""
    now = time.time() if now is None else now
    if state not in STATES or state == "waiting":
        raise RolloutError(f"state {state!r} is not one of {', '.join(STATES[1:])}")
    with store.transaction() as tx:
        r = tx.one("SELECT state, canary, max_failures, failures_base FROM rollouts "
                   "WHERE id = ?" + store.for_update, (rid,))
        d = tx.one("SELECT state, canary, progress FROM rollout_devices WHERE rollout = ? "
                   "AND device = ?", (rid, device))
        if r is None or d is None:
            raise RolloutError(f"{device} is not in rollout {rid}")
        old = d[0]
        if old in FINAL and state not in FINAL:
            # a late report of an earlier step (QoS 1 may deliver it again): the end stands
            return {"old": old, "new": old, "ignored": True}
        if state == "downloading" and progress is None:
            progress = d[2]
        if state in ("staged", "switched", "healthy"):
            progress = 100
        tx.execute("UPDATE rollout_devices SET state = ?, progress = ?, reason = ?, "
                   "updated = ? WHERE rollout = ? AND device = ?",
                   (state, progress, reason, now, rid, device))
        out = {"old": old, "new": state}
        rstate, canaries, budget, base = r
        what = (f"{'rolled back' if state == 'rolled_back' else 'refused the release'}: "
                f"{reason or 'no reason given'}")
        if d[1] and state in FAILED and rstate in ("canary", "open"):
            why = f"canary {device} {what}"
            tx.execute("UPDATE rollouts SET state = 'halted', reason = ?, changed = ? "
                       "WHERE id = ?", (why, now, rid))
            out["rollout"] = ("halted", why)
        elif (budget is not None and old not in FINAL and rstate in ("canary", "open")
              and is_fault(state, reason) and _faults(tx, rid) - base >= budget):
            # the budget used up: no more offers or chunks (boards already staged still
            # switch: the protocol has no recall) until an operator resumes it
            why = (f"failure budget used up: {budget} board(s) failed (--max-failures "
                   f"{budget}), the last {device} {what}")
            tx.execute("UPDATE rollouts SET state = 'halted', reason = ?, changed = ? "
                       "WHERE id = ?", (why, now, rid))
            out["rollout"] = ("halted", why)
        elif rstate == "canary" and state == "healthy":
            left = tx.one("SELECT count(*) FROM rollout_devices WHERE rollout = ? AND "
                          "canary = 1 AND state != 'healthy'", (rid,))[0]
            if not left:
                why = f"all {canaries} canaries healthy"
                tx.execute("UPDATE rollouts SET state = 'open', reason = ?, changed = ? "
                           "WHERE id = ?", (why, now, rid))
                out["rollout"] = ("open", why)
        if state in FINAL and out.get("rollout", ("open",))[0] == "open" and \
                rstate in ("canary", "open"):
            if not _unfinished(tx, rid):
                tx.execute("UPDATE rollouts SET state = 'done', reason = ?, changed = ? "
                           "WHERE id = ?", ("every board reached an end state", now, rid))
                out["rollout"] = ("done", "every board reached an end state")
    return out


class Release:
    """A published release as the server serves it: manifest, signature and its files in
    the manifest's order (a board asks for a file by that index)."""

    def __init__(self, version, manifest, signature, files):
        self.version = version
        self.manifest = manifest
        self.signature = signature
        self.files = files  # [(path, bytes)]
        self.id = hashlib.sha256(manifest).digest()[:8]
        self.size = len(manifest) + sum(len(d) for _, d in files)


def load_release(store, version=None, release_id=None):
    """The published release with this version or release id (8 bytes), or None."""
    where, arg = ("version = ?", version) if version else ("release_id = ?",
                                                             release_id.hex())
    rows = store.query(f"SELECT version, manifest, signature FROM releases WHERE {where}",
                       (arg,))
    if not rows:
        return None
    version = rows[0][0]
    files = [(path, bytes(data)) for path, data in store.query(
        "SELECT path, data FROM release_files WHERE version = ? ORDER BY idx", (version,))]
    return Release(version, bytes(rows[0][1]), bytes(rows[0][2]), files)


def rollouts_of(store, device, version):
    """The board's rollouts of release `version`, newest first: [(id, state)]."""
    return [tuple(r) for r in store.query(
        "SELECT r.id, r.state FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout "
        "WHERE d.device = ? AND r.version = ? ORDER BY r.id DESC", (device, version))]


def summary(st):
    """One line about a rollout, for logs and the report."""
    c = st["counts"]
    parts = [f"{n} {s.replace('_', ' ')}" for s in STATES if (n := c.get(s))]
    if st.get("max_failures") is not None:
        parts.append(f"failure budget {st['failures']} of {st['max_failures']} used"
                     + (f" ({st['not_eligible']} not eligible, not counted)"
                        if st["not_eligible"] else ""))
    return (f"rollout {st['rollout']}: release {st['version']} {st['state']}"
            + (f" ({st['reason']})" if st["reason"] else "") + "; " + ", ".join(parts))



def state_text(d):
    """A board's state in a rollout as a person reads it: `downloading 40%`, `refused:
    release for another board`."""
    s = d["state"].replace("_", " ")
    if d["state"] == "downloading" and d["progress"] is not None:
        s += f" {d['progress']}%"
    return s + (f": {d['reason']}" if d["reason"] else "")
