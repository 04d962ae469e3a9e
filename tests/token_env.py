"""Helpers of the QR token / remote-start tests: firmware modules under CPython (with the
shims), the vectors of docs/token-format.md and docs/remote-start.md read from the pages
themselves, a simulated board with its site key, and the board's journal read back from its
flash file with the host's independent decoder."""

import re
import sys
import time
from pathlib import Path

from host_tools import journal as J
from host_tools import keys as K
from host_tools import token as T

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOCS = ROOT / "docs"
for _path in (HERE / "shims", ROOT / "firmware"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

SITE_KEY = bytes(range(32))
DEVICE = "sim-0001"


def doc_token_vectors():
    """(token id, issued, expires, amount, program, text) rows of token-format.md."""
    rows = []
    for line in (DOCS / "token-format.md").read_text().splitlines():
        m = re.match(r"\| `([0-9a-f]{16})` \| (\d+) \| (\d+) \| (\d+) \| `(\w+)` "
                     r"\| `(WP:[A-Z2-7]+)` \|", line)
        if m:
            tid, issued, expires, amount, program, text = m.groups()
            rows.append((bytes.fromhex(tid), int(issued), int(expires), int(amount), program,
                         text))
    assert rows, "token-format.md has no vector table"
    return rows


def doc_command_vector():
    text = (DOCS / "remote-start.md").read_text()
    m = re.search(r"## Vector.*?```\n([0-9a-f]+)\n```", text, re.S)
    assert m, "remote-start.md has no vector"
    return bytes.fromhex(m.group(1))


def doc_key(name):
    """A key of docs/keys.md's test vector table, e.g. "token key"."""
    for line in (DOCS / "keys.md").read_text().splitlines():
        m = re.match(r"\| " + re.escape(name) + r" \| `([0-9a-f]{64})` \|", line)
        if m:
            return bytes.fromhex(m.group(1))
    raise AssertionError(f"keys.md has no {name}")


def secret(device=DEVICE, site_key=SITE_KEY):
    return K.device_secret(site_key, device)


def token_key(device=DEVICE, site_key=SITE_KEY):
    return K.token_key(secret(device, site_key))


def command_key(device=DEVICE, site_key=SITE_KEY):
    return K.command_key(secret(device, site_key))


def site_key_of(state):
    return K.load_site_key(Path(state) / "site.key")


def issue(state, program="quick", ttl=1800, device=DEVICE, **kw):
    """A token for the simulated board in `state` (its site key), issued now by default."""
    text, _ = T.issue_token(site_key_of(state), device, program, ttl, **kw)
    return text


def journal_records(state, device=DEVICE):
    """Every journal record of the board, from its flash file, as decoded and verified by
    host_tools.journal (an independent reading of the format). Read while the board is off
    or idle: the file is the flash as the board left it."""
    snaps = J.load_inputs([Path(state) / "flash.bin"])
    report = J.verify(snaps, J.Keys(site_key_of(state), device))
    assert report.ok, report.summary()
    return [r.fields for r in report.records]


def wait_display(sim, text, timeout=5.0):
    return sim.wait_for(lambda s: text in s["display"], timeout=timeout,
                        what=f"{text!r} on the display")


def scan(sim, text, timeout=6.0):
    """Hold `text` up to the scanner until the module sends it (it holds back a code it sent
    within its same-code delay, as a real GM65 does)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = sim.call("qr", text=text)
        if reply.get("sent") or "same-code delay" not in reply.get("why", ""):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert reply.get("sent"), reply
    return reply


def settle(sim, timeout=20.0):
    """Wait until the machine is idle (or holds credit) and shows its idle screen again."""
    return sim.wait_for(
        lambda s: s["state"] in ("idle", "credit")
        and s["firmware"]["lines"][0].startswith(("Insert coins", "Credit ")),
        timeout=timeout, what="the idle screen")


def wait_scanner(sim, timeout=20.0):
    """Wait for the board to be up with its scanner probed and configured."""
    return sim.wait_for(
        lambda s: ((s.get("firmware") or {}).get("qr") or {}).get("scanner", {}).get("reading"),
        timeout=timeout, what="the QR scanner to be configured")


def qr_status(sim):
    return sim.status()["firmware"]["qr"]


def now():
    return int(time.time())
