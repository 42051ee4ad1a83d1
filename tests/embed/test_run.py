"""`ctrlpost embed`: batched T5 output equals the reference's one-caption, pad-to-512 output;
reruns resume; the command works end to end on a tiny T5."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ctrlpost.cli import app
from ctrlpost.data import text
from ctrlpost.embed import run as embed
from ctrlpost.embed.t5 import T5Encoder
from ctrlpost.errors import CtrlpostError, DataError, WeightsError
from ctrlpost.recipe import EmbedOptions

from .conftest import CORPUS

LONG = " ".join(CORPUS * 12)  # > 512 tokens: truncated to 512, EOS kept
CAPTIONS = [*CORPUS, "a cat", "hi", LONG, "zebra quartz xylophone"]


@pytest.fixture(scope="module")
def encoder(tiny_t5: Path) -> embed.TextEncoder:
    return embed.load_text_encoder(str(tiny_t5), device=torch.device("cpu"))


@pytest.fixture(scope="module")
def reference_model(tiny_t5: Path) -> Any:
    """transformers' own T5 encoder on the same files: what the reference script runs."""
    from transformers import T5EncoderModel

    return T5EncoderModel.from_pretrained(str(tiny_t5)).eval()


def reference_encode(enc: embed.TextEncoder, model: Any, caption: str) -> np.ndarray:
    """The reference script: one caption, padded to 512, zero beyond the length, trimmed."""
    batch = enc.tokenizer([caption], padding="max_length", truncation=True, max_length=512,
                          return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).last_hidden_state
    length = int(batch["attention_mask"].sum())
    hidden[0, length:] = 0
    return hidden[0].to(torch.float16).numpy()[:length]


@pytest.mark.parametrize("pad_multiple", [1, 8])
def test_batched_equals_one_at_a_time_padded_to_512(encoder: embed.TextEncoder,
                                                    reference_model: Any,
                                                    pad_multiple: int) -> None:
    encoder = dataclasses.replace(encoder, pad_multiple=pad_multiple)
    lengths = encoder.token_lengths(CAPTIONS)
    assert max(lengths) == 512 and min(lengths) >= 2
    got: dict[int, np.ndarray] = {}
    batch_sizes = []
    for batch, embeddings in embed.encode_captions(encoder, CAPTIONS, max_captions=4,
                                                   max_tokens=600):
        batch_sizes.append(len(batch))
        for i, emb in zip(batch, embeddings, strict=True):
            got[i] = emb
    assert batch_sizes[0] == 1 and max(batch_sizes) == 4  # the 512-token caption goes alone
    assert len(got) == len(CAPTIONS)
    for i, caption in enumerate(CAPTIONS):
        want = reference_encode(encoder, reference_model, caption)
        assert got[i].dtype == np.float16 and got[i].shape == want.shape == (lengths[i], 32)
        diff = np.abs(got[i].astype(np.float32) - want.astype(np.float32)).max()
        assert diff <= 1e-3, (caption[:30], diff)


def test_length_batches_longest_first_within_caption_and_token_limits() -> None:
    lengths = [3, 9, 1, 9, 5]
    assert embed.length_batches(lengths, max_captions=2, max_tokens=100) == [[1, 3], [4, 0],
                                                                             [2]]
    assert embed.length_batches(lengths, max_captions=8, max_tokens=18) == [[1, 3], [4, 0, 2]]
    assert embed.length_batches([30, 2, 2], max_captions=8, max_tokens=18) == [[0], [1, 2]]


def test_packed_length_batches_count_the_tokens_they_hold() -> None:
    lengths = [3, 9, 1, 9, 5]  # padded, 9 + 9 + 5 would count as 27 tokens
    assert embed.length_batches(lengths, max_captions=8, max_tokens=23, packed=True) == [
        [1, 3, 4], [0, 2]]
    assert embed.length_batches(lengths, max_captions=2, max_tokens=100, packed=True) == [
        [1, 3], [4, 0], [2]]
    assert embed.length_batches([30, 2, 2], max_captions=8, max_tokens=18, packed=True) == [
        [0], [1, 2]]


def test_planned_batches_tokenize_once_in_chunks(encoder: embed.TextEncoder,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embed, "FIRST_CHUNK", 2)
    monkeypatch.setattr(embed, "CHUNK", 3)
    tokenized: list[int] = []
    original = embed.TextEncoder.tokenize
    monkeypatch.setattr(embed.TextEncoder, "tokenize",
                        lambda self, caps: tokenized.append(len(caps)) or original(self, caps))
    texts = CAPTIONS[:7]
    plan = list(embed.planned_batches(encoder, texts, max_captions=2, max_tokens=10_000))
    assert tokenized == [2, 3, 2]  # every caption once: a chunk of 2, then chunks of 3
    chunk_of = [0, 0, 1, 1, 1, 2, 2]
    for indices, ids in plan:
        assert len({chunk_of[i] for i in indices}) == 1 and len(indices) <= 2
        assert ids == original(encoder, [texts[i] for i in indices])
        assert [len(x) for x in ids] == sorted((len(x) for x in ids), reverse=True)
    assert sorted(i for indices, _ in plan for i in indices) == list(range(7))
    assert list(embed.planned_batches(encoder, [], max_captions=2, max_tokens=10)) == []


def write_captions(root: Path, captions: dict[str, str]) -> None:
    (root / "metas").mkdir(parents=True, exist_ok=True)
    for stem, caption in captions.items():
        (root / "metas" / f"{stem}.txt").write_text(caption)


def test_rerun_skips_done_and_replaces_invalid(tmp_path: Path, encoder: embed.TextEncoder,
                                               reference_model: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    captions = {f"c{i}": c for i, c in enumerate(CORPUS[:5])}
    write_captions(tmp_path, {**captions, "blank": "  \n"})
    calls: list[int] = []
    original = embed.TextEncoder._launch
    monkeypatch.setattr(embed.TextEncoder, "_launch",
                        lambda self, caps, copies: calls.append(len(caps))
                        or original(self, caps, copies))
    loads: list[str] = []
    monkeypatch.setattr(embed, "load_text_encoder",
                        lambda name, **k: loads.append(name) or encoder)
    monkeypatch.setattr(embed, "model_dim", lambda name: 32)

    options = EmbedOptions(device="cpu", batch_size=2)
    first = embed.run(tmp_path, model="unused", options=options, show_progress=False)
    assert (first.embedded, first.skipped, first.empty) == (5, 0, ["blank"])
    assert calls == [2, 2, 1]
    for stem, caption in captions.items():
        saved = text.read_embedding(text.embedding_path(tmp_path, stem), dim=32)
        np.testing.assert_allclose(saved, reference_encode(encoder, reference_model, caption),
                                   atol=1e-3, rtol=0)

    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "t5_xxl").iterdir()}
    (tmp_path / "t5_xxl" / "c3.pickle").write_bytes(b"garbage")
    calls.clear()
    second = embed.run(tmp_path, model="unused", options=options, show_progress=False)
    assert (second.embedded, second.skipped) == (1, 4) and calls == [1]
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "t5_xxl").iterdir()}
    assert {k for k in after if after[k] != mtimes[k]} == {"c3.pickle"}
    assert "1 caption(s)" in second.line() and "4 already done" in second.line()
    third = embed.run(tmp_path, model="unused", options=EmbedOptions(device="cpu"),
                      show_progress=False)
    assert (third.embedded, third.skipped, len(loads)) == (0, 5, 2)  # no load when all done


def test_no_captions_and_bad_device_and_missing_model(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no captions"):
        embed.pending_captions(tmp_path, dim=None)
    with pytest.raises(CtrlpostError, match="unknown device"):
        embed.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(CtrlpostError, match="CUDA is not available"):
            embed.resolve_device("cuda")
    with pytest.raises(WeightsError, match="cannot load the T5 encoder") as info:
        embed.load_text_encoder(str(tmp_path / "nope"), device=torch.device("cpu"))
    assert "fetch-weights" in (info.value.hint or "")


def test_cpu_network_is_float32_with_plain_attention(encoder: embed.TextEncoder) -> None:
    assert encoder.network.compute_dtype == torch.float32
    assert (encoder.network.attention, encoder.network.fused_products) == ("eager", False)
    assert not embed.cudnn_attention_runs(torch.device("cpu"), 64)


def test_resolve_model_prefers_the_weights_folder(tmp_path: Path) -> None:
    (tmp_path / "org" / "t5").mkdir(parents=True)
    assert embed.resolve_model("org/t5", weights_dir=tmp_path) == str(tmp_path / "org" / "t5")
    assert embed.resolve_model("google-t5/t5-11b", weights_dir=tmp_path) == "google-t5/t5-11b"


def test_embed_command(tmp_path: Path, tiny_t5: Path) -> None:
    root = tmp_path / "data"
    write_captions(root, {"a": CORPUS[0], "b": CORPUS[1], "c": CORPUS[2]})
    weights = tmp_path / "weights"
    (weights / "acme").mkdir(parents=True)
    (weights / "acme" / "tiny-t5").symlink_to(tiny_t5, target_is_directory=True)
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[job]\nname = "x"\n[weights]\ndir = {json.dumps(str(weights))}\n'
        'text_encoder = "acme/tiny-t5"\n'
        f'[data]\nroot = {json.dumps(str(root))}\n[data.embed]\nbatch_size = 2\n'
        '[[control]]\nmodality = "edge"\n[train]\nsteps = 1\n')
    runner = CliRunner()
    result = runner.invoke(app, ["embed", str(recipe), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "embedded 3 caption(s)" in result.output
    assert sorted(p.name for p in (root / "t5_xxl").iterdir()) == [
        "a.pickle", "b.pickle", "c.pickle"]
    again = runner.invoke(app, ["embed", str(recipe), "--batch-size", "1"])
    assert again.exit_code == 0 and "embedded 0 caption(s)" in again.output
    assert "3 already done" in again.output
    missing = runner.invoke(app, ["embed", str(recipe), "--model", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "cannot load the T5 encoder" in missing.output
    bad = runner.invoke(app, ["embed", str(recipe), "--precision", "fp8"])
    assert bad.exit_code != 0 and "data.embed.precision" in bad.output
    wrong = runner.invoke(app, ["embed", str(recipe), "--device", "tpu"])
    assert wrong.exit_code != 0 and "unknown device 'tpu'" in wrong.output


def test_non_finite_output_without_float16_stops_before_writing(
        tmp_path: Path, encoder: embed.TextEncoder) -> None:
    """Outputs that are not numbers with float32 products (bad weights) are refused, not
    written as inf."""
    huge = dataclasses.replace(encoder.network, final_norm_D=encoder.network.final_norm_D * 1e9)
    overflowing = dataclasses.replace(encoder, network=huge)
    with pytest.raises(CtrlpostError, match="not finite") as caught:
        embed.embed_captions(tmp_path, overflowing, {"a": CORPUS[0], "b": CORPUS[1]},
                             batch_size=1, batch_tokens=4096)
    assert "check the checkpoint" in (caught.value.hint or "")
    assert not (tmp_path / text.EMBED_DIR).exists() or not any(
        (tmp_path / text.EMBED_DIR).iterdir())


def overflowing_in_float16(network: T5Encoder, dtype: torch.dtype) -> T5Encoder:
    """``network`` with products in ``dtype`` and a first feed-forward whose activations pass
    float16's largest value (65504) but stay far inside bf16's range (as T5's do)."""
    low = network.with_compute_dtype(dtype)
    first = dataclasses.replace(low.blocks[0], ff_norm_D=low.blocks[0].ff_norm_D * 1e4,
                                ff_out_weight=low.blocks[0].ff_out_weight * 10)
    return dataclasses.replace(low, blocks=(first, *low.blocks[1:]))


def test_a_batch_that_overflows_in_float16_is_redone_in_bf16(
        tmp_path: Path, encoder: embed.TextEncoder) -> None:
    captions = {"a": CORPUS[0], "b": CORPUS[1], "c": CORPUS[2]}
    fp16 = dataclasses.replace(encoder, network=overflowing_in_float16(encoder.network,
                                                                       torch.float16))
    # What the fallback runs: the same (float16-rounded) weights, bf16 products.
    bf16 = dataclasses.replace(fp16, network=fp16.network.with_compute_dtype(torch.bfloat16))
    tokens = fp16.tokenize([captions["a"]])
    assert not np.isfinite(fp16.network(torch.tensor(tokens), torch.ones(1, len(tokens[0]),
                                                                         dtype=torch.long))
                           .numpy()).all(), "the planted weights must overflow in float16"
    embed.embed_captions(tmp_path, fp16, captions, batch_size=1, batch_tokens=4096)
    assert fp16.redone_in_bf16 == 3  # every batch (one caption each) overflowed
    for stem, caption in captions.items():
        written = text.read_embedding(tmp_path / text.EMBED_DIR / f"{stem}.pickle")
        np.testing.assert_array_equal(written, bf16.encode([caption])[0])
        assert np.isfinite(written).all()
    summary = embed.EmbedSummary(3, 0, [], 1.0, "out", redone_in_bf16=2)
    assert "2 batch(es) redone with bf16 products (float16 overflowed)" in summary.line()


    with pytest.raises(CtrlpostError, match="precision='fp8'"):
        embed.load_text_encoder("unused", device=torch.device("cpu"), precision="fp8")
