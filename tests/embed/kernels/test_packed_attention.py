"""The packed T5 attention kernel (run by Triton's interpreter on CPU, natively on GPU) gives
the padded encoder's numbers."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from ctrlpost.embed import run as embed
from ctrlpost.embed import t5
from ctrlpost.embed.kernels import packed_attention

from ..test_t5 import padded_batch


def dense_attention(qkv_T_3HD: torch.Tensor, bias_H_O: torch.Tensor, lengths: list[int],
                    heads: int, head_dim: int) -> torch.Tensor:
    """softmax(q·kᵀ + bias[key − query]) · v caption by caption, in float64."""
    out, start, center = [], 0, (bias_H_O.shape[1] - 1) // 2
    for n in lengths:
        q, k, v = qkv_T_3HD[start:start + n].double().view(n, 3, heads, head_dim).unbind(1)
        offset = torch.arange(n)[None, :] - torch.arange(n)[:, None]
        scores = torch.einsum("qhd,khd->hqk", q, k) + bias_H_O[:, offset + center].double()
        out.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, -1))
        start += n
    return torch.cat(out)


def unpadded(x_B_L: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Each row's first ``lengths[i]`` positions, end to end: a padded batch packed."""
    return torch.cat([x_B_L[i, :n] for i, n in enumerate(lengths)])


@pytest.mark.parametrize(("block_m", "block_n", "tma"),
                         [(16, 16, False), (64, 32, False), (16, 64, False), (16, 16, True)])
def test_kernel_matches_dense_attention_caption_by_caption(interpreted: None,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           block_m: int, block_n: int,
                                                           tma: bool) -> None:
    """At any tile size, and with q/k/v through tensor descriptors, whose tiles run past a
    caption's end into the next caption (and past the last token)."""
    monkeypatch.setattr(packed_attention, "BLOCK_M", block_m)
    monkeypatch.setattr(packed_attention, "BLOCK_N", block_n)
    heads, head_dim, lengths = 2, 16, [5, 37, 1, 16]  # tiles full, partial and single-token
    generator = torch.Generator().manual_seed(0)
    qkv = torch.randn(sum(lengths), 3 * heads * head_dim, generator=generator)
    bias = torch.randn(heads, 2 * max(lengths) - 1, generator=generator) * 2
    starts_S, lengths_S = packed_attention.caption_bounds(lengths, torch.device("cpu"))
    assert starts_S.tolist() == [0, 5, 42, 43] and lengths_S.tolist() == lengths
    got = packed_attention.packed_attention(qkv, bias, starts_S, lengths_S,
                                            max_length=max(lengths), heads=heads,
                                            head_dim=head_dim, tma=tma)
    want = dense_attention(qkv, bias, lengths, heads, head_dim)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def wide_heads_t5(vocab_size: int = 97) -> Any:
    """A random T5 encoder with 16-wide heads (the kernel's smallest) and a position bias that
    matters."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, d_model=32, d_kv=16, d_ff=64, num_layers=2,
                      num_heads=2, relative_attention_num_buckets=8,
                      relative_attention_max_distance=12, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = T5EncoderModel(config).eval()
    with torch.no_grad():
        model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.normal_(0, 2)
    return model


def test_packed_encoder_equals_padded_encoder(interpreted: None) -> None:
    lengths = [9, 3, 17, 1]
    ids_B_L, mask_B_L = padded_batch(lengths)
    model = wide_heads_t5()
    padded = t5.T5Encoder.from_transformers(model, torch.float32)(ids_B_L, mask_B_L)
    packed = t5.T5Encoder.from_transformers(model, torch.float32, attention="packed")
    got_T_D = t5.encode_packed(packed, unpadded(ids_B_L, lengths), lengths)
    want_T_D = unpadded(padded, lengths)
    torch.testing.assert_close(got_T_D, want_T_D, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="encode_packed"):
        packed(ids_B_L, mask_B_L)


def test_text_encoder_splits_packed_outputs_per_caption(interpreted: None,
                                                        tiny_t5: Any) -> None:
    encoder = embed.load_text_encoder(str(tiny_t5), device=torch.device("cpu"))
    captions = ["a red car drives down the road at night", "hi", "a cat", "zebra quartz"]
    model = wide_heads_t5(vocab_size=encoder.network.embedding_V_D.shape[0])
    padded = dataclasses.replace(
        encoder, network=t5.T5Encoder.from_transformers(model, torch.float32))
    packed = dataclasses.replace(
        encoder, network=t5.T5Encoder.from_transformers(model, torch.float32,
                                                        attention="packed"))
    got, want = packed.encode(captions), padded.encode(captions)
    assert [g.shape for g in got] == [w.shape for w in want] == [
        (n, 32) for n in encoder.token_lengths(captions)]
    for g, w in zip(got, want, strict=True):  # float16 outputs: within one rounding step
        np.testing.assert_allclose(g.astype(np.float32), w.astype(np.float32), rtol=2**-10,
                                   atol=1e-3)

    # A packed batch's token budget counts the tokens it holds; a padded one's, its padding.
    budget = sum(encoder.token_lengths(captions))
    assert len(list(embed.planned_batches(packed, captions, max_captions=8,
                                          max_tokens=budget))) == 1
    assert len(list(embed.planned_batches(padded, captions, max_captions=8,
                                          max_tokens=budget))) > 1


@pytest.mark.gpu
def test_compiled_kernel_on_the_gpu_is_what_embed_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA: the compiled kernel in bf16 within bf16 error of the float64 reference, and the
    packed bf16 encoder (what `embed` picks for heads of 16 or more) within bf16 error of the
    float32 padded one."""
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device (run them with `nox -s gpu` on one)")
    device = torch.device("cuda")
    heads, head_dim, lengths = 4, 128, [77, 3, 130, 64, 1]
    generator = torch.Generator().manual_seed(0)
    qkv = torch.randn(sum(lengths), 3 * heads * head_dim, generator=generator)
    bias = torch.randn(heads, 2 * max(lengths) - 1, generator=generator) * 2
    starts_S, lengths_S = packed_attention.caption_bounds(lengths, device)
    want = dense_attention(qkv.bfloat16().float(), bias, lengths, heads, head_dim)
    qkv_T_3HD, bias_H_O = qkv.to(device, torch.bfloat16), bias.to(device)
    by_tma = packed_attention.copies_by_tma(qkv_T_3HD)
    assert by_tma == (torch.cuda.get_device_capability(device) >= (9, 0))
    for block_m, block_n in ((64, 32), (64, 16), (32, 64), (64, 64), (128, 64)):
        monkeypatch.setattr(packed_attention, "BLOCK_M", block_m)
        monkeypatch.setattr(packed_attention, "BLOCK_N", block_n)
        for tma in {False, by_tma}:
            got = packed_attention.packed_attention(
                qkv_T_3HD, bias_H_O, starts_S, lengths_S, max_length=max(lengths), heads=heads,
                head_dim=head_dim, tma=tma)
            error = float((got.double().cpu() - want).norm() / want.norm())
            assert error < 1e-2, (block_m, block_n, tma, error)
    monkeypatch.undo()  # the tuned tile for what `embed` picks

    model = wide_heads_t5().to(device)
    network = embed.lean_network(model.bfloat16())
    assert (network.attention, network.fused_products) == ("packed", True)
    encoder_lengths = [9, 3, 17, 1]
    ids_B_L, mask_B_L = padded_batch(encoder_lengths)
    reference = t5.T5Encoder.from_transformers(wide_heads_t5(), torch.float32)
    want_T_D = unpadded(reference(ids_B_L, mask_B_L), encoder_lengths)
    with torch.inference_mode():
        got_T_D = t5.encode_packed(network, unpadded(ids_B_L, encoder_lengths).to(device),
                                   encoder_lengths).cpu()
    assert float((got_T_D - want_T_D).norm() / want_T_D.norm()) < 1e-2
