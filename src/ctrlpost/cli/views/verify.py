"""What `ctrlpost verify` shows: the stage table and the fidelity scores."""

from __future__ import annotations

from typing import Any


def print_report(report: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    table = Table(title=f"verify {escape(report.recipe)}", title_justify="left")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("details", overflow="fold")
    colour = {"ok": "green", "failed": "red", "skipped": "yellow"}
    for stage in report.stages:
        details = ", ".join(f"{k}={v}" for k, v in stage.summary.items())
        if stage.problems:
            details = f"{len(stage.problems)} problem(s)"
        table.add_row(stage.name, f"[{colour[stage.status]}]{stage.status}[/]", escape(details))
    console.print(table)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for problem in report.problems:
        where = f"{problem.path}: " if problem.path else ""
        err.print(f"[bold red]error:[/] {escape(report.recipe)}: {escape(where + problem.message)}")
    if report.ok:
        console.print("[green]ok[/]: no problems found")


def print_fidelity(report: Any) -> None:
    """`verify --fidelity`: per clip, each checkpoint's headline score beside the clip's floor
    (decoded noise) and ceiling (tokenizer reconstruction); then the mean and where the strips
    are."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    metric = report.headline
    if metric is None:
        console.print("[yellow]this modality has no fidelity metric[/]: strips only, in "
                      f"{escape(str(report.out_dir))}")
        return
    settings = ", ".join(f"{k} {v}" for k, v in report.settings.items())
    table = Table(title=f"fidelity: {metric} (higher is better; {escape(settings)})",
                  title_justify="left")
    table.add_column("clip")
    for checkpoint in report.checkpoints:
        table.add_column(escape(checkpoint.label), justify="right", overflow="fold")
    table.add_column("floor (noise)", justify="right", style="dim")
    table.add_column("ceiling (tokenizer)", justify="right", style="dim")

    def row(name: str, values: list[float | None], refs: dict[str, float]) -> list[str]:
        cells = ["n/a" if v is None else f"{v:.3f}" for v in values]
        return [escape(name), *cells, *(f"{refs[f'{metric}_{k}']:.3f}" if f"{metric}_{k}" in refs
                                        else "n/a" for k in ("noise", "reconstruction"))]

    for clip in report.clips:
        values = [c.per_clip.get(clip, {}).get(metric) for c in report.checkpoints]
        table.add_row(*row(clip, values, report.references.get(clip, {})))
    means = [c.mean.get(metric) for c in report.checkpoints]
    refs = {key: sum(r[key] for r in report.references.values()) / len(report.references)
            for key in (f"{metric}_noise", f"{metric}_reconstruction")
            if report.references and all(key in r for r in report.references.values())}
    table.add_row(*row("mean", means, refs), style="bold")
    console.print(table)
    for checkpoint in report.checkpoints:
        others = ", ".join(f"{k} {v:.3g}" for k, v in checkpoint.mean.items() if k != metric)
        console.print(f"{escape(checkpoint.label)}: {len(checkpoint.per_clip)} clip(s) in "
                      f"{checkpoint.seconds:.1f} s{'; ' + escape(others) if others else ''}")
    console.print(f"strips (hint | generated | hint of generated | real) in "
                  f"{escape(str(report.out_dir))}/<checkpoint>/", soft_wrap=True)
