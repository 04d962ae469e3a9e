"""The signature on every webhook notice (docs/alerts.md, "Webhook signature"): the one
definition, used by the server to sign and by a receiver (and the tests) to verify.

    X-Washpay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

The timestamp is inside the MAC, so a captured notice cannot be replayed later than the
receiver's tolerance; the body is the exact bytes sent (no re-serialising before checking).
"""

import hashlib
import hmac
import time

HEADER = "X-Washpay-Signature"
TOLERANCE_S = 300


class SignatureError(ValueError):
    """A notice whose signature does not check; the message says what was wrong."""


def mac(secret, t, body):
    return hmac.new(secret.encode(), f"{int(t)}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret, body, t=None):
    """The header value for `body` (bytes) sent at `t` (now if None)."""
    t = int(time.time() if t is None else t)
    return f"t={t},v1={mac(secret, t, body)}"


def verify(header, body, secret, tolerance_s=TOLERANCE_S, now=None):
    """Raise SignatureError unless `header` signs `body` with `secret`, within tolerance.
    Several v1 values may be given (while a secret is being rotated): one must match."""
    if not header:
        raise SignatureError(f"no {HEADER} header")
    t, sigs = None, []
    for part in header.split(","):
        k, _, v = part.strip().partition("=")
        if k == "t":
            t = v
        elif k == "v1":
            sigs.append(v)
    try:
        t = int(t)
    except (TypeError, ValueError):
        raise SignatureError("signature without a timestamp (t=...)") from None
    if not sigs:
        raise SignatureError("signature without a v1=... value")
    now = time.time() if now is None else now
    if abs(now - t) > tolerance_s:
        raise SignatureError(f"signature made {int(now - t)} s ago: outside {tolerance_s} s "
                             "(a replay, or a clock to set)")
    want = mac(secret, t, body)
    if not any(hmac.compare_digest(want, s) for s in sigs):
        raise SignatureError("signature does not match: another secret, or an altered body")
    return t
