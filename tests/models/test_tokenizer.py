"""VideoTokenizer on tiny TorchScript codecs built in the test, and the shipped tiny codec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctrlpost.errors import WeightsError
from ctrlpost.models.tiny_tokenizer import build_tiny_tokenizer
from ctrlpost.models.tokenizer import (
    TokenizerFiles,
    VideoTokenizer,
    torchscript_deprecation_silenced,
)
from ctrlpost.tokenizer_geometry import COMPILED_ENCODE_SCORE_BUDGET

from .conftest import convolutions, grouped_convolutions, softmax_sizes

PIXEL_CHUNK = 9  # 1 + 8: causal 8x in time gives 2 latent frames per chunk
LATENT_CHUNK = 2


def _projection() -> torch.Tensor:
    """A fixed [16, 3] matrix with orthonormal columns: latent = M @ rgb is exactly invertible."""
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))
    return q[:, :3].contiguous()


class PoolEncoder(nn.Module):
    """Causal 8x temporal / 8x spatial average pooling, then a fixed 3→16 linear map."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(_projection())  # a parameter, so freezing can be checked

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, t, h, w = video.shape
        rest = video[:, :, 1:].reshape(b, c, (t - 1) // 8, 8, h, w).mean(3)
        pooled = torch.cat([video[:, :, :1], rest], 2)
        pooled = pooled.reshape(b, c, pooled.shape[2], h // 8, 8, w // 8, 8).mean((4, 6))
        latent = torch.einsum("kc,bcthw->bkthw", self.weight, pooled)
        return latent, torch.zeros(1)


class PlainPoolEncoder(nn.Module):
    """Same codec, returning the latent alone instead of a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = PoolEncoder()

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.inner(video)[0]


class PoolDecoder(nn.Module):
    """Exact left inverse of PoolEncoder on cell-constant videos (Mᵀ, then nearest upsampling)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(_projection())

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        rgb = torch.einsum("kc,bkthw->bcthw", self.weight, latent)
        rgb = rgb.repeat_interleave(8, dim=3).repeat_interleave(8, dim=4)
        return torch.cat([rgb[:, :, :1], rgb[:, :, 1:].repeat_interleave(8, dim=2)], 2)


def _mean_std() -> tuple[torch.Tensor, torch.Tensor]:
    # Distinct value per (channel, latent frame); 5 columns of which the first 2 are used.
    c = torch.arange(16.0).reshape(16, 1)
    t = torch.arange(5.0).reshape(1, 5)
    return (0.1 * c - 0.3 * t).flatten(), (0.5 + 0.05 * c + 0.2 * t).flatten()


def _write(tmp_path: Path, encoder: nn.Module) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    with torchscript_deprecation_silenced():
        torch.jit.save(torch.jit.script(encoder), str(tmp_path / "encoder.jit"))
        torch.jit.save(torch.jit.script(PoolDecoder()), str(tmp_path / "decoder.jit"))
    torch.save(_mean_std(), tmp_path / "mean_std.pt")
    return tmp_path


def _tokenizer(directory: Path, **kwargs: object) -> VideoTokenizer:
    options: dict = {
        "device": "cpu",
        "dtype": torch.float32,
        "pixel_chunk_frames": PIXEL_CHUNK,
        "latent_chunk_frames": LATENT_CHUNK,
    }
    options.update(kwargs)
    return VideoTokenizer.from_files(directory, **options)


@pytest.fixture()
def tokenizer(tmp_path: Path) -> VideoTokenizer:
    return _tokenizer(_write(tmp_path, PoolEncoder()))


def _video(batch: int, chunks: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, PIXEL_CHUNK * chunks, 16, 24, generator=gen) * 2 - 1


def _cell_constant_video(batch: int, chunks: int) -> torch.Tensor:
    """A video in the range of PoolDecoder: constant over 8x8 cells and causal 8-frame groups."""
    gen = torch.Generator().manual_seed(1)
    rgb = torch.rand(batch, 3, LATENT_CHUNK * chunks, 2, 3, generator=gen) * 2 - 1
    rgb = rgb.repeat_interleave(8, dim=3).repeat_interleave(8, dim=4)
    parts = []
    for n in range(chunks):
        chunk = rgb[:, :, n * LATENT_CHUNK : (n + 1) * LATENT_CHUNK]
        parts += [chunk[:, :, :1], chunk[:, :, 1:].repeat_interleave(8, dim=2)]
    return torch.cat(parts, 2)


def test_properties(tokenizer: VideoTokenizer) -> None:
    assert tokenizer.spatial_compression_factor == 8
    assert tokenizer.temporal_compression_factor == 8
    assert tokenizer.latent_channels == 16
    assert tokenizer.latent_frames(2 * PIXEL_CHUNK) == 2 * LATENT_CHUNK
    assert tokenizer.mean_B_C_T_1_1.shape == (1, 16, LATENT_CHUNK, 1, 1)


def test_encode_normalises_per_channel_and_per_latent_frame(tokenizer: VideoTokenizer) -> None:
    video = _video(batch=1, chunks=1)
    raw = tokenizer.encoder(video)[0]
    mean, std = (s.reshape(16, 5)[:, :LATENT_CHUNK] for s in _mean_std())
    expected = (raw - mean.reshape(1, 16, 2, 1, 1)) / std.reshape(1, 16, 2, 1, 1)
    latent = tokenizer.encode(video)
    assert latent.shape == (1, 16, 2, 2, 3)
    assert latent.dtype == torch.float32
    torch.testing.assert_close(latent, expected)
    # Spot-check one element by hand: channel 5, latent frame 1.
    manual = (raw[0, 5, 1, 1, 2] - (0.5 - 0.3)) / (0.5 + 0.25 + 0.2)
    torch.testing.assert_close(latent[0, 5, 1, 1, 2], manual)


def test_two_chunks_encode_like_each_chunk_alone(tokenizer: VideoTokenizer) -> None:
    video = _video(batch=2, chunks=2)
    both = tokenizer.encode(video)
    first = tokenizer.encode(video[:, :, :PIXEL_CHUNK])
    second = tokenizer.encode(video[:, :, PIXEL_CHUNK:])
    assert both.shape == (2, 16, 4, 2, 3)
    torch.testing.assert_close(both, torch.cat([first, second], dim=2))


def test_plain_tensor_and_tuple_encoders_agree(tmp_path: Path) -> None:
    tuple_tok = _tokenizer(_write(tmp_path / "a", PoolEncoder()))
    plain_tok = _tokenizer(_write(tmp_path / "b", PlainPoolEncoder()))
    video = _video(batch=1, chunks=2)
    torch.testing.assert_close(tuple_tok.encode(video), plain_tok.encode(video))


class CallSpy:
    """Records the batch size of every call to a wrapped module."""

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        self.module = module
        self.batches: list[int] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.module(x)


def test_chunks_are_batched_up_to_the_limits(tmp_path: Path) -> None:
    tok = _tokenizer(_write(tmp_path, PoolEncoder()), max_encode_batch=4, max_decode_batch=3)
    encoder, decoder = CallSpy(tok.encoder), CallSpy(tok.decoder)
    tok.encoder, tok.decoder = encoder, decoder  # type: ignore[assignment]
    latent = tok.encode(_video(batch=3, chunks=2))  # 6 chunks
    tok.decode(latent)
    assert encoder.batches == [4, 2]
    assert decoder.batches == [3, 3]


def test_decode_inverts_encode_for_videos_in_the_codec_range(tokenizer: VideoTokenizer) -> None:
    video = _cell_constant_video(batch=2, chunks=2)
    latent = tokenizer.encode(video)
    restored = tokenizer.decode(latent)
    assert restored.shape == video.shape
    torch.testing.assert_close(restored, video, atol=1e-5, rtol=0)


def test_frozen_eval_no_grad_and_dtype(tmp_path: Path) -> None:
    tok = _tokenizer(_write(tmp_path, PoolEncoder()), dtype=torch.bfloat16)
    assert not tok.encoder.training and not tok.decoder.training
    params = [*tok.encoder.parameters(), *tok.decoder.parameters()]
    assert params and all(not p.requires_grad for p in params)
    assert all(p.dtype == torch.bfloat16 for p in params)
    video = _video(batch=1, chunks=1).requires_grad_(True)
    latent = tok.encode(video)
    assert latent.dtype == torch.float32 and not latent.requires_grad
    reference = _tokenizer(tmp_path).encode(video.detach())
    torch.testing.assert_close(latent, reference, atol=0.05, rtol=0.02)


@pytest.mark.parametrize(("frames", "hint"), [(10, "e.g. 9 or 18"), (5, "e.g. 9)")])
def test_encode_rejects_partial_chunks(tokenizer: VideoTokenizer, frames: int, hint: str) -> None:
    video = torch.zeros(1, 3, frames, 16, 16)
    with pytest.raises(
        ValueError, match=rf"cannot encode {frames} pixel frames.*multiple of 9"
    ) as err:
        tokenizer.encode(video)
    assert hint in str(err.value)


def test_encode_rejects_bad_size_and_decode_bad_latent_frames(tokenizer: VideoTokenizer) -> None:
    with pytest.raises(ValueError, match="12 pixel rows"):
        tokenizer.encode(torch.zeros(1, 3, PIXEL_CHUNK, 12, 16))
    with pytest.raises(ValueError, match="cannot decode 3 latent frames"):
        tokenizer.decode(torch.zeros(1, 16, 3, 2, 2))


def test_missing_files_name_every_file_and_the_fix(tmp_path: Path) -> None:
    torch.save(_mean_std(), tmp_path / "mean_std.pt")
    with pytest.raises(WeightsError, match=r"encoder\.jit.*decoder\.jit") as err:
        _tokenizer(tmp_path)
    assert err.value.hint is not None and "fetch-weights" in err.value.hint


def test_explicit_file_paths_and_short_statistics(tmp_path: Path) -> None:
    _write(tmp_path, PoolEncoder())
    (tmp_path / "enc.jit").write_bytes((tmp_path / "encoder.jit").read_bytes())
    files = TokenizerFiles(
        encoder=tmp_path / "enc.jit",
        decoder=tmp_path / "decoder.jit",
        mean_std=tmp_path / "mean_std.pt",
    )
    tok = VideoTokenizer.from_files(
        files=files, device="cpu", dtype=torch.float32, pixel_chunk_frames=9, latent_chunk_frames=2
    )
    assert tok.latent_channels == 16
    with pytest.raises(WeightsError, match="fewer than latent_chunk_frames=6"):
        _tokenizer(tmp_path, pixel_chunk_frames=41, latent_chunk_frames=6)


def test_chunk_settings_that_do_not_match_the_codec(tmp_path: Path) -> None:
    _write(tmp_path, PoolEncoder())
    with pytest.raises(ValueError, match="is not 1 \\+ k"):
        _tokenizer(tmp_path, pixel_chunk_frames=10, latent_chunk_frames=3)
    tok = _tokenizer(tmp_path, pixel_chunk_frames=17, latent_chunk_frames=2)  # codec makes 3
    with pytest.raises(WeightsError, match=r"returned \(16, 3\).*expected \(16, 2\)"):
        tok.encode(torch.zeros(1, 3, 17, 8, 8))


# --- the shipped tiny codec -----------------------------------------------------------------


@pytest.fixture()
def tiny(tmp_path: Path) -> VideoTokenizer:
    directory = build_tiny_tokenizer(tmp_path / "tiny")
    assert sorted(p.name for p in directory.iterdir()) == [
        "decoder.jit",
        "encoder.jit",
        "mean_std.pt",
    ]
    return VideoTokenizer.from_files(
        directory, device="cpu", dtype=torch.float32, pixel_chunk_frames=17, latent_chunk_frames=3
    )


def test_tiny_codec_encode_after_decode_is_identity(tiny: VideoTokenizer) -> None:
    latent = torch.randn(2, 16, 6, 2, 3, generator=torch.Generator().manual_seed(0))
    video = tiny.decode(latent)
    assert video.shape == (2, 3, 34, 16, 24)
    torch.testing.assert_close(tiny.encode(video), latent, atol=1e-5, rtol=0)


def test_tiny_codec_decode_after_encode_is_a_projection(tiny: VideoTokenizer) -> None:
    video = torch.rand(1, 3, 17, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    projected = tiny.decode(tiny.encode(video))
    torch.testing.assert_close(tiny.decode(tiny.encode(projected)), projected, atol=1e-5, rtol=0)
    in_range = tiny.decode(torch.randn(1, 16, 3, 2, 2))
    torch.testing.assert_close(tiny.decode(tiny.encode(in_range)), in_range, atol=1e-5, rtol=0)


def test_tiny_codec_is_causal_and_pins_its_channels(tiny: VideoTokenizer) -> None:
    video = torch.zeros(1, 3, 17, 8, 8)
    video[:, 0, 0, :4, :4] = 1.0  # red in the top-left cell of frame 0 only
    video[:, :, 0, 4:, :2] = 0.5  # luma step inside the bottom-left cell (left half brighter)
    raw = tiny.encoder(video)[0]  # before normalisation
    assert raw.shape == (1, 16, 3, 1, 1)
    frame0 = raw[0, :, 0, 0, 0]
    expected = torch.zeros(16)
    expected[0] = 1.0  # channel 0: mean red of cell (0, 0)
    expected[[2, 6, 10]] = 0.25  # R, G, B means of cell (1, 0): half of the cell at 0.5
    expected[14] = 0.5 * (1.5 - 0.0)  # cell (1, 0) detail: (left luma − right luma) / 2
    torch.testing.assert_close(frame0, expected)
    assert torch.all(raw[0, :, 1:] == 0)  # later latent frames never see frame 0
    torch.testing.assert_close(tiny.encode(video)[0, :, 0, 0, 0], frame0 / 0.5)


def test_tiny_codec_rejects_unsupported_channel_counts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="4·g²"):
        build_tiny_tokenizer(tmp_path, latent_channels=12)
    with pytest.raises(ValueError, match="divisible"):
        build_tiny_tokenizer(tmp_path, latent_channels=64, spatial=4)
    build_tiny_tokenizer(tmp_path / "big", latent_channels=64, spatial=16, temporal=4)


class AttendingPoolEncoder(PoolEncoder):
    """PoolEncoder, then a spatial self-attention over each latent frame written as the
    released tokenizer writes its attention blocks (materialised scores)."""

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent, zero = super().forward(video)
        b, c, t, h, w = latent.shape
        tokens = latent.permute(0, 2, 1, 3, 4).reshape(b * t, c, h * w)
        scores = torch.bmm(tokens.permute(0, 2, 1), tokens) * (int(c) ** -0.5)
        attended = torch.bmm(tokens, torch.softmax(scores, dim=2).permute(0, 2, 1))
        return latent + attended.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4), zero


class WaveletPoolEncoder(PoolEncoder):
    """A Haar-like step first, as the released encoder opens: each column pair averaged by a
    depthwise convolution whose kernel tiles the frame (what PoolEncoder's pooling then
    averages anyway, so the codec is unchanged)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pair", torch.full((3, 1, 1, 1, 2), 0.5))

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = F.conv3d(video, self.pair, stride=(1, 1, 2), groups=3)
        return super().forward(pairs.repeat_interleave(2, dim=4))


class FactorisedPoolEncoder(PoolEncoder):
    """The released encoder's factorised causal convolutions first: a (1, 3, 3) one over each
    frame and a (3, 1, 1) one over time after repeating the first frame, both the identity
    (a centre or last tap of one), so the codec is unchanged."""

    def __init__(self) -> None:
        super().__init__()
        spatial, temporal = torch.zeros(3, 3, 1, 3, 3), torch.zeros(3, 3, 3, 1, 1)
        for channel in range(3):
            spatial[channel, channel, 0, 1, 1] = temporal[channel, channel, 2, 0, 0] = 1.0
        self.register_buffer("spatial", spatial)
        self.register_buffer("temporal", temporal)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.conv3d(video, self.spatial, padding=(0, 1, 1))
        x = F.conv3d(torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2), self.temporal)
        return super().forward(x)


def _write_traced(directory: Path, encoder: nn.Module | None = None) -> Path:
    """A codec with a traced encoder.jit (PoolEncoder's unless given), as the released files
    are made."""
    encoder = encoder or PoolEncoder()
    _write(directory, PoolEncoder())
    with torchscript_deprecation_silenced():
        traced = torch.jit.trace(encoder, _video(batch=1, chunks=1), check_trace=False)
        torch.jit.save(traced, str(directory / "encoder.jit"))
    return directory


@pytest.mark.parametrize("encoder", [PoolEncoder, AttendingPoolEncoder, WaveletPoolEncoder,
                                     FactorisedPoolEncoder])
def test_a_compiled_encoder_encodes_like_the_script_module(
        tmp_path: Path, encoder: type[nn.Module]) -> None:
    directory = _write_traced(tmp_path / "traced", encoder())
    plain, compiled = _tokenizer(directory), _tokenizer(directory, compile_encoder=True)
    assert isinstance(plain.encoder, torch.jit.ScriptModule)
    assert not isinstance(compiled.encoder, torch.jit.ScriptModule)
    # the released form of attention is matched and runs as products and a softmax, a slice
    # of frames at a time (this clip's few scores fit one slice)
    replay = compiled.encoder._orig_mod
    assert replay.fused_attentions == (1 if encoder is AttendingPoolEncoder else 0)
    assert replay.attention_score_budget == COMPILED_ENCODE_SCORE_BUDGET
    video = _video(batch=2, chunks=2)  # another shape than the trace's
    clip = _video(batch=1, chunks=1)
    assert softmax_sizes(replay, clip)[1] == softmax_sizes(plain.encoder, clip)[1]
    # the Haar-like step runs as a sum of slices, not as a depthwise convolution; the
    # factorised convolutions as 2-D ones
    assert grouped_convolutions(plain.encoder, clip)[1] == (
        [3] if encoder is WaveletPoolEncoder else [])
    assert grouped_convolutions(compiled.encoder._orig_mod, clip)[1] == []
    traced_dims = {WaveletPoolEncoder: [3], FactorisedPoolEncoder: [3, 3]}.get(encoder, [])
    replayed_dims = [2, 2] if encoder is FactorisedPoolEncoder else []
    assert [c.dims for c in convolutions(plain.encoder, clip)[1]] == traced_dims
    assert [c.dims for c in convolutions(compiled.encoder._orig_mod, clip)[1]] == replayed_dims
    torch.testing.assert_close(compiled.encode(video), plain.encode(video), rtol=1e-5,
                               atol=1e-5)


def test_a_scripted_encoder_cannot_be_compiled_and_the_error_says_what_to_set(
        tmp_path: Path) -> None:
    directory = build_tiny_tokenizer(tmp_path / "tiny")  # scripted: has control flow
    with pytest.raises(WeightsError, match="its graph cannot be compiled") as caught:
        VideoTokenizer.from_files(directory, device="cpu", dtype=torch.float32,
                                  pixel_chunk_frames=17, latent_chunk_frames=3,
                                  compile_encoder=True)
    assert str(directory / "encoder.jit") in caught.value.message
    assert "parallel.compile_tokenizer = false" in str(caught.value.hint)
