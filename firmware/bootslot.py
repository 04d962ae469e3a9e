# The loader (docs/ota.md): picks the slot that boots, counts trial boots and goes back to
# the previous slot when a new version does not confirm itself healthy. It is installed
# with the factory firmware and never replaced by an update, so it is small, imports
# nothing of washpay, and every state of its one file, /slot.json, has a test.
import json
import os
import sys

TRIAL_BOOTS = 3  # boots a new version gets to confirm itself healthy
TRIAL_S = 300  # seconds a trial boot gets (the pointer's trial_s overrides it)
_SLOTS = ("a", "b", "base")
_state = None  # the pointer as this boot read and wrote it
_root = ""


def fresh():
    return {"run": "base", "prev": None, "prev_version": None, "trial": False, "boots": 0,
            "trial_s": TRIAL_S, "version": None, "stage": None, "note": None}


def complete(slot, root=""):
    """True if `slot` can boot: base always; a or b once its package is there."""
    if slot == "base":
        return True
    try:
        return os.stat("%s/slot_%s/files/washpay" % (root, slot))[0] & 0x4000 != 0
    except OSError:
        return False


def valid(p):
    if not isinstance(p, dict) or p.get("run") not in _SLOTS:
        return False
    if p.get("prev") not in _SLOTS + (None,) or p.get("prev") == p["run"]:
        return False
    if type(p.get("trial")) is not bool or type(p.get("boots")) is not int:  # noqa: E721
        return False
    s = p.get("stage")
    return s is None or isinstance(s, dict) and s.get("slot") in ("a", "b") \
        and s["slot"] != p["run"]


def read(root=""):
    """The pointer; fresh() when there is none; ValueError when the file is not one."""
    try:
        with open(root + "/slot.json") as f:
            text = f.read(1025)
    except OSError:
        return fresh()
    doc = json.loads(text)  # ValueError when torn or garbled
    if len(text) > 1024 or not isinstance(doc, dict):
        raise ValueError("not a slot pointer")
    p = fresh()
    p.update(doc)
    if not valid(p):
        raise ValueError("not a slot pointer")
    return p


def write(p, root=""):
    """Replace the pointer whole: a new file renamed over the old (atomic on LittleFS)."""
    tmp = root + "/slot.json.new"
    with open(tmp, "w") as f:
        f.write(json.dumps(p))
    os.rename(tmp, root + "/slot.json")


def back(p, reason, root=""):
    """Go back from p["run"] to the previous slot (base if it cannot boot); write it."""
    to = p["prev"] if p["prev"] and complete(p["prev"], root) else "base"
    p["note"] = {"kind": "rollback", "version": p["version"], "reason": reason}
    p.update(run=to, version=p["prev_version"] if to == p["prev"] else None, prev=None,
             prev_version=None, trial=False, boots=0)
    if p["stage"] and p["stage"]["slot"] == to:
        p["stage"] = None
    write(p, root)
    return p


def choose(root=""):
    """Read the pointer, decide the slot that boots now, write what that decision uses up."""
    try:
        p = read(root)
    except (ValueError, MemoryError):
        p = fresh()
        p["note"] = {"kind": "rollback", "version": None, "reason": "pointer unreadable"}
        write(p, root)
        return p
    if not complete(p["run"], root):
        return back(p, "slot %s missing" % p["run"], root)
    if p["trial"]:
        if p["boots"] >= TRIAL_BOOTS:
            return back(p, "not healthy after %d boots" % TRIAL_BOOTS, root)
        p["boots"] += 1  # before anything of the slot runs: a boot that dies used its try
        write(p, root)
    return p


def state():
    return _state


def idle():
    """Nothing on trial, to report or to resume: the app never needs the loader again."""
    p = _state
    return not (p["trial"] or p["note"] or p["stage"])


def confirm():
    """The app is healthy: the running slot is no longer on trial."""
    _state.update(trial=False, boots=0, prev=None, prev_version=None)
    write(_state, _root)


def clear_note():
    _state["note"] = None
    write(_state, _root)


def _fail(reason):
    import machine

    back(_state, reason, _root)
    machine.reset()


async def _deadline(s):
    import asyncio

    await asyncio.sleep(s)
    if _state["trial"]:
        _fail("not healthy within %d s" % s)


def start(root=""):
    """Pick the slot, import the app from it; returns the app's run(). A slot that cannot
    even be imported goes back at once."""
    global _state, _root
    _root = root
    p = _state = choose(root)
    if p["run"] != "base":
        sys.path.insert(0, "%s/slot_%s/files" % (root, p["run"]))
    try:
        from washpay import app
    except Exception as e:  # noqa: BLE001 - any error of the slot's code: go back
        if p["run"] == "base":
            raise
        _fail(("import failed: %r" % (e,))[:80])
    if p["trial"]:
        import asyncio

        asyncio.create_task(_deadline(p["trial_s"]))  # runs on the loop the app starts
    return app.run
