"""The bench's output: one table on stdout, a JSON document, and a PNG bar chart.

The chart is drawn with Pillow (already a dependency; no matplotlib): one bar per row,
the ratio falq / reference on a log scale with parity (1x) marked, green when the row's
goal is met, red when missed, grey when the row has no goal; the goal and both figures
are written beside each bar.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from falq.ops.bench.model import Row

HEADERS = ("scenario", "metric", "unit", "falq", "reference", "ref value", "ratio", "goal", "met")


def fmt(x: float) -> str:
    """A figure with 3-4 significant digits."""
    if math.isnan(x):
        return "n/a"
    if x == 0 or abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def cells(row: Row) -> list[str]:
    met = {None: "", True: "yes", False: "NO"}[row.met]
    return [row.scenario, row.metric, row.unit, fmt(row.falq), row.ref_name, fmt(row.reference),
            f"{fmt(row.ratio)}x" if not math.isnan(row.ratio) else "n/a", row.goal.text() if row.goal else "", met]


def table(rows: list[Row], *, markdown: bool = False) -> str:
    """The rows as an aligned text table (or a Markdown table), notes below."""
    body = [cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        lines += ["| " + " | ".join(c) + " |" for c in body]
    else:
        widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(HEADERS)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(cs, widths, strict=True)) for cs in body]
    notes = [f"- {r.scenario} / {r.metric}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + (["", *notes] if notes else []))


def write_json(path: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "rows": [r.as_dict() for r in rows]}, indent=2, default=str) + "\n")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


LO, HI = -2.0, 3.0  # log10 of the ratio axis: 0.01x .. 1000x


def chart(path: Path, rows: list[Row], title: str) -> None:
    """Draw the ratio chart to ``path`` (PNG)."""
    left, bar_w, right, row_h, top = 480, 500, 480, 30, 70
    width, height = left + bar_w + right, top + row_h * len(rows) + 50
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    f, small = _font(15), _font(12)
    d.text((12, 12), title, fill="black", font=_font(18))
    d.text((12, 38), "bar: falq / reference (log scale); | goal on the ratio; green met, red missed, grey no goal",
           fill="#444", font=small)

    def x_of(ratio: float) -> float:
        v = min(HI, max(LO, math.log10(ratio))) if ratio > 0 else LO
        return left + (v - LO) / (HI - LO) * bar_w

    for decade in range(int(LO), int(HI) + 1):
        x = x_of(10.0**decade)
        d.line([(x, top - 6), (x, top + row_h * len(rows))], fill="#bbb" if decade else "black", width=1)
        d.text((x - 14, top + row_h * len(rows) + 6), f"{10.0**decade:g}x", fill="#444", font=small)
    for i, r in enumerate(rows):
        y = top + i * row_h
        if i % 2:
            d.rectangle([(0, y), (width, y + row_h)], fill="#f4f4f4")
        d.text((12, y + 7), f"{r.scenario}: {r.metric}"[:58], fill="black", font=f)
        colour = {None: "#999999", True: "#2e9d4a", False: "#d23a2f"}[r.met]
        if not math.isnan(r.ratio):
            x0, x1 = sorted((x_of(1.0), x_of(r.ratio)))
            d.rectangle([(x0, y + 6), (max(x1, x0 + 2), y + row_h - 6)], fill=colour)
        if r.goal is not None and r.goal.on == "ratio":
            gx = x_of(r.goal.value)
            d.line([(gx, y + 2), (gx, y + row_h - 2)], fill="black", width=3)
        goal = f"  goal {r.goal.text()}" if r.goal else ""
        text = f"{fmt(r.ratio)}x  falq {fmt(r.falq)} vs {fmt(r.reference)} {r.unit} ({r.ref_name}){goal}"
        d.text((left + bar_w + 10, y + 8), text, fill=colour if r.met is False else "black", font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
