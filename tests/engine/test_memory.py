"""The per-GPU memory estimate against H100 measurements, its fixes, and the `layout` stage."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ctrlpost.cli import app
from ctrlpost.engine.memory import GIB, Job, ModelDims, check, estimate

REPO = Path(__file__).resolve().parents[2]
HDVILA = REPO / "recipes" / "edge_hdvila.toml"
WIDTHS = (16, 16, 32, 32, 96, 96, 256)
# models.args flavors, written out so that these tests need no torch.
DIMS_7B = ModelDims(
    model_channels=4096,
    num_heads=32,
    mlp_hidden=16384,
    text_dim=1024,
    text_tokens=512,
    adaln_lora_dim=256,
    base_blocks=28,
    control_blocks=3,
    patch_in_features=72,
    hint_in_features=516,
    out_features=64,
    pos_table_rows=128 + 120 + 120,
    hint_mlp_widths=WIDTHS,
)
DIMS_TINY = ModelDims(
    model_channels=128,
    num_heads=4,
    mlp_hidden=512,
    text_dim=64,
    text_tokens=512,
    adaln_lora_dim=32,
    base_blocks=4,
    control_blocks=3,
    patch_in_features=72,
    hint_in_features=132,
    out_features=64,
    pos_table_rows=16 + 32 + 32,
    hint_mlp_widths=WIDTHS,
)
# bench/model_step.py's step: one GPU, no FSDP, bf16 trainable weights and grads, nothing else.
BENCH: dict[str, Any] = {
    "fsdp": False,
    "fp32_master": False,
    "optimizer": False,
    "ema": False,
    "tokenizer": False,
}
# H100 80GB HBM3, torch 2.11, 2026-11: the bench's step at 704×1280 and (T_lat-1)·8+1 frames.
# (mode, latent frames): (saved after forward, peak allocated), GiB.
PROBE_H100 = {
    ("full", 16): (16.20, 43.06),
    ("full", 8): (8.10, 29.14),
    ("full", 4): (4.05, 22.18),
    ("selective", 16): (42.39, 68.38),
    ("selective", 8): (21.22, 41.82),
    ("selective", 4): (10.61, 28.52),
    ("none", 2): (34.57, 50.38),
    ("none", 1): (17.47, 32.97),
}
runner = CliRunner()


def test_parameter_counts_match_the_released_networks() -> None:
    assert (DIMS_7B.base_params, DIMS_7B.control_params) == (7_236_208_640, 893_497_120)
    assert DIMS_7B.trainable_params == 893_497_120 - 3_407_872  # less the unused final layer
    assert (DIMS_TINY.base_params, DIMS_TINY.control_params) == (1_285_760, 1_131_296)


@pytest.mark.parametrize(
    "path", sorted((REPO / "bench" / "results").glob("model_step-*.json")), ids=lambda p: p.stem
)
def test_bench_configuration_within_15_percent_of_the_h100(path: Path) -> None:
    record = json.loads(path.read_text())
    if "peak_allocated_gib" not in record or record["flavor"] != "7b":
        pytest.skip("not a 7b GPU measurement")
    _, _, frames, height, width = record["latent_B_C_T_H_W"]
    job = Job(
        num_frames=(frames - 1) * 8 + 1,
        height=8 * height,
        width=8 * width,
        ac_mode=record["ac_mode"],
        **BENCH,
    )
    found = estimate(DIMS_7B, job)
    assert found.tokens == record["tokens"]
    assert abs(found.peak_allocated_gib / record["peak_allocated_gib"] - 1) < 0.15


@pytest.mark.parametrize(("mode", "latent_frames"), sorted(PROBE_H100))
def test_saved_activations_and_peak_track_the_probe(mode: str, latent_frames: int) -> None:
    saved, peak = PROBE_H100[mode, latent_frames]
    found = estimate(
        DIMS_7B,
        Job(num_frames=(latent_frames - 1) * 8 + 1, height=704, width=1280, ac_mode=mode, **BENCH),
    )
    assert abs(found.terms["activations_saved"] / GIB / saved - 1) < 0.02
    # The control gradients are counted although not yet allocated at the peak: conservative.
    grads = found.terms["control_grads"] / GIB
    assert abs((found.peak_allocated_gib - grads) / peak - 1) < 0.03
    assert 0 < found.peak_allocated_gib / peak - 1 < 0.15


def test_more_gpus_less_memory_per_gpu() -> None:
    job = Job(num_frames=121, height=704, width=1280)
    totals = [estimate(DIMS_7B, replace(job, world_size=w)).total_gib for w in (1, 2, 4, 8, 16)]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == len(totals)


def test_more_recomputation_fewer_activations_and_fewer_frames_less_memory() -> None:
    def activations(mode: str = "selective", frames: int = 121) -> float:
        found = estimate(DIMS_7B, Job(num_frames=frames, height=704, width=1280, ac_mode=mode))
        return found.terms["activations_saved"] + found.terms["activations_working"]

    assert activations("none") > activations("selective") > activations("full")
    by_frames = [activations(frames=n) for n in (9, 57, 121)]
    assert by_frames == sorted(by_frames) and by_frames[0] < by_frames[-1] / 5


def test_hdvila_job_fits_8_gpus_and_needs_full_checkpointing_on_one() -> None:
    job = Job(num_frames=121, height=960, width=960, world_size=8)  # the largest 720 bucket
    verdict = check(DIMS_7B, job)
    assert verdict.fits and verdict.changes == ()
    assert 55 < verdict.estimate.total_gib < 70  # 63.8 GiB (59.6 allocated)
    alone = check(DIMS_7B, replace(job, world_size=1))
    assert not alone.fits and alone.fixed is not None
    assert alone.fix() == 'parallel.activation_checkpointing = "full"'
    assert alone.fixed.total_gib <= alone.budget_gib < alone.estimate.total_gib


def test_fix_searches_gpus_then_frames() -> None:
    job = Job(num_frames=121, height=704, width=1280, world_size=1)
    gpus = check(DIMS_7B, job, gpu_memory_gib=60)
    assert gpus.changes[0] == ("parallel.activation_checkpointing", "full")
    key, fewest = gpus.changes[1]
    assert key == "gpus" and isinstance(fewest, int) and fewest > 1 and gpus.fixed is not None
    below = check(DIMS_7B, replace(job, ac_mode="full", world_size=fewest - 1), gpu_memory_gib=60)
    assert not below.fits
    assert "parallel.nproc_per_node" in gpus.fix()
    frames = check(DIMS_7B, replace(job, world_size=8), gpu_memory_gib=24)
    key, most = frames.changes[-1]
    assert key == "data.num_frames" and isinstance(most, int) and (most - 1) % 8 == 0
    assert frames.fix().endswith(f"data.num_frames = {most}")
    hopeless = check(DIMS_7B, job, gpu_memory_gib=4)
    assert hopeless.fixed is None and not hopeless.fits


def test_tokenizer_encode_is_the_peak_of_a_small_model_on_big_clips() -> None:
    found = estimate(DIMS_TINY, Job(num_frames=121, height=704, width=1280, ac_mode="full"))
    assert found.moment == "tokenizer encode" and found.terms["tokenizer_encode"] > 3 * GIB
    assert found.terms["activations_saved"] == 0


def test_unknown_checkpointing_mode() -> None:
    with pytest.raises(ValueError, match="selective"):
        estimate(DIMS_7B, Job(num_frames=121, height=704, width=1280, ac_mode="some"))


def verify(*args: str) -> tuple[int, dict]:
    result = runner.invoke(
        app, ["verify", str(HDVILA), "--stages", "recipe,layout", "--json", *args]
    )
    return result.exit_code, json.loads(result.output)


def test_verify_layout_stage_reports_breakdown_and_total() -> None:
    code, report = verify("--gpus", "8")
    assert code == 0, report["problems"]
    stage = report["stages"][-1]
    assert stage["name"] == "layout" and stage["status"] == "ok"
    summary = stage["summary"]
    expected = check(DIMS_7B, Job(num_frames=121, height=960, width=960, world_size=8))
    assert summary["total_gib"] == round(expected.estimate.total_gib, 1)
    assert summary["breakdown_gib"] == expected.estimate.breakdown_gib()
    assert summary["gpus"] == 8 and summary["tokens"] == 57_600 and summary["fits"]


def test_verify_layout_names_the_change() -> None:
    code, report = verify("--gpu-memory", "40")
    assert code == 2
    (problem,) = report["problems"]
    assert problem["stage"] == "layout" and problem["path"] == "parallel.activation_checkpointing"
    assert 'parallel.activation_checkpointing = "full"' in problem["message"]
    code, report = verify("--gpu-memory", "48", "--gpus", "1")
    (problem,) = report["problems"]
    assert problem["path"] == "parallel.nproc_per_node"
    assert "and 3 GPUs (parallel.nnodes × parallel.nproc_per_node = 3)" in problem["message"]
    code, report = verify("--gpu-memory", "10")
    assert code == 2
    (problem,) = report["problems"]
    assert problem["path"] == "data.resolution" and "smaller data.resolution" in problem["message"]
