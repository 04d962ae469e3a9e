"""Interop and tampering: what the firmware writes under MicroPython, the host decoder
(host_tools/journal.py, on `cryptography`) reads and verifies; every kind of tampering is
reported, and reported at the right place.

The journals are made by tests/journal_workload.py under the real interpreter, on a LittleFS
volume the host reads with littlefs-python (as from a flash dump)."""

import ast
import json
import re
import struct

import pytest
from conftest import ROOT, SIM, run_micropython

from host_tools import journal as J
from host_tools import keys as K

TESTS = ROOT / "tests"
SITE = bytes(range(32))
KEYS = J.Keys(SITE, "sim-0001")


def workload(code, heap="8m", timeout=120):
    """Run journal_workload code under MicroPython -> the "@@ " result objects."""
    out = run_micropython("import journal_workload as w\n" + code, heap=heap,
                          timeout=timeout, extra_path=[SIM, TESTS])[1]
    return [json.loads(line[3:]) for line in out.splitlines() if line.startswith("@@ ")]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """100 varied records, the first 31 acknowledged and deleted: (image path, firmware's
    reading of every stored record, its counters)."""
    path = tmp_path_factory.mktemp("journal") / "sample.bin"
    res = workload(f"w.sample({str(path)!r}, 100, ack=40)")
    return path, res[:-1], res[-1]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """100 varied records, nothing acknowledged."""
    path = tmp_path_factory.mktemp("journal") / "full.bin"
    res = workload(f"w.sample({str(path)!r}, 100)")
    return path, res[:-1], res[-1]


def files_of(image_path):
    return dict(J.read_dump(image_path.read_bytes(), str(image_path)).files)


def check(files, keys=KEYS):
    return J.verify([J.Snapshot("j", files)], keys)


def kinds(report):
    return {p.kind for p in report.problems if p.failure}


def messages(report):
    return "\n".join(p.message for p in report.problems)


# ---- interop
def test_host_reads_what_the_firmware_wrote(sample):
    path, fw_records, counters = sample
    report = J.verify(J.load_inputs([path]), KEYS)
    assert report.ok, messages(report)
    assert [r.status for r in report.records] == ["ok"] * len(fw_records)
    assert counters == {"last_seq": 100, "count": 69, "synced": 40}
    assert report.cursor == 40
    assert [r.seq for r in report.records] == list(range(32, 101))
    for fw, rec in zip(fw_records, report.records, strict=True):
        host = rec.fields
        for name in ("seq", "type", "boot", "t", "clock_ok", "credit", "state", "amount",
                     "price", "currency", "program", "pulses", "attempt", "reason",
                     "recovered", "source_kind", "source", "balance_before", "balance_after",
                     "card_counter", "left_s"):
            assert host[name] == fw[name], (fw["seq"], name)


def test_every_field_survives(full):
    _, fw_records, _ = full
    by_type = {r["type"]: r for r in fw_records}
    assert set(by_type) == {J.TYPES[code] for code in range(1, 13)}
    card = by_type["card_debit"]
    assert (card["source_kind"], card["source"]) == ("card", "04a1b2c3d4e5f6")
    assert (card["balance_before"], card["balance_after"]) == (1000, 700)
    assert card["card_counter"] >= 42
    assert by_type["refund"]["amount"] == -300
    assert by_type["vend_running"]["left_s"] >= 1800 and by_type["coin"]["left_s"] == 0
    assert by_type["remote_start"]["program"] == "Wäsche60"
    # a source id longer than 16 bytes is cut; reason text to 25 bytes, on a char boundary
    assert bytes.fromhex(by_type["remote_start"]["source"]) == b"cmd-0123456789ab"
    assert by_type["fault"]["reason"] == "config: programs must be "
    assert by_type["start_failed"]["reason"] == "washer did not confirm start"
    assert by_type["boot"]["recovered"] is True
    assert [r["clock_ok"] for r in fw_records[:6]] == [True] * 4 + [False, True]


def test_text_is_cut_on_a_character_boundary():
    out = run_micropython(
        "from washpay.journal.seal import _text\n"
        "print(_text('ab' + 'ä' * 10, 7).decode(), _text('abcdef€', 8).decode(), "
        "len(_text('x' * 40, 27)), _text(None, 3), _text(7, 3))\n"
    )[1].split()
    assert out == ["abää", "abcdef", "27", "b''", "b'7'"]


def test_flash_dump_decodes_from_the_cli(full, tmp_path, capsys):
    path, _, _ = full
    key_file = tmp_path / "site.key"
    key_file.write_text(SITE.hex())
    rc = J.decode_command([str(path)], key_file, "sim-0001", fmt="jsonl")
    out, err = capsys.readouterr()
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["seq"] for r in rows] == list(range(1, 101))
    assert "verification: OK" in err
    rc = J.decode_command([str(path)], key_file, "sim-0001", fmt="csv")
    out, _ = capsys.readouterr()
    assert rc == 0 and out.splitlines()[0].startswith("seq,time,clock_ok")
    assert len(out.splitlines()) == 101
    rc = J.decode_command([str(path)], key_file, "sim-0001")
    out, _ = capsys.readouterr()
    assert rc == 0
    assert "journal of sim-0001: 100 records, seq 1-100" in out
    assert "2000-01-01T00:00:04Z?" in out  # an untrusted clock is marked


def test_a_pulled_directory_decodes(full, tmp_path):
    path, _, _ = full
    root = tmp_path / "pulled" / "journal"
    for name, data in files_of(path).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    for inputs in ([root.parent], [root], sorted(root.glob("seg/*/*.seg")) + sorted(root.glob(
            "stage/*"))):
        report = J.verify(J.load_inputs(inputs), KEYS)
        assert report.ok and len(report.records) == 100, messages(report)


def test_wrong_key_or_device_fails(full, tmp_path, capsys):
    path, _, _ = full
    for keys in (J.Keys(bytes(32), "sim-0001"), J.Keys(SITE, "sim-0002")):
        report = J.verify(J.load_inputs([path]), keys)
        assert "key" in kinds(report) and "bad_tag" in kinds(report)
        assert "wrong --site-key or --device" in messages(report)
    key_file = tmp_path / "site.key"
    key_file.write_text(SITE.hex())
    other = tmp_path / "other.key"
    other.write_text(bytes(32).hex())
    for key, device in ((key_file, "sim-0002"), (other, "sim-0001")):
        for fmt in ("table", "jsonl", "csv"):
            assert J.decode_command([str(path)], key, device, fmt=fmt) == 2
            out, err = capsys.readouterr()
            assert out == "", out  # no garbage rows
            assert err == ("washpay journal decode: no record verifies with this key and "
                           f"device id: wrong site key or --device? (100 records read, "
                           f"device {device})\n")
    # stage files only (no segment's key check to go by): the same
    files = {n: d for n, d in files_of(path).items() if n.startswith("stage/")}
    young = tmp_path / "young"
    (young / "stage").mkdir(parents=True)
    for n, d in files.items():
        (young / n).write_bytes(d)
    assert J.decode_command([str(young)], key_file, "sim-0002") == 2
    assert "no record verifies" in capsys.readouterr().err
    # with the right keys: the stage alone cannot be chained to the segment before it
    assert J.decode_command([str(young)], key_file, "sim-0001") == 1
    assert "ok" in capsys.readouterr().out
    capsys.readouterr()
    assert J.decode_command([str(tmp_path / "none")], key_file, "sim-0001") == 2


def test_altered_records_with_the_right_keys_still_show(full, capsys, tmp_path):
    """Every record altered, but a segment's key check says the keys are right: not a key
    problem; the records are listed with their bad tags (exit status 1)."""
    path, _, _ = full
    files = files_of(path)
    for name, data in files.items():
        if name.endswith(".seg"):
            b = bytearray(data)
            for i in range(31):
                b[32 + i * 128 + 20] ^= 1
            files[name] = bytes(b)
        elif name.startswith("stage/"):
            files[name] = data[:20] + bytes([data[20] ^ 1]) + data[21:]
    report = check(files)
    assert not report.verified_any and report.keys_confirmed
    root = tmp_path / "j"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    key_file = tmp_path / "site.key"
    key_file.write_text(SITE.hex())
    assert J.decode_command([str(root)], key_file, "sim-0001") == 1
    out = capsys.readouterr().out
    assert "bad tag" in out and "verification: FAILED" in out


def test_pull_into_an_existing_directory_is_refused_before_the_board(tmp_path):
    """Checked first: no mpremote runs (the port here does not exist; a pull that got as far
    as the board would say so instead)."""
    (tmp_path / "out" / "journal").mkdir(parents=True)
    port = str(tmp_path / "no-such-port")
    with pytest.raises(J.JournalInputError, match="journal already exists: pull into an empty "
                       r"directory \(nothing was read from the board\)"):
        J.pull(port, tmp_path / "out")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(J.JournalInputError, match="is a file: give a directory"):
        J.pull(port, tmp_path / "afile")


def test_host_and_firmware_agree_on_the_documented_tables():
    """docs/journal-format.md's code tables, the firmware's records.py and the decoder."""
    doc = (ROOT / "docs" / "journal-format.md").read_text()

    def table(header):
        block = doc[doc.index(header):].split("\n\n")[0]
        return {int(m[1]): m[2].strip() for m in re.finditer(r"^\| (\d+) \| ([^|]+)\|",
                                                              block, re.M)}

    assert table("| type code |") == J.TYPES
    assert table("| state code |") == J.STATES
    reasons = table("| reason code |")
    assert {k: v for k, v in reasons.items() if k} == J.REASONS
    out = run_micropython(
        "import json\nfrom washpay.journal import records as R\n"
        "print(json.dumps([R.RECORD_TYPES, R.STATES, R.REASONS, R.BODY_FORMAT, "
        "R.RECORD_SIZE, R.SEGMENT_RECORDS, R.SEGMENT_SIZE, R.SEGMENT_HEADER_SIZE]))\n"
    )[1]
    types, states, fw_reasons, body, rsize, nrec, ssize, hsize = json.loads(out)
    assert {i + 1: t for i, t in enumerate(types)} == J.TYPES
    assert dict(enumerate(states)) == J.STATES
    assert {i: r for i, r in enumerate(fw_reasons) if i} == J.REASONS
    assert body == J.BODY.format
    assert (rsize, nrec, ssize, hsize) == (J.RECORD_SIZE, J.SEGMENT_RECORDS, J.SEGMENT_SIZE,
                                           J.SEGMENT_HEADER_SIZE)
    # the body table's offsets add up to the struct layout
    offsets = [int(m[1]) for m in re.finditer(r"^\| (\d+) \| \d+ \| (?:u8|u16|u32|i32|ASCII|"
                                              r"bytes|UTF-8) \|", doc, re.M)]
    assert offsets[0] == 0 and offsets[-1] == 71 and len(offsets) == 21


def test_host_code_never_imports_firmware():
    """The decoder is an independent implementation: no firmware module, no firmware path."""
    for name in ("journal.py", "keys.py"):
        src = (ROOT / "host_tools" / name).read_text()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            assert not any(m.split(".")[0] in ("washpay", "firmware") for m in mods), name
        assert "sys.path" not in src and "FIRMWARE" not in src, name


# ---- tampering, on the files of a pulled journal
def test_bit_flip_in_any_record_byte_is_caught_at_that_record(full):
    path, _, _ = full
    base = files_of(path)
    for name, rec_index, first in (("seg/0000/0000003f.seg", 4, 63), ("stage/03", 0, 97)):
        data = base[name]
        start = 32 + rec_index * 128 if name.endswith(".seg") else 0
        seq = first + rec_index if name.endswith(".seg") else first
        for off in range(start, start + 128):
            for bit in (0, 7):
                files = dict(base)
                b = bytearray(data)
                b[off] ^= 1 << bit
                files[name] = bytes(b)
                report = check(files)
                assert not report.ok, (name, off, bit)
                where = f"{name} #{rec_index + 1}" if name.endswith(".seg") else name
                assert f"seq {seq}" in messages(report) or where in messages(report), (
                    name, off, messages(report))
                if off - start not in range(4, 8):  # a flipped seq also moves the record
                    assert kinds(report) == {"bad_tag"}, (name, off, messages(report))
                    bad = [p.seq for p in report.problems if p.kind == "bad_tag"]
                    assert bad == [seq], (name, off, bit, messages(report))


def test_bit_flip_in_a_segment_header_is_caught(full):
    path, _, _ = full
    base = files_of(path)
    for off in range(32):
        files = dict(base)
        b = bytearray(base["seg/0000/00000020.seg"])
        b[off] ^= 0x10
        files["seg/0000/00000020.seg"] = bytes(b)
        report = check(files)
        assert not report.ok, off
        assert "00000020.seg" in messages(report) or "seq 32" in messages(report), off


def test_deleted_record_is_reported(full):
    path, _, _ = full
    files = files_of(path)
    seg = files["seg/0000/00000020.seg"]
    # record 37 removed
    files["seg/0000/00000020.seg"] = seg[: 32 + 5 * 128] + seg[32 + 6 * 128 :]
    report = check(files)
    assert not report.ok
    assert "seq 37 missing" in messages(report)
    assert "holds 30 of 31 records" in messages(report)
    # a deleted stage file
    files = files_of(path)
    del files["stage/02"]
    report = check(files)
    assert [p.message for p in report.gaps()] == ["seq 96 missing"]
    assert "chain_break" in kinds(report)  # seq 97 cannot be verified without 96
    # a deleted segment
    files = files_of(path)
    del files["seg/0000/00000020.seg"]
    report = check(files)
    assert "seq 32-62 missing" in messages(report)


def test_swapped_records_are_reported(full):
    path, _, _ = full
    files = files_of(path)
    seg = bytearray(files["seg/0000/0000003f.seg"])
    a, b = 32 + 10 * 128, 32 + 11 * 128
    seg[a : a + 128], seg[b : b + 128] = seg[b : b + 128], seg[a : a + 128]
    files["seg/0000/0000003f.seg"] = bytes(seg)
    report = check(files)
    assert kinds(report) == {"misplaced"}
    assert "0000003f.seg record 11: holds seq 74, expected 73" in messages(report)
    assert "0000003f.seg record 12: holds seq 73, expected 74" in messages(report)
    files = files_of(path)
    files["stage/00"], files["stage/01"] = files["stage/01"], files["stage/00"]
    report = check(files)
    assert "misplaced" in kinds(report)
    assert "stage/00: holds seq 95" in messages(report)


def test_truncated_files_are_reported(full):
    path, _, _ = full
    for name, cut, expect in (
        ("seg/0000/00000001.seg", 10, "ends 118 bytes into record 31"),
        ("seg/0000/00000001.seg", 128, "holds 30 of 31 records"),
        ("stage/05", 1, "stage/05: 127 bytes"),
    ):
        files = files_of(path)
        files[name] = files[name][:-cut]
        report = check(files)
        assert "truncated" in kinds(report), name
        assert expect in messages(report), messages(report)


def test_spliced_segment_is_a_chain_break(full):
    """A segment from another history: authentic records, but its anchor is not the tag of
    the record before it."""
    path, _, _ = full
    files = files_of(path)
    seg = bytearray(files["seg/0000/0000003f.seg"])
    seg[16:32] = bytes(16)  # claims to follow a different record 62
    files["seg/0000/0000003f.seg"] = bytes(seg)
    report = check(files)
    assert "chain_break" in kinds(report)
    assert "seq 63" in messages(report)


def test_older_stage_put_back_is_reported(tmp_path):
    """A copy of the open segment taken earlier, put back over the newer one."""
    old = tmp_path / "old.bin"
    new = tmp_path / "new.bin"
    workload(f"w.sample({str(old)!r}, 40)\nw.sample({str(new)!r}, 100)")
    old_files, files = files_of(old), files_of(new)
    for j in range(9):  # stage/00..08 held seq 32..40 at the time
        files[f"stage/{j:02d}"] = old_files[f"stage/{j:02d}"]
    report = check(files)
    assert not report.ok
    assert "stage/00: holds seq 32; slot 0 of the open segment holds seq 94" in messages(
        report)
    assert "seq 94-100 missing" not in messages(report)  # nothing of the new stage is left


def test_acknowledged_segment_put_back(full, sample):
    """A segment deleted after the server acknowledged it, put back: its own is acknowledged
    history (the server has it) and verifies; one from another journal is spliced in."""
    path = sample[0]
    files = files_of(path)
    assert "seg/0000/00000001.seg" not in files
    files["seg/0000/00000001.seg"] = files_of(path.with_name(path.name + ".before-ack"))[
        "seg/0000/00000001.seg"]
    report = check(files)
    assert report.ok, messages(report)
    assert report.records[0].seq == 1 and report.cursor == 40
    files["seg/0000/00000001.seg"] = files_of(full[0])["seg/0000/00000001.seg"]
    report = check(files)
    assert kinds(report) == {"chain_break"}
    assert "00000020.seg #1): authentic, but its segment does not follow seq 31" in (
        messages(report))


def test_rollback_is_a_conflict_between_two_pulls(tmp_path):
    """The board's journal rolled back to an earlier copy and written on: the same sequence
    numbers now hold other records."""
    first = tmp_path / "first.bin"
    second = tmp_path / "second.bin"
    workload(f"w.sample({str(first)!r}, 60)")
    # same keys, same sequence numbers, other content (a different nonce per write)
    workload(f"w.sample({str(second)!r}, 50)")
    report = J.verify(J.load_inputs([first, second]), KEYS)
    assert "conflict" in kinds(report)
    assert re.search(r"seq 1 differs between", messages(report))
    assert J.verify(J.load_inputs([first, first]), KEYS).ok  # the same pull twice is fine


def test_unreadable_inputs_say_why(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\0" * 8192)  # a dump's size, neither a volume nor a journal in it
    with pytest.raises(J.JournalInputError, match="no LittleFS volume.*no journal segment"):
        J.load_inputs([junk])
    loose = tmp_path / "notes.txt"
    loose.write_bytes(b"\0" * 100)
    report = J.verify(J.load_inputs([loose]), KEYS)
    assert "unreadable" in kinds(report)
    dump = tmp_path / "dump.bin"
    dump.write_bytes(b"\xff" * 8 + b"littlefs" + b"\xff" * (8192 - 16))
    with pytest.raises(J.JournalInputError, match="does not mount"):
        J.load_inputs([dump])


def test_torn_tail_is_reported_but_not_a_failure(full):
    path, _, _ = full
    files = files_of(path)
    files["seg/0000/0000005e.seg"] = b""  # the open segment's file, its write cut off
    report = check(files)
    assert report.ok, messages(report)
    assert any("0000005e.seg: empty segment" in t for t in report.torn)


def test_record_struct_matches_sizes():
    assert J.BODY.size == J.BODY_SIZE == 96
    assert J.SEGMENT_SIZE == 4000  # one 4 KiB flash block
    assert 4 + struct.calcsize(">BBHI") + 4 + 16 == J.SEGMENT_HEADER_SIZE
    assert K.JOURNAL_ENC == b"journal-enc"


def test_reading_back_from_any_point(tmp_path):
    """sealed(after) and records(after), which the uploader and boot recovery use, start at
    any sequence number, across segment and stage boundaries, and verify from there."""
    res = workload("""
img = w.blank_image()
w.mount(img)
j = w.open_journal()
for i in range(100):
    j.append("coin", amount=50, credit=50 * i, state="credit")
j.ack(40)
out = {}
for after in (0, 1, 30, 31, 32, 40, 41, 61, 62, 63, 92, 93, 94, 99, 100):
    s = [seq for seq, rec in j.sealed(after)]
    r = [(d["seq"], d["ok"]) for d in j.records(after)]
    out[after] = [s[:1], s[-1:], len(s), r[:1], len(r), all(ok for _, ok in r)]
g = j.sealed(40)
next(g)
g.close()  # stopping early closes the segment file
w.emit(out)
w.unmount()
""")[0]
    for after, (first, last, n, rfirst, rn, ok) in res.items():
        lo = max(int(after), 31) + 1  # segment 1-31 was acknowledged and deleted
        if lo > 100:
            assert (n, rn) == (0, 0)
            continue
        assert (first, last, n) == ([lo], [100], 101 - lo), after
        assert (rfirst, rn, ok) == ([[lo, True]], 101 - lo, True), after


# ---- an auditor's damaged dump (issue 12, item 18)
def test_newest_segment_deleted_shows_the_staged_records_with_the_chain_break(full):
    """The newest segment file (seq 63-93) deleted: what the stage still holds of it (its
    staged copies of 70-92) and the open segment's records (94-100) are shown; they verify
    against each other, and the two places where the chain cannot be followed are marked."""
    path, _, _ = full
    files = files_of(path)
    del files["seg/0000/0000003f.seg"]
    report = check(files)
    seqs = [r.seq for r in report.records]
    assert seqs == list(range(1, 63)) + list(range(70, 93)) + list(range(94, 101))
    assert "misplaced" not in kinds(report), messages(report)
    assert [p.message for p in report.gaps()] == ["seq 63-69 missing", "seq 93 missing"]
    status = {r.seq: r.status for r in report.records}
    assert status[70] == status[94] == "unverifiable"
    assert {status[s] for s in seqs if s not in (70, 94)} == {"ok"}
    assert {p.seq for p in report.problems if p.kind == "chain_break"} == {70, 94}
    by_seq = {r.seq: r for r in report.records}
    assert by_seq[92].where == "stage/29" and by_seq[100].where == "stage/06"
    assert by_seq[100].fields["type"]  # decoded: the bodies are authentic past the break
    table = J.render(report)
    assert "unverifiable" in table and "\n100 " in table


def test_stage_copy_that_differs_from_its_segment_copy_is_marked(full):
    path, _, _ = full
    files = files_of(path)
    # stage/10 holds seq 73 (the previous segment's record, copied into 0000003f.seg)
    data = files["stage/10"]
    assert struct.unpack_from(">I", data, 4)[0] == 73
    files["stage/10"] = data[:40] + bytes([data[40] ^ 0xFF]) + data[41:]
    report = check(files)
    assert "conflict" in kinds(report)
    by_seq = {r.seq: r for r in report.records}
    # the segment's copy is the one reported; the record is marked, naming the other copy
    assert by_seq[73].where == "seg/0000/0000003f.seg #11"
    assert by_seq[73].status == "conflict" and by_seq[73].conflict == "stage/10"
    assert [r.seq for r in report.records if r.status != "ok"] == [73]
    assert "conflict" in J.render(report)


def test_two_pulls_that_differ_mark_the_record(tmp_path):
    first = tmp_path / "first.bin"
    second = tmp_path / "second.bin"
    workload(f"w.sample({str(first)!r}, 10)\nw.sample({str(second)!r}, 10)")
    report = J.verify(J.load_inputs([first, second]), KEYS)
    assert {r.status for r in report.records} == {"conflict"}
    assert report.verified_any  # the keys are right: the rows are shown, marked
    out = J.render(report)
    assert out.count("conflict") == 10


def test_whole_flash_dump_of_an_8_mib_board(full, tmp_path):
    """The ESP32-S3 board's vfs is 6 MiB at 0x200000: the volume's geometry comes from its
    superblock, not from the 4 MiB layout; a dump cut short says so."""
    from host_tools.image import build_volume

    path, _, _ = full
    files = {f"/journal/{n}": d for n, d in files_of(path).items()}
    volume, _ = build_volume(files, 0x600000)
    whole = tmp_path / "s3.bin"
    whole.write_bytes(b"\xff" * 0x200000 + volume)
    report = J.verify(J.load_inputs([whole]), KEYS)
    assert report.ok and len(report.records) == 100, messages(report)
    short = tmp_path / "short.bin"
    short.write_bytes(b"\xff" * 0x200000 + volume[:0x200000])
    with pytest.raises(J.JournalInputError, match="ends 512 blocks into a volume of 1536"):
        J.load_inputs([short])
