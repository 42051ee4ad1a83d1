"""`verify`'s table in words, its layout sentence, and its warnings."""

from __future__ import annotations

from types import SimpleNamespace

from ctrlpost.cli.views.verify import describe, warnings


def test_details_are_words_not_python_reprs() -> None:
    text = describe("data", {"clips": 8, "frames": [24, 24], "resolutions": {"224x128": 8},
                             "orphan_files": [], "deep": False, "fps": [24.0]})
    assert text == ("clips: 8; frames: 24, 24; resolutions: 224x128 8; orphan files: none; "
                    "deep: no; fps: 24")
    assert not any(mark in text for mark in "[]{}'=")


def test_the_layout_row_says_what_it_sized_and_why() -> None:
    text = describe("layout", {
        "device": "CPU processes (gloo)", "bucket_reason": "the largest bucket of resolution "
        "'128': the memory of the worst clip", "gpus": 2, "gpu_memory_gib": 80.0,
        "bucket": "176x176", "tokens": 363, "peak_at": "base backward",
        "breakdown_gib": {"ema": 0.0, "overhead": 1.26, "tokenizer_weights": 0.19},
        "peak_allocated_gib": 0.2, "total_gib": 1.5, "budget_gib": 76.0, "fits": True})
    assert text.startswith("2 CPU processes (gloo) of 80 GiB, sized for 176x176 (the largest "
                           "bucket of resolution '128'")
    assert text.endswith("fits; largest parts: overhead 1.26 GiB, tokenizer weights 0.19 GiB")


def test_the_layout_row_names_each_blocks_checkpointing() -> None:
    summary = {
        "gpus": 1, "gpu_memory_gib": 80.0, "bucket": "960x960", "tokens": 57600,
        "checkpointing": "auto", "checkpointing_plan": "selective on 14 of 31 blocks "
        "(base 14-27), full on 17 (base 0-13, control 0-2)", "peak_at": "base backward",
        "breakdown_gib": {"activations_saved": 29.05}, "peak_allocated_gib": 71.6,
        "total_gib": 76.0, "budget_gib": 76.0, "fits": True}
    text = describe("layout", summary)
    assert ("of a 76 GiB budget: fits; checkpointing auto: selective on 14 of 31 blocks "
            "(base 14-27), full on 17 (base 0-13, control 0-2); largest parts: activations "
            "saved 29.05 GiB") in text


def test_clips_that_lost_their_video_are_named_in_a_warning() -> None:
    stages = [SimpleNamespace(summary={"orphans": 2, "orphan_files": ["metas/b.txt",
                                                                     "t5_xxl/b.pickle"]}),
              SimpleNamespace(summary={"clips": 8})]
    (line,) = warnings(SimpleNamespace(stages=stages))
    assert line.startswith("2 file(s) without their video, so their clips are not trained on: "
                           "metas/b.txt, t5_xxl/b.pickle")
