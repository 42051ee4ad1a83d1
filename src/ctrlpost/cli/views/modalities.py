"""What `ctrlpost modalities NAME` shows: the parameters and where hints are exact."""

from __future__ import annotations

import json
from typing import Any


def print_params(modality: Any, schema: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("param", "default", "description", title=f"{modality.name}: {modality.summary}",
                  title_justify="left")
    for key, prop in schema.get("properties", {}).items():
        table.add_row(key, json.dumps(prop.get("default")), prop.get("description", ""))
    Console(highlight=False).print(table)


def print_exactness(exactness: list[dict[str, Any]]) -> None:
    """`modalities NAME`: on which library versions the hints equal the reference's, and whether
    the version in use is one of them."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    if not exactness:
        console.print("hints: no byte-for-byte claim against the reference")
    for entry in exactness:
        library, versions = escape(entry["library"]), escape(entry["versions"])
        claim = f"hints are byte-identical to the reference's on {library} {versions}"
        if entry["installed"] is None:
            console.print(f"{claim}; {library} ({entry['module']}) is not installed")
        elif entry["exact"]:
            console.print(f"{claim}; {library} {escape(entry['installed'])} in use: exact")
        else:
            console.print(f"{claim}; {library} {escape(entry['installed'])} in use: [yellow]not "
                          f"exact[/] ({escape(entry['why'])})")
