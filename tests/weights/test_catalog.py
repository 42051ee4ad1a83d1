"""The weights catalog: pinned repos, files and the reference's MD5s
(docs/reference.md#downloader)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ctrlpost.errors import WeightsError
from ctrlpost.weights import catalog


def test_control_files_by_modality() -> None:
    assert catalog.control_file("edge").path == "edge_control.pt"
    assert catalog.control_file("blur").path == "vis_control.pt"
    assert {f.repo_id for f in catalog.CONTROL_FILES.values()} == {catalog.TRANSFER_7B}


def test_unknown_modality_names_the_choices() -> None:
    with pytest.raises(WeightsError) as info:
        catalog.control_file("egde")
    assert "'egde'" in info.value.message
    assert info.value.hint is not None
    assert "did you mean 'edge'?" in info.value.hint and "blur" in info.value.hint
    assert "[weights].control" in info.value.hint


def test_reference_md5s_are_pinned() -> None:
    md5 = {(f.repo_id, f.path): f.md5 for f in (
        catalog.BASE, *catalog.CONTROL_FILES.values(), *catalog.T5_FILES,
        *catalog.tokenizer_files(catalog.TOKENIZER_720P),
        *catalog.known_in(catalog.TOKENIZER_720P), *catalog.known_in(catalog.TRANSFER_7B))}
    assert md5[(catalog.TRANSFER_7B, "base_model.pt")] == "356497b415f3b0697f8bb034d22b6807"
    assert md5[(catalog.TRANSFER_7B, "edge_control.pt")] == "a0642e300e9e184077d875e1b5920a61"
    assert md5[(catalog.TRANSFER_7B, "vis_control.pt")] == "69fdffc5006bc5d6acb29449bb3ffdca"
    assert md5[(catalog.TRANSFER_7B, "edge_control_distilled.pt")] == (
        "bf7def0bb5ffb5beff1f376d2404fcb4")
    assert md5[(catalog.TOKENIZER_720P, "encoder.jit")] == "f5834d03645c379bc0f8ad14b9bc0299"
    assert md5[(catalog.TOKENIZER_720P, "decoder.jit")] == "ff21a63ed817ffdbe4b6841111ec79a8"
    assert md5[(catalog.TOKENIZER_720P, "autoencoder.jit")] == "7f658580d5cf617ee1a1da85b1f51f0d"
    assert md5[(catalog.TOKENIZER_720P, "mean_std.pt")] is None  # the reference has none
    assert md5[(catalog.T5_11B, "pytorch_model.bin")] == "f890878d8a162e0045a25196e27089a3"
    assert all(re.fullmatch(r"[0-9a-f]{32}", m) for m in md5.values() if m)


def test_training_files() -> None:
    assert [f.path for f in catalog.tokenizer_files(catalog.TOKENIZER_720P)] == [
        "encoder.jit", "decoder.jit", "mean_std.pt"]
    t5 = catalog.text_encoder_files(catalog.T5_11B)
    assert t5 is not None
    assert [f.path for f in t5 if not f.optional] == [
        "config.json", "pytorch_model.bin", "spiece.model", "tokenizer.json"]
    assert {f.path for f in t5 if f.optional} == {"tokenizer_config.json",
                                                  "special_tokens_map.json"}
    assert catalog.text_encoder_files("acme/other-t5") is None
    # Estimates (shown only without the hub): base ~14.5 GB bf16, a control ~1.8 GB.
    assert catalog.BASE.approx_bytes == 14_500 * catalog.MB
    assert catalog.control_file("edge").approx_bytes == 1_800 * catalog.MB


def test_unknown_files_get_a_bare_entry() -> None:
    bare = catalog.lookup("acme/ctrl", "mine.pt")
    assert (bare.approx_bytes, bare.md5, bare.optional) == (None, None, False)
    same = catalog.tokenizer_files("acme/tok")
    assert [f.repo_id for f in same] == ["acme/tok"] * 3


def test_mirrors_are_the_reference_downloaders_repos() -> None:
    repos = {m.repo_id: m for m in catalog.mirror_repos()}
    assert set(repos) == {
        "nvidia/Cosmos-Transfer1-7B", "nvidia/Cosmos-Transfer1-7B-Sample-AV",
        "nvidia/Cosmos-Transfer1-7B-Sample-AV-Single2MultiView",
        "nvidia/Cosmos-Tokenize1-CV8x8x8-720p", "nvidia/Cosmos-UpsamplePrompt1-12B-Transfer",
        "nvidia/Cosmos-Guardrail1", "facebook/sam2-hiera-large",
        "depth-anything/Depth-Anything-V2-Small-hf", "IDEA-Research/grounding-dino-tiny",
        "google-t5/t5-11b", "meta-llama/Llama-Guard-3-8B",
    }
    assert repos["meta-llama/Llama-Guard-3-8B"].gated
    # T5: only the PyTorch weights, not the repo's TF/Flax/Rust copies.
    assert "*" not in repos[catalog.T5_11B].patterns
    assert "pytorch_model.bin" in repos[catalog.T5_11B].patterns


def test_hub_modules_import_light() -> None:
    code = ("import sys, ctrlpost.weights.catalog, ctrlpost.weights.fetch, "
            "ctrlpost.cli.views.fetch_weights;"
            "print(sorted(m for m in ('torch', 'transformers', 'cv2', 'huggingface_hub', "
            "'httpx2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"
