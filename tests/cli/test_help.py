"""What `ctrlpost --help` and each command's --help show: placeholders, not type names; the
commands in pipeline order; sentences the terminal wraps; bare `ctrlpost` prints the help."""

from __future__ import annotations

import inspect
import re

import pytest
import typer
from typer.testing import CliRunner

from ctrlpost.cli import app

runner = CliRunner()
PIPELINE = ["fetch-weights", "fetch-data", "annotate", "embed", "verify", "train", "inspect",
            "modalities", "completion"]
WIDE = {"COLUMNS": "400"}  # one help sentence, one line: nothing wraps


def help_of(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], prog_name="ctrlpost", env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


def click_command(name: str) -> typer.core.TyperCommand:
    group = typer.main.get_command(app)
    return group.commands[name]  # type: ignore[attr-defined, no-any-return]


def row(output: str, option: str) -> str:
    """The help table's row of ``option``, its cells separated by single spaces."""
    (line,) = [line for line in output.splitlines() if re.search(rf"│[ *]+{option}\b", line)]
    return " ".join(line.strip("│ ").split())


def test_commands_are_listed_in_pipeline_order() -> None:
    panel = help_of().split("Commands")[1]
    listed = re.findall(r"^│ ([a-z-]+) ", panel, re.M)
    assert listed == PIPELINE


def test_bare_ctrlpost_prints_the_help_and_exits_0() -> None:
    bare = runner.invoke(app, [], prog_name="ctrlpost", env=WIDE)
    assert bare.exit_code == 0
    assert bare.output == help_of() and "Usage: ctrlpost [OPTIONS] COMMAND" in bare.output


def test_one_completion_mechanism_the_completion_command() -> None:
    shown = help_of()
    assert "--install-completion" not in shown and "--show-completion" not in shown
    for gone in ("--install-completion", "--show-completion"):
        result = runner.invoke(app, [gone], prog_name="ctrlpost")
        assert result.exit_code == 2 and "No such option" in result.output


@pytest.mark.parametrize("command", [[], *([name] for name in PIPELINE)])
def test_no_type_names_ranges_or_braces(command: list[str]) -> None:
    shown = help_of(*command)
    for typer_words in ("<bool>", "<int", "<float", "<path>", "<list", "<str>", "<text>",
                        "<=x", "x>=", "x<="):
        assert typer_words not in shown, (command, typer_words)
    usage = next(line for line in shown.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage


@pytest.mark.parametrize("name", PIPELINE)
def test_usage_names_the_arguments_by_placeholder(name: str) -> None:
    usage = next(line for line in help_of(name).splitlines() if "Usage:" in line).strip()
    expected = {"inspect": "PATH", "modalities": "[NAME]", "completion": "SHELL"}
    assert usage == f"Usage: ctrlpost {name} [OPTIONS] {expected.get(name, 'RECIPE')}"


def test_flags_show_no_placeholder_and_values_show_theirs() -> None:
    train = help_of("train")
    assert row(train, "--synthetic").startswith("--synthetic Train random weights")
    assert row(train, "--nproc").startswith("--nproc N The processes to start on this node, "
                                            "from 1 to 64;")
    assert row(train, "--help").startswith("--help -h Show this message")
    assert row(train, "--set").startswith("--set -s KEY=VALUE Override a recipe key")
    assert row(train, "RECIPE").startswith("* RECIPE The recipe, a TOML file")
    verify = help_of("verify")
    assert row(verify, "--gpu-memory").startswith("--gpu-memory GiB The memory of one GPU")
    assert row(verify, "--json").startswith("--json Print the report as JSON.")
    assert row(help_of(), "--version").startswith("--version -V Show the version and exit.")


def test_registered_names_are_filled_into_the_help() -> None:
    assert "Where the clips come from: hdvila, local, synthetic; default: [data].source." in \
        row(help_of("fetch-data"), "--source")


@pytest.mark.parametrize("name", PIPELINE)
def test_help_texts_are_whole_sentences(name: str) -> None:
    command = click_command(name)
    for param in command.get_params(typer.Context(command)):
        text = param.help or ""  # type: ignore[attr-defined]
        assert text[:1].isupper() and text.endswith("."), (name, param.name, text)


@pytest.mark.parametrize("name", PIPELINE)
def test_paragraphs_wrap_at_the_terminal_not_where_the_source_wrapped(name: str) -> None:
    shown = [" ".join(line.split()) for line in help_of(name).splitlines()]
    docstring = inspect.getdoc(click_command(name).callback) or ""
    for paragraph in docstring.split("\n\n"):
        sentence = " ".join(paragraph.split()).replace("\\[", "[")
        assert sentence in shown, (name, sentence)
