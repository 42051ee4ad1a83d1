"""`inspect RUN --plot OUT.png`: loss, learning rate, grad norm and fidelity against step.

Each fidelity value gets its panel; its references (``*_reconstruction``, the tokenizer's
ceiling, and ``*_noise``, the floor) are drawn in the same panel as dashed and dotted lines, and
the panel's value axis spans both, so a score is read against them rather than against its own
noise. Every line is named in its panel's legend.

:func:`draw_metrics` builds the figure (tests read its axis limits and legends);
:func:`plot_metrics` also writes it. Drawn with matplotlib's object API on the Agg canvas, never
``pyplot``: no global figure state and no display backend, so it works on a headless node and
inside tests. matplotlib is the optional ``plot`` extra, imported only to draw: without it,
``--plot`` is one line naming the extra (:data:`MISSING_MATPLOTLIB`).
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctrlpost.errors import CtrlpostError
from ctrlpost.files import write_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

HEADLINE = ("loss", "lr", "grad_norm")
_LOG_SCALE = {"lr"}  # warm-up then decay spans decades
REFERENCES = {"_reconstruction": ("ceiling (tokenizer)", "--"), "_noise": ("floor (noise)", ":")}
LEGEND_NAMES = {"loss": "loss", "lr": "learning rate", "grad_norm": "grad norm"}

PAD = 0.08  # of the value span, above and below: the extreme points stay off the frame
MIN_SPAN = 0.1  # of the largest magnitude: a panel never spans less, so 0.301 → 0.302 stays flat
MISSING_MATPLOTLIB = "--plot needs matplotlib: pip install 'ctrlpost[plot]'"


@dataclass(frozen=True)
class MetricsFigure:
    """The drawn figure and its panels by name (``loss``, ``lr``, ``fidelity.f1``, ...)."""

    figure: Figure
    panels: dict[str, Axes]


def plot_series(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """``name → (steps, values)`` for the headline metrics and every ``fidelity*`` column,
    keeping finite numbers only; metrics never logged are left out."""
    names = [*HEADLINE, *sorted({k for row in rows for k in row if k.startswith("fidelity")})]
    series: dict[str, tuple[list[int], list[float]]] = {}
    for name in names:
        points = [
            (row["step"], float(row[name]))
            for row in rows
            if isinstance(row.get(name), int | float) and math.isfinite(row[name])
        ]
        if points:
            series[name] = ([s for s, _ in points], [v for _, v in points])
    return series


def panels(series: dict[str, Any]) -> dict[str, list[str]]:
    """Panel name → the series drawn in it: a reference joins the panel of its metric."""
    grouped: dict[str, list[str]] = {}
    for name in series:
        base = next((name.removesuffix(suffix) for suffix in REFERENCES
                     if name.endswith(suffix) and name.removesuffix(suffix) in series), name)
        grouped.setdefault(base, []).append(name)
    return grouped


def value_limits(values: Sequence[float]) -> tuple[float, float]:
    """The value axis of a linear panel: every value (its references included) inside, with
    :data:`PAD` of the span either side; a span under :data:`MIN_SPAN` of the largest magnitude
    is widened to it around its middle, so a change in the third decimal does not fill the
    panel."""
    low, high = min(values), max(values)
    least = MIN_SPAN * max(abs(low), abs(high)) or 1.0  # all zero: any unit span
    if high - low < least:
        middle = (low + high) / 2
        low, high = middle - least / 2, middle + least / 2
    pad = PAD * (high - low)
    return low - pad, high + pad


def legend_name(panel: str, member: str) -> str:
    """The legend text of a line: the reference's role, the headline's words, or the metric's
    own name (``fidelity.f1`` → ``f1``)."""
    for suffix, (text, _) in REFERENCES.items():
        if member == panel + suffix:
            return text
    return LEGEND_NAMES.get(member) or member.removeprefix("fidelity.")


def draw_metrics(rows: Sequence[dict[str, Any]], *, title: str) -> MetricsFigure:
    """One panel per metric, sharing the step axis; nothing is written."""
    require_matplotlib()
    series = plot_series(rows)
    if not series:
        raise CtrlpostError("nothing to plot: metrics.jsonl has no loss, lr or grad_norm values",
                            hint="plot again once the run has logged a step")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layout = panels(series)
    figure = Figure(figsize=(8.0, 2.2 * len(layout) + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(layout), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, members) in zip(axes, layout.items(), strict=True):
        for member in members:
            _draw_line(ax, *series[member], label=legend_name(name, member),
                       reference=member != name, style=_style(name, member))
        ax.legend(fontsize="small", loc="best")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        values = [v for member in members for v in series[member][1]]
        if name in _LOG_SCALE and min(values) > 0:
            ax.set_yscale("log")  # matplotlib's own limits: decades, not a linear pad
        else:
            ax.set_ylim(*value_limits(values))
    axes[-1].set_xlabel("step")
    figure.suptitle(title)
    return MetricsFigure(figure, {name: ax for ax, name in zip(axes, layout, strict=True)})


def require_matplotlib() -> None:
    """Raise :data:`MISSING_MATPLOTLIB` when matplotlib (the ``plot`` extra) cannot be imported:
    checked before anything is read into a figure or written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CtrlpostError(MISSING_MATPLOTLIB) from None


def _style(panel: str, member: str) -> str:
    return next((line for suffix, (_, line) in REFERENCES.items() if member == panel + suffix),
                "-")


def _draw_line(ax: Axes, steps: list[int], values: list[float], *, label: str,
               reference: bool, style: str) -> None:
    """A metric as a solid line (with dots while they are few); a reference as a dashed or
    dotted line, horizontal across the panel when it was recorded once (a line needs two
    points)."""
    if reference and len(steps) == 1:
        ax.axhline(values[0], linestyle=style, linewidth=1.0, color="0.4", label=label)
        return
    ax.plot(steps, values, style, linewidth=1.0 if reference else 1.2,
            marker="." if not reference and len(steps) < 50 else None, label=label)


def plot_metrics(rows: Sequence[dict[str, Any]], out: Path, *, title: str) -> Path:
    """Draw the metrics (:func:`draw_metrics`) and write ``out`` atomically; a path that cannot
    be written is one line naming it and why, with nothing left behind."""
    drawn = draw_metrics(rows, title=title)
    return save_png(drawn.figure, out)


def save_png(figure: Figure, out: Path) -> Path:
    """Write to a temp file beside ``out``, then rename: a reader never sees half a PNG. Folders
    made for it are removed again when the write fails."""
    out = Path(out)
    if out.is_dir():
        raise CtrlpostError(f"cannot write the plot {out}: it is a folder; name a PNG file in "
                            f"it, e.g. --plot {out / 'metrics.png'}")
    made = _missing_folders(out.parent)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(out, lambda temp: figure.savefig(temp, format="png", dpi=100))
    except OSError as exc:
        for folder in made:  # deepest first; only the empty folders this call made
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise CtrlpostError(f"cannot write the plot {out}: {_why(exc, out)}; pass --plot a path "
                            "in a folder you can write to") from None


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its missing parents, deepest first: what ``mkdir(parents=True)`` makes."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _why(exc: OSError, out: Path) -> str:
    """The reason in words, about the deepest part of the path that exists: a file where a
    folder is needed, or (ENOENT from an existing folder) a file system that takes no new files
    there (``/proc``, ``/sys``)."""
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if exc.errno == errno.ENOENT:
        return f"{existing} does not take new files or folders"
    reason = os.strerror(exc.errno) if exc.errno is not None else str(exc)
    return reason[:1].lower() + reason[1:]
