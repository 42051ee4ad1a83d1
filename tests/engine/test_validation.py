"""Validation during training: EMA weights, fixed seeds, strips, records, and fidelity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ctrlpost import recipe as recipes
from ctrlpost.cli import app
from ctrlpost.engine import build
from ctrlpost.engine.ema import PowerEMA
from ctrlpost.engine.generate import ClipInputs, generate
from ctrlpost.engine.scoring import Crop, Scorer, mean_scores
from ctrlpost.engine.validation import ValidationConfig, ema_weights
from ctrlpost.inspect.plot import panels
from ctrlpost.modalities import registry

from .conftest import TINY, Workspace, run_dir

CHEAP = ["validation.every_steps=2", "validation.num_clips=2", "validation.steps=2",
         "validation.sampler='euler'", "validation.guidance=0.0"]


def tiny_recipe(workspace: Workspace, output: Path, *extra: str) -> recipes.Recipe:
    sets = [f"weights.dir='{workspace.root / 'weights'}'", f"data.root='{workspace.root / 'data'}'",
            f"job.output_root='{output}'", *CHEAP, *extra]
    return recipes.load(TINY, sets)


def validation_records(output: Path) -> dict[int, dict[str, float]]:
    lines = (run_dir(output) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return {r["step"]: r["fidelity"] for r in records if "fidelity" in r}


# --- pieces -------------------------------------------------------------------------------------


def test_validation_is_due_every_n_steps_and_at_the_last() -> None:
    cfg = ValidationConfig(every_steps=10, at_start=True, strip_frames=3, out_dir=Path("v"))
    assert [s for s in range(1, 26) if cfg.due(s, last_step=25)] == [10, 20, 25]


def test_crop_keeps_the_unpadded_window() -> None:
    mask = torch.zeros(1, 8, 10)
    mask[:, :2] = 1.0
    mask[:, :, 9:] = 1.0
    crop = Crop.of(mask)
    assert (crop.top, crop.bottom, crop.left, crop.right) == (2, 8, 0, 9)
    assert crop.apply(np.zeros((3, 8, 10, 3), np.uint8)).shape == (3, 6, 9, 3)
    assert Crop.of(torch.zeros(1, 4, 4)) == Crop(0, 4, 0, 4)


def test_mean_scores_average_each_key_over_the_clips_reporting_it() -> None:
    assert mean_scores([{"f1": 0.5, "p": 1.0}, {"f1": 1.0}]) == {"f1": 0.75, "p": 1.0}
    assert mean_scores([]) == {}


def test_strip_shows_hint_generated_hint_of_generated_and_real() -> None:
    modality = registry.get_modality("edge")
    scorer = Scorer(modality, modality.validate_params({"preset": "medium"}))
    frames = np.random.default_rng(0).integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)
    video = torch.from_numpy(frames).permute(3, 0, 1, 2)
    clip = ClipInputs(name="c", index=0, video_3_T_H_W=video, hint_C_T_H_W=video,
                      text_L_D=torch.zeros(4, 8), padding_mask_1_H_W=torch.zeros(1, 16, 24),
                      fps=24.0, hint_draw={"preset": "medium", "lower": 100, "upper": 200})
    image = scorer.strip(frames, clip, frames=3, label="c")
    assert image.dtype == np.uint8 and image.shape == (18 + 16 + 3 * 16 + 2 * 2, 4 * 24 + 3 * 2, 3)
    assert scorer.score(frames, clip)["f1"] < 1.0  # the "hint" here is no edge map


def test_plot_puts_references_in_their_metric_panel() -> None:
    series = dict.fromkeys(["loss", "fidelity.f1", "fidelity.f1_noise",
                            "fidelity.f1_reconstruction", "fidelity.precision"], ([], []))
    assert panels(series) == {
        "loss": ["loss"], "fidelity.precision": ["fidelity.precision"],
        "fidelity.f1": ["fidelity.f1", "fidelity.f1_noise", "fidelity.f1_reconstruction"]}


def test_validation_record_goes_to_jsonl_and_tensorboard_with_the_strips(tmp_path: Path) -> None:
    import cv2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ctrlpost.engine.metrics import RunLogger
    from ctrlpost.engine.scoring import write_strip

    strip = np.zeros((20, 30, 3), np.uint8)
    strip[:, :10, 0] = 255  # a red band: the colour order survives the round trip
    write_strip(tmp_path / "validation" / "step_000000010" / "clip_a.png", strip)
    logger = RunLogger(tmp_path, enabled=True, total_steps=10, every_steps=5, jsonl=True,
                       tensorboard=True, device=torch.device("cpu"))
    logger.validation(10, {"fidelity": {"f1": 0.5}, "validation_s": 1.5, "validation_clips": 1})
    logger.close()

    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line) == {"step": 10, "fidelity": {"f1": 0.5}, "validation_s": 1.5,
                                "validation_clips": 1}
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("val/f1")] == [(10, 0.5)]
    assert [(e.step, e.value) for e in events.Scalars("val/seconds")] == [(10, 1.5)]
    (image,) = events.Images("val_strips/clip_a")
    encoded = np.frombuffer(image.encoded_image_string, np.uint8)
    assert image.step == 10
    np.testing.assert_array_equal(cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1], strip)


# --- the validator in this process -------------------------------------------------------------



def test_validator_uses_the_ema_weights_then_restores_the_training_state(
    workspace: Workspace, tmp_path: Path, one_process_group: None
) -> None:
    rec = tiny_recipe(workspace, tmp_path, "validation.num_frames=9")
    runtime = build.Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    parts = build.build_model(rec, runtime)
    ema = PowerEMA(parts.model.control.named_parameters(), s=0.1)
    with torch.no_grad():  # averages unlike the weights: the zero blocks become non-zero
        for average in ema.averages.values():
            average.add_(0.02)
    tokenizer = build.build_tokenizer(rec, runtime, parts.compute_dtype)
    validator = build.build_validator(rec, runtime, parts, ema, tokenizer)
    assert validator is not None
    weights = {name: p.detach().full_tensor().clone() for name, p in ema.params.items()}
    rng = torch.get_rng_state()

    record = validator.run(7)
    assert torch.equal(torch.get_rng_state(), rng)  # the global stream is untouched
    for name, param in ema.params.items():
        assert torch.equal(param.detach().full_tensor(), weights[name]), name
    fidelity = record["fidelity"]
    assert set(fidelity) == {"f1", "precision", "recall", "f1_noise", "f1_reconstruction"}
    assert all(0.0 <= v <= 1.0 for v in fidelity.values())
    assert record["validation_clips"] == 2 and record["validation_s"] > 0
    folder = run_dir(tmp_path) / "validation" / "step_000000007"
    assert sorted(p.name for p in folder.iterdir()) == [
        "scores.json", "synthetic_00000.png", "synthetic_00001.png"]
    scores = json.loads((folder / "scores.json").read_text())
    assert [c["name"] for c in scores["clips"]] == ["synthetic_00000", "synthetic_00001"]
    assert validator.run(8)["fidelity"] == fidelity  # fixed seeds: the same numbers again

    clip = validator.clips[0]
    regular = generate(parts.model, validator.tokenizer, clip, cfg=validator.generation,
                       device=runtime.device, dtype=parts.compute_dtype)
    with ema_weights(parts.model, ema):
        averaged = generate(parts.model, validator.tokenizer, clip, cfg=validator.generation,
                            device=runtime.device, dtype=parts.compute_dtype)
    assert not np.array_equal(regular, averaged)
    # Training goes on after validation: sharded weights, gradients flow.
    loss = parts.model(torch.zeros(1, 16, 2, 16, 28), torch.zeros(1), torch.zeros(1, 512, 64),
                       hint_B_C_T_H_W=torch.ones(1, 16, 2, 16, 28)).square().mean()
    loss.backward()
    assert any(p.grad is not None for p in ema.params.values())


def test_verify_fidelity_scores_checkpoints_on_the_clips(workspace: Workspace,
                                                         tmp_path: Path) -> None:
    sets = [f"weights.dir='{workspace.root / 'weights'}'", f"data.root='{workspace.root / 'data'}'",
            f"job.output_root='{tmp_path}'", *CHEAP]
    base = ["verify", str(TINY), "--stages", "recipe,plugins,weights",
            *[a for s in sets for a in ("--set", s)]]
    result = CliRunner().invoke(app, [*base, "--control", "none", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["fidelity"]
    assert report["metric"] == "f1" and report["clips"] == ["synthetic_00000", "synthetic_00001"]
    (none,) = report["checkpoints"]
    assert none["label"] == "none" and set(none["mean"]) == {"f1", "precision", "recall"}
    assert set(report["references"]["synthetic_00000"]) == {"f1_noise", "f1_reconstruction"}
    strips = sorted(p.name for p in (run_dir(tmp_path) / "fidelity" / "none").iterdir())
    assert strips == ["synthetic_00000.png", "synthetic_00001.png"]
    missing = CliRunner().invoke(app, [*base, "--control", "nope.pt"])
    assert missing.exit_code == 2 and "nope.pt" in missing.output
    (tmp_path / "empty" / "videos").mkdir(parents=True)
    empty = CliRunner().invoke(app, [*base, "--clips", str(tmp_path / "empty")])
    assert empty.exit_code == 2
    assert f"error: --clips {tmp_path / 'empty'}: no videos/*.mp4 there" in empty.output


def released_layout_control(path: Path) -> Path:
    """A tiny control branch whose zero blocks are not zero, in the released ``net.*`` layout."""
    from ctrlpost.models import build_controlled_dit, get_flavor
    from ctrlpost.models.state_dict import export_control_state_dict, save_checkpoint

    torch.manual_seed(5)
    control = build_controlled_dit(get_flavor("tiny")).control
    with torch.no_grad():
        for linear in control.zero_blocks.values():
            linear.weight.normal_(0.0, 0.05)
    return save_checkpoint(export_control_state_dict(control), path)


def test_verify_fidelity_loads_a_released_layout_file_strictly(workspace: Workspace,
                                                               tmp_path: Path) -> None:
    sets = [f"weights.dir='{workspace.root / 'weights'}'", f"data.root='{workspace.root / 'data'}'",
            f"job.output_root='{tmp_path}'", *CHEAP, "validation.num_clips=1"]
    base = ["verify", str(TINY), "--stages", "recipe,plugins,weights",
            *[a for s in sets for a in ("--set", s)]]
    released = released_layout_control(tmp_path / "edge_control.pt")
    result = CliRunner().invoke(app, [*base, "--control", "none", "--control", str(released),
                                      "--json"])
    assert result.exit_code == 0, result.output
    none, loaded = json.loads(result.output)["fidelity"]["checkpoints"]
    assert (none["label"], loaded["label"]) == ("none", "edge_control")
    assert loaded["path"] == str(released)
    strips = run_dir(tmp_path) / "fidelity"
    # The branch's residuals reach the generation: other frames than without it. (Its F1 can
    # equal the blank branch's: the pre-trained base draws clean frames, 0 where no shape edge
    # meets the hint's.)
    assert (strips / "edge_control" / "synthetic_00000.png").read_bytes() != (
        strips / "none" / "synthetic_00000.png").read_bytes()

    state = torch.load(released, weights_only=True)
    state["net.unexpected.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "tampered.pt")
    tampered = CliRunner().invoke(app, [*base, "--control", str(tmp_path / "tampered.pt")])
    assert tampered.exit_code == 2
    assert "tampered.pt" in tampered.output and "net.unexpected.weight" in tampered.output


# --- whole runs (slow) --------------------------------------------------------------------------


@pytest.mark.slow
def test_validation_leaves_the_training_losses_unchanged(workspace: Workspace,
                                                         tmp_path: Path) -> None:
    from .conftest import losses

    common = ["--nproc", "1", "--set", "train.steps=4", "--set", "logging.every_steps=1"]
    workspace.train(tmp_path / "off", *common, "--set", "validation.every_steps=0")
    workspace.train(tmp_path / "on", *common, *[a for s in CHEAP for a in ("--set", s)])
    assert losses(tmp_path / "on") == losses(tmp_path / "off")
    assert sorted(validation_records(tmp_path / "on")) == [0, 2, 4]
    plot = tmp_path / "plot.png"
    shown = CliRunner().invoke(app, ["inspect", str(run_dir(tmp_path / "on")), "--plot",
                                     str(plot)])
    assert shown.exit_code == 0 and plot.stat().st_size > 10_000
    assert "validation strips" in shown.output and "step_000000004" in shown.output


# The tiny overfit task for fidelity: the blur hint, one rank, no text dropout or conditioning
# frames, a higher learning rate; step 0 is the zero-initialised branch (EMA = weights).
@pytest.mark.slow
def test_trained_branch_beats_the_zero_initialised_one(workspace: Workspace,
                                                       tmp_path: Path) -> None:
    sets = ["control.0.modality='blur'", "train.steps=60", "optim.lr=2e-3",
            "diffusion.text_dropout=0.0", "diffusion.condition_frames_max=0",
            "checkpoint.every_steps=60", "logging.every_steps=10", "validation.every_steps=60",
            "validation.num_clips=2", "validation.steps=8", "validation.guidance=0.0"]
    workspace.train(tmp_path, "--nproc", "1", *[a for s in sets for a in ("--set", s)])
    records = validation_records(tmp_path)
    start, end = records[0], records[60]
    assert end["psnr"] > start["psnr"] + 3.0, records
    assert start["psnr_noise"] == end["psnr_noise"] < end["psnr"] < end["psnr_reconstruction"]


MARGIN = 0.1
"""F1 points the last validation must gain over the floor and over step 0 (on 2 cores: floor
0.071, step 0 0.042, step 400 0.209)."""


@pytest.mark.slow
def test_the_embedded_default_learns_to_follow_its_hint(workspace: Workspace,
                                                        tmp_path: Path) -> None:
    """The quick start's training as shipped (2 ranks, every setting of the recipe): the edge F1
    of the last validation is clearly above its noise floor and above the zero-initialised
    branch's at step 0, and below the tokenizer's ceiling."""
    workspace.train(tmp_path)
    records = validation_records(tmp_path)
    steps = sorted(records)
    assert steps == [0, 100, 200, 300, 400], steps
    start, end = records[0], records[400]
    assert end["f1"] > end["f1_noise"] + MARGIN and end["f1"] > start["f1"] + MARGIN, records
    assert end["f1"] < end["f1_reconstruction"]

