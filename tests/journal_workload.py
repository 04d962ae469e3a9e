# Journal workloads under MicroPython, for the crash tests and the benchmark.
#
# The flash is boards/sim's SimFlash (erase to 0xFF, programs only clear bits, power cut at
# the N-th program or erase, optionally torn) over an image in RAM, with the firmware's
# LittleFS (VfsLfs2) on it, as on the board. When the armed cut fires, the image at that
# instant - exactly what reached the flash - is copied and the run is abandoned with
# PowerCut; recovery then mounts that copy with a fresh LittleFS and a fresh Journal, as a
# reboot does. Nothing of the dead run is reused: one process can sweep every cut point.
#
# Results go to stdout as one JSON object per line, for tests/test_journal_crash.py.
import json
import os

import vfs
from sim_flash import SimFlash
from washpay.journal import Journal
from washpay.journal import records as R
from washpay.keys import device_secret, journal_keys

SITE_KEY = bytes(range(32))  # tests/test_journal_*.py decode with the same
DEVICE = "sim-0001"
KEYS = journal_keys(device_secret(SITE_KEY, DEVICE))
BLOCKS = 64
MOUNT = "/flash"
ROOT = MOUNT + "/journal"
PROGRAMS = {"quick": 250, "standard": 350, "heavy": 450}
CFG = {
    "programs": [{"name": n, "price": p, "minutes": 0} for n, p in PROGRAMS.items()],
    "start_confirm_ms": 8,
    "start_retries": 0,
    "max_credit": 5000,
}


class PowerCut(Exception):
    def __init__(self, image):
        self.image = image


class RamFile:
    """The file interface SimFlash uses, over a bytearray."""

    def __init__(self, buf):
        self.buf = buf
        self.mv = memoryview(buf)
        self.pos = 0

    def seek(self, pos):
        self.pos = pos

    def read(self, n):
        p = self.pos
        self.pos = p + n
        return bytes(self.mv[p : p + n])

    def readinto(self, b):
        p = self.pos
        n = len(b)
        b[:] = self.mv[p : p + n]
        self.pos = p + n
        return n

    def write(self, data):
        p = self.pos
        n = len(data)
        self.mv[p : p + n] = data
        self.pos = p + n

    def flush(self):
        pass


def blank_image(blocks=BLOCKS):
    """A formatted, empty LittleFS volume, as a factory-fresh board has."""
    image = bytearray(b"\xff" * (blocks * 4096))
    vfs.VfsLfs2.mkfs(SimFlash(RamFile(image), blocks))
    return image


class _DeadFile(RamFile):
    """After the cut: the dead run still reads its image, but nothing it writes lands."""

    def write(self, data):
        self.pos += len(data)


def mount(image):
    """Mount `image` at MOUNT; returns its SimFlash. An armed cut raises PowerCut, with the
    image as it was at that instant in the flash's `cut_image`."""
    f = RamFile(image)
    flash = SimFlash(f, len(image) // 4096)
    flash.cut_image = None
    dead = PowerCut(None)  # made in advance: a finaliser may get here with the heap locked

    def cut():
        if flash.cut_image is not None:
            # The dead run is still unwinding (a `with` closing its file, a finaliser):
            # every further flash operation fails at once, and none of it lands.
            raise dead
        flash.cut_image = bytes(image)
        flash.f = _DeadFile(bytearray(image))
        raise PowerCut(flash.cut_image)

    flash.on_cut = cut
    vfs.mount(vfs.VfsLfs2(flash), MOUNT)
    return flash


def emit(obj):
    # Finalisers of the dead run's files may print their failures on stdout: results are
    # the lines that start with "@@ ".
    print("@@ " + json.dumps(obj))


def unmount():
    try:
        vfs.umount(MOUNT)
    except OSError:
        pass


def open_journal(capacity=6200):
    return Journal(ROOT, KEYS, capacity=capacity)


# ---- the scenario: a laundromat's day as the vend engine records it
def scenario(customers=10, first=0):
    """Steps: ("coin", value), ("vend", program, ok), ("reject",), ("ack", n_records_back).

    10 customers: 32 coins, 10 vends, 1 start failure (its credit pays a second try) and 1
    rejected train - 44 transactions, 65 records - crossing two segment boundaries, with a
    server acknowledgement that deletes the oldest segment.
    """
    steps = []
    coins = (200, 100, 50)
    for c in range(first, first + customers):
        program = ("quick", "standard", "heavy")[c % 3]
        price = PROGRAMS[program]
        paid = 0
        i = c
        while paid < price:
            v = coins[i % 3]
            steps.append(("coin", v))
            paid += v
            i += 1
        if c == 4:
            steps.append(("reject",))
        steps.append(("vend", program, c != 6))  # customer 7's washer never confirms
        if c == 6:
            steps.append(("vend", program, True))  # ... the kept credit pays a second try
        if c == 8:
            steps.append(("ack", 4))  # the server has all but the newest 4 records
    return steps


class Machine:
    """The vend engine's bookkeeping, minus the hardware: credit and state after each record.

    `log` gets (seq, type, credit, state, amount) for every append that returned; `pending`
    is the record whose append was under way when the power went.
    """

    def __init__(self, journal):
        self.j = journal
        last = journal.last()
        self.credit = last["credit"] if last else 0
        self.state = last["state"] if last else R.IDLE
        self.log = []
        self.pending = None
        self.acked = journal.synced_seq

    def record(self, rtype, **fields):
        fields["credit"] = self.credit
        fields["state"] = self.state
        fields["t"] = 1767225600 + len(self.log)  # 2026-01-01, one second per record
        self.pending = (rtype, self.credit, self.state, fields.get("amount", 0))
        seq = self.j.append(rtype, **fields)
        self.log.append((seq, rtype, self.credit, self.state, fields.get("amount", 0)))
        self.pending = None
        return seq

    def step(self, s):
        kind = s[0]
        if kind == "coin":
            self.credit += s[1]
            self.state = R.CREDIT
            self.record(R.COIN, amount=s[1], pulses={50: 1, 100: 2, 200: 4}[s[1]])
        elif kind == "reject":
            self.record(R.COIN_REJECTED, reason="pulse too short: at most 12 ms (min 35)",
                        pulses=3)
        elif kind == "vend":
            program, ok = s[1], s[2]
            price = PROGRAMS[program]
            self.credit -= price
            self.state = R.STARTING
            self.record(R.VEND_START, program=program, price=price, amount=price)
            if ok:
                self.state = R.RUNNING
                self.record(R.VEND_RUNNING, program=program, price=price, attempt=1)
                self.state = R.CREDIT if self.credit else R.IDLE
                self.record(R.VEND_DONE, program=program, price=price)
            else:
                self.credit += price
                self.state = R.CREDIT
                self.record(R.START_FAILED, program=program, amount=price,
                            reason="washer did not confirm start")
        elif kind == "ack":
            upto = self.j.last_seq - s[1]
            self.pending = ("ack", upto)
            self.j.ack(upto)
            self.acked = upto
            self.pending = None

    def run(self, steps):
        for s in steps:
            self.step(s)


def boot(journal):
    """Boot recovery by the real vend engine (washer idle) -> (credit, state) it settles on."""
    import asyncio

    from washpay.vend.engine import VendEngine

    class Washer:
        mode = "contact"

        def busy(self):
            return False

        def door_closed(self):
            return True

        def stop(self):
            pass

    class Acceptor:
        inhibited = False

        def inhibit(self, on):
            self.inhibited = on

    class Screen:
        lines = ["", ""]

        def money(self, v):
            return str(v)

        def show(self, a, b=""):
            self.lines = [a, b]

    # a fresh event loop: tasks an earlier boot left behind (a cycle watcher) must not run
    # against this journal
    asyncio.new_event_loop()
    engine = VendEngine(CFG, journal, Washer(), Acceptor(), Screen(), clock=lambda: 1767225600)
    asyncio.run(engine.recover("power on"))
    return engine.credit, engine.state


def first_boot(image):
    """A factory-fresh board's first boot: the journal is created and records a boot."""
    mount(image)
    j = open_journal()
    boot(j)
    unmount()


# ---- one power cut
def run_to_cut(base, steps, cut, torn):
    """Run `steps` on a copy of `base` with a cut armed -> (image after, machine, cut fired)."""
    image = bytearray(base)
    flash = mount(image)
    flash.arm_cut(cut, torn)
    m = None
    fired = False
    try:
        j = open_journal()
        m = Machine(j)
        m.run(steps)
        after = bytes(image)
    except Exception:  # noqa: BLE001
        # After a cut, LittleFS may turn the unwinding into another error (a `with` whose
        # close fails replaces the PowerCut): what counts is whether the cut fired.
        if flash.cut_image is None:
            raise
        after = flash.cut_image
        fired = True
    unmount()
    return after, m, fired


def expected_boot(last):
    """What boot recovery must settle on after the record `last` (seq, type, credit, state,
    price): a vend cut off while starting gives its price back as credit."""
    credit, state = last[2], last[3]
    if state == R.STARTING:
        return credit + last[4], R.CREDIT
    if state == R.RUNNING:
        return credit, R.RUNNING
    return credit, R.CREDIT if credit else R.IDLE


def _key(r):
    return (r["type"], r["credit"], r["state"], r["amount"])


def recover_and_check(image, m, start_seq=1):
    """Reboot on `image`; check the journal against what the run saw -> (result, image).

    `m` is the run's Machine (None if the power went before it existed); start_seq is the
    newest record before the run.
    """
    errors = []
    img = bytearray(image)
    mount(img)
    try:
        j = open_journal()
    except Exception as e:  # noqa: BLE001 - reported, with the reason, to the test
        unmount()
        return {"errors": [f"journal did not open: {e!r}"]}, None
    log = m.log if m else []
    pending = m.pending if m else None
    # every stored record verifies and the sequence has no hole; the details are kept for
    # the records the run can have touched (a prefilled journal is long)
    tail_from = max(0, start_seq - 40)
    seqs = []
    stored = {}
    bad = []
    for r in j.records():
        seqs.append(r["seq"])
        if not r["ok"]:
            bad.append(r["seq"])
        if r["seq"] > tail_from:
            stored[r["seq"]] = r
    if bad:
        errors.append(f"records that do not verify: {bad}")
    if not seqs or seqs != list(range(seqs[0], seqs[-1] + 1)) or seqs[-1] != j.last_seq:
        errors.append(f"stored sequence {seqs[-5:]}, last_seq {j.last_seq}")
    lo = seqs[0] if seqs else 1
    if lo - 1 > j.synced_seq:
        errors.append(f"records below {lo} deleted, only {j.synced_seq} acknowledged")
    for seq, rtype, credit, state, amount in log:
        r = stored.get(seq)
        if seq >= lo and (r is None or _key(r) != (rtype, credit, state, amount)):
            errors.append(f"record {seq} ({rtype}) returned from append, now {r!r}")
    newest = log[-1][0] if log else start_seq
    extra = j.last_seq - newest
    if extra == 1:
        r = stored.get(j.last_seq)
        if pending is None or pending[0] == "ack" or r is None or _key(r) != pending:
            errors.append(f"record {j.last_seq} appeared but was not being written")
    elif extra != 0:
        errors.append(f"last_seq {j.last_seq} after the newest returned append {newest}")
    acked = m.acked if m else 0
    if j.synced_seq != acked and not (pending and pending[0] == "ack"):
        errors.append(f"sync cursor {j.synced_seq}, acknowledged {acked}")
    last = j.last()
    want = expected_boot((last["seq"], last["type"], last["credit"], last["state"],
                          last["price"]))
    before = j.last_seq
    credit, state = boot(j)
    if (credit, state) != want:
        errors.append(f"boot settled on {(credit, state)!r}, the journal says {want!r}")
    after_boot = [(r["seq"], r["type"]) for r in j.records(after=before)]
    if not after_boot or after_boot[-1][1] != R.BOOT or after_boot[0][0] != before + 1:
        errors.append(f"boot recovery wrote {after_boot!r}")
    out = {
        "errors": errors,
        "inflight_kept": extra == 1,
        "returned": len(log),
        "last_seq": j.last_seq,
        "synced": j.synced_seq,
        "credit": credit,
        "state": state,
        "count": j.count,
        "discarded": j.discarded,
        "first": lo,
        "records": [[r["seq"], r["type"], r["credit"], r["state"], r["amount"], r["ok"]]
                    for r in j.records(after=max(lo - 1, tail_from))],
        "groups": sorted(os.listdir(ROOT + "/seg")),
    }
    unmount()
    return out, bytes(img)


def boundary_scenario():
    """Across a directory group: records 1010 to 1040 (the segment of 1023-...
    opens group 0001), then an acknowledgement that deletes all 32 segments of group 0000
    and the directory, then more coins."""
    return [("coin", 50)] * 30 + [("ack", 3)] + [("coin", 100)] * 3


def prefilled(records, blocks):
    """A volume after a first boot and `records` coins, no cut."""
    base = blank_image(blocks)
    first_boot(base)
    mount(base)
    m = Machine(open_journal())
    for _ in range(records - 1):
        m.step(("coin", 50))
    unmount()
    return base


def sweep(start, stop, torn_modes=(0, 1), image_dir=None, customers=10, boundary=False):
    """Cut at every operation index in start..stop-1 (1 = the scenario's first flash op)."""
    if boundary:
        base = prefilled(1010, 128)
        steps = boundary_scenario()
        start_seq = 1010
    else:
        base = blank_image()
        first_boot(base)
        steps = scenario(customers)
        start_seq = 1
    for cut in range(start, stop):
        for torn in torn_modes:
            after, m, fired = run_to_cut(base, steps, cut, torn)
            out, img = recover_and_check(after, m, start_seq)
            out["cut"] = cut
            out["torn"] = torn
            out["fired"] = fired
            if image_dir and img is not None:
                path = f"{image_dir}/cut-{cut}-{torn}.bin"
                with open(path, "wb") as f:
                    f.write(img)
                out["image"] = path
            emit(out)
            if not fired:
                return  # past the end of the scenario: every later cut is the same


def count_ops(customers=10, boundary=False):
    """Flash programs and erases the scenario makes after the first boot."""
    if boundary:
        base = prefilled(1010, 128)
        steps = boundary_scenario()
    else:
        base = blank_image()
        first_boot(base)
        steps = scenario(customers)
    flash = mount(bytearray(base))
    j = open_journal()
    Machine(j).run(steps)
    unmount()
    emit({"ops": flash.programs + flash.erases, "programs": flash.programs,
          "erases": flash.erases, "records": j.last_seq})


def long_run(seed, rounds, image_dir=None):
    """Many random cuts: each round runs three customers on the surviving image with a cut
    at a random operation (every other one torn), reboots and checks, and goes on from
    there; the server acknowledges now and then so the small test flash never fills."""
    import random

    random.seed(seed)
    image = blank_image()
    first_boot(image)
    returned = 0
    cuts = 0
    out = {}
    for i in range(rounds):
        mount(bytearray(image))
        start_seq = open_journal().last_seq
        unmount()
        steps = scenario(3, random.randint(0, 9))
        after, m, fired = run_to_cut(image, steps, random.randint(1, 120), i % 2)
        cuts += fired
        out, img = recover_and_check(after, m, start_seq)
        if out["errors"]:
            out["round"] = i
            del out["records"]
            emit(out)
            return
        returned += out["returned"]
        image = img
        if out["count"] > 150:
            img = bytearray(image)
            mount(img)
            j = open_journal()
            j.ack(j.last_seq - random.randint(0, 40))
            unmount()
            image = bytes(img)
    out["records"] = len(out["records"])
    out.update({"rounds": rounds, "cuts": cuts, "returned_total": returned})
    emit(out)
    if image_dir:
        with open(image_dir + "/long.bin", "wb") as f:
            f.write(image)


# ---- a journal of every kind of record, for the interop and tamper tests
def _variety(i):
    """The i-th record of the sample: (type, fields), covering every type and field."""
    kinds = (
        (R.COIN, {"amount": 200, "pulses": 4, "credit": 200 + i, "state": R.CREDIT}),
        (R.VEND_START, {"program": "standard", "price": 350, "amount": 350,
                        "credit": i, "state": R.STARTING}),
        (R.VEND_RUNNING, {"program": "dryer", "price": 350, "attempt": 2,
                          "state": R.RUNNING, "left_s": 1800 + i}),
        (R.VEND_DONE, {"program": "standard", "price": 350, "state": R.IDLE, "credit": 0}),
        (R.START_FAILED, {"program": "heavy", "amount": 450, "credit": 450,
                          "reason": "washer did not confirm start", "state": R.CREDIT}),
        (R.COIN_REJECTED, {"reason": "gap too short: at most 12 ms (min 35) and more text",
                           "pulses": 3}),
        (R.CARD_DEBIT, {"amount": 300, "source": b"\x04\xa1\xb2\xc3\xd4\xe5\xf6",
                        "balance_before": 1000, "balance_after": 700, "card_counter": 42 + i,
                        "state": R.STARTING, "program": "quick", "price": 300}),
        (R.TOKEN_REDEEM, {"amount": 250, "source": f"tok-{i}", "program": "quick",
                          "price": 250, "state": R.STARTING}),
        (R.REMOTE_START, {"amount": 0, "source": "cmd-0123456789abcdef-too-long",
                          "program": "Wäsche60", "state": R.STARTING}),
        (R.REFUND, {"amount": -300, "source": b"\x04\xa1\xb2\xc3\xd4\xe5\xf6",
                    "source_kind": "card", "credit": 0, "state": R.IDLE}),
        (R.FAULT, {"reason": "config: programs must be a list of 1 to 8 programs",
                   "state": R.OUT_OF_ORDER}),
        (R.BOOT, {"reason": "watchdog", "recovered": True}),
    )
    rtype, fields = kinds[i % len(kinds)]
    fields = dict(fields)
    # every fifth record is written while the clock was not yet set (RTC at its 2000 reset)
    fields["t"] = 946684800 + i if i % 5 == 4 else 1767225600 + 60 * i
    return rtype, fields


def _plain(r):
    d = dict(r)
    d["source"] = bytes(d["source"]).hex()
    return d


def sample(path, records, ack=0, blocks=BLOCKS):
    """Write `records` varied records (and acknowledge up to `ack`) on a fresh volume; save
    the image to `path` (and, with `ack`, the image just before it to path.before-ack);
    emit every stored record as the firmware reads it back."""
    image = blank_image(blocks)
    mount(image)
    j = open_journal()
    for i in range(records):
        rtype, fields = _variety(i)
        j.append(rtype, **fields)
    if ack:
        with open(path + ".before-ack", "wb") as f:
            f.write(image)
        j.ack(ack)
    j = open_journal()  # read back after a remount, as after a reboot
    for r in j.records():
        emit(_plain(r))
    emit({"last_seq": j.last_seq, "count": j.count, "synced": j.synced_seq})
    unmount()
    with open(path, "wb") as f:
        f.write(image)
