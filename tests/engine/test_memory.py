"""The per-GPU memory estimate against H100 measurements, its fixes, and the `layout` stage."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ctrlpost.cli import app
from ctrlpost.engine.memory import (
    GIB,
    POLICIES,
    TOKENIZER_BYTES_PER_PIXEL,
    TOKENIZER_COMPILED_BYTES_PER_PIXEL,
    CheckpointPlan,
    Job,
    ModelDims,
    block_plan,
    check,
    estimate,
    planned,
    selective_order,
)

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
    "compiled": False,  # bench/model_step.py runs its blocks eagerly
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
    if found.moment == "base backward":  # (a short clip's peak is the control backward's)
        assert abs(found.terms["activations_saved"] / GIB / saved - 1) < 0.02
        # The control gradients are not allocated yet at the base backward's peak.
        assert found.terms["control_grads"] == 0
    assert abs(found.peak_allocated_gib / peak - 1) < 0.04


def test_more_gpus_less_memory_per_gpu() -> None:
    job = Job(num_frames=121, height=704, width=1280)
    totals = [estimate(DIMS_7B, replace(job, world_size=w)).total_gib for w in (1, 2, 4, 8, 16)]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == len(totals)


def test_more_recomputation_fewer_activations_and_fewer_frames_less_memory() -> None:
    def activations(mode: str = "selective", frames: int = 121) -> float:
        # no tokenizer: its encode would be the peak moment of the recomputing modes
        found = estimate(DIMS_7B, Job(num_frames=frames, height=704, width=1280, ac_mode=mode,
                                      tokenizer=False))
        return found.terms["activations_saved"] + found.terms["activations_working"]

    assert activations("none") > activations("selective") > activations("full")
    by_frames = [activations(frames=n) for n in (9, 57, 121)]
    assert by_frames == sorted(by_frames) and by_frames[0] < by_frames[-1] / 5


def test_hdvila_job_fits_8_gpus_one_80gb_gpu_and_needs_auto_on_a_smaller_one() -> None:
    # the largest 720 bucket; a compiled tokenizer encode (below the activations: see
    # test_the_released_encoders_scores_are_a_floor_that_compile_tokenizer_lifts)
    job = Job(num_frames=121, height=960, width=960, world_size=8, tokenizer_compiled=True)
    verdict = check(DIMS_7B, job)
    assert verdict.fits and verdict.changes == ()
    assert 45 < verdict.estimate.total_gib < 55  # 49.8 GiB (46.3 allocated)
    # One 80 GB GPU holds every block selective: 73.9 GiB (the engine's step at 56,320 tokens
    # peaked at 64.3 GiB allocated, 68.6 reserved on an H100; bench/NOTES.md).
    one = check(DIMS_7B, replace(job, world_size=1))
    assert one.fits and one.estimate.plan.count("selective") == 31
    alone = check(DIMS_7B, replace(job, world_size=1), gpu_memory_gib=72)
    assert not alone.fits and alone.fixed is not None
    assert alone.fix() == 'parallel.activation_checkpointing = "auto"'
    assert alone.fixed.total_gib <= alone.budget_gib < alone.estimate.total_gib
    # 73.9 GiB selective, 61.6 full: 18 of the 31 blocks stay selective in a 68.4 GiB budget.
    assert alone.fixed.plan.count("selective") == 18
    full = estimate(DIMS_7B, replace(job, world_size=1, ac_mode="full"))
    assert full.total_gib < alone.fixed.total_gib
    # On 8 GPUs "auto" is selective everywhere: the same estimate as "selective".
    auto = check(DIMS_7B, replace(job, ac_mode="auto"))
    assert auto.estimate.plan == verdict.estimate.plan and auto.estimate == verdict.estimate


def test_fix_searches_gpus_then_frames() -> None:
    job = Job(num_frames=121, height=704, width=1280, world_size=1,
              tokenizer_compiled=True)
    gpus = check(DIMS_7B, job, gpu_memory_gib=60)
    assert gpus.changes[0] == ("parallel.activation_checkpointing", "auto")
    key, fewest = gpus.changes[1]
    assert key == "gpus" and isinstance(fewest, int) and fewest > 1 and gpus.fixed is not None
    below = check(DIMS_7B, replace(job, ac_mode="full", world_size=fewest - 1), gpu_memory_gib=60)
    assert not below.fits
    # "auto" fits wherever "full" does, so a "full" job is told the same GPU count.
    assert check(DIMS_7B, replace(job, ac_mode="full"), gpu_memory_gib=60).changes == (
        ("gpus", fewest),)
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


def test_the_released_encoders_scores_are_a_floor_that_compile_tokenizer_lifts() -> None:
    def encode(compiled: bool, height: int = 704, width: int = 1280) -> float:
        job = Job(num_frames=121, height=height, width=width, ac_mode="full",
                  tokenizer_compiled=compiled)
        # the tiny model: its activations are below every encode, which is then counted
        return estimate(DIMS_TINY, job).terms["tokenizer_encode"]

    pixels = 121 * 704 * 1280
    # Two bf16 copies of 16 latent frames' 14,080 x 14,080 score matrices: 11.8 GiB at 720p;
    # compiled, of 5 frames at a time (2**30 scores at most).
    scores = 2 * 2 * 16 * (88 * 160) ** 2
    assert encode(False) == pytest.approx(TOKENIZER_BYTES_PER_PIXEL * pixels + scores)
    assert encode(True) == pytest.approx(TOKENIZER_COMPILED_BYTES_PER_PIXEL * pixels
                                         + scores * 5 / 16)
    # The measured peaks (bench/NOTES.md): 12.9 GiB as TorchScript, 4.7 GiB compiled.
    assert encode(False) == pytest.approx(12.9 * GIB, rel=0.02)
    assert encode(True) == pytest.approx(4.7 * GIB, rel=0.02)
    # The per-pixel part grows with the pixels, the scores with the square of a frame's area;
    # a slice holds one frame at least, whatever the budget.
    frame_4k = 2 * 2 * (176 * 320) ** 2
    assert encode(False, 1408, 2560) == pytest.approx(
        4 * TOKENIZER_BYTES_PER_PIXEL * pixels + 16 * frame_4k)
    assert encode(True, 1408, 2560) == pytest.approx(
        4 * TOKENIZER_COMPILED_BYTES_PER_PIXEL * pixels + frame_4k)
    # At 1088 x 1920 on 8 GPUs the encode (65.9 GiB as TorchScript) is the peak, which no GPU
    # count lowers: compiling comes first, then what the step itself needs.
    job = Job(num_frames=121, height=1088, width=1920, world_size=8, ac_mode="auto")
    verdict = check(DIMS_7B, job, gpu_memory_gib=72)
    assert not verdict.fits and verdict.estimate.moment == "tokenizer encode"
    assert verdict.changes[0] == ("parallel.compile_tokenizer", True)
    assert verdict.fix().startswith("parallel.compile_tokenizer = true")
    assert verdict.fixed is not None and verdict.fixed.total_gib <= verdict.budget_gib
    assert verdict.fixed.moment == "base backward"


def test_the_recipes_compile_tokenizer_marks_the_encode_compiled() -> None:
    from ctrlpost.engine.memory import training_job
    from ctrlpost.recipe import load

    for value in (False, True):
        recipe = load(HDVILA, [f"parallel.compile_tokenizer={str(value).lower()}"])
        job = training_job(recipe.data, recipe.train, recipe.model, recipe.parallel, world_size=1)
        assert job.tokenizer_compiled is value


def test_unknown_checkpointing_mode() -> None:
    with pytest.raises(ValueError, match="selective, full, auto"):
        estimate(DIMS_7B, Job(num_frames=121, height=704, width=1280, ac_mode="some"))
    with pytest.raises(ValueError, match="needs a memory budget"):
        estimate(DIMS_7B, Job(num_frames=121, height=704, width=1280, ac_mode="auto"))
    with pytest.raises(ValueError, match=r"in \[0, 31\]"):
        block_plan(DIMS_7B, Job(num_frames=9, height=64, width=64, ac_mode="auto",
                                selective_blocks=32))


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
    selective = 'parallel.activation_checkpointing="selective"'
    code, report = verify("--gpu-memory", "40", "--set", selective)
    assert code == 2
    (problem,) = report["problems"]
    # The recipe's encoder runs as TorchScript: its encode (13.4 GiB at 960x960, mostly the
    # attention scores) is below what the base's backward needs, so checkpointing is the change.
    assert problem["stage"] == "layout"
    assert problem["path"] == "parallel.activation_checkpointing"
    assert 'set parallel.activation_checkpointing = "auto" (~37.6 GiB' in problem["message"]
    assert "(selective checkpointing: selective on all 31 blocks; 8 GPU(s)" in problem["message"]
    assert problem["message"].endswith("selective on 4 of 31 blocks (base 24-27), full on 27 "
                                       "(base 0-23, control 0-2))")
    code, report = verify("--gpu-memory", "48", "--gpus", "1")
    (problem,) = report["problems"]
    assert problem["path"] == "parallel.nproc_per_node"
    assert "; set 3 GPUs (parallel.nnodes × parallel.nproc_per_node = 3)" in problem["message"]
    code, report = verify("--gpu-memory", "10")
    assert code == 2
    (problem,) = report["problems"]
    assert problem["path"] == "data.resolution" and "smaller data.resolution" in problem["message"]


# --- "auto": selective on as many blocks as the budget holds ------------------------------------

AUTO_1GPU = Job(num_frames=121, height=960, width=960, ac_mode="auto",
                tokenizer_compiled=True)


def total_with(selective: int, job: Job = AUTO_1GPU) -> float:
    return estimate(DIMS_7B, replace(job, selective_blocks=selective)).total_gib


def test_auto_keeps_the_most_selective_blocks_the_budget_holds() -> None:
    totals = [total_with(n) for n in range(32)]
    assert totals == sorted(totals)  # never cheaper with one more selective block
    counts = []
    for budget in [t / 0.95 for t in totals] + [60.0, 70.0, 79.65, 80.0, 85.0, 200.0]:
        count = planned(DIMS_7B, AUTO_1GPU, gpu_memory_gib=budget).selective_blocks
        assert count is not None
        # The most blocks whose total fits, by brute force; 0 when none does.
        fitting = [n for n, total in enumerate(totals) if total <= budget * 0.95]
        assert count == max(fitting, default=0)
        counts.append((budget, count))
    by_budget = [count for _, count in sorted(counts)]
    assert by_budget == sorted(by_budget)  # monotone in the budget
    assert planned(DIMS_7B, AUTO_1GPU, gpu_memory_gib=200).selective_blocks == 31
    assert planned(DIMS_7B, AUTO_1GPU, gpu_memory_gib=60).selective_blocks == 0  # nothing fits
    assert planned(DIMS_7B, AUTO_1GPU, gpu_memory_gib=80).selective_blocks == 31
    assert planned(DIMS_7B, AUTO_1GPU, gpu_memory_gib=70).selective_blocks == 14


def test_auto_at_its_ends_is_selective_or_full() -> None:
    every, none = (block_plan(DIMS_7B, replace(AUTO_1GPU, selective_blocks=n)) for n in (31, 0))
    assert every == block_plan(DIMS_7B, replace(AUTO_1GPU, ac_mode="selective"))
    assert none == block_plan(DIMS_7B, replace(AUTO_1GPU, ac_mode="full"))
    assert total_with(31) == estimate(DIMS_7B, replace(AUTO_1GPU, ac_mode="selective")).total_gib
    assert total_with(0) == estimate(DIMS_7B, replace(AUTO_1GPU, ac_mode="full")).total_gib
    assert check(DIMS_7B, AUTO_1GPU, gpu_memory_gib=60).estimate.plan == none


def test_the_last_base_block_turns_selective_first_and_base_block_0_last() -> None:
    order = selective_order(DIMS_7B)
    assert order[0] == ("base", 27) and order[-1] == ("base", 0) and len(set(order)) == 31
    one = block_plan(DIMS_7B, replace(AUTO_1GPU, selective_blocks=1))
    assert one.base[-1] == "selective" and one.count("selective") == 1
    # Its attention outputs are held at the peak either way: saved, or in the working set.
    assert total_with(1) == pytest.approx(total_with(0), rel=1e-12)
    # (Below ~16 selective blocks the control backward is the peak.) The output and log-sum-exp
    # of each more: 0.47 GiB a block with overhead at 57,600 tokens.
    assert total_with(21) == pytest.approx(total_with(20) + 0.47, abs=0.01)
    assert total_with(31) == pytest.approx(total_with(30), rel=1e-12)  # base block 0: no grad
    thirty = block_plan(DIMS_7B, replace(AUTO_1GPU, selective_blocks=30))
    assert thirty.base[0] == "full" and thirty.count("full") == 1


def test_the_plan_in_words() -> None:
    plan = block_plan(DIMS_7B, replace(AUTO_1GPU, selective_blocks=14))
    assert plan.describe() == ("selective on 14 of 31 blocks (base 14-27), full on 17 "
                               "(base 0-13, control 0-2)")
    plan = CheckpointPlan(("full", "selective", "full", "selective"), ("selective",))
    assert plan.describe() == ("selective on 3 of 5 blocks (base 1, 3, control 0), full on 2 "
                               "(base 0, 2)")
    none = block_plan(DIMS_7B, replace(AUTO_1GPU, ac_mode="none"))
    assert none.describe() == "every activation kept (31 blocks)"
    full = block_plan(DIMS_7B, replace(AUTO_1GPU, ac_mode="full"))
    assert full.describe() == "full on all 31 blocks"
    with pytest.raises(ValueError, match="every block or none"):
        CheckpointPlan(("none", "full"), ("none",))


def test_every_recipe_value_is_a_policy() -> None:
    from typing import get_args

    from ctrlpost.recipe import ParallelSection

    values = get_args(ParallelSection.model_fields["activation_checkpointing"].annotation)
    assert values == tuple(POLICIES)


def test_verify_layout_reports_the_auto_plan() -> None:
    code, report = verify("--gpus", "1")
    assert code == 0, report["problems"]
    summary = report["stages"][-1]["summary"]
    # the recipe's encoder runs as TorchScript: its encode (13.4 GiB) is below the base's
    # backward, the peak, whether compiled or not
    expected = check(DIMS_7B, replace(AUTO_1GPU, tokenizer_compiled=False)).estimate
    assert expected == check(DIMS_7B, AUTO_1GPU).estimate
    assert expected.moment == "base backward"
    assert summary["checkpointing"] == "auto" and summary["selective_blocks"] == 31
    assert summary["checkpointing_plan"] == expected.plan.describe()
    assert summary["total_gib"] == round(expected.total_gib, 1) <= summary["budget_gib"]
    result = runner.invoke(app, ["verify", str(HDVILA), "--stages", "recipe,layout", "--gpus",
                                 "1"], env={"COLUMNS": "1000"})
    assert result.exit_code == 0, result.output
    assert ("of a 76 GiB budget: fits; checkpointing auto: selective on all 31 blocks; "
            "largest parts:") in result.output


def test_fp8_attention_keeps_less_per_selective_base_block() -> None:
    fp8 = replace(AUTO_1GPU, base_attention_output_bytes=1)
    tokens = AUTO_1GPU.tokens(DIMS_7B)
    # FP8 attention keeps its e4m3 output and the statistics: D + fN per token, against
    # aD + fN for the compiled bf16 kernel's output and log-sum-exp.
    d = DIMS_7B.model_channels
    per_block = tokens * (d - 2 * d)
    selective_base = 27  # base blocks 1-27 (block 0 needs no gradient), the control ones stay
    all_on = estimate(DIMS_7B, replace(fp8, selective_blocks=31))
    bf16_all_on = estimate(DIMS_7B, replace(AUTO_1GPU, selective_blocks=31))
    assert all_on.terms["activations_saved"] - bf16_all_on.terms["activations_saved"] == (
        pytest.approx(selective_base * per_block))
    # A "full" block keeps its input only, whatever the attention.
    all_full = estimate(DIMS_7B, replace(fp8, selective_blocks=0))
    bf16_all_full = estimate(DIMS_7B, replace(AUTO_1GPU, selective_blocks=0))
    assert all_full.terms == bf16_all_full.terms
    assert check(DIMS_7B, fp8, gpu_memory_gib=80).estimate.plan.count("selective") == 31


def test_eager_blocks_keep_more_per_selective_block_than_compiled_ones() -> None:
    # Eager selective checkpointing caches two output-sized tensors and the statistics per
    # self-attention (calibrated on bench/model_step.py); a compiled block its output and
    # log-sum-exp (the engine's step).
    d, n = DIMS_7B.model_channels, DIMS_7B.num_heads
    tokens = AUTO_1GPU.tokens(DIMS_7B)
    eager = estimate(DIMS_7B, replace(AUTO_1GPU, selective_blocks=31, compiled=False))
    compiled = estimate(DIMS_7B, replace(AUTO_1GPU, selective_blocks=31))
    assert eager.terms["activations_saved"] - compiled.terms["activations_saved"] == (
        pytest.approx(30 * tokens * (2 * d + 4 * n)))
