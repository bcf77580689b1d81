"""Charts for markdown artifacts: matplotlib's SVG backend (no GUI, no Agg), embedded as data-URI images.

The Prefect 3.9 UI renders `![title](data:image/svg+xml;base64,...)` in a markdown artifact and strips inline
`<svg>` tags. Each chart is drawn on its own dark panel (readable in the dark UI, and in the light one), with
text kept as text and coordinates rounded to 0.1 pt, so a month of daily points is a few KB.
"""

from __future__ import annotations

import base64
import io
import re
import threading
from collections.abc import Callable, Sequence
from datetime import datetime

PANEL = "#1e2230"
TEXT = "#e2e8f0"
MUTED = "#cbd5e1"
GRID = "#334155"
PALETTE = ["#60a5fa", "#fbbf24", "#34d399", "#f87171", "#c084fc", "#f472b6"]
LIMIT = "#f87171"

_LOCK = threading.Lock()  # matplotlib's rc settings are process-global: one chart at a time

Number = float | int | None


def _rc() -> dict:
    from cycler import cycler

    return {
        "svg.fonttype": "none", "svg.hashsalt": "pg-runbooks", "font.family": "sans-serif",
        "font.sans-serif": ["DejaVu Sans"], "font.size": 9, "axes.edgecolor": "#64748b", "axes.labelcolor": MUTED,
        "xtick.color": MUTED, "ytick.color": MUTED, "text.color": TEXT, "axes.prop_cycle": cycler(color=PALETTE),
        "lines.linewidth": 1.6, "lines.markersize": 3.5, "legend.frameon": False, "axes.grid": True,
        "grid.color": GRID, "grid.linewidth": 0.6, "axes.spines.top": False, "axes.spines.right": False,
        "path.simplify": True, "text.parse_math": False,  # "$1 ... $2" in a statement is text, not TeX
    }


def line_chart(title: str, x: Sequence[datetime], series: dict[str, Sequence[Number]],
               fmt: Callable[[float], str] = lambda v: f"{v:g}", limit: tuple[str, float] | None = None,
               bars: bool = False, legend: bool = False) -> str:
    """One chart as SVG text: a line per series (or bars, for per-day amounts), an optional dashed limit line."""
    import matplotlib
    from matplotlib import dates as mdates
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    names = list(series) + ([limit[0]] if limit else [])
    ncols = 1 if max(map(len, names)) > 28 else 3
    rows = -(-len(names) // ncols) if legend or len(names) > 1 else 0
    with _LOCK, matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(6.4, 2.2 + 0.2 * rows), facecolor=PANEL)
        ax = fig.subplots()
        ax.set_facecolor(PANEL)
        ax.set_axisbelow(True)  # grid behind the bars
        marker = "o" if len(x) <= 10 else None  # markers cost ~100 bytes a point
        for i, (name, values) in enumerate(series.items()):
            xs = [t for t, v in zip(x, values, strict=True) if v is not None]
            ys = [v for v in values if v is not None]
            if bars and len(x) > 31:  # a long period: one stepped area, not a path per bar
                ax.fill_between(xs, ys, step="mid", alpha=0.7, label=name)
            elif bars:
                width = 0.8 / max(1, len(series))
                offset = (i - (len(series) - 1) / 2) * width
                ax.bar([mdates.date2num(t) + offset for t in xs], ys, width=width, label=name)
            else:
                ax.plot(xs, ys, marker=marker, label=name)
        if limit:
            ax.axhline(limit[1], color=LIMIT, linestyle="--", linewidth=1, label=limit[0])
        locator = mdates.AutoDateLocator(minticks=2, maxticks=6)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
        drawn = [v for values in series.values() for v in values if v is not None]
        if min(drawn, default=0) >= 0:  # amounts from zero; a shrinking database's growth goes below it
            ax.set_ylim(bottom=0)
        if not any(drawn):  # all zero: one tick, not "0 B" five times
            ax.set_ylim(-0.5, 1)
            ax.set_yticks([0])
        ax.set_title(title, loc="left", fontsize=10)
        if legend or len(series) > 1 or limit:
            fig.legend(loc="lower left", ncols=ncols, fontsize=8)
        height = fig.get_figheight()
        fig.tight_layout(rect=(0, (0.2 * rows + 0.05) / height if rows else 0, 1, 1))
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", facecolor=PANEL,
                    metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    return _compact(buf.getvalue().decode())


def _compact(svg: str) -> str:
    """Whitespace between tags dropped and coordinates rounded to 0.1 pt: same picture, about half the bytes."""
    svg = re.sub(r">\s+<", "><", svg)
    svg = re.sub(r"\s*\n\s*", " ", svg)
    return re.sub(r"(\d+\.\d)\d+", r"\1", svg)


def image_markdown(title: str, svg: str) -> str:
    """The chart as a markdown image with a data URI (what the Prefect UI renders)."""
    data = base64.b64encode(svg.encode()).decode()
    alt = re.sub(r"[\[\]\n]", " ", title)
    return f"![{alt}](data:image/svg+xml;base64,{data})"


DATA_URI = re.compile(r"!\[([^\]]*)\]\(data:(image/svg\+xml|image/png);base64,([A-Za-z0-9+/=]+)\)")


def embedded_images(markdown: str) -> list[tuple[str, str, bytes]]:
    """(title, media type, decoded bytes) of every data-URI image in a markdown text (tests, tools)."""
    return [(m[1], m[2], base64.b64decode(m[3])) for m in DATA_URI.finditer(markdown)]
