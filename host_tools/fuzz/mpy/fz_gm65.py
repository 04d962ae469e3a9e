# GM65 bytes (drivers/gm65.py LineAssembler.feed), split into reads anywhere: scanned
# lines between CRs come out exactly as a model says (the line, "noise", "too_long"); while
# a reply is awaited, a verified reply frame followed by anything (another frame, a line)
# is the reply read; a frame with one byte changed is no reply; nothing raises.
from fzlib import below, chance, mutate, pick, rbytes
from washpay.drivers.gm65 import MAX_LINE, LineAssembler
from washpay.drivers.gm65_setup import crc16_xmodem

STATS = {"lines": 0, "replies": 0, "bad_frames": 0, "garbage": 0}


def _frame(data):
    body = b"\x00" + bytes((len(data),)) + data
    c = crc16_xmodem(body)
    return b"\x02\x00" + body + bytes((c >> 8, c & 0xFF))


def _segment():
    """(bytes without CR/LF, what the assembler must say of them ended by a CR)."""
    k = below(6)
    if k < 3:
        s = bytes(32 + below(95) for _ in range(1 + below(90)))
        return s, bytes(s)
    if k == 3:
        s = bytes(32 + below(95) for _ in range(MAX_LINE + 1 + below(40)))
        return s, "too_long"
    if k == 4:
        s = bytes(x for x in rbytes(1 + below(40)) if x not in (10, 13))
        if not s:
            return b"", None
        bad = any(x < 0x20 or x > 0x7E for x in s)
        if bad:
            return s, "noise"
        return s, "too_long" if len(s) > MAX_LINE else bytes(s)
    return b"", None  # an empty line: nothing


def _feed(la, stream):
    """In reads of 1 to 40 bytes, as GM65._command does: no more once the reply is in."""
    i = 0
    while i < len(stream) and not (la.awaiting and la.reply_len >= 0):
        j = i + 1 + below(40)
        la.feed(stream[i:j], 0)
        i = j


def run(req, count, found):
    for _ in range(count):
        got = []
        la = LineAssembler(lambda mv, got=got: got.append(bytes(mv)), got.append)
        if chance(2):  # scanned lines, noise, overlong lines
            STATS["lines"] += 1
            want = []
            stream = b""
            for _ in range(1 + below(5)):
                s, w = _segment()
                stream += s + pick((b"\r", b"\n", b"\r\n"))
                if w is not None:
                    want.append(w)
            try:
                _feed(la, stream)
            except Exception as e:  # noqa: BLE001
                found.add("crash " + type(e).__name__, stream, repr(e))
                continue
            if got != want:
                found.add("lines differ", stream, got)
            continue
        la.awaiting = True
        data = rbytes(below(17))
        frame = _frame(data)
        if chance(2):  # a reply, then anything in the same read or the next
            STATS["replies"] += 1
            rest = pick((_frame(rbytes(below(17))), rbytes(below(30)), b"OK\r"))
            stream = frame + rest
            try:
                _feed(la, stream)
            except Exception as e:  # noqa: BLE001
                found.add("crash " + type(e).__name__, stream, repr(e))
                continue
            if la.reply_len < 0 or bytes(la.reply[: la.reply_len]) != data:
                found.add("reply lost", stream, bytes(la.reply[: max(la.reply_len, 0)]))
            continue
        if chance(2):  # one byte of the frame changed: no reply
            STATS["bad_frames"] += 1
            i = 2 + below(len(frame) - 2)
            stream = frame[:i] + bytes(((frame[i] + 1 + below(255)) & 0xFF,)) + frame[i + 1 :]
            if i == 3:
                continue  # a new length reframes the bytes: no fixed answer
            try:
                _feed(la, stream)
            except Exception as e:  # noqa: BLE001
                found.add("crash " + type(e).__name__, stream, repr(e))
                continue
            if la.reply_len >= 0:
                found.add("bad frame taken", stream)
            continue
        STATS["garbage"] += 1
        stream = mutate(frame + rbytes(below(20)))
        try:
            _feed(la, stream)
        except Exception as e:  # noqa: BLE001
            found.add("crash " + type(e).__name__, stream, repr(e))
    return count
