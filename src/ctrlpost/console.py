"""Rich rendering of command results (kept out of cli.py so each command stays thin)."""

from __future__ import annotations

import json
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


def print_params(modality: Any, schema: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("param", "default", "description", title=f"{modality.name}: {modality.summary}",
                  title_justify="left")
    for key, prop in schema.get("properties", {}).items():
        table.add_row(key, json.dumps(prop.get("default")), prop.get("description", ""))
    Console(highlight=False).print(table)
