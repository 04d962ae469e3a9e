"""Crash safety of the journal: the power is cut at every flash program and erase of a
day's scenario (coins, vends, a start failure, a rejected coin, a server acknowledgement),
each cut both clean and torn (half the operation applied). After every cut the board boots
on exactly what reached the flash, and:

- every record whose append returned is present, unchanged, and verifies;
- sequence numbers are contiguous and none repeats; at most the record being written when
  the power went is lost, and it is either there whole or not at all;
- the vend engine's boot recovery settles on the credit and state the journal says;
- the host decoder, reading the flash image with littlefs-python, verifies the whole
  journal and sees the same records.

The sweep runs in MicroPython processes (tests/journal_workload.py): each cut abandons the
run, and recovery mounts a copy of the image at the instant of the cut with a fresh
LittleFS. A long randomized run (marker `slow`) strings many cuts together.
"""

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import FIRMWARE, ROOT, SIM, micropython_path

from host_tools import journal as J

KEYS = J.Keys(bytes(range(32)), "sim-0001")


def _popen(code):
    prelude = "import sys\n" + "".join(
        f"sys.path.append({str(p)!r})\n" for p in (FIRMWARE, SIM, ROOT / "tests"))
    return subprocess.Popen(
        [micropython_path(), "-X", "heapsize=32m", "-c",
         prelude + "import journal_workload as w\n" + code],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _results(proc):
    for line in proc.stdout:
        if line.startswith("@@ "):
            yield json.loads(line[3:])
    rc = proc.wait()
    assert rc == 0, proc.stderr.read()[-3000:]


def host_check(res):
    """Decode the image the firmware left and compare it with the firmware's reading."""
    image = Path(res["image"])
    try:
        report = J.verify([J.read_dump(image.read_bytes(), image.name)], KEYS)
    finally:
        image.unlink()
    problems = [p.message for p in report.problems if p.failure]
    if problems:
        return [f"host decoder: {problems}"]
    # A cut inside an acknowledgement may leave acknowledged segments the board no longer
    # counts (the next acknowledgement deletes them): compare from the board's first record.
    seqs = [r.seq for r in report.records if r.seq >= res["first"]]
    tail_from = res["records"][0][0]
    host = [[r.seq, r.fields["type"], r.fields["credit"], r.fields["state"],
             r.fields["amount"], r.status == "ok"] for r in report.records if r.seq >= tail_from]
    errors = []
    if seqs != list(range(res["first"], res["last_seq"] + 1)):
        errors.append(f"host decoder reads seq {seqs[:3]}...{seqs[-3:]}")
    if host != res["records"]:
        errors.append(f"host decoder reads {host[-3:]}, firmware {res['records'][-3:]}")
    if (report.cursor or 0) != res["synced"]:
        errors.append(f"host cursor {report.cursor}, firmware {res['synced']}")
    last = report.records[-1].fields
    if (last["type"], last["credit"], last["state"]) != ("boot", res["credit"], res["state"]):
        errors.append(f"host's last record {last}")
    return errors


def run_sweep(start, stop, image_dir, boundary=False):
    proc = _popen(f"w.sweep({start}, {stop}, image_dir={str(image_dir)!r}, "
                  f"boundary={boundary})")
    out = []
    for res in _results(proc):
        errors = res["errors"] + host_check(res)
        out.append((res["cut"], res["torn"], res["fired"], res["inflight_kept"],
                    res["discarded"], res["synced"], errors, res["groups"]))
    return out


def sweep_all(tmp_path, boundary=False):
    """Every cut point of the scenario, in two MicroPython processes -> (counts, results)."""
    counts = next(_results(_popen(f"w.count_ops(boundary={boundary})")))
    ops = counts["ops"]
    # one more than the scenario's operations: the last run completes without a cut
    bounds = list(range(1, ops + 2, -(-(ops + 1) // 2))) + [ops + 2]
    shards = list(zip(bounds, bounds[1:], strict=False))
    with ThreadPoolExecutor(len(shards)) as pool:
        results = [r for part in pool.map(lambda b: run_sweep(*b, tmp_path, boundary), shards)
                   for r in part]
    failures = [(r[0], r[1], r[6]) for r in results if r[6]]
    assert not failures, failures[:5]
    fired = [r for r in results if r[2]]
    assert {(r[0], r[1]) for r in fired} == {(c, t) for c in range(1, ops + 1) for t in (0, 1)}
    assert not results[-1][2]  # past the last operation: the scenario ran to its end
    return counts, results


def test_power_cut_at_every_flash_operation(tmp_path):
    counts, results = sweep_all(tmp_path)
    ops = counts["ops"]
    assert counts["records"] >= 60 and ops > 100, counts
    fired = [r for r in results if r[2]]
    # both outcomes of a cut during an append happen, the cut-off segment write is cleaned
    # up at boot, and cuts land before and after the acknowledgement
    assert any(r[3] for r in fired) and not all(r[3] for r in fired)
    assert any(r[4] for r in fired)
    assert {r[5] for r in fired} > {0}
    print(f"\n{ops} flash operations ({counts['programs']} programs, {counts['erases']} "
          f"erases) for {counts['records']} records; {len(fired)} power cuts checked")


def test_power_cut_at_every_flash_operation_across_a_directory_group(tmp_path):
    """From record 1010 on: the segment that opens group 0001 is written, then an
    acknowledgement deletes group 0000's 32 segments and its directory."""
    counts, results = sweep_all(tmp_path, boundary=True)
    assert counts["records"] > 1023
    assert results[-1][7] == ["0001"]  # run to its end: group 0000 is gone
    # a cut inside the acknowledgement leaves group 0000 to the next one, never records
    assert any("0000" in r[7] for r in results if r[5] == 0)
    print(f"\n{counts['ops']} flash operations across a group boundary, all cut")


@pytest.mark.slow
def test_long_random_run_with_many_power_cuts(tmp_path):
    rounds = int(os.environ.get("WASHPAY_CRASH_ROUNDS", "1200"))
    res = list(_results(_popen(f"w.long_run(7, {rounds}, image_dir={str(tmp_path)!r})")))
    assert len(res) == 1
    res = res[0]
    assert res["errors"] == [], res
    assert res["rounds"] == rounds and res["cuts"] > rounds // 3
    report = J.verify([J.read_dump((tmp_path / "long.bin").read_bytes(), "long.bin")], KEYS)
    assert report.ok, [p.message for p in report.problems]
    assert report.records[-1].seq == res["last_seq"]
    assert report.records[-1].fields["credit"] == res["credit"]
    print(f"\n{res['rounds']} rounds, {res['cuts']} power cuts, {res['last_seq']} records")
