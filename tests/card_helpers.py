"""Shared by the card tests: issued card images (made with the host's wallet code), the
MicroPython card harness, and the accounting every card outcome must satisfy."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, micropython_path

from host_tools import wallet as W

sys.path.insert(0, str(ROOT / "boards" / "sim"))
from sim_mfrc522 import blank_blocks  # noqa: E402  (plain Python: the simulator's card)

SITE_KEY = bytes(range(32))
CARD_KEY = W.site_card_key(SITE_KEY)
UID4 = bytes.fromhex("04a1b2c3")
UID7 = bytes.fromhex("04112233445566")
PRICE = 250  # the "quick" program of the harness


def image(uid, blocks):
    return {"uid": uid.hex(), "blocks": [blocks[16 * i : 16 * i + 16].hex() for i in range(64)]}


def issued_blocks(uid, balance, tier="", card_key=CARD_KEY):
    blocks = blank_blocks(uid)
    for b, data in W.issue_blocks(card_key, uid, balance, tier).items():
        blocks[16 * b : 16 * b + 16] = data
    return blocks


def issued_image(uid, balance, tier="", card_key=CARD_KEY):
    return image(uid, issued_blocks(uid, balance, tier, card_key))


def run_harness(tmp_path, scenarios, price=PRICE, heap="8m", timeout=600):
    """Run scenarios in tests/card_harness.py under MicroPython; returns their results."""
    spec = {"card_key": CARD_KEY.hex(), "price": price,
            "journal_keys": [os.urandom(32).hex(), os.urandom(32).hex()],
            "scenarios": scenarios}
    path = Path(tmp_path) / "card_spec.json"
    path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [micropython_path(), "-X", f"heapsize={heap}", "tests/card_harness.py", str(path)],
        capture_output=True, text=True, timeout=timeout, cwd=str(ROOT),
    )
    results = [json.loads(line[7:]) for line in proc.stdout.splitlines()
               if line.startswith("RESULT ")]
    assert proc.returncode == 0 and len(results) == len(scenarios), (
        f"harness exited {proc.returncode} after {len(results)} of {len(scenarios)} "
        f"scenarios\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return results


def card_wallet(result, uid):
    """The card's wallet after a scenario, read with the host's own code."""
    blocks = {4 + i: bytes.fromhex(h) for i, h in enumerate(result["blocks"])}
    return W.read_wallet(CARD_KEY, uid, blocks)


def journal_charged(result):
    """What the journal says the card paid: every card_debit, less those a card_cancel or a
    card_settled with amount 0 says never landed (matched by the new copy's counter)."""
    debits = {}
    for rec in result["journal"]:
        rtype, amount, counter = rec[0], rec[1], rec[3]
        if rtype == "card_debit":
            assert counter not in debits, f"two card_debit records for counter {counter}"
            debits[counter] = amount
        elif rtype == "card_cancel" or (rtype == "card_settled" and amount == 0):
            debits.pop(counter, None)
    return sum(debits.values())


def check_accounting(result, uid, opening, price=PRICE, coins=0):
    """The money rule for cards: what left the card is what the journal says, and with
    the coins inserted equals the vends started plus the credit the machine holds."""
    w = card_wallet(result, uid)
    charged = opening - w.balance
    assert all(rec[-1] for rec in result["journal"]), "a journal record does not verify"
    assert charged == journal_charged(result), (charged, result["journal"])
    assert charged + coins == price * result["starts"] + result["credit"], result
    return charged
