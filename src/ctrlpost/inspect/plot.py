"""`inspect RUN --plot OUT.png`: loss, learning rate, grad norm and fidelity against step.

Each fidelity value gets its panel; its references (``*_reconstruction``, the tokenizer's
ceiling, and ``*_noise``, the floor) are drawn in the same panel as dashed and dotted lines.

Drawn with matplotlib's object API on the Agg canvas, never ``pyplot``: no global figure state
and no display backend, so it works on a headless node and inside tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctrlpost.errors import CtrlpostError
from ctrlpost.files import write_atomic

HEADLINE = ("loss", "lr", "grad_norm")
_LOG_SCALE = {"lr"}  # warm-up then decay spans decades
REFERENCES = {"_reconstruction": ("ceiling (tokenizer)", "--"), "_noise": ("floor (noise)", ":")}


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


def plot_metrics(rows: Sequence[dict[str, Any]], out: Path, *, title: str) -> Path:
    """Draw one panel per metric, sharing the step axis, and write ``out`` atomically."""
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
            steps, values = series[member]
            label, style = next(((text, line) for suffix, (text, line) in REFERENCES.items()
                                 if member == name + suffix), (None, "-"))
            ax.plot(steps, values, style, linewidth=1.2 if label is None else 1.0,
                    marker="." if label is None and len(steps) < 50 else None, label=label)
        if len(members) > 1:
            ax.legend(fontsize="small", loc="best")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        values = [v for member in members for v in series[member][1]]
        if name in _LOG_SCALE and min(values) > 0:
            ax.set_yscale("log")
    axes[-1].set_xlabel("step")
    figure.suptitle(title)
    return _save_atomic(figure, out)


def _save_atomic(figure: Any, out: Path) -> Path:
    """Write to a temp file beside ``out``, then rename: a reader never sees half a PNG."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(out, lambda temp: figure.savefig(temp, format="png", dpi=100))
