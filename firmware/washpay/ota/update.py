"""An update on the board (docs/ota.md, "The flow as the board sees it"): takes an offer,
fetches what the slot lacks over the sync link, stages it (stage.py), waits for the machine
to be idle, switches the pointer and resets into the new version on trial. Every refusal
is journaled (ota_refused) and reported on wp/ID/fws.

The app imports this module only when an offer comes or a staged download is to resume,
and drops it when the update ends: a board that is not updating never holds its code.
"""

import asyncio
import json
from binascii import hexlify

from micropython import const

from washpay.journal import JournalError
from washpay.journal import records as R
from washpay.ota.release import Refused, read_public_key
from washpay.ota.stage import CHUNK_HEAD, Stage, chunk_header, request, wipe

CHUNK_TIMEOUT_MS = const(5000)  # no chunk this long after a request: ask again
_IDLE_POLL_MS = const(500)
_RELEASE_PUB = "/release.pub"
_STATUS = ("", "server has no release %s", "server refused range file %d offset %d")


def _loader():
    import bootslot  # the loader beside main.py: already loaded when it has work to do

    return bootslot


def offer(root, digest, sig, size, version):
    """Record an offer in the pointer; None if the update may start, else why not. The
    same release again changes nothing; another replaces the one being staged."""
    if not 1 <= size <= 16384:
        return "malformed body"
    L = _loader()
    try:
        p = L.read(root)
    except ValueError:
        p = L.fresh()
    if p["trial"]:
        return "update %s on trial: wait for it to be healthy" % p["version"]
    try:
        read_public_key(root + _RELEASE_PUB)
    except Refused as e:
        return str(e)
    rid = hexlify(digest).decode()
    if p["stage"] and p["stage"]["id"] == rid:
        return None
    slot = "b" if p["run"] == "a" else "a"
    p["stage"] = {"slot": slot, "id": rid, "sig": hexlify(sig).decode(), "size": size,
                  "version": version}
    if p["prev"] == slot:  # its files go now: it can no longer be gone back to
        p["prev"] = p["prev_version"] = None
    wipe(root + "/slot_" + slot)
    L.write(p, root)
    return None


def switch(root, slot, version, running, trial_s):
    """The one atomic pointer write that makes `slot` boot next, on trial."""
    L = _loader()
    p = L.read(root)
    p.update(run=slot, prev=p["run"], prev_version=p["version"] or running, version=version,
             trial=True, boots=0, trial_s=trial_s, stage=None, note=None)
    L.write(p, root)


class Updater:
    def __init__(self, root, sync, journal, checks, idle, quiet, reset, log, trial_s):
        """sync: the Sync (washpay/net); checks: Stage's board facts; idle(): True when no
        vend, card payment, redemption or coin is in progress; await quiet(): the last
        look before the switch, True when idle with no coin on its way (updates.py);
        reset(): restart the board."""
        self.root = root
        self.sync = sync
        self.journal = journal
        self.checks = checks
        self.idle = idle
        self.quiet = quiet
        self.reset = reset
        self.log = log
        self.trial_s = trial_s
        dev = b"wp/" + sync.device_id
        # the chunk topic is as long as the command topic: a chunk fits the receive buffer
        self.t_fwq, self.t_fwd, self.t_fws = dev + b"/fwq", dev + b"/fwd", dev + b"/fws"
        self.stage = None
        self.state = "offered"
        self.reason = None
        self._want = None
        self._complete = False
        self._error = None
        self._flag = asyncio.Event()
        self._subscribed = -1
        self._pct = -1

    def status(self):
        st = {"state": self.state, "reason": self.reason}
        s = self.stage
        if s is not None:
            st.update(version=s.version, bytes=s.staged, total=s.total)
        return st

    def report(self, state, **extra):
        self.state = state
        s = self.stage
        msg = {"id": hexlify(s.rid).decode() if s else None, "version": s.version if s else None,
               "state": state}
        msg.update(extra)
        self.sync.reply(json.dumps(msg).encode(), self.t_fws)

    async def run(self, stage, fresh):
        """Download, stage and switch the release `stage` (the pointer's); fresh: a new
        offer (reported as offered), else a resume."""
        self.sync.chunks = (self.t_fwd, self.on_chunk)
        try:
            self.stage = s = Stage(self.root, stage, self.checks)
            if fresh:
                self.report("offered")
            while True:
                want = s.next()
                if want is None:
                    break
                self._progress()
                if await self._fetch(want):
                    s.check()  # here, not in the MQTT handler: it takes time and heap
            self.sync.chunks = None
            s.finish()
            self.report("staged")
            await self._switch(stage["slot"], s.version)
        except Refused as e:
            self._refuse(str(e))
        except OSError as e:  # the flash full, most likely: nothing switched
            self._refuse("flash: %s (%d KiB free)" % (e, self._free() // 1024))
        except MemoryError:  # the running version stays; the server may offer it again
            self._refuse("out of memory while staging %s" % (self.stage.name()
                                                            if self.stage else "the offer"))
        finally:
            self.sync.chunks = None
            if self.stage is not None:
                self.stage.close()

    def _free(self):
        try:
            import os

            st = os.statvfs(self.root or "/")
            return st[0] * st[3]
        except OSError:
            return 0

    def _progress(self):
        s = self.stage
        pct = s.staged * 100 // s.total if s.files is not None else 0
        if s.files is not None and (self._pct < 0 or pct >= self._pct + 10):
            self._pct = pct
            self.report("downloading", pct=pct, bytes=s.staged, total=s.total)

    def _refuse(self, reason):
        self.reason = reason
        self.log("update refused:", reason)
        try:
            self.journal.append(R.OTA_REFUSED, reason=reason)
        except JournalError as e:
            self.log("refusal not journaled:", e)
        L = _loader()
        try:
            p = L.read(self.root)
            p["stage"] = None
            L.write(p, self.root)
        except (ValueError, OSError) as e:
            self.log("pointer not cleared:", e)
        self.report("refused", reason=reason)

    async def _fetch(self, want):
        sync = self.sync
        while True:
            if not sync.ready():
                await asyncio.sleep_ms(200)
                continue
            client = sync.client
            try:
                if self._subscribed != sync.link.connects:  # a new session each connection
                    await client.subscribe(self.t_fwd, 0)
                    self._subscribed = sync.link.connects
                self._want = want
                self._error = None
                self._flag.clear()
                await client.publish(self.t_fwq, request(self.stage.rid, *want), qos=0)
                await asyncio.wait_for_ms(self._flag.wait(), CHUNK_TIMEOUT_MS)
            except asyncio.TimeoutError:
                continue  # a lost request or chunk: ask again
            except OSError:
                await asyncio.sleep_ms(200)  # the link went: the next connection resumes
                continue
            if self._error is not None:
                raise self._error
            if self._want is None:
                return self._complete

    def on_chunk(self, payload):
        # from the MQTT handler: the payload is the receive buffer, written out before this
        # returns. A chunk for something not asked for (late, another release) is dropped.
        want = self._want
        h = chunk_header(payload)
        if want is None or h is None:
            return
        status, index, offset, n, rid = h
        if rid != self.stage.rid or index != want[0] or offset != want[1]:
            return
        self._want = None
        if status:
            self._error = Refused(_STATUS[status] % ((hexlify(rid).decode(),) if status == 1 else (
                index, offset)) if status < len(_STATUS) else "server status %d" % status)
        elif n != len(payload) - CHUNK_HEAD or n != want[2]:
            self._error = Refused("truncated chunk: file %d offset %d got %d of %d bytes" % (
                index, offset, len(payload) - CHUNK_HEAD, want[2]))
        else:
            try:
                self._complete = self.stage.accept(index, offset,
                                                   memoryview(payload)[CHUNK_HEAD:])
            except OSError as e:
                self._error = Refused("flash: %s writing %s" % (e, self.stage.name()))
            except MemoryError:
                self._want = want  # nothing written: ask again
        self._flag.set()

    async def _switch(self, slot, version):
        from washpay import VERSION

        while True:
            while not self.idle():  # a wash, a payment, a redemption, a coin: after it
                await asyncio.sleep_ms(_IDLE_POLL_MS)
            # reported first: the board resets right after the pointer write
            self.report("switched")
            t = 0
            while self.sync._outbox and t < 3000:
                await asyncio.sleep_ms(50)
                t += 50
            if await self.quiet():
                break
            self.report("staged")  # it became busy meanwhile: not switched, waits again
        # from here to the reset nothing awaits: no payment can start in between
        switch(self.root, slot, version, VERSION, self.trial_s)
        self.log("update", version, "staged in slot", slot, "- switching")
        self.reset()


def forget():
    """Drop this package's modules: its heap goes back once the update has ended."""
    from washpay import forget as drop

    for name in ("washpay.ota.update", "washpay.ota.stage", "washpay.ota.release",
                 "washpay.ota.ed25519", "washpay.ota.sha512", "washpay.ota"):
        drop(name)
