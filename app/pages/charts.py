"""Server-rendered charts (inline SVG, no JavaScript) and colour legends: the histogram of E per
kind of neuron as shares of each group, the overlay of several runs' E distributions, a
neuron's activation distribution (log scales, top prompts marked), and the legend of a colour
scale with its unit. Labels are escaped."""

from __future__ import annotations

import math

from markupsafe import Markup, escape

from context_lookups.precompute.prompts.histogram import bin_bounds, bin_of

from .formats import decimals, fixed
from .markup import colour

KIND_COLOURS = {"next_token": "#d6604d", "random": "#4393c3", "other": "#999999"}
KIND_LABELS = {"next_token": "next-token neurons", "random": "random neurons", "other": "other"}
SERIES_COLOURS = ("#d6604d", "#4393c3", "#1b9e77", "#7570b3", "#e6ab02", "#666666")
_STEPS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0)


def share_axis(top: float, max_ticks: int = 5) -> tuple[float, float]:
    """``(axis_max, step)`` of a share axis: the smallest of 1, 2, 5, 10, 20, 25, 50, 100 % that
    covers ``top`` in at most ``max_ticks`` steps, and the axis top as a whole number of steps."""
    top = max(top, 1e-9)
    step = next(s for s in _STEPS if top / s <= max_ticks)
    return min(1.0, math.ceil(top / step - 1e-9) * step), step


def _shares(vals: list[float], bins: int, lo: float, hi: float) -> list[float]:
    counts = [0] * bins
    for v in vals:
        counts[min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))] += 1
    return [c / len(vals) for c in counts]


def histogram_svg(groups: dict[str, list[float]], *, bins: int = 10, lo: float = 0.0, hi: float = 1.0,
                  width: int = 440, height: int = 190, title: str = "explanation score E") -> Markup:
    """A grouped histogram of E in [lo, hi]: per bin, the share of each group's pairs (so groups
    of different sizes compare), bars side by side, y axis in % of the group with ticks at round
    steps, x axis labelled, and a legend naming each group with its n in its own rows below the
    axis (``height`` is the plot's; the legend adds 18 px per row), so it never covers a bar."""
    names = [k for k in ("next_token", "random", "other") if groups.get(k)] + \
        [k for k in groups if k not in KIND_COLOURS and groups[k]]
    if not names:
        return Markup("")
    shares = {k: _shares(groups[k], bins, lo, hi) for k in names}
    ymax, step = share_axis(max(max(s) for s in shares.values()))
    ml, mb, mt = 44, 40, 22  # margins
    keys, x, row = [], ml, 0  # legend keys (label, x, row), wrapped to the width
    for k in names:
        label = f"{KIND_LABELS.get(k, k)} (n={len(groups[k])})"
        w = 14 + 6 * len(label) + 12  # ~6 px per character at the 10 px font
        if x > ml and x + w > width:
            x, row = ml, row + 1
        keys.append((k, label, x, row))
        x += w
    lh = 18 * (row + 1)  # the legend's own band below the axis
    height += lh
    pw, ph = width - ml - 8, height - mb - mt - lh
    bw = pw / bins
    parts = [f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'font-size="10" role="img" aria-label="{escape(title)}: share of pairs per bin">',
             f'<text x="{ml}" y="14" class="hist-title">{escape(title)}: share of each group\'s pairs</text>']
    n_ticks = round(ymax / step)
    for j in range(n_ticks + 1):
        v = step * j
        y = mt + ph - ph * v / ymax
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{ml - 4}" y="{y + 3:.1f}" text-anchor="end">{v:.0%}</text>')
    for i in range(bins):
        for j, k in enumerate(names):
            s = shares[k][i]
            h = ph * s / ymax
            x = ml + i * bw + 1 + j * (bw - 2) / len(names)
            n_in = round(s * len(groups[k]))
            parts.append(f'<rect x="{x:.1f}" y="{mt + ph - h:.1f}" width="{(bw - 2) / len(names):.1f}" '
                         f'height="{h:.1f}" fill="{KIND_COLOURS.get(k, "#666")}">'
                         f'<title>{escape(KIND_LABELS.get(k, k))}: {n_in} of {len(groups[k])} '
                         f'({s:.0%}) in [{lo + i * (hi - lo) / bins:.1f}, '
                         f'{lo + (i + 1) * (hi - lo) / bins:.1f})</title></rect>')
    for i in range(0, bins + 1, max(1, bins // 5)):
        x = ml + i * bw
        parts.append(f'<text x="{x:.1f}" y="{mt + ph + 13}" text-anchor="middle">'
                     f'{lo + i * (hi - lo) / bins:.1f}</text>')
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{mt + ph + 27}" text-anchor="middle" class="axis-label">'
                 f'{escape(title)} (0.5 = chance)</text>'
                 f'<text transform="translate(10,{mt + ph / 2:.1f}) rotate(-90)" text-anchor="middle" '
                 f'class="axis-label">share of pairs</text>')
    for k, label, x, row in keys:  # legend rows below the axis labels, never over the bars
        y = height - lh + 4 + 18 * row
        parts.append(f'<g class="hist-key"><rect x="{x}" y="{y}" width="10" height="10" '
                     f'fill="{KIND_COLOURS.get(k, "#666")}"/>'
                     f'<text x="{x + 14}" y="{y + 9}">{escape(label)}</text></g>')
    parts.append("</svg>")
    return Markup("".join(parts))


def overlay_svg(series: list[tuple[str, list[float]]], *, bins: int = 10, width: int = 560,
                height: int = 220, title: str = "explanation score E") -> Markup:
    """E distributions of several runs overlaid: per series a translucent step area of the share
    of its pairs in each bin of [0, 1] (so runs with different numbers of pairs compare), its
    mean marked by a dashed line, axes labelled, and the legend (with n and mean) below the
    plot, never over it."""
    series = [(label, vals) for label, vals in series if vals]
    if not series:
        return Markup("")
    shares = [_shares(vals, bins, 0.0, 1.0) for _, vals in series]
    ymax, step = share_axis(max(max(s) for s in shares))
    ml, mr, mt, mb = 44, 12, 22, 40
    pw, ph = width - ml - mr, height - mt - mb
    height += 16 * len(series) + 4  # legend rows under the axis
    bw = pw / bins

    def y(v: float) -> float:
        return mt + ph - ph * v / ymax

    parts = [f'<svg class="hist overlay" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="{escape(title)}: share of pairs per bin, one area per run">',
             f'<text x="{ml}" y="14" class="hist-title">{escape(title)}: share of each run\'s pairs</text>']
    for j in range(round(ymax / step) + 1):
        v = step * j
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
                     f'<text x="{ml - 4}" y="{y(v) + 3:.1f}" text-anchor="end">{v:.0%}</text>')
    for i in range(0, bins + 1, 2):
        parts.append(f'<text x="{ml + i * bw:.1f}" y="{mt + ph + 13}" text-anchor="middle">'
                     f'{i / bins:.1f}</text>')
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{mt + ph + 27}" text-anchor="middle" class="axis-label">'
                 f'{escape(title)} (0.5 = chance)</text>'
                 f'<text transform="translate(10,{mt + ph / 2:.1f}) rotate(-90)" text-anchor="middle" '
                 f'class="axis-label">share of pairs</text>')
    for k, ((label, vals), share) in enumerate(zip(series, shares, strict=True)):
        col = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        pts = [f"{ml:.1f},{y(0):.1f}"]
        for i, v in enumerate(share):
            pts += [f"{ml + i * bw:.1f},{y(v):.1f}", f"{ml + (i + 1) * bw:.1f},{y(v):.1f}"]
        pts.append(f"{ml + pw:.1f},{y(0):.1f}")
        mean = sum(vals) / len(vals)
        parts.append(f'<polygon class="series" points="{" ".join(pts)}" fill="{col}" fill-opacity="0.18" '
                     f'stroke="{col}" stroke-width="1.6"><title>{escape(label)}: n={len(vals)}, '
                     f'mean {mean:.3f}</title></polygon>'
                     f'<line x1="{ml + mean * pw:.1f}" x2="{ml + mean * pw:.1f}" y1="{mt}" y2="{mt + ph}" '
                     f'stroke="{col}" stroke-dasharray="4 3"/>')
        ly = mt + ph + mb + k * 16
        parts.append(f'<rect x="{ml}" y="{ly}" width="10" height="10" fill="{col}"/>'
                     f'<text x="{ml + 14}" y="{ly + 9}">{escape(label)} (n={len(vals)}, '
                     f'mean {mean:.3f})</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def legend(scale: float, *, lo: float | None = None, hi: float | None = None, label: str = "",
           unit: str = "", n: int = 9) -> dict:
    """A colour legend for values drawn by :func:`app.pages.markup.colour` on ``[-scale, scale]``:
    the range actually shown, ``lo..hi`` (default ``-scale..scale``; 0..1 for a non-negative
    share, ``min(0, smallest)..largest`` for activations), as a CSS gradient of ``n`` stops and
    tick labels at its ends (and 0 when inside), written with one number of decimals; ``label``
    names the quantity and ``unit`` its unit."""
    lo = -scale if lo is None else lo
    hi = scale if hi is None else hi
    if hi <= lo:
        hi = lo + 1e-9
    vals = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    stops = ", ".join(f"{colour(v, scale)} {100 * i / (n - 1):.0f}%" for i, v in enumerate(vals))
    d = decimals([lo, hi], sig=2, most=4)
    ticks = [{"pos": 0.0, "text": fixed(lo, d)}, {"pos": 100.0, "text": fixed(hi, d)}]
    if lo < 0 < hi and 15 < 100 * -lo / (hi - lo) < 85:
        ticks.insert(1, {"pos": 100 * -lo / (hi - lo), "text": "0"})
    return {"label": label, "unit": unit, "gradient": f"linear-gradient(to right, {stops})",
            "lo": lo, "hi": hi, "ticks": ticks}


def _count_label(v: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:g}"


def _value_label(v: float) -> str:
    return "0" if v == 0 else ("−" if v < 0 else "") + f"{abs(v):g}"


def activation_histogram_svg(h: dict, *, label: str = "", height: int = 230) -> Markup:
    """The activation distribution of one neuron (``precompute.prompts.reads.histogram``) as an SVG as
    wide as its box (x in percent, text at a fixed size, so it stays legible on a phone): one
    bar per fixed bin from the lowest to the highest occupied one (the central bin always
    shown), each bin the same width, so the x axis is logarithmic on either side of 0 (bins of a
    quarter octave) with ticks at the powers of ten; bar heights on a log scale of token counts
    (a bin of one token still shows), each bar's range, count and share in its tooltip; the
    marks (top prompts' activations) as triangles above the bars at their values; axes
    labelled; then a legend (HTML)."""
    bins = h["bins"]
    if not bins:
        return Markup("")
    zero = h["zero_bin"]
    lo_bin = min(bins[0]["bin"], zero)
    hi_bin = max(bins[-1]["bin"], zero)
    n_shown = hi_bin - lo_bin + 1
    left, right = 7.0, 99.5  # the plot's x range, % of the width (the left for the count labels)
    mt, mb = 24, 40
    ph = height - mt - mb
    bw = (right - left) / n_shown
    top = max(b["count"] for b in bins)
    y_hi = 10 ** max(1, math.ceil(math.log10(top)))
    y_lo = 0.5  # the baseline below a count of 1, so that a single token shows

    def y(c: float) -> float:
        return mt + ph - ph * (math.log10(c) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo))

    def x_of(bin_: int, frac: float = 0.0) -> float:
        return left + (bin_ - lo_bin + frac) * bw

    def x_value(v: float, bin_: int) -> float:
        lo, hi = bin_bounds(bin_)
        frac = 0.5 if not (math.isfinite(lo) and math.isfinite(hi)) else (v - lo) / (hi - lo)
        return x_of(bin_, min(1.0, max(0.0, frac)))

    n = h["n_tokens"]
    name = f"{label}: " if label else ""
    parts = [(f'<svg class="act-hist" width="100%" height="{height}" role="img" aria-label="{escape(name)}'
              f'tokens per activation bin over {n:,} {h["split"]} tokens, log scales">'),
             f'<text x="{left - 0.5}%" y="9" text-anchor="end" class="axis-label">tokens</text>']
    for k in range(round(math.log10(y_hi)) + 1):  # horizontal grid at 1, 10, 100, ...
        yy = y(10 ** k)
        parts.append(f'<line x1="{left}%" x2="{right}%" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>'
                     f'<text x="{left - 0.5}%" y="{yy + 3:.1f}" text-anchor="end">'
                     f'{_count_label(10 ** k)}</text>')
    for b in bins:
        c = b["count"]
        if not c:
            continue
        yy = y(c)
        lo = "−∞" if b["lo"] is None else _value_label(b["lo"])
        hi = "∞" if b["hi"] is None else _value_label(b["hi"])
        rng = (f"({lo}, {hi})" if b["bin"] == zero
               else f"[{lo}, {hi})" if b["bin"] > zero else f"({lo}, {hi}]")
        parts.append(f'<rect class="bar" x="{x_of(b["bin"], 0.06):.3f}%" y="{yy:.1f}" '
                     f'width="{bw * 0.88:.3f}%" height="{mt + ph - yy:.1f}">'
                     f'<title>{rng}: {c:,} tokens ({100 * c / n:.2g} %)</title></rect>')
    # x ticks: 0 at the central bin, then ±10^k where they fall inside the shown range, placed
    # by priority (1, 0.1, 10, ...) where they do not crowd a tick already placed
    placed: list[float] = []
    for v in [0.0] + [s * 10.0 ** k for k in (0, -1, 1, -2, 2, -3, 3) for s in (1, -1)]:
        b = int(bin_of([v])[0])
        if not lo_bin <= b <= hi_bin or (v != 0 and b == zero):
            continue
        xx = x_of(zero, 0.5) if v == 0 else x_value(v, b)
        if any(abs(xx - p) < 6 for p in placed):
            continue
        placed.append(xx)
        parts.append(f'<line x1="{xx:.3f}%" x2="{xx:.3f}%" y1="{mt + ph}" y2="{mt + ph + 4}" class="tick"/>'
                     f'<text x="{xx:.3f}%" y="{mt + ph + 15}" text-anchor="middle">{_value_label(v)}</text>')
    for m in h["marks"]:
        xx = x_value(m["act"], m["bin"])
        parts.append(f'<line x1="{xx:.3f}%" x2="{xx:.3f}%" y1="{mt}" y2="{mt + ph}" class="mark-line"/>'
                     f'<svg x="{xx:.3f}%" y="{mt - 9}" overflow="visible">'
                     f'<path class="mark" d="M-4,0 L4,0 L0,8 Z">'
                     f'<title>top prompt #{m["rank"]}: activation {m["act"]:.3f}</title></path></svg>')
    parts.append(f'<line x1="{left}%" x2="{right}%" y1="{mt + ph}" y2="{mt + ph}" class="tick"/>'
                 f'<text x="{(left + right) / 2:.1f}%" y="{height - 6}" text-anchor="middle" '
                 f'class="axis-label">'
                 f'activation (hook_post), log scale either side of 0</text></svg>')
    parts.append('<p class="hist-legend"><span class="key-bar"></span> tokens per bin (4 bins per octave; '
                 'the bin at 0 holds |a| &lt; 0.001)')
    if h["marks"]:
        parts.append(f' <span class="key-mark">▼</span> the top {len(h["marks"])} {escape(h["split"])} '
                     f'prompts\' activations')
    parts.append("</p>")
    return Markup("".join(parts))
