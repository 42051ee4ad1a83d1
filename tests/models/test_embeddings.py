"""Patch orders, RoPE, the noise sinusoid and the learnable positions, on hand-built tensors."""

from __future__ import annotations

import math

import pytest
import torch

from ctrlpost.models import DiT, get_flavor
from ctrlpost.models.embeddings import (
    LearnablePosEmb,
    PatchEmbed,
    RoPE3D,
    apply_rope,
    rope_theta,
    sinusoidal_embedding,
)


def coded_video(channels: int, frames: int, height: int, width: int) -> torch.Tensor:
    """x[0, c, t, h, w] = 1000c + 100t + 10h + w: every value names its own coordinates."""
    c, t, h, w = torch.meshgrid(
        *(torch.arange(n) for n in (channels, frames, height, width)), indexing="ij"
    )
    return (1000 * c + 100 * t + 10 * h + w).float()[None]


def test_patch_embed_flattens_each_patch_in_c_r_m_n_order() -> None:
    channels, pt, ps = 3, 2, 2
    embed = PatchEmbed(in_channels=channels, patch_spatial=ps, patch_temporal=pt, out_channels=24)
    with torch.no_grad():
        embed.proj[1].weight.copy_(torch.eye(24))  # identity: the output is the raw patch
    video = coded_video(channels, 4, 4, 6)
    tokens = embed(video)
    assert tokens.shape == (1, 2, 2, 3, 24)
    patch = tokens[0, 1, 0, 2]  # token grid position (T=1, H=0, W=2)
    expected = [
        video[0, c, 1 * pt + r, 0 * ps + m, 2 * ps + n]
        for c in range(channels)
        for r in range(pt)
        for m in range(ps)
        for n in range(ps)
    ]
    assert patch.tolist() == torch.stack(expected).tolist()


def test_unpatchify_reads_outputs_in_p1_p2_t_c_order() -> None:
    dit = DiT(get_flavor("tiny").base)
    args = dit.args
    channels, ps, pt = args.out_channels, args.patch_spatial, args.patch_temporal
    grid = (2, 3, 2)
    tokens = torch.arange(grid[0] * grid[1] * grid[2])[:, None].float()
    within = torch.arange(ps * ps * pt * channels).float()
    out_B_L_P = (1000 * tokens + within)[None]  # token index · 1000 + position inside the token
    video = dit.unpatchify(out_B_L_P, grid)
    assert video.shape == (1, channels, 2 * pt, 3 * ps, 2 * ps)
    big_t, big_h, big_w = 1, 2, 1
    p1, p2, t, c = 1, 0, 0, 5
    token = (big_t * grid[1] + big_h) * grid[2] + big_w
    position = ((p1 * ps + p2) * pt + t) * channels + c
    pixel = video[0, c, big_t * pt + t, big_h * ps + p1, big_w * ps + p2]
    assert pixel.item() == 1000 * token + position


def test_rope_theta_uses_the_ntk_factor() -> None:
    assert rope_theta(2.0, 44) == pytest.approx(10000 * 2 ** (44 / 42))
    assert rope_theta(2.0, 44) == pytest.approx(20671.16, abs=0.01)
    assert rope_theta(1.0, 42) == 10000.0
    flavor = get_flavor("7b")
    rope_base = RoPE3D(
        dims_thw=flavor.base.rope_dims_thw,
        ratios_thw=(2.0, 1.0, 1.0),
        max_tokens_thw=flavor.base.max_tokens_thw,
        base_fps=24.0,
    )
    assert rope_base.thetas_thw == pytest.approx((20671.16, 10000.0, 10000.0), abs=0.01)
    assert rope_base.frequencies(0)[1].item() == pytest.approx(rope_base.thetas_thw[0] ** (-2 / 44))


def small_rope(ratio_t: float = 2.0) -> RoPE3D:
    return RoPE3D(
        dims_thw=(44, 42, 42),
        ratios_thw=(ratio_t, 1.0, 1.0),
        max_tokens_thw=(16, 8, 8),
        base_fps=24.0,
    )


def test_rope_layout_is_t_h_w_halves_duplicated() -> None:
    sin = small_rope()(1, 2, 1)[1]  # tokens (0,0,0) and (0,1,0): only h differs
    assert sin.shape == (2, 128)
    assert not torch.any(sin[0])
    moved = sin[1].nonzero().flatten().tolist()
    h_slots = list(range(22, 43))
    assert moved == h_slots + [64 + i for i in h_slots]


def test_rope_temporal_positions_scale_with_the_first_samples_fps() -> None:
    rope = small_rope()
    at_24 = rope(4, 1, 1, fps_B=torch.tensor([24.0]))
    at_12 = rope(4, 1, 1, fps_B=torch.tensor([12.0, 48.0]))  # the second fps is ignored
    torch.testing.assert_close(at_12[:, 1], at_24[:, 2])  # frame 1 at 12 fps ≡ position 2
    torch.testing.assert_close(rope(4, 1, 1), at_24)  # no fps = base fps
    assert not torch.allclose(at_12[:, 1], at_24[:, 1])


def test_rope_rotation_preserves_norms_and_encodes_relative_positions() -> None:
    torch.manual_seed(0)
    rope = small_rope()(3, 2, 2)
    q = torch.randn(2, 12, 4, 128)
    rotated = apply_rope(q, rope)
    torch.testing.assert_close(rotated.norm(dim=-1), q.norm(dim=-1))
    # The score between two tokens depends only on their offset: shift both by one frame.
    same = torch.randn(128).expand(12, 128)[None, :, None]
    r = apply_rope(same, rope)[0, :, 0]
    k = apply_rope(same.flip(-1), rope)[0, :, 0]
    score = lambda i, j: (r[i] @ k[j]).item()  # noqa: E731
    assert score(0, 4) == pytest.approx(score(4, 8), rel=1e-5)  # token 4 = (t+1) of token 0


def test_sinusoid_is_cosines_then_sines() -> None:
    dim = 8
    emb = sinusoidal_embedding(torch.tensor([0.0, 2.0]), dim)
    assert emb[0].tolist() == [1.0] * 4 + [0.0] * 4
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(2 * freqs), torch.sin(2 * freqs)]))


def test_learnable_positions_are_rms_normalised_sums() -> None:
    torch.manual_seed(0)
    emb = LearnablePosEmb(dim=16, max_tokens_thw=(4, 5, 6), eps=1e-6)
    pos = emb(2, 3, 4)
    assert pos.shape == (24, 16)
    torch.testing.assert_close(pos.pow(2).mean(-1), torch.ones(24), rtol=1e-4, atol=1e-4)
    raw = emb.pos_emb_t[1] + emb.pos_emb_h[2] + emb.pos_emb_w[3]
    token = (1 * 3 + 2) * 4 + 3
    torch.testing.assert_close(pos[token], raw / (1e-6 + raw.pow(2).mean().sqrt()))
