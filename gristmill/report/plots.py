"""Plots for the HTML report, drawn with matplotlib and returned as SVG text to inline in the page.

matplotlib is the ``report`` extra and is imported inside the functions. No pyplot: each figure is a
``Figure`` on its own Agg canvas, so no global backend is switched and no figure registry grows. Text stays
text (``svg.fonttype: none``): the page can be searched, and its tests read titles and axis labels. Sizes are
measured with DejaVu Sans, the font matplotlib ships, so nothing depends on the machine's fonts or a network.
The SVG hash salt is the figure's name: the same data gives the same bytes, and the ids two figures on one
page reference never collide.
"""

from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass, field

Series = dict[float, float]
"""x (usually the optimiser step) -> y."""

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
MAX_POINTS = 1500
"""Longer series are thinned to this many evenly spaced points (the last one kept): the page stays small."""
STYLE = {"svg.fonttype": "none", "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10,
         "axes.grid": True, "grid.color": "#e6e6e6", "axes.spines.top": False, "axes.spines.right": False}


@dataclass
class Panel:
    """One subplot: named line series against a shared x axis."""

    title: str
    ylabel: str
    series: dict[str, Series] = field(default_factory=dict)
    xlabel: str = "step"
    markers: bool = False
    """Draw a dot at each point (for sparse series such as periodic evaluations)."""
    from_zero: bool = False
    """Start the y axis at 0 (rates and speeds, where the size of a change matters)."""


def thin(series: Series, n: int = MAX_POINTS) -> Series:
    """At most ``n`` evenly spaced points of a series sorted by x, first and last kept."""
    xs = sorted(series)
    if len(xs) <= n:
        return {x: series[x] for x in xs}
    idx = sorted({round(i * (len(xs) - 1) / (n - 1)) for i in range(n)})
    return {xs[i]: series[xs[i]] for i in idx}


def line_figure(name: str, title: str, panels: list[Panel]) -> str:
    """Panels side by side, each with its series as lines; SVG text. Empty panels are left out."""
    panels = [p for p in panels if any(p.series.values())]
    if not panels:
        raise ValueError(f"figure {name!r} has no data")
    with _style(name):
        fig, axes = _figure(len(panels), title)
        for ax, p in zip(axes, panels, strict=True):
            for i, (label, s) in enumerate(p.series.items()):
                if not s:
                    continue
                s = thin(s)
                sparse = p.markers or len(s) <= 2
                ax.plot(list(s), list(s.values()), label=label, color=COLORS[i % len(COLORS)], linewidth=1.6,
                        marker="o" if sparse else None, markersize=3.5)
            ax.set_title(p.title)
            if p.from_zero:
                ax.set_ylim(bottom=0)
            if p.xlabel == "step":
                ax.set_xlim(left=0)  # where in the run the points lie, even for one point
            ax.set_xlabel(p.xlabel)
            ax.set_ylabel(p.ylabel)
            if len(p.series) > 1:
                ax.legend(frameon=False)
        return _svg(fig, name, title)


def funnel_figure(name: str, title: str, steps: list[str], panels: list[tuple[str, list[int], list[int]]]) -> str:
    """Horizontal bars, one row per step from top to bottom: what each step kept, and (lighter) what it
    removed. ``panels``: (x-axis label, amount in per step, amount out per step); SVG text."""
    from matplotlib.ticker import EngFormatter

    ys = list(range(len(steps)))
    with _style(name):
        fig, axes = _figure(len(panels), title, height=1.3 + 0.3 * len(steps))
        for k, (ax, (xlabel, ins, outs)) in enumerate(zip(axes, panels, strict=True)):
            removed = [max(0, i - o) for i, o in zip(ins, outs, strict=True)]
            ax.barh(ys, outs, color=COLORS[0], label="kept")
            ax.barh(ys, removed, left=outs, color="#f4a582", label="removed")
            top = max([*ins, 1])
            for y, out, gone in zip(ys, outs, removed, strict=True):
                ax.text(out + gone + top * 0.01, y, f"{out:,}" + (f" (-{gone:,})" if gone else ""), va="center",
                        fontsize=8)
            ax.set_xlim(0, top * 1.4)
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 200k, 1.2M rather than an offset
            ax.set_yticks(ys, steps if k == 0 else [""] * len(steps))
            ax.invert_yaxis()
            ax.set_xlabel(xlabel)
            ax.grid(axis="y", visible=False)
            if k == 0:
                ax.legend(frameon=False, loc="lower right")
        return _svg(fig, name, title)


def _style(name: str):
    """The report's look, and the SVG settings, for the figure called ``name`` (set while it is drawn)."""
    import matplotlib

    return matplotlib.rc_context({**STYLE, "svg.hashsalt": name})


def _figure(n_panels: int, title: str, height: float = 3.2):
    """A constrained-layout figure with ``n_panels`` axes side by side, on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = 5.2 if n_panels == 1 else 4.6 * n_panels
    fig = Figure(figsize=(min(width, 11.0), height), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=11)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, list(axes)


def _svg(fig, name: str, title: str) -> str:
    """The figure as SVG text to inline in HTML: no XML prolog, the plain ids prefixed with ``name``, an
    accessible title."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg"):], count=1, flags=re.S)
    # ids like "figure_1" and "axes_1" repeat in every figure and nothing references them: make them unique
    text = re.sub(r'id="([A-Za-z][\w.]*_\d+)"', lambda m: f'id="{name}-{m.group(1)}"', text)
    label = html.escape(title, quote=True)
    return re.sub(r"<svg\b([^>]*)>", lambda m: f'<svg{m.group(1)} role="img" aria-label="{label}">'
                  f"<title>{label}</title>", text, count=1)
