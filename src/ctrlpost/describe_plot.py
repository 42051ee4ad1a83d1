"""`inspect RUN --plot OUT.png`: loss, learning rate, grad norm (and fidelity) against step.

Drawn with matplotlib's object API on the Agg canvas, never ``pyplot``: no global figure state
and no display backend, so it works on a headless node and inside tests.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctrlpost.errors import CtrlpostError

HEADLINE = ("loss", "lr", "grad_norm")
_LOG_SCALE = {"lr"}  # warm-up then decay spans decades


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


def plot_metrics(rows: Sequence[dict[str, Any]], out: Path, *, title: str) -> Path:
    """Draw one panel per metric, sharing the step axis, and write ``out`` atomically."""
    series = plot_series(rows)
    if not series:
        raise CtrlpostError("nothing to plot: metrics.jsonl has no loss, lr or grad_norm values",
                            hint="plot again once the run has logged a step")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.0, 2.2 * len(series) + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, (steps, values)) in zip(axes, series.items(), strict=True):
        ax.plot(steps, values, linewidth=1.2, marker="." if len(steps) < 50 else None)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        if name in _LOG_SCALE and min(values) > 0:
            ax.set_yscale("log")
    axes[-1].set_xlabel("step")
    figure.suptitle(title)
    return _save_atomic(figure, out)


def _save_atomic(figure: Any, out: Path) -> Path:
    """Write to a temp file beside ``out``, then rename: a reader never sees half a PNG."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with temp.open("wb") as handle:
            figure.savefig(handle, format="png", dpi=100)
        os.replace(temp, out)
    finally:
        temp.unlink(missing_ok=True)
    return out
