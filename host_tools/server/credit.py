"""`washpay server cards`: each card's credit score from the ledger, and the tier an
operator's policy gives it (docs/pricing.md, "Credit score and tiers", is the definition).

Over a window (default 90 days, by each record's wall time), per card UID:

- cycles: the card's `card_debit` records, less those a `card_cancel` or `card_unresolved`
  of the same board and card counter says never paid a cycle;
- not collected: `not_collected` records against the card (the laundry of a cycle it paid
  was left in the machine);
- score = 100 - 20 x not collected, at least 0.

A policy (JSON) maps scores to tiers: the tier of the lowest threshold the score is below;
a score at or above every threshold gets no override. `washpay server command tiers
--from-scores` pushes the result to a board (docs/sync.md, action 8).

Verified records only; both SQLite and PostgreSQL (one portable query).
"""

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from host_tools.server.commands import CommandError, tier_name

FULL = 100
PENALTY = 20  # points per cycle whose laundry was not collected
WINDOW_DAYS = 90
POLICY_KEYS = ("window_days", "tiers")

# A record's wall time: the board's clock when it was trusted, else when the server got it
# (the event was no later). The cycles: debits that no cancel or unresolved record undoes
# (the board journals those with the UID as source but no source kind; "card" is allowed
# too, and the IN keeps the records_card index usable).
_QUERY = """
SELECT r.source, r.type, count(*) FROM records r
WHERE r.verified = 1 AND r.source_kind = 'card' AND r.source <> ''
  AND r.type IN ('card_debit', 'not_collected')
  AND (CASE WHEN r.clock_ok = 1 THEN r.t ELSE r.received_at END) >= ?
  AND (r.type = 'not_collected' OR NOT EXISTS (
    SELECT 1 FROM records c
    WHERE c.source_kind IN ('', 'card') AND c.source = r.source
      AND c.card_counter = r.card_counter
      AND c.device = r.device AND c.verified = 1
      AND c.type IN ('card_cancel', 'card_unresolved')))
GROUP BY r.source, r.type
"""


class PolicyError(ValueError):
    """A policy file that cannot be used; the message says what to fix."""


def score(not_collected):
    """The credit score of a card with this many cycles not collected in the window."""
    return max(0, FULL - PENALTY * not_collected)


def parse_policy(doc, where="policy"):
    """{"window_days": 90, "tiers": [{"below": 40, "tier": "late"}, ...]} -> a policy dict
    with the thresholds in ascending order."""
    if not isinstance(doc, dict):
        raise PolicyError(f"{where}: a JSON object with \"window_days\" and \"tiers\"")
    unknown = sorted(set(doc) - set(POLICY_KEYS))
    if unknown:
        raise PolicyError(f"{where}: unknown key {unknown[0]!r} (keys: window_days, tiers)")
    days = doc.get("window_days", WINDOW_DAYS)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3650:
        raise PolicyError(f"{where}: window_days must be a whole number of days, 1 to 3650")
    rules = doc.get("tiers", [])
    if not isinstance(rules, list):
        raise PolicyError(f"{where}: tiers must be a list of {{\"below\": N, \"tier\": NAME}}")
    out = []
    for i, r in enumerate(rules):
        at = f"{where}: tiers[{i}]"
        if not isinstance(r, dict) or set(r) != {"below", "tier"}:
            raise PolicyError(f"{at} must be {{\"below\": N, \"tier\": NAME}}")
        below = r["below"]
        if not isinstance(below, int) or isinstance(below, bool) or not 1 <= below <= FULL:
            raise PolicyError(f"{at}.below must be a score from 1 to {FULL}")
        if not isinstance(r["tier"], str):
            raise PolicyError(f"{at}.tier must be a tier name")
        try:
            tier_name(r["tier"])
        except CommandError as e:
            raise PolicyError(f"{at}: {e}") from None
        if any(b == below for b, _ in out):
            raise PolicyError(f"{at}: two tiers below {below}")
        out.append((below, r["tier"]))
    return {"window_days": days, "tiers": sorted(out)}


def load_policy(path):
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise PolicyError(f"cannot read policy {path}: {e.strerror}") from None
    except ValueError as e:
        raise PolicyError(f"policy {path} is not JSON: {e}") from None
    return parse_policy(doc, str(path))


def tier_for(value, policy):
    """The tier the policy gives a score: the lowest threshold it is below; None above all."""
    for below, tier in (policy or {}).get("tiers", ()):
        if value < below:
            return tier
    return None


def scores(store, window_days=WINDOW_DAYS, now=None):
    """[{uid, cycles, not_collected, score}] of every card with a cycle or a not-collected
    record in the window [now - window_days, ...), lowest score first."""
    now = time.time() if now is None else now
    since = now - window_days * 86400
    counts = {}
    for uid, rtype, n in store.query(_QUERY, (since,)):
        c = counts.setdefault(uid, {"uid": uid, "cycles": 0, "not_collected": 0})
        c["cycles" if rtype == "card_debit" else "not_collected"] += int(n)
    cards = list(counts.values())
    for c in cards:
        c["score"] = score(c["not_collected"])
    cards.sort(key=lambda c: (c["score"], c["uid"]))
    return cards


def build(store, policy=None, now=None):
    """The report (what --json prints): the window, the policy, each card with its tier."""
    now = time.time() if now is None else now
    days = policy["window_days"] if policy else WINDOW_DAYS
    cards = scores(store, days, now)
    for c in cards:
        c["tier"] = tier_for(c["score"], policy)
    return {"window_days": days, "since": now - days * 86400, "now": now,
            "score": f"{FULL} - {PENALTY} per cycle not collected, at least 0",
            "policy": [{"below": b, "tier": t} for b, t in policy["tiers"]] if policy
            else None,
            "cards": cards}


def board_tiers(store, device):
    """The overrides `device` may hold, as far as the server knows: every tiers command
    sent to it, in order, except those it refused (a command without a reply may have
    been executed). {uid hex: tier name}."""
    held = {}
    rows = store.query(
        "SELECT args, status FROM commands WHERE device = ? AND kind = 'tiers' "
        "ORDER BY created", (device,))
    for args, status in rows:
        if status in ("refused", "invalid"):
            continue
        try:
            tiers = json.loads(args or "{}").get("tiers") or {}
        except (ValueError, AttributeError):
            continue
        for uid, tier in tiers.items():
            if tier is None:
                held.pop(uid, None)
            else:
                held[uid] = tier
    return held


def plan(store, device, policy, now=None):
    """What `tiers --from-scores` sends `device`: {uid: tier} for every card the policy
    gives a tier, and {uid: None} (clear) for each card the board may hold an override
    for that the policy no longer gives one."""
    rep = build(store, policy, now)
    want = {c["uid"]: c["tier"] for c in rep["cards"] if c["tier"]}
    for uid in board_tiers(store, device):
        if uid not in want:
            want[uid] = None
    return want


def _day(t):
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d")


def format_text(rep, out):
    out.write(f"\nCards: credit score over {rep['window_days']} days (since "
              f"{_day(rep['since'])}; score {rep['score']})\n")
    if rep["policy"] is None:
        out.write("  (no policy: --policy FILE gives each score its tier)\n")
    if not rep["cards"]:
        out.write("  (no card paid a cycle or left laundry in the window)\n")
        return
    header = ["uid", "cycles", "not collected", "score", "tier"]
    rows = [[c["uid"], str(c["cycles"]), str(c["not_collected"]), str(c["score"]),
             c["tier"] or "-"] for c in rep["cards"]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        out.write("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                  .rstrip() + "\n")


def format_json(rep, out):
    json.dump(rep, out, indent=1)
    out.write("\n")
