"""The ``ctrlpost`` command line: one thin function per command.

Heavy modules (torch, transformers, cv2, pydantic models) are imported inside the commands, so
``ctrlpost --help`` and shell completion, which runs the program on every TAB, stay fast.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ctrlpost.errors import CtrlpostError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="ctrlpost",
    help="Post-train Cosmos-Transfer1 ControlNets: fetch-weights, fetch-data, embed, verify, "
    "train, inspect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

SHELLS = ("bash", "zsh", "fish")


def _render_error(exc: CtrlpostError) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    for line in exc.message.splitlines() or [""]:
        console.print(f"[bold red]error:[/] {escape(line)}")
    if exc.hint:
        console.print(f"[bold cyan]hint:[/] {escape(exc.hint)}")


def user_errors(fn: F) -> F:
    """Render :class:`CtrlpostError` as ``error: ...`` (+ ``hint: ...``) and exit with its code.

    Anything else is an internal error: one line and exit 1. ``CTRLPOST_DEBUG=1`` re-raises so
    the full traceback is shown.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except CtrlpostError as exc:
            if os.environ.get("CTRLPOST_DEBUG") == "1":
                raise
            _render_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get("CTRLPOST_DEBUG") == "1":
                raise
            internal = CtrlpostError(
                f"internal error: {type(exc).__name__}: {exc}",
                hint="rerun with CTRLPOST_DEBUG=1 for the traceback, and report it",
            )
            _render_error(internal)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# completion helpers: cheap, no torch


def complete_recipe(incomplete: str) -> Iterator[str]:
    """``*.toml`` files and folders matching what has been typed."""
    base = Path(incomplete).parent if incomplete else Path(".")
    prefix = Path(incomplete).name if incomplete and not incomplete.endswith("/") else ""
    if incomplete.endswith("/"):
        base = Path(incomplete)
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(prefix) or entry.name.startswith("."):
            continue
        shown = str(entry) if str(base) != "." or incomplete.startswith("./") else entry.name
        if entry.is_dir():
            yield shown + "/"
        elif entry.suffix == ".toml":
            yield shown


def complete_modality(incomplete: str) -> Iterator[str]:
    """Names of installed modality plugins."""
    from ctrlpost.modalities import registry

    try:
        names = list(registry.installed_modalities())
    except CtrlpostError:
        return
    yield from (name for name in names if name.startswith(incomplete))


def complete_shell(incomplete: str) -> Iterator[str]:
    yield from (shell for shell in SHELLS if shell.startswith(incomplete))


RecipeArg = Annotated[
    Path,
    typer.Argument(
        help="Recipe TOML file, e.g. recipes/edge_tiny.toml.",
        autocompletion=complete_recipe,
        show_default=False,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a recipe key before validation: --set train.steps=10 (value is TOML).",
        metavar="KEY=VALUE",
    ),
]


def _version(value: bool) -> None:
    if value:
        from ctrlpost import __version__

        typer.echo(f"ctrlpost {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", help="Show the version and exit.", callback=_version,
                     is_eager=True),
    ] = False,
) -> None:
    """Post-train Cosmos-Transfer1 ControlNets on your own videos.

    [b]Workflow[/b]: fetch-weights → fetch-data → embed → verify → train → inspect.
    Set CTRLPOST_DEBUG=1 to see full tracebacks.
    """


# ---------------------------------------------------------------------------------------------
# verify


@app.command(
    epilog="Examples:\n\n  ctrlpost verify recipes/edge_hdvila.toml\n\n"
    "  ctrlpost verify recipes/edge_tiny.toml --set train.steps=10 --json",
)
@user_errors
def verify(
    recipe: RecipeArg,
    overrides: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
    show_recipe: Annotated[
        bool, typer.Option("--show-recipe", help="Print the resolved recipe (TOML) and exit.")
    ] = False,
) -> None:
    """Check a recipe and everything it needs before a run; report every problem at once.

    Exits 0 when nothing is wrong, 2 when something is.
    """
    from ctrlpost import preflight

    if show_recipe:
        from ctrlpost import recipe as recipes

        typer.echo(recipes.dump_toml(recipes.load(recipe, overrides or [])), nl=False)
        return
    report = preflight.run(recipe, overrides or [])
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(2)


def _print_report(report: Any) -> None:
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


# ---------------------------------------------------------------------------------------------
# modalities


@app.command()
@user_errors
def modalities(
    name: Annotated[
        str | None,
        typer.Argument(help="Show one modality's parameters.", autocompletion=complete_modality,
                       show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List installed control modalities, or the parameters of one."""
    from ctrlpost.modalities import registry

    if name is not None:
        modality = registry.get_modality(name)
        schema = modality.params_model.model_json_schema()
        if as_json:
            typer.echo(json.dumps({"name": modality.name, "params": schema}, indent=2))
            return
        _print_params(modality, schema)
        return
    found = registry.installed_modalities()
    rows: list[dict[str, Any]] = [
        {"name": m.name, "from": registry.origin_of(m.name), "hint_key": m.hint_key,
         "presets": list(m.presets), "summary": m.summary}
        for m in found.values()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "from", "presets", "summary")
    for row in rows:
        table.add_row(row["name"], row["from"], ", ".join(row["presets"]), row["summary"])
    Console(highlight=False).print(table)


def _print_params(modality: Any, schema: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("param", "default", "description", title=f"{modality.name}: {modality.summary}",
                  title_justify="left")
    for key, prop in schema.get("properties", {}).items():
        table.add_row(key, json.dumps(prop.get("default")), prop.get("description", ""))
    Console(highlight=False).print(table)


# ---------------------------------------------------------------------------------------------
# completion


@app.command()
@user_errors
def completion(
    shell: Annotated[
        str,
        typer.Argument(help="bash, zsh or fish.", autocompletion=complete_shell,
                       show_default=False),
    ],
) -> None:
    """Print the shell completion script.

    bash: ctrlpost completion bash > ~/.local/share/bash-completion/completions/ctrlpost
    """
    typer.echo(completion_script(shell), nl=False)


def completion_script(shell: str) -> str:
    """The completion script Typer generates for ``shell``, for the program ``ctrlpost``."""
    if shell not in SHELLS:
        raise CtrlpostError(f"unknown shell {shell!r}", hint=f"choose one of: {', '.join(SHELLS)}")
    import io
    from contextlib import redirect_stdout, suppress

    env_var = "_CTRLPOST_COMPLETE"
    previous = os.environ.get(env_var)
    os.environ[env_var] = f"source_{shell}"
    buffer = io.StringIO()
    try:
        with redirect_stdout(buffer), suppress(SystemExit):
            app(prog_name="ctrlpost", args=[])
    finally:
        if previous is None:
            del os.environ[env_var]
        else:
            os.environ[env_var] = previous
    return buffer.getvalue()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="ctrlpost")


if __name__ == "__main__":  # pragma: no cover
    main()
