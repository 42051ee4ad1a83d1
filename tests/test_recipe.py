from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctrlpost import recipe as recipes
from ctrlpost.errors import RecipeError
from ctrlpost.recipe import RecipeInvalid, tomllib

MINIMAL = '[job]\nname = "x"\n[[control]]\nmodality = "edge"\n[train]\nsteps = 5\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


SHIPPED = sorted(p.stem for p in (Path(__file__).parents[1] / "recipes").glob("*.toml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_validate(repo: Path, name: str) -> None:
    rec = recipes.load(repo / "recipes" / f"{name}.toml")
    assert rec.train.steps >= 1


def test_hdvila_recipes_carry_the_reference_values(repo: Path) -> None:
    edge = recipes.load(repo / "recipes/edge_hdvila.toml")
    assert edge.data.num_frames == 121 and edge.data.resolution == "720"
    assert edge.parallel.nproc_per_node == 8 and edge.train.batch_size == 1
    assert edge.model.num_control_blocks == 3 and edge.model.flavor == "7b"
    assert edge.optim.lr == 2**-14.3
    assert edge.optim.betas == (0.9, 0.99)
    assert (edge.optim.weight_decay, edge.optim.eps) == (0.1, 1e-10)
    assert (edge.optim.warmup_steps, edge.optim.warmup_start_factor) == (2500, 1e-6)
    assert edge.optim.grad_clip_norm == 1.0 and edge.train.ema_s == 0.1
    assert edge.diffusion.text_dropout == 0.2
    assert (edge.diffusion.condition_frames_min, edge.diffusion.condition_frames_max) == (0, 2)
    assert edge.checkpoint.every_steps == 1000
    assert edge.job.project == "cosmos_transfer1_posttrain" and edge.job.group == "CTRL_7Bv1_lvg"
    assert edge.job.name == "CTRL_7Bv1pt3_lvg_tp_121frames_control_input_edge_block3"
    assert edge.control[0].modality == "edge"
    assert edge.weights.control == "nvidia/Cosmos-Transfer1-7B/edge_control.pt"
    blur = recipes.load(repo / "recipes/blur_hdvila.toml")
    assert blur.control[0].modality == "blur"
    assert blur.weights.control == "nvidia/Cosmos-Transfer1-7B/vis_control.pt"
    assert blur.optim == edge.optim and blur.diffusion == edge.diffusion


def test_run_dir_follows_output_root(tmp_path: Path) -> None:
    rec = recipes.load(write(tmp_path, MINIMAL))
    assert rec.run_dir({}) == Path("checkpoints/ctrlpost/default/x")
    assert rec.run_dir({"OUTPUT_ROOT": "/runs"}) == Path("/runs/ctrlpost/default/x")


def test_typo_is_one_problem_with_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("steps = 5", "stpes = 10"))
    with pytest.raises(RecipeInvalid) as info:
        recipes.load(path)
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("train.stpes", "unknown key; did you mean 'steps'?")
    ]
    assert str(info.value) == f"{path}: train.stpes: unknown key; did you mean 'steps'?"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = MINIMAL + (
        '[optim]\nlr = -1\nbetas = [0.9, 1.5]\n[parallel]\nactivation_checkpointing = "some"\n'
    )
    text = text.replace('modality = "edge"', 'modality = "edge"\nwieght = 2')
    with pytest.raises(RecipeInvalid) as info:
        recipes.load(write(tmp_path, text))
    paths = sorted(p.path for p in info.value.problems)
    assert paths == ["control[0].wieght", "optim.betas", "optim.lr",
                     "parallel.activation_checkpointing"]
    messages = {p.path: p.message for p in info.value.problems}
    assert "did you mean 'weight'" in messages["control[0].wieght"]
    assert "greater than 0" in messages["optim.lr"] and "(got -1)" in messages["optim.lr"]


def test_unknown_section_lists_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(RecipeInvalid) as info:
        recipes.load(write(tmp_path, MINIMAL + "[zzz]\na = 1\n"))
    (problem,) = info.value.problems
    assert problem.path == "zzz" and "valid: job, weights" in problem.message


def test_cross_field_rules(tmp_path: Path) -> None:
    text = MINIMAL + "[diffusion]\ncondition_frames_min = 2\ncondition_frames_max = 1\n"
    with pytest.raises(RecipeInvalid, match="condition_frames_min must not exceed"):
        recipes.load(write(tmp_path, text))


def test_overrides_apply_before_validation(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    rec = recipes.load(path, ["train.steps=7", "control.0.params.preset='medium'",
                              "optim.betas=[0.8, 0.9]", "job.name=other"])
    assert rec.train.steps == 7 and rec.job.name == "other"
    assert rec.control[0].params == {"preset": "medium"}
    assert rec.optim.betas == (0.8, 0.9)
    with pytest.raises(RecipeInvalid, match=r"train\.stpes: unknown key; did you mean 'steps'"):
        recipes.load(path, ["train.stpes=3"])
    with pytest.raises(RecipeInvalid, match="not KEY=VALUE"):
        recipes.load(path, ["train.steps"])
    with pytest.raises(RecipeInvalid, match="not an index below 1"):
        recipes.load(path, ["control.4.weight=1"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe not found"):
        recipes.load(tmp_path / "nope.toml")
    with pytest.raises(RecipeError, match="invalid TOML"):
        recipes.load(write(tmp_path, "[job\nname="))


def test_recipe_is_frozen(tmp_path: Path) -> None:
    rec = recipes.load(write(tmp_path, MINIMAL))
    with pytest.raises(Exception, match="frozen"):
        rec.train.steps = 3  # type: ignore[misc]


@pytest.mark.parametrize("name", ["edge_hdvila", "blur_hdvila", "edge_tiny"])
def test_resolved_dump_round_trips(repo: Path, name: str) -> None:
    rec = recipes.load(repo / "recipes" / f"{name}.toml")
    text = recipes.dump_toml(rec)
    assert recipes.validate(tomllib.loads(text)) == rec
    assert "[[control]]" in text and "[control.params]" in text


def test_validation_section_defaults_and_rules(tmp_path: Path, repo: Path) -> None:
    rec = recipes.load(write(tmp_path, MINIMAL))
    assert rec.validation.every_steps == 0  # off unless asked for
    tiny = recipes.load(repo / "recipes" / "edge_tiny.toml")
    assert tiny.validation.every_steps > 0 and tiny.validation.guidance == 0.0
    edge = recipes.load(repo / "recipes" / "edge_hdvila.toml")
    assert (edge.validation.every_steps, edge.validation.num_frames) == (500, 57)
    cases = {
        "validation.num_frames=20": ("validation.num_frames", "1 + 8k", "e.g. 17 or 25"),
        "validation.num_frames=129": ("", "exceeds data.num_frames", ""),
        "validation.condition_frames=16": ("", "below the clip's 16 latent frames", ""),
        "validation.sampler='dpm'": ("validation.sampler", "'heun' or 'euler'", ""),
    }
    for override, (where, *needles) in cases.items():
        with pytest.raises(RecipeInvalid) as info:
            recipes.load(write(tmp_path, MINIMAL), [override])
        (problem,) = info.value.problems
        assert problem.path == where and all(n in problem.message for n in needles), problem


def _float_keys(model: type, prefix: str) -> list[str]:
    """Dotted override paths of every float field reachable from ``model`` (arrays: item 0)."""
    keys = []
    for name, field in model.model_fields.items():
        nested = recipes._model_of(field.annotation)
        if nested is not None:
            array = "tuple" in str(field.annotation) or "list" in str(field.annotation)
            keys += _float_keys(nested, f"{prefix}{name}.{'0.' if array else ''}")
        elif field.annotation in (float, float | None):
            keys.append(f"{prefix}{name}")
    return keys


def test_every_float_of_the_recipe_is_finite(tmp_path: Path) -> None:
    """The rule is recipe-wide (one config of every section), so a key added later has it too."""
    keys = _float_keys(recipes.Recipe, "")
    assert {"optim.lr", "control.0.weight", "diffusion.sigma_max", "train.ema_s"} <= set(keys)
    path = write(tmp_path, MINIMAL)
    for key in keys:
        for value in ("inf", "-inf", "nan"):
            with pytest.raises(RecipeInvalid) as info:
                recipes.load(path, [f"{key}={value}"])
            (problem,) = info.value.problems
            assert problem.path == key.replace(".0.", "[0].") and "finite" in problem.message


def test_free_form_tables_and_arrays_are_bounded_too(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    cases = {"optim.betas=[0.9, nan]": "optim.betas[1]",
             "control.0.params={sigma = {low = [1.0, inf]}}": "control[0].params.sigma.low[1]",
             "data.synthetic.width=100000000000000000000": "data.synthetic.width"}
    for override, where in cases.items():
        with pytest.raises(RecipeInvalid) as info:
            recipes.load(path, [override])
        (problem,) = info.value.problems
        assert problem.path == where, problem


@pytest.mark.parametrize(("override", "where", "needle"), [
    ("job.seed=9223372036854775808", "job.seed", "at most 9223372036854775807"),
    ("job.seed=-1", "job.seed", "greater than or equal to 0"),
    ("validation.seed=18446744073709551616", "validation.seed", "signed 64-bit"),
    ("train.steps=1000000000", "train.steps", "at most 999999999: checkpoint folders"),
    ("checkpoint.every_steps=100000000000000000000", "checkpoint.every_steps", "at most"),
    ("optim.warmup_steps=1000000000", "optim.warmup_steps", "at most 999999999"),
    ("parallel.nproc_per_node=65", "parallel.nproc_per_node", "at most 64"),
    ("parallel.nnodes=4097", "parallel.nnodes", "at most 4096"),
    ("parallel.nnodes=128", "parallel", "8192 ranks; at most 4096"),  # × 64 per node
    ("data.num_workers=100000", "data.num_workers", "at most 64"),
    ("data.fetch.retries=11", "data.fetch.retries", "doubles the wait"),
    ("validation.steps=1001", "validation.steps", "at most 1000"),
])
def test_counts_are_bounded(tmp_path: Path, override: str, where: str, needle: str) -> None:
    with pytest.raises(RecipeInvalid) as info:
        recipes.load(write(tmp_path, MINIMAL), ["parallel.nproc_per_node=64", override])
    (problem,) = info.value.problems
    assert problem.path == where and needle in problem.message, problem


def test_largest_values_in_bounds_load(tmp_path: Path) -> None:
    rec = recipes.load(write(tmp_path, MINIMAL), [
        "job.seed=9223372036854775807", "train.steps=999999999", "parallel.nproc_per_node=64",
        "parallel.nnodes=64", "validation.seed=0", "optim.lr=1e300"])
    assert (rec.job.seed, rec.train.steps) == (2**63 - 1, 999_999_999)
    assert recipes.validate(tomllib.loads(recipes.dump_toml(rec))) == rec


def test_world_size_bound_is_the_memory_planners() -> None:
    from ctrlpost.engine import memory as layout
    from ctrlpost.recipe_bounds import MAX_WORLD_SIZE

    assert MAX_WORLD_SIZE == layout.MAX_GPUS


@pytest.mark.parametrize(("name", "example"), [
    ("../../../escape", "'escape'"), ("a/b", "'a_b'"), ("..", ""), (".hidden", "'hidden'"),
    ("a\\b", "'a_b'"), ("nul\0", "'nul'"), ("/abs", "'abs'"),
])
@pytest.mark.parametrize("key", ["project", "group", "name"])
def test_job_folders_are_single_path_components(tmp_path: Path, key: str, name: str,
                                                example: str) -> None:
    with pytest.raises(RecipeInvalid) as info:
        recipes.load(write(tmp_path, MINIMAL), [f"job.{key}={json.dumps(name)}"])
    (problem,) = info.value.problems
    assert problem.path == f"job.{key}" and "one folder name" in problem.message
    assert problem.message.endswith(f"; e.g. {example}" if example else f"(got {name!r})")


def test_plain_job_folders_keep_the_run_inside_the_output_root(tmp_path: Path) -> None:
    rec = recipes.load(write(tmp_path, MINIMAL),
                       ['job.project="p..q"', 'job.group="g h"', 'job.name="run-1.5"'])
    root = tmp_path / "runs"
    run = rec.run_dir({"OUTPUT_ROOT": str(root)})
    assert run == root / "p..q" / "g h" / "run-1.5"
    assert run.resolve().is_relative_to(root.resolve())
    with pytest.raises(RecipeInvalid, match="at most 255 bytes"):
        recipes.load(write(tmp_path, MINIMAL), [f'job.name="{"x" * 256}"'])


# --- typed overrides: command-line options reach the recipe as values, never as TOML text ------


@pytest.mark.parametrize("device", ['cu"da', "cuda\\0", "a\" = 1\nb = \"", "'quoted'", "é"])
def test_typed_values_reach_the_recipe_intact(tmp_path: Path, device: str) -> None:
    rec = recipes.load(write(tmp_path, MINIMAL), values={"data.embed.device": device})
    assert rec.data.embed.device == device


def test_typed_values_are_validated_and_apply_after_the_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    rec = recipes.load(path, ["data.embed.batch_size=8", "train.steps=7"],
                       values={"data.embed.batch_size": 16, "control.0.weight": 0.5})
    assert (rec.data.embed.batch_size, rec.train.steps, rec.control[0].weight) == (16, 7, 0.5)
    with pytest.raises(RecipeInvalid) as info:
        recipes.load(path, values={"data.embed.batch_size": 0, "data.embed.bach_tokens": 4,
                                   "control.3.weight": 1.0})
    problems = {p.path: p.message for p in info.value.problems}
    assert problems == {"control.3.weight": "control.3: '3' is not an index below 1"}
    with pytest.raises(RecipeInvalid) as info:
        recipes.load(path, values={"data.embed.batch_size": 0, "data.embed.bach_tokens": 4})
    problems = {p.path: p.message for p in info.value.problems}
    assert problems["data.embed.bach_tokens"] == "unknown key; did you mean 'batch_tokens'?"
    assert "greater than or equal to 1" in problems["data.embed.batch_size"]


@pytest.mark.parametrize("value", ['"unterminated', "[oops", "data/clips", "a b", "x=1"])
def test_set_refuses_text_that_is_neither_toml_nor_a_bare_word(repo: Path, value: str) -> None:
    with pytest.raises(recipes.RecipeInvalid) as caught:
        recipes.load(repo / "recipes" / "edge_tiny.toml", [f"job.name={value}"])
    (problem,) = caught.value.problems
    assert problem.path == "job.name" and "not a TOML value" in problem.message
    assert "--set 'job.name=\"...\"'" in problem.message


@pytest.mark.parametrize(("text", "value"), [("edge", "edge"), ("7b", "7b"), ("bf16", "bf16"),
                                             ("a_b-c", "a_b-c"), ("12", 12), ("0.5", 0.5),
                                             ('"data/clips"', "data/clips"), ("true", True)])
def test_set_takes_toml_values_and_bare_words(text: str, value: object) -> None:
    from ctrlpost.recipe_overrides import parse_value

    assert parse_value("k", text) == value
