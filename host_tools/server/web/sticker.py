"""`washpay sticker`: the QR code stuck on a machine, pointing at its page (/m/<device>)."""

import re
import sys
from urllib.parse import quote, urlparse

DEVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")


class StickerError(ValueError):
    pass


def machine_url(device, base_url):
    if not DEVICE.match(device or ""):
        raise StickerError(f"device id {device!r}: 1 to 32 letters, digits, '.', '_' or '-'")
    u = urlparse(base_url or "")
    if u.scheme not in ("http", "https") or not u.netloc:
        raise StickerError(f"--base-url {base_url!r}: give http(s)://host[:port][/path]")
    return base_url.rstrip("/") + "/m/" + quote(device)


def sticker(device, base_url, png=None, svg=None, out=None):
    """The machine page's URL; its QR code written to `png`/`svg`, else drawn on `out`."""
    import segno

    url = machine_url(device, base_url)
    qr = segno.make(url, error="m")
    try:
        if png:
            qr.save(png, kind="png", scale=10, border=4)
        if svg:
            qr.save(svg, kind="svg", scale=10, border=4)
    except OSError as e:
        raise StickerError(f"cannot write the sticker: {e.strerror or e}") from None
    if not png and not svg:
        qr.terminal(out=out or sys.stdout, compact=True)
    return url
