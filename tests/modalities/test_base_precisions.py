"""`[model].base_precision` is a registry like flavors: ctrlpost's own (bf16, fp8,
fp8-attention) come through the same hook a third party's does, and the recipe, completion,
`verify`, the memory planner and `build_model` all read the registered descriptor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pluggy
import pytest
import torch
from typer.testing import CliRunner

from ctrlpost import recipe as recipes
from ctrlpost.cli import app
from ctrlpost.engine import build, memory
from ctrlpost.modalities import BasePrecision, hookimpl, registry
from ctrlpost.recipe import RecipeInvalid

from ..engine.conftest import TINY, one_process_group  # noqa: F401  (a fixture)

MINIMAL = {"job": {"name": "x"}, "control": [{"modality": "edge"}], "train": {"steps": 1}}


class Precisions:
    """An instance plugin registering the base precisions it is given."""

    def __init__(self, *precisions: BasePrecision) -> None:
        self.precisions = precisions

    @hookimpl
    def ctrlpost_register_base_precisions(self) -> list[BasePrecision]:
        return list(self.precisions)


def extended(monkeypatch: pytest.MonkeyPatch, *precisions: BasePrecision) -> pluggy.PluginManager:
    """The installed plugins and one more, "acme", registering ``precisions``; made the
    process's plugin manager."""
    manager = registry.build_plugin_manager()
    manager.register(Precisions(*precisions), name="acme 1.0/a")
    monkeypatch.setattr(registry, "plugin_manager", lambda: manager)
    return manager


def test_the_builtins_come_through_the_hook() -> None:
    isolated = registry.build_plugin_manager(load_entrypoints=False)
    found = registry.installed_base_precisions(isolated)
    assert list(found) == ["bf16", "fp8", "fp8-attention"]
    assert registry.origin_of("fp8", isolated, "base precision") == "ctrlpost"
    assert not found["bf16"].needs_bf16 and found["fp8"].needs_bf16
    # a selective block keeps fp8-attention's output as e4m3: one byte an element
    assert [p.attention_output_bytes for p in found.values()] == [None, None, 1]
    assert found["fp8-attention"].problems is not None and found["fp8"].problems is None


def test_the_recipe_takes_a_registered_name_and_its_compute_needs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    extended(monkeypatch, BasePrecision("int8", "", lambda base: 0, needs_bf16=False),
             BasePrecision("fp6", "", lambda base: 0))
    fp32 = {"flavor": "tiny", "precision": "fp32"}
    rec = recipes.validate({**MINIMAL, "model": {**fp32, "base_precision": "int8"}})
    assert rec.model.base_precision == "int8"
    with pytest.raises(RecipeInvalid) as info:
        recipes.validate({**MINIMAL, "model": {**fp32, "base_precision": "fp6"}})
    (problem,) = info.value.problems
    assert (problem.path, problem.message) == (
        "model", 'base_precision = "fp6" needs precision = "bf16"')
    with pytest.raises(RecipeInvalid) as info:
        recipes.validate({**MINIMAL, "model": {"base_precision": "INT8"}})
    (problem,) = info.value.problems
    assert (problem.path, problem.message) == (
        "model.base_precision", "Input should be 'bf16', 'fp6', 'fp8', 'fp8-attention' or "
        "'int8' (got 'INT8'); did you mean 'int8'?")


def test_a_name_provided_twice_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    manager = extended(monkeypatch, BasePrecision("fp8", "", lambda base: 0))
    with pytest.raises(registry.PluginError, match="base precision 'fp8' is provided twice"):
        registry.installed_base_precisions(manager)


def test_completion_offers_every_registered_name(monkeypatch: pytest.MonkeyPatch) -> None:
    extended(monkeypatch, BasePrecision("int8", "", lambda base: 0))
    env = {"COMP_WORDS": "ctrlpost verify r.toml --set model.base_precision=''",
           "COMP_CWORD": "-1", "_CTRLPOST_COMPLETE": "complete_bash"}
    result = CliRunner().invoke(app, [], env=env, prog_name="ctrlpost")
    assert result.output.split() == [f"model.base_precision={name}"
                                     for name in ("bf16", "fp8", "fp8-attention", "int8")]


@pytest.mark.usefixtures("one_process_group")
def test_build_model_converts_the_base_with_the_registered_precision(
        monkeypatch: pytest.MonkeyPatch) -> None:
    converted: list[Any] = []
    extended(monkeypatch, BasePrecision("marked", "", lambda base: converted.append(base) or 0,
                                        needs_bf16=False))
    rec = recipes.load(TINY, ['model.base_precision="marked"'])
    runtime = build.Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    parts = build.build_model(rec, runtime, random_weights=True)
    assert converted == [parts.model.base]


def test_the_planner_sizes_attention_with_the_precisions_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    extended(monkeypatch, BasePrecision("narrow", "", lambda base: 0, attention_output_bytes=3))
    rec = recipes.load(TINY, [])
    jobs = {name: memory.training_job(rec.data, rec.train, rec.model.model_copy(
        update={"base_precision": name}), rec.parallel, world_size=1)
        for name in ("bf16", "fp8-attention", "narrow")}
    assert {name: job.base_attention_output_bytes for name, job in jobs.items()} == {
        "bf16": None, "fp8-attention": 1, "narrow": 3}


def test_verify_reports_a_precisions_problems_under_its_key(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    asked: list[tuple[int, int]] = []

    def problems(base: Any, tokens: int) -> list[str]:
        asked.append((base.head_dim, tokens))
        return ["needs the acme accelerator: pip install acme"]

    extended(monkeypatch, BasePrecision("acme", "", lambda base: 0, needs_bf16=False,
                                        problems=problems))
    result = CliRunner().invoke(app, [
        "verify", str(TINY), "--json", "--stages", "recipe,plugins", "--set",
        'model.base_precision="acme"', "--set", f"job.output_root='{tmp_path}'"])
    assert result.exit_code == 2, result.output
    report = json.loads(result.stdout)
    assert report["problems"] == [{"stage": "plugins", "path": "model.base_precision",
                                   "message": "needs the acme accelerator: pip install acme"}]
    rec = recipes.load(TINY, [])
    dims = memory.model_dims(build.flavor_of(rec))
    tokens = memory.training_job(rec.data, rec.train, rec.model, rec.parallel,
                                 world_size=1).tokens(dims)
    assert asked == [(32, tokens)]  # the tiny flavor's heads, its largest bucket's tokens
