"""`--set KEY=VALUE` completes from the recipe schema: every key, and the values a key allows,
written so that the override parser reads back exactly that value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from ctrlpost import recipe as recipes
from ctrlpost.cli import app
from ctrlpost.modalities import registry

runner = CliRunner()


def complete(line: str) -> list[str]:
    """The replies to a TAB at the end of ``line``, asked as the shipped scripts ask: the line
    as COMP_WORDS, '' appended so that COMP_CWORD=-1 is the word being completed."""
    env = {"COMP_WORDS": line + "''", "COMP_CWORD": "-1", "_CTRLPOST_COMPLETE": "complete_bash"}
    result = runner.invoke(app, [], env=env, prog_name="ctrlpost")
    assert result.exit_code == 0, result.output
    return result.output.split()


def at(data: Any, key: str) -> Any:
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def leaves(data: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of the values of a dumped recipe; arrays of tables by index."""
    found = set()
    for name, value in data.items():
        if isinstance(value, dict) and name != "params":  # params: the plugin's free-form table
            found |= leaves(value, f"{prefix}{name}.")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            found |= {path for i, item in enumerate(value) for path in leaves(item, f"{prefix}"
                                                                               f"{name}.{i}.")}
        else:
            found.add(f"{prefix}{name}")
    return found


def test_a_key_prefix_offers_the_keys_of_its_section(repo: Path) -> None:
    offered = complete("ctrlpost verify r.toml --set tr")
    assert offered == [f"train.{name}=" for name in recipes.TrainSection.model_fields]
    assert {"train.steps=", "train.batch_size="} <= set(offered)
    assert complete("ctrlpost train r.toml -s data.embed.b") == [
        "data.embed.batch_size=", "data.embed.batch_tokens="]


def test_every_recipe_key_is_offered_and_each_one_is_a_real_key(repo: Path) -> None:
    offered = [key.removesuffix("=") for key in complete("ctrlpost verify r.toml --set ")]
    dumped = recipes.load(repo / "recipes/edge_tiny.toml").model_dump(mode="json")
    assert set(offered) == leaves(dumped) | {"job.output_root", "weights.control",
                                             "data.local.videos", "data.local.captions",
                                             "validation.root", "validation.num_frames",
                                             "validation.resolution"}, "unset (None) keys"
    assert "control.0.modality" in offered and "parallel.activation_checkpointing" in offered


def test_array_of_tables_keys_take_any_index() -> None:
    assert complete("ctrlpost verify r.toml --set control.1.w") == ["control.1.weight="]
    modalities = list(registry.installed_modalities())
    assert complete("ctrlpost verify r.toml --set control.3.modality=") == [
        f"control.3.modality={name}" for name in modalities]


def test_choices_are_offered_after_the_equals_sign() -> None:
    key = "parallel.activation_checkpointing"
    assert complete(f"ctrlpost verify r.toml --set {key}=") == [
        f"{key}=none", f"{key}=selective", f"{key}=full", f"{key}=auto"]
    assert complete(f"ctrlpost verify r.toml --set {key}=s") == [f"{key}=selective"]
    assert complete("ctrlpost verify r.toml --set parallel.compile=") == [
        "parallel.compile=true", "parallel.compile=false"]
    # "720" would be read as the number 720: offered as a TOML string.
    assert complete("ctrlpost verify r.toml --set data.resolution=")[0] == 'data.resolution="720"'
    assert complete("ctrlpost verify r.toml --set model.flavor=") == [
        f"model.flavor={name}" for name in registry.installed_flavors()]
    assert complete("ctrlpost verify r.toml --set train.steps=") == []
    assert complete("ctrlpost verify r.toml --set no.such.key=") == []


def test_every_offered_value_is_read_back_as_that_value(repo: Path) -> None:
    recipe = repo / "recipes/edge_tiny.toml"
    # Values valid only together with another key: what the recipe also needs set.
    companions = {"model.base_precision=fp8": ['model.precision="bf16"'],
                  "model.base_precision=fp8-attention": ['model.precision="bf16"']}
    checked = 0
    for key in complete("ctrlpost verify r.toml --set "):
        for choice in complete(f"ctrlpost verify r.toml --set {key}"):
            text = choice.partition("=")[2]  # TOML (true, "720") or a bare word (selective)
            as_json = text if text.startswith('"') or text in ("true", "false") else f'"{text}"'
            sets = [choice, *companions.get(choice, [])]
            loaded = at(recipes.load(recipe, sets).model_dump(mode="json"), key[:-1])
            assert json.dumps(loaded) == as_json, (choice, loaded)
            checked += 1
    assert checked > 40, checked
