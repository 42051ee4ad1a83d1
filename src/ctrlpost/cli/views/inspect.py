"""Rich tables for the reports of :mod:`ctrlpost.inspect.report` (the non-JSON `inspect` output)."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from ctrlpost.inspect.compare import Comparison
    from ctrlpost.inspect.report import CheckpointReport, DiffReport, RunReport

_LISTED = 20  # rows of key problems or changed modules shown before "… and N more"


def render(report: CheckpointReport | RunReport | DiffReport,
           console: Console | None = None) -> None:
    """Print ``report`` as tables."""
    from ctrlpost.inspect.report import CheckpointReport, DiffReport

    console = console or Console(highlight=False)
    if isinstance(report, CheckpointReport):
        print_checkpoint(report, console)
    elif isinstance(report, DiffReport):
        print_comparison(report.comparison, console, title=f"diff {report.a} → {report.b}")
    else:
        print_run(report, console)


def _fields(console: Console, what: str, path: object) -> Table:
    """A two-column table; the path goes on its own unwrapped line above (copy-pasteable)."""
    console.print(f"[bold]{what}[/] {escape(str(path))}", soft_wrap=True)
    table = Table(show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    return table


def fmt_bytes(size: int) -> str:
    """``1536`` → ``1.5 KiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def fmt_float(value: float | None, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def print_checkpoint(report: CheckpointReport, console: Console) -> None:
    """The checkpoint's summary, then its key problems if any."""
    layout, params = report.layout, report.layout.params
    table = _fields(console, "checkpoint", report.path)
    if layout.flavor:
        table.add_row("flavor", f"{layout.flavor} ({layout.part})")
    else:
        table.add_row("flavor", f"[red]matches no flavor[/] ({layout.part}; closest "
                                f"{layout.closest_flavor})")
    if layout.num_control_blocks is not None:
        table.add_row("control blocks", str(layout.num_control_blocks))
    parts = [f"{name} {count:,}" for name, count in (
        ("base", params.base), ("control", params.control), ("logvar", params.logvar),
        ("other", params.other)) if count]
    table.add_row("parameters", f"{params.total:,} ({', '.join(parts) or 'none'})")
    why = "the control branch" if layout.part == "control" else "the base is frozen"
    table.add_row("trainable", f"{params.trainable:,} ({why})")
    table.add_row("buffers", f"{params.buffers:,} elements")
    table.add_row("tensors", ", ".join(f"{n} {d}" for d, n in report.dtypes.items()))
    table.add_row("file", fmt_bytes(report.file_bytes))
    table.add_row("iteration", "n/a" if report.iteration is None else f"{report.iteration:,}")
    table.add_row("keys", "[green]ok[/]" if not layout.problems
                  else f"[red]{len(layout.problems)} problem(s)[/] against {layout.closest_flavor}")
    table.add_row("ema", _ema_line(report))
    _add_provenance(table, report)
    console.print(table)
    if layout.problems:
        _print_problems(report, console)
    if report.ema.comparison is not None and report.ema.comparison.changed:
        print_comparison(report.ema.comparison, console, title="ema vs reg, by module")


def _ema_line(report: CheckpointReport) -> str:
    ema = report.ema
    if not ema.present:
        return "no EMA/regular pair beside this file"
    cmp = ema.comparison
    assert cmp is not None
    other = ema.ema_file if ema.ema_file != report.path else ema.reg_file
    name = other.name if other else "?"
    return (f"{escape(name)}: ‖ema−reg‖/‖reg‖ = {fmt_float(cmp.relative_l2)}, "
            f"max |Δ| = {fmt_float(cmp.max_abs)}")


def _add_provenance(table: Table, report: CheckpointReport) -> None:
    if report.layout.part != "base":
        table.add_row("modality", escape(report.modality or "unknown (no recipe recorded and "
                                         "not a released file name)"))
    record = report.provenance
    if isinstance(record.recipe, dict):
        job = record.recipe.get("job", {})
        name = "/".join(str(job.get(k)) for k in ("project", "group", "name") if job.get(k))
        table.add_row("recipe", escape(f"{name or '(no [job])'} from {record.recipe_source}"))
    elif record.recipe is not None:
        table.add_row("recipe", escape(f"(text) from {record.recipe_source}"))
    else:
        table.add_row("recipe", "none recorded")
    if record.versions:
        table.add_row("versions", escape(", ".join(f"{k} {v}" for k, v in record.versions.items())))
    for note in report.notes:
        table.add_row("note", f"[yellow]{escape(note)}[/]")


def _print_problems(report: CheckpointReport, console: Console) -> None:
    """One unwrapped line per bad key, so long names stay whole and greppable."""
    layout = report.layout
    console.print(f"[bold]key problems[/] against {layout.closest_flavor} ({layout.part}):")
    labels = {"missing": "missing    ", "unexpected": "unexpected ", "shape": "wrong shape"}
    for problem in layout.problems[:_LISTED]:
        shapes = f"{_shape(problem.found)} (expected {_shape(problem.expected)})"
        detail = {"missing": f"(expected {_shape(problem.expected)})",
                  "unexpected": _shape(problem.found), "shape": shapes}[problem.kind]
        console.print(f"  [red]{labels[problem.kind]}[/] {escape(problem.key)} {detail}",
                      soft_wrap=True)
    more = len(layout.problems) - _LISTED
    if more > 0:
        console.print(f"  … and {more} more (--json lists them all)")


def _shape(shape: tuple[int, ...] | None) -> str:
    return "" if shape is None else str(list(shape))


def print_comparison(cmp: Comparison, console: Console, *, title: str) -> None:
    """Changed modules with max |Δ| and ‖a−b‖/‖a‖, then keys found on one side only."""
    console.print(f"[bold]{escape(title)}[/]", soft_wrap=True)
    table = Table("module", "tensors", "max |Δ|", "‖a−b‖/‖a‖")
    table.columns[0].overflow = "fold"
    changed = cmp.changed
    for change in changed[:_LISTED]:
        table.add_row(escape(change.module), str(change.tensors), fmt_float(change.max_abs),
                      fmt_float(change.relative))
    console.print(table)
    unchanged = len(cmp.modules) - len(changed)
    console.print(f"{len(changed)} module(s) changed, {unchanged} identical; overall "
                  f"‖a−b‖/‖a‖ = {fmt_float(cmp.relative_l2)}")
    for label, keys in (("only in a", cmp.only_in_a), ("only in b", cmp.only_in_b)):
        if keys:
            console.print(f"[yellow]{label}[/]: {escape(', '.join(keys[:_LISTED]))}",
                          soft_wrap=True)
    for key, a, b in cmp.shape_mismatches:
        console.print(f"[yellow]shape differs[/]: {escape(key)} {list(a)} vs {list(b)}",
                      soft_wrap=True)


def print_run(report: RunReport, console: Console) -> None:
    """The run's summary table, then the newest export's report."""
    run, metrics = report.run, report.run.metrics()
    table = _fields(console, "run", run.path)
    job = run.job
    table.add_row("recipe", escape(str(job.get("name") or "(no recipe.toml)")))
    last_step = "n/a" if metrics["last_step"] is None else f"{metrics['last_step']:,}"
    table.add_row("steps logged", f"{metrics['steps_logged']} (last step {last_step})")
    table.add_row("loss", f"{fmt_float(metrics['first_loss'], '.4g')} → "
                          f"{fmt_float(metrics['last_loss'], '.4g')}")
    table.add_row("last lr", fmt_float(metrics["last_lr"]))
    table.add_row("last grad norm", fmt_float(metrics["last_grad_norm"]))
    if metrics["last_samples_per_s"] is not None:
        table.add_row("samples/s", fmt_float(metrics["last_samples_per_s"]))
    for name, value in metrics["extra"].items():
        table.add_row(escape(name), fmt_float(value))
    table.add_row("training states", _steps(run.complete_steps, run.incomplete_states))
    table.add_row("exports", escape(", ".join(run.exports) or "none"))
    if run.validations:
        steps = [step for step, _ in run.validations]
        table.add_row("validations", f"{len(steps)} (steps {_step_list(steps)}); strips of "
                                     f"step {steps[-1]:,} below")
    if run.versions:
        table.add_row("versions", escape(", ".join(f"{k} {v}" for k, v in run.versions.items())))
    for note in run.notes:
        table.add_row("note", f"[yellow]{escape(note)}[/]")
    if report.plot is not None:
        table.add_row("plot", escape(str(report.plot)))
    console.print(table)
    strips = run.strips()
    if strips:
        console.print(f"[bold]validation strips[/] ({_strip_columns(report)}):")
        for strip in strips:
            console.print(f"  {escape(str(strip))}", soft_wrap=True)
    if report.checkpoint is not None:
        print_checkpoint(report.checkpoint, console)


def _step_list(steps: list[int]) -> str:
    shown = ", ".join(f"{s:,}" for s in steps[-6:])
    return shown if len(steps) <= 6 else f"…, {shown}"


def _steps(complete: tuple[int, ...], incomplete: tuple[str, ...]) -> str:
    text = ", ".join(f"step {s:,}" for s in complete) or "none"
    if incomplete:
        text += f" [yellow](incomplete: {escape(', '.join(incomplete))})[/]"
    return text


def show(report: CheckpointReport | RunReport | DiffReport, *, as_json: bool = False) -> None:
    """Print an `inspect` report as JSON or as tables; a reader that closes the pipe early
    (`ctrlpost inspect ... | head`) is not an error."""
    try:
        if as_json:
            print(json.dumps(report.to_json(), indent=2, default=str), flush=True)
            return
        render(report)
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at devnull so the interpreter's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _strip_columns(report: RunReport) -> str:
    """The columns of the run's strips: a hint read from a per-clip file (depth, seg,
    keypoint) cannot be made again from the generated frames, nor one whose draw is about
    another target (upscale), so that column is left out."""
    from ctrlpost.modalities import registry

    modality = report.checkpoint.modality if report.checkpoint is not None else None
    installed = registry.installed_modalities()
    known = installed.get(modality) if modality is not None else None
    no_redraw = known is not None and (known.hint_file is not None or known.replaces_video)
    return ("hint | generated | real" if no_redraw
            else "hint | generated | hint of generated | real")
