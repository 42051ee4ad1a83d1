from __future__ import annotations

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


@pytest.mark.parametrize("name", ["edge_hdvila", "blur_hdvila", "edge_tiny"])
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
