# A card payment, one tap: reads and verifies the card's wallet
# (docs/wallet-format.md), checks the blacklist and the balance, and pays for the selected
# program in the order the money rule needs:
#
#   read + verify -> blacklist -> balance covers the price -> journal card_debit (durable,
#   state STARTING) -> write the new copy -> read it back, compare -> start the machine
#
# A card that leaves during the write is resolved with the journal, never by guessing:
#   the WRITE command got no ACK        -> the data never left: card_cancel, no start
#   the data went out, nothing confirmed -> "Tap card again": on the same card's return, the
#                                           new copy is there (start) or the old one still is
#                                           (write the same copy again, then start)
#   the card does not come back in time, -> card_unresolved, no start; /card_pending keeps it
#   or the power goes                       and the card's next tap settles it: new copy there
#                                           -> the price becomes machine credit
# so a card is never charged twice for one vend and no vend starts unpaid.
#
# Offline risk control (config "risk", docs/pricing.md for the balance rules): failed
# payments lock a card out, a card paying too often is refused, a card short of money is
# refused. Every decision is journaled, and the journal is also what the counters are
# rebuilt from after a reset (restore_risk): pulling the plug does not end a lockout.
#
# Loaded for one tap (or once at boot: restore_risk, recover_unconfirmed) and dropped after
# (washpay.use): cp is card.py's CardPayment, which keeps the state between taps.
import time

from micropython import const

from washpay.drivers import mifare as M
from washpay.drivers.mfrc522 import CardError, Collision
from washpay.drivers.mifare import AuthFailed, CardRefused, NoCard
from washpay.journal import JournalError
from washpay.journal import records as R
from washpay.payments import wallet as W

_READ_TRIES = const(2)  # a read-back hit by noise (CRC error) is tried once more
_NOTICE_MS = const(3000)
_RISK_CARDS = const(16)  # cards whose failures / payments are remembered (RAM: bounded)
# Records read back at boot to rebuild the risk counters: two segments. A paid cycle writes
# three or four records, so 62 reach back over the default windows (10 min, 1 h) on a busy
# machine; pushing a lockout out of reach takes 62 journaled events within the lockout, each
# of them evidence for the server; and reading them costs about what boot recovery reads.
_RISK_SCAN = const(62)
_ONE_COPY = "MAC failure (one copy)"  # card_fraud that is no failed payment: the card pays
_LOCKOUT = "lockout:"  # the start of the card_refused reason that begins a lockout
# card_refused reasons of a card short of money (the tier's rules first); never a failure
_MIN_BALANCE = "min balance "
_OVERDRAFT = "overdraft limit "
_LOW_BALANCE = "low balance"


def _low_balance(text):
    """A balance that is too low, in 16 columns: "Low balance 1.20", "Balance -12.50"."""
    return ("Low balance " if len(text) < 5 else "Balance ") + text



# ---- a tap
async def tap(cp, t0):
    """A card answered card.py's poll (at ticks_us t0): select it, then on_tap()."""
    r = cp.reader
    try:
        sak = M.select(r)
    except Collision:
        cp.say("One card only", "please")
        return
    if not sak & 0x08 or sak & 0x10:
        cp.say("Card type not", "accepted")
        return
    await on_tap(cp, bytes(r.uid[: r.uid_len]), t0)


async def on_tap(cp, uid, t0):
    w = cp.waiting
    if w is not None:
        if uid != w["uid"]:
            cp.say("Tap the card", "you paid with", hold=True)
            return
        await _finish_waiting(cp, w, t0)
        return
    if uid == cp._recent_uid and time.ticks_diff(time.ticks_ms(), cp._recent_ms) < \
            cp.repeat_ms:
        return  # the same card again right after paying: it is not charged twice
    until = cp._locked.get(uid)
    if until is not None:
        if time.ticks_diff(until, time.ticks_ms()) > 0:
            _refuse(cp, uid, R.CARD_REFUSED, "locked out", "Card locked", "try later")
            return
        del cp._locked[uid]
    slot = cp.pending.find(uid)
    if slot >= 0 and not _settle(cp, uid, slot):
        return
    settled = slot >= 0  # a bad copy on it may be our own torn write
    e = cp.engine
    why = e.refuse_reason()
    if why:
        cp.say(why, "")
        return
    if not cp.journal.accepts_payments:
        cp.say("Cards not taken", "sync required")
        return
    program = e.program
    if e.credit >= e.price_of(program):
        cp.say("Credit covers it", "press START")
        return
    try:
        mac, a, b = _read_wallet(cp, uid)
    except AuthFailed:
        _foreign_or_blank(cp, uid)
        return
    head = cp._head
    i = W.current(a, b)
    if i < 0:
        _refuse(cp, uid, R.CARD_FRAUD, "MAC failure", "Card invalid", "see staff")
        return
    cur = a if i == 0 else b
    balance, counter, _ = cur
    if (b if i == 0 else a) is None and not settled:
        # one copy fails its MAC: a write torn elsewhere, or an edit; the server knows
        _journal(cp, R.CARD_FRAUD, uid, reason=_ONE_COPY,
                      card_counter=counter, balance_before=balance)
    seen = cp.seen.get(uid)
    if counter < seen:
        _refuse(cp, uid, R.CARD_FRAUD, "counter rollback %d<%d" % (counter, seen),
                     "Card refused", "see staff", card_counter=counter)
        return
    listed = cp.blacklist.lookup(uid)
    if listed is not None:
        text = cp.blacklist.describe(listed)
        # the journal keeps the reason (25 bytes); the server has the list's dates
        _refuse(cp, uid, R.CARD_REFUSED, "blacklist: " + text.split(" ", 1)[0],
                     "Card blocked", text)
        return
    cp.seen.note(uid, counter)
    # the card's tier (the server's override for its UID, else its header, under the
    # MAC) may restrict programs, discount the price, ask for a higher balance or allow
    # an overdraft (docs/pricing.md); a tier the table does not have gives no rule
    tier = cp.tiers.lookup(uid) if cp.tiers is not None else None
    if tier is None:
        tier = W.parse_header(head)[2] or None
    if e.prices.allowed(program["name"], tier):  # a reason too long for 16 columns
        _refuse(cp, uid, R.CARD_REFUSED, "tier %s: not %s" % (tier, program["name"]),
                     "Not for card", "choose another")
        return
    price = e.price_of(program, tier)
    # the machine's credit pays first, the card the rest (docs/pricing.md): the coins
    # already in are never paid a second time by the card
    used = min(e.credit, price)
    pay = price - used
    why = _short_of(cp, balance, pay, tier)
    if why:
        _refuse_balance(cp, uid, why, balance, counter, price, pay, program["name"])
        return
    if counter >= W.COUNTER_MAX:
        cp.say("Card worn out", "reissue card")
        return
    limit = cp.risk.get("velocity", 0)
    if limit and _recent(cp, cp._pays, uid, cp.risk["velocity_window_ms"]) >= limit:
        _refuse(cp, uid, R.CARD_REFUSED, "velocity: %d in %ds" % (
            limit, cp.risk["velocity_window_ms"] // 1000), "Too many uses", "try later")
        return
    # -- the payment
    target = W.COPY_B if i == 0 else W.COPY_A
    seq = cp.journal.last_seq + 1  # the card_debit record's number: the writer tag
    after = balance - pay
    W.pack_copy(cp._new, mac, target, head, after, counter + 1, seq & 0xFF)
    try:
        # tier: a timed program buys one step at the card's price (docs/pricing.md);
        # amount: what the card pays, price - amount: what the credit pays
        got = e.commit_vend(R.CARD_DEBIT, price, program=program, tier=tier, amount=pay,
                            from_credit=used, source=uid, balance_before=balance,
                            balance_after=after, card_counter=counter + 1)
    except JournalError as err:
        e.cancel_vend(None, credit_back=used)
        e.update_inhibit()
        cp.say("Cards not taken", "sync required")
        cp.fault = str(err)
        return
    w = {"uid": uid, "counter": counter + 1, "tag": seq & 0xFF, "before": balance,
         "after": after, "price": price, "pay": pay, "used": used, "seq": got,
         "target": target,
         "new": bytes(cp._new), "deadline": 0}
    if got != seq:  # the journal numbered it otherwise: the tag would not match it
        _cancel(cp, w, "journal sequence moved")
        return
    await _write_and_start(cp, w, t0)

def _read_wallet(cp, uid):
    """Authenticate with key B and read blocks 4..6. Returns (MAC key, copy 5, copy 6),
    each copy (balance, counter, tag) or None if it does not verify."""
    r = cp.reader
    M.auth(r, W.TRAILER_BLOCK, cp.keys.key_b(uid), True)
    head = cp._head
    M.read_block(r, W.HEADER_BLOCK, head)
    M.read_block(r, W.COPY_A, cp._copies[0])
    M.read_block(r, W.COPY_B, cp._copies[1])
    _, site, _ = W.parse_header(head)
    if site != cp.keys.site_id:
        raise W.WalletError("card of another site")
    mac = cp.keys.mac_key(uid)
    return (mac, W.check_copy(mac, W.COPY_A, head, cp._copies[0]),
            W.check_copy(mac, W.COPY_B, head, cp._copies[1]))

async def _write_and_start(cp, w, t0):
    r = cp.reader
    try:
        M.write_block(r, w["target"], w["new"])
    except NoCard:  # the WRITE was not acknowledged: its data never left the reader
        _cancel(cp, w, "card left before the write")
        return
    except CardRefused:  # NAK: the card did not write
        _cancel(cp, w, "card refused the write")
        return
    except CardError:
        _wait_for_card(cp, w)  # the data went out; whether it landed is unknown
        return
    for _ in range(_READ_TRIES):
        try:
            M.read_block(r, w["target"], cp._check)
        except NoCard:
            break
        except CardError:
            continue
        if cp._check == w["new"]:
            await _start(cp, w, t0)
            return
        break
    _wait_for_card(cp, w)

async def _start(cp, w, t0):
    cp.waiting = None
    e = cp.engine
    r = cp.reader
    r.halt()
    cp.seen.note(w["uid"], w["counter"])
    cp._recent_uid = w["uid"]
    cp._recent_ms = time.ticks_ms()
    _note(cp, cp._pays, w["uid"])
    cp.counts["paid"] += 1
    cp.last = {"uid": w["uid"].hex(), "balance": w["after"], "counter": w["counter"],
                 "result": "paid %d" % w["pay"]}
    cp.timings["card_to_relay_us"] = time.ticks_diff(time.ticks_us(), t0)
    cp.timings["exchanges"] = r.exchanges - cp._ex0
    ok = await e.drive()
    cp.seen.save()
    if ok:
        m = e.screen.money
        low = w["after"] < cp.low_balance
        if w["used"]:  # card + credit, and the card's balance (16 columns)
            e.notice("Paid %s+%s" % (m(w["pay"]), m(w["used"])),
                     _low_balance(m(w["after"])) if low else "balance " + m(w["after"]),
                     _NOTICE_MS)
        elif low:
            e.notice("Low balance", "left " + m(w["after"]), _NOTICE_MS)
        else:
            e.notice("Paid " + m(w["pay"]), "balance " + m(w["after"]), _NOTICE_MS)

# ---- torn payments
def _cancel(cp, w, why):
    cp.waiting = None
    cp.counts["cancelled"] += 1
    e = cp.engine
    e.cancel_vend(R.CARD_CANCEL, credit_back=w["used"], amount=w["pay"],
                  source=w["uid"], reason=why, balance_before=w["before"],
                  balance_after=w["after"], card_counter=w["counter"])
    e.update_inhibit()
    cp.last = {"uid": w["uid"].hex(), "result": "not charged: " + why}
    cp.say("Not charged", "tap card again")

def _wait_for_card(cp, w):
    w["deadline"] = time.ticks_add(time.ticks_ms(), cp.retap_ms)
    if cp.waiting is None:
        cp.counts["torn"] += 1
    cp.waiting = w
    cp.last = {"uid": w["uid"].hex(), "result": "torn write: waiting for the card"}
    cp.engine.show("Tap card again", "to finish paying")

async def _finish_waiting(cp, w, t0):
    mac, a, b = _read_wallet(cp, w["uid"])
    outcome = W.settle(a, b, w["counter"], w["after"], w["tag"])
    if outcome == W.LANDED:
        await _start(cp, w, t0)
        return
    i = W.current(a, b)
    cur = None if i < 0 else (a if i == 0 else b)
    if (outcome == W.NOT_LANDED and cur is not None and cur[0] == w["before"]
            and cur[1] == w["counter"] - 1):
        await _write_and_start(cp, w, t0)  # the same copy again: one debit, not two
        return
    cp.waiting = None
    if outcome == W.NOT_LANDED:  # the card moved on without our copy: never charged
        _cancel(cp, w, "card changed meanwhile")
        return
    # paid elsewhere since, more than once: the card cannot tell; the server settles
    _unresolved(cp, w, "card moved on: server", "unresolved: the server settles",
                     "ask staff")

def give_up(cp, w):
    """The card did not come back: no vend; its next tap settles the payment."""
    cp.waiting = None
    cp.pending.put(w["uid"], w["counter"], w["tag"], w["before"], w["after"], w["pay"],
                     w["seq"])
    _unresolved(cp, w, "card gone during the write", "unresolved: settled at next tap",
                     "tap card to check")

def _unresolved(cp, w, reason, result, hint):
    """No vend for a card payment whose write was not confirmed: one card_unresolved
    record, nothing charged as machine credit."""
    cp.counts["unresolved"] += 1
    e = cp.engine
    e.cancel_vend(R.CARD_UNRESOLVED, credit_back=w["used"], amount=w["pay"],
                  source=w["uid"], balance_before=w["before"], balance_after=w["after"],
                  card_counter=w["counter"], reason=reason)
    e.update_inhibit()
    cp.last = {"uid": w["uid"].hex(), "result": result}
    cp.say("Not started", hint)

def recover_unconfirmed(cp, last):
    """Boot recovery found a card_debit in STARTING: the card write was never confirmed
    (or was, and the relay never moved). Keep it for the card's next tap; the machine
    credit it had taken (price - amount) is credit again, the card's part is not."""
    uid = last["source"]
    pay = last["amount"]
    cp.pending.put(uid, last["card_counter"], last["seq"] & 0xFF, last["balance_before"],
                     last["balance_after"], pay, last["seq"])
    cp.counts["unresolved"] += 1
    cp.engine.cancel_vend(R.CARD_UNRESOLVED, credit_back=last["price"] - pay,
                            amount=pay, source=uid,
                            balance_before=last["balance_before"],
                            balance_after=last["balance_after"],
                            card_counter=last["card_counter"],
                            reason="power lost during payment", recovered=True)

def _settle(cp, uid, slot):
    """The card of an unresolved payment is back. True: go on with this tap as a
    payment; False: the tap is used up (the price became credit)."""
    counter, tag, before, after, price, _ = cp.pending.get(slot)
    mac, a, b = _read_wallet(cp, uid)
    outcome = W.settle(a, b, counter, after, tag)
    # forget it first: a power cut after this loses the settlement (the journal's
    # card_unresolved stays for the server), it can never repeat it
    cp.pending.drop(slot)
    cp.counts["settled"] += 1
    e = cp.engine
    fields = {"source": uid, "balance_before": before, "balance_after": after,
              "card_counter": counter}
    if outcome == W.LANDED:
        e.add_credit(R.CARD_SETTLED, price, reason="payment had landed", **fields)
        cp.seen.note(uid, counter)
        cp.last = {"uid": uid.hex(), "result": "settled: credit %d" % price}
        cp.say("Paid earlier", "press START")
        return False
    why = "payment had not landed" if outcome == W.NOT_LANDED else "card moved on: server"
    _journal(cp, R.CARD_SETTLED, uid, reason=why, amount=0, balance_before=before,
                  balance_after=after, card_counter=counter)
    return True

# ---- cards that are not ours
def _foreign_or_blank(cp, uid):
    """Key B did not open the wallet (the card fell back to idle): ask it with the public
    read key, then the transport key, what it is."""
    r = cp.reader
    try:
        M.activate(r, True)
        M.auth(r, W.TRAILER_BLOCK, W.key_a(uid))
        M.read_block(r, W.HEADER_BLOCK, cp._head)
        _, site, _ = W.parse_header(cp._head)
    except AuthFailed:
        try:
            M.activate(r, True)
            M.auth(r, W.TRAILER_BLOCK, W.TRANSPORT_KEY)
            cp.say("Card not issued", "ask staff")
        except CardError:
            cp.say("Card unknown", "")
        return
    except W.WalletError:
        cp.say("Card unknown", "")
        return
    if site != cp.keys.site_id:
        _refuse(cp, uid, R.CARD_FRAUD, "foreign site " + site.hex(), "Card of another",
                     "site: not taken")
    else:
        _refuse(cp, uid, R.CARD_FRAUD, "key B refused", "Card refused", "see staff")

# ---- journal
def _journal(cp, rtype, uid, **fields):
    e = cp.engine
    if uid is not None:
        fields["source"] = uid
    try:
        return cp.journal.append(rtype, credit=e.credit, state=e.state, **fields)
    except JournalError as err:
        cp.fault = str(err)
        return None

# ---- the balance
def _short_of(cp, balance, price, tier):
    """Why `balance` does not pay `price` on a card of `tier`, or None. The tier's rules
    come first (docs/pricing.md): the reason names the one that refused."""
    prices = cp.engine.prices
    m = cp.engine.screen.money
    least = prices.min_balance(tier)
    if least and balance < least:  # none set: a card in its overdraft pays on (floor)
        return _MIN_BALANCE + m(least)
    # an overdraft tier may go below zero, down to its limit; the next top-up settles it
    floor = prices.floor_balance(tier)
    if balance - price >= floor:
        return None
    return (_OVERDRAFT + m(floor)) if floor < 0 else _LOW_BALANCE

def _refuse_balance(cp, uid, why, balance, counter, price, pay, name):
    """Too little money: said at every tap; journaled (card_refused, the rule in the
    reason) at most once per card per fail_window_ms, so that an empty card tapped ten
    times writes one record. Never a failed payment: no lockout comes of it."""
    cp.counts["refused"] += 1
    cp.last = {"uid": uid.hex(), "balance": balance, "counter": counter,
                 "result": "low balance", "reason": why}
    if not _recent(cp, cp._shorts, uid, cp.risk.get("fail_window_ms", 0)):
        if _journal(cp, R.CARD_REFUSED, uid, reason=why, balance_before=balance,
                         price=price, amount=pay, card_counter=counter,
                         program=name) is not None:
            _note(cp, cp._shorts, uid)
    m = cp.engine.screen.money
    if why.startswith(_MIN_BALANCE):  # 4.99 covers a 3.00 cycle: say what is missing
        line2 = "min %s to pay" % why[len(_MIN_BALANCE):]
    elif pay < price:  # the credit pays part: what the card would have to pay
        line2 = "%s +%s" % (name, m(pay))
    else:
        line2 = "%s costs %s" % (name, m(price))
    cp.say(_low_balance(m(balance)), line2)

# ---- risk control: per-card counts over a sliding window, in RAM, rebuilt at boot
def _recent(cp, table, uid, window_ms):
    """How many events `table` holds for `uid` within the last window_ms."""
    now = time.ticks_ms()
    times = [t for t in table.get(uid, ()) if time.ticks_diff(now, t) < window_ms]
    if times:
        table[uid] = times
    else:
        table.pop(uid, None)
    return len(times)

def _note(cp, table, uid):
    if uid not in table and len(table) >= _RISK_CARDS:
        table.pop(next(iter(table)))  # the board forgets a card rather than the heap
    table.setdefault(uid, []).append(time.ticks_ms())

def _failed(cp, uid):
    """One failed payment by `uid`; the fail_limit-th in the window locks it out."""
    limit = cp.risk.get("fail_limit", 0)
    if not limit:
        return False
    window = cp.risk["fail_window_ms"]
    _recent(cp, cp._fails, uid, window)
    _note(cp, cp._fails, uid)
    if len(cp._fails[uid]) < limit:
        return False
    del cp._fails[uid]
    if len(cp._locked) >= _RISK_CARDS:
        cp._locked.pop(next(iter(cp._locked)))
    cp._locked[uid] = time.ticks_add(time.ticks_ms(), cp.risk["card_lockout_ms"])
    _journal(cp, R.CARD_REFUSED, uid, reason="%s %d fails in %ds" % (
        _LOCKOUT, limit, window // 1000))
    return True

def restore_risk(cp, now=None):
    """Rebuild the risk counters from the journal after a reset (a power cut, the
    watchdog, a pulled plug), so that a reset neither ends a lockout nor clears a card's
    failures, payments or balance refusal: call it once at boot, after boot recovery
    (app.py), before the first tap. It writes nothing: the journal already holds each
    event with its wall time `t` and the card's UID as source. `now`: the wall clock
    (time.time(); tests pass one).

    Reads back from the newest record until one is older than the longest window
    (fail_window_ms, card_lockout_ms, velocity_window_ms) or _RISK_SCAN records. An age
    is never taken as older than it is, so nothing expires early:
    - age = reference - t, in whole seconds less one (the clock's resolution), 0 if
      negative; each age becomes a ticks_ms in the past;
    - the reference is the clock now, or the newest record's time if that is later:
      the clock went back (an ESP32 that lost power starts again in 2000), and the
      board is at least as late as its last record; the time it was off is not known
      and counts as none;
    - a record written before the clock was set (clock_ok False) still counts: as
      recent as the record after it, or by its own `t` while the clock is unset now
      too and no record after it had a set clock (one unset clock, which a soft or
      watchdog reset keeps running)."""
    risk = cp.risk
    failing = risk.get("fail_limit", 0)
    velocity = risk.get("velocity", 0)
    fail_ms = risk.get("fail_window_ms", 0)  # also the balance refusals' quiet time
    lock_ms = risk.get("card_lockout_ms", 0) if failing else 0
    pay_ms = risk.get("velocity_window_ms", 0) if velocity else 0
    horizon = max(fail_ms, lock_ms, pay_ms)
    t0 = time.ticks_ms()
    if now is None:
        now = time.time()
    now = int(now)  # a float on the unix port
    unset = not cp.journal.trusts(now)  # untrusted times compare with now's
    found = {"records": 0, "fails": 0, "pays": 0, "locked": 0, "ms": 0}
    cleared = []  # cards whose newest lockout is behind us: it cleared older failures
    undone = []  # (uid, counter) of card payments cancelled or unresolved: not paid
    ref = None  # the reference: now, or the newest record's time if later
    newer = now  # the time taken for the record after the one at hand
    from washpay import forget
    from washpay.journal.recent import recent

    records = recent(cp.journal, _RISK_SCAN)
    forget("washpay.journal.recent")  # boot only: the function is held while it runs
    try:
        for r in records:
            found["records"] += 1
            if r["clock_ok"]:
                t = r["t"]
                unset = False
            else:
                t = r["t"] if unset else newer
            if ref is None:
                ref = max(now, t)
            newer = t
            age = max(0, ref - t - 1) * 1000
            if age > horizon:
                break
            rtype = r["type"]
            uid = r["source"]
            if rtype == R.CARD_FRAUD:
                if failing and age < fail_ms and r["reason"] != _ONE_COPY and \
                        uid not in cleared:
                    found["fails"] += _past(cp, cp._fails, uid, t0, age, failing)
            elif rtype == R.CARD_REFUSED:
                why = r["reason"]
                if why.startswith(_LOCKOUT):
                    if uid not in cleared:
                        cleared.append(uid)
                        if age < lock_ms and (uid in cp._locked or
                                              len(cp._locked) < _RISK_CARDS):
                            cp._locked[uid] = time.ticks_add(t0, lock_ms - age)
                            found["locked"] += 1
                elif why.startswith(_MIN_BALANCE) or why.startswith(_OVERDRAFT) or \
                        why.startswith(_LOW_BALANCE):
                    if age < fail_ms:
                        _past(cp, cp._shorts, uid, t0, age, 1)
            elif rtype in (R.CARD_CANCEL, R.CARD_UNRESOLVED):
                undone.append((uid, r["card_counter"]))
            elif rtype == R.CARD_DEBIT:
                if velocity and age < pay_ms and (uid, r["card_counter"]) not in undone:
                    found["pays"] += _past(cp, cp._pays, uid, t0, age, velocity)
    finally:
        records.close()
    found["ms"] = time.ticks_diff(time.ticks_ms(), t0)
    cp.restored = found
    return found

def _past(cp, table, uid, t0, age, most):
    """Note an event `age` ms before t0 for `uid`, found reading the journal newest
    first: at most `most` per card (more change no decision) and _RISK_CARDS cards (the
    most recent). 1 if it was noted."""
    times = table.get(uid)
    if times is None:
        if len(table) >= _RISK_CARDS:
            return 0
        times = table[uid] = []
    if len(times) >= most:
        return 0
    times.insert(0, time.ticks_add(t0, -age))  # oldest first, as _note leaves them
    return 1

def _refuse(cp, uid, rtype, reason, line1, line2, **fields):
    cp.counts["refused"] += 1
    cp.last = {"uid": uid.hex(), "result": reason}
    now = time.ticks_ms()
    # a failure that counts toward the lockout is journaled even when it repeats the last
    # refusal: restore_risk() counts failures from the journal (fail_limit of them per
    # card and lockout at most, so the journal cannot be flooded this way)
    fails = rtype == R.CARD_FRAUD and cp.risk.get("fail_limit", 0)
    q = cp._quiet
    if fails or q is None or q[0] != uid or q[1] != reason or \
            time.ticks_diff(now, q[2]) >= cp.repeat_ms:
        _journal(cp, rtype, uid, reason=reason, **fields)
        cp._quiet = (uid, reason, now)
    if fails and _failed(cp, uid):  # journaled after the failure itself
        line1, line2 = "Card locked", "try later"
    cp.say(line1, line2)
