"""Charts drawn on the server as inline SVG: no chart library, no script, nothing fetched
by the browser. Each bar carries its figures in a <title> (shown on hover) and in data-*
attributes, so the browser tests read what a chart says, not only that it is there."""

from markupsafe import Markup, escape

# one colour per payment kind, in PAYMENT_KINDS order (cash, card, qr, app)
COLOURS = {"cash": "#2e7d32", "card": "#1565c0", "qr": "#8e24aa", "app": "#ef6c00"}


def _nice_max(v):
    """A round axis top at or above v (1, 2, 5 x 10^n)."""
    if v <= 0:
        return 1
    step = 1
    while step * 10 <= v:
        step *= 10
    for m in (1, 2, 5, 10):
        if m * step >= v:
            return m * step
    return 10 * step


def stacked_bars(periods, values, kinds, labels, fmt, title, width=760, height=260):
    """Bars per period, stacked by kind: `values` {period: {kind: amount}}; `fmt` turns an
    amount into text; `labels` {kind: legend text}."""
    left, bottom, top = 70, 40, 16
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max((sum(values.get(p, {}).values()) for p in periods), default=0)
    axis = _nice_max(peak)
    n = max(len(periods), 1)
    slot = plot_w / n
    bar = max(1.0, slot * 0.75)
    out = [f'<svg class="chart" role="img" aria-label="{escape(title)}" '
           f'viewBox="0 0 {width} {height}" width="100%" xmlns="http://www.w3.org/2000/svg">',
           f"<title>{escape(title)}</title>"]
    for i in range(5):  # grid and axis labels
        v = axis * i // 4
        y = top + plot_h - plot_h * i / 4
        out.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" '
                   'stroke="#e3e7eb"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" '
                   f'font-size="11" fill="#5f6a75">{escape(fmt(v))}</text>')
    every = max(1, n // 12)  # at most about 12 period labels under the bars
    for i, p in enumerate(periods):
        x = left + i * slot + (slot - bar) / 2
        y = top + plot_h
        total = 0
        for k in kinds:
            v = values.get(p, {}).get(k, 0)
            if not v:
                continue
            h = plot_h * v / axis
            y -= h
            total += v
            out.append(f'<rect class="bar" data-period="{escape(p)}" data-kind="{k}" '
                       f'data-amount="{v}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                       f'height="{h:.1f}" fill="{COLOURS.get(k, "#607d8b")}">'
                       f"<title>{escape(p)} {escape(labels.get(k, k))}: "
                       f"{escape(fmt(v))}</title></rect>")
        if i % every == 0:
            out.append(f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 14}" '
                       f'text-anchor="middle" font-size="10" fill="#5f6a75">'
                       f"{escape(p[5:] if len(p) == 10 else p)}</text>")
    lx = left
    for k in kinds:  # legend
        out.append(f'<rect x="{lx}" y="{height - 14}" width="10" height="10" '
                   f'fill="{COLOURS.get(k, "#607d8b")}"/>')
        out.append(f'<text x="{lx + 14}" y="{height - 5}" font-size="11">'
                   f"{escape(labels.get(k, k))}</text>")
        lx += 24 + 7 * len(labels.get(k, k))
    out.append("</svg>")
    return Markup("".join(out))


def hbars(items, fmt, title, width=760, row=22):
    """Horizontal bars, one per (label, amount), largest first as given."""
    left = 160
    height = row * max(len(items), 1) + 10
    peak = max((v for _l, v in items), default=0) or 1
    out = [f'<svg class="chart" role="img" aria-label="{escape(title)}" '
           f'viewBox="0 0 {width} {height}" width="100%" xmlns="http://www.w3.org/2000/svg">',
           f"<title>{escape(title)}</title>"]
    for i, (label, v) in enumerate(items):
        y = 5 + i * row
        w = (width - left - 110) * v / peak
        out.append(f'<text x="{left - 6}" y="{y + row * 0.65:.1f}" text-anchor="end" '
                   f'font-size="12">{escape(label)}</text>')
        out.append(f'<rect class="hbar" data-label="{escape(label)}" data-amount="{v}" '
                   f'x="{left}" y="{y + 3}" width="{max(w, 0):.1f}" height="{row - 6}" '
                   f'fill="#1565c0"><title>{escape(label)}: {escape(fmt(v))}</title></rect>')
        out.append(f'<text x="{left + max(w, 0) + 6:.1f}" y="{y + row * 0.65:.1f}" '
                   f'font-size="12">{escape(fmt(v))}</text>')
    out.append("</svg>")
    return Markup("".join(out))
