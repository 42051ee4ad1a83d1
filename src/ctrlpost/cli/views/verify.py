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
        details = describe(stage.name, stage.summary)
        if stage.problems:
            details = f"{len(stage.problems)} problem(s)"
        table.add_row(stage.name, f"[{colour[stage.status]}]{stage.status}[/]", escape(details))
    console.print(table)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for line in warnings(report):
        err.print(f"[bold yellow]warning:[/] {escape(line)}")
    for problem in report.problems:
        where = f"{problem.path}: " if problem.path else ""
        err.print(f"[bold red]error:[/] {escape(report.recipe)}: {escape(where + problem.message)}")
    if report.ok:
        console.print("[green]ok[/]: no problems found")


def warnings(report: Any) -> list[str]:
    """What deserves a line of its own without failing verify: captions or embeddings whose
    video is gone (their clips would silently leave training)."""
    lines = []
    for stage in report.stages:
        if stage.summary.get("orphans"):
            files = stage.summary.get("orphan_files", [])
            lines.append(f"{stage.summary['orphans']} file(s) without their video, so their "
                         f"clips are not trained on: {', '.join(files)}; restore the videos "
                         "(`ctrlpost fetch-data RECIPE` fetches missing ones) or delete these")
    return lines


def describe(stage: str, summary: dict[str, Any]) -> str:
    """A stage's summary in words: lists joined, tables as "name value", no Python reprs; the
    layout stage as a sentence saying what was sized for what."""
    if stage == "layout" and "bucket" in summary:
        return _layout(summary)
    return "; ".join(f"{key.replace('_', ' ')}: {_words(value)}" for key, value in summary.items())


def _layout(s: dict[str, Any]) -> str:
    fits = "fits" if s.get("fits") else "does not fit"
    sentence = (f"{s['gpus']} {s.get('device', 'GPUs')} of {s['gpu_memory_gib']:g} GiB, sized "
                f"for {s['bucket']} ({s.get('bucket_reason', 'the largest bucket')}), "
                f"{s['tokens']} tokens: peak {s['peak_allocated_gib']:g} GiB at "
                f"{s['peak_at']}, {s['total_gib']:g} GiB with overhead, of a "
                f"{s['budget_gib']:g} GiB budget: {fits}")
    if "checkpointing_plan" in s:  # which blocks keep their self-attention outputs
        sentence += f"; checkpointing {s['checkpointing']}: {s['checkpointing_plan']}"
    parts = {k: v for k, v in s.get("breakdown_gib", {}).items() if v}
    if parts:
        sentence += "; largest parts: " + ", ".join(
            f"{k.replace('_', ' ')} {v:g} GiB"
            for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:3])
    return sentence


def _words(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_words(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(_words(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


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
