"""`washpay server import DIR|FILE...`: a journal pulled off a board (`washpay journal pull`,
or a flash dump) into the ledger, for a site with no network.

The records go through the very path a board's MQTT batches take, Ingest.batch
(host_tools/server/ingest.py): the same verification, exactly-once storage, duplicates,
gaps (parked records), forks and card checks. Nothing is stored here any other way. The
files are only read with the journal decoder (host_tools/journal.py), and refused if no
record in them verifies with the site key and device id (a wrong --device would otherwise
store another board's records as bad-tag evidence).

A pull says nothing about what the board holds now: each batch reports the newest record
as the larger of the pull's newest and the ledger's, so an older pull imported after the
board synced is not taken for a rollback (a rewritten journal still shows as a fork).
"""

import sys

from host_tools import journal as J
from host_tools.server import wire
from host_tools.server.ingest import Ingest


class ImportRefused(Exception):
    """Nothing was stored; exit status 2."""


def read_pull(paths, site_key, device):
    """The records of the pulled journal, in sequence order (raw 128 bytes each), and the
    decoder's report."""
    try:
        snaps = J.load_inputs(paths)
    except J.JournalInputError as e:
        raise ImportRefused(str(e)) from None
    report = J.verify(snaps, J.Keys(site_key, device))
    if not report.records:
        raise ImportRefused(f"no journal records in {', '.join(map(str, paths))}")
    if not report.verified_any and not report.keys_confirmed:
        raise ImportRefused("no record verifies with this key and device id: wrong site key "
                            "or --device?")
    return [r.raw for r in report.records], report


def import_records(store, site_key, device, records, batch=wire.MAX_BATCH):
    """Feed `records` to Ingest.batch in batches, as a board would -> totals."""
    ingest = Ingest(store, site_key)
    last = max(int.from_bytes(r[4:8], "big") for r in records) if records else 0
    totals = {"stored": 0, "duplicates": 0, "parked": 0, "ack": 0, "problems": []}
    for i in range(0, len(records), batch):
        chunk = records[i : i + batch]
        newest = max(last, ingest.high(device))
        out = ingest.batch(device, wire.build_batch(chunk, newest))
        totals["stored"] += out.stored
        totals["duplicates"] += out.duplicates
        totals["parked"] += out.parked
        totals["ack"] = out.ack
        totals["problems"] += out.problems
    return totals


def import_command(args, out=None, err=None):
    from host_tools.server.cli import _site_key
    from host_tools.server.store import StoreError, open_store

    out = out or sys.stdout
    err = err or sys.stderr
    key = _site_key(args.site_key)
    try:
        records, report = read_pull(args.files, key, args.device)
        store = open_store(args.db)  # a site without network may have no ledger yet
    except (ImportRefused, StoreError) as e:
        err.write(f"washpay server import: {e}\n")
        return 2
    try:
        t = import_records(store, key, args.device, records)
    finally:
        store.close()
    seqs = sorted(int.from_bytes(r[4:8], "big") for r in records)
    out.write(f"imported {len(records)} records of {args.device} (seq {seqs[0]}-{seqs[-1]}): "
              f"{t['stored']} stored, {t['duplicates']} already in the ledger, "
              f"{t['parked']} waiting for missing records\n")
    out.write(f"  the ledger holds every record of {args.device} up to {t['ack']}")
    out.write(f"; the board may be told so: washpay journal settle --port P --device "
              f"{args.device} --db {args.db}\n" if t["ack"] else "\n")
    for kind, seq, detail in t["problems"]:
        out.write(f"  {kind} at {seq}: {detail}\n")
    if not report.ok:
        out.write(f"  note: the pulled files themselves have {len(report.problems)} "
                  "problem(s): washpay journal decode shows them\n")
    return 1 if t["problems"] else 0
