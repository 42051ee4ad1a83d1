"""The T5 encoder forward that `embed` runs: transformers' ``T5EncoderModel`` numbers, leaner.

transformers' T5 layer is written for training and decoding too: per layer it issues about forty
small operations (three q/k/v products, a position-bias add and float32 softmax outside the
attention kernel, casts back and forth) and keeps the residual stream in the weights' dtype. Here
the weights are the same tensors, read once from a loaded ``T5EncoderModel``, and each layer is

* one RMS norm in float32 on a float32 residual stream and float32 token embeddings (a bf16
  stream adds its own rounding to the products' error against a float32 encoder),
* one fused q/k/v product, then attention with the relative position bias plus key padding
  added to the unscaled scores: ``eager`` (two products, float32 bias and softmax), ``cudnn``
  (cuDNN's fused kernel with the dense bias in the compute dtype), or ``packed``: captions end
  to end without padding (:func:`encode_packed`) and
  :mod:`ctrlpost.embed.kernels.packed_attention`; `embed` picks one (``embed.run.lean_network``),
* one output product, then the feed-forward (ReLU, or GELU-gated for T5 v1.1) in two products.

Every matrix product runs in ``compute_dtype`` (float16 or bf16 on GPU) with float32
accumulation; on CUDA the two products that update the residual stream write float32.
``fused_products`` (CUDA) also moves the residual adds, the score bias and the ReLU into the
products themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class T5Block:
    """One encoder layer's weights, laid out for :func:`encode`."""

    attn_norm_D: torch.Tensor
    qkv_weight: torch.Tensor  # [3·H·Dk, D]: q, k and v stacked
    out_weight: torch.Tensor  # [D, H·Dk]
    ff_norm_D: torch.Tensor
    in_weight: torch.Tensor  # [F, D], or [2F, D] (gate then linear) when gated
    ff_out_weight: torch.Tensor  # [D, F]


@dataclass(frozen=True)
class T5Encoder:
    """A T5 encoder stack ready to run; build it with :meth:`from_transformers`."""

    embedding_V_D: torch.Tensor  # float32
    position_bias_buckets_H: torch.Tensor  # [num_buckets, H], float32
    blocks: tuple[T5Block, ...]
    final_norm_D: torch.Tensor
    heads: int
    head_dim: int
    num_buckets: int
    max_distance: int
    eps: float
    gated: bool
    activation: Callable[[torch.Tensor], torch.Tensor]
    compute_dtype: torch.dtype
    attention: str = "eager"  # one of ATTENTION: "eager" = products + float32 softmax
    fused_products: bool = False  # on CUDA: bias, residual add and ReLU inside the products

    @property
    def dim(self) -> int:
        """Hidden width D of the outputs."""
        return int(self.embedding_V_D.shape[1])

    @classmethod
    def from_transformers(cls, model: Any, compute_dtype: torch.dtype, *,
                          attention: str = "eager", fused_products: bool = False) -> T5Encoder:
        """Take the weights of a loaded ``T5EncoderModel`` (on its device, cast to
        ``compute_dtype``; norms and the position bias table in float32)."""
        from transformers.activations import ACT2FN

        config = model.config
        if attention not in ATTENTION:
            raise ValueError(f"unknown attention {attention!r}: choose one of {ATTENTION}")
        if config.is_gated_act is False and config.dense_act_fn != "relu":
            raise ValueError(f"unsupported T5 feed-forward {config.feed_forward_proj!r}")

        def low(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(compute_dtype)

        def full(t: torch.Tensor) -> torch.Tensor:
            return t.detach().float()

        blocks = []
        for block in model.encoder.block:
            attn, ff = block.layer[0], block.layer[1]
            sa, dense = attn.SelfAttention, ff.DenseReluDense
            qkv = low(torch.cat([sa.q.weight, sa.k.weight, sa.v.weight]))
            if config.is_gated_act:
                in_weight = torch.cat([dense.wi_0.weight, dense.wi_1.weight])
            else:
                in_weight = dense.wi.weight
            blocks.append(T5Block(full(attn.layer_norm.weight), qkv, low(sa.o.weight),
                                  full(ff.layer_norm.weight), low(in_weight),
                                  low(dense.wo.weight)))
        bias = model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
        return cls(
            embedding_V_D=full(model.shared.weight), position_bias_buckets_H=full(bias),
            blocks=tuple(blocks), final_norm_D=full(model.encoder.final_layer_norm.weight),
            heads=config.num_heads, head_dim=config.d_kv,
            num_buckets=config.relative_attention_num_buckets,
            max_distance=config.relative_attention_max_distance, eps=config.layer_norm_epsilon,
            gated=bool(config.is_gated_act), activation=ACT2FN[config.dense_act_fn],
            compute_dtype=compute_dtype, attention=attention, fused_products=fused_products)

    @property
    def packed(self) -> bool:
        """Whether this encoder takes packed captions (:func:`encode_packed`), not padded
        batches."""
        return self.attention == "packed"

    def with_compute_dtype(self, compute_dtype: torch.dtype) -> T5Encoder:
        """The same encoder with its products in ``compute_dtype`` (the product weights cast;
        norms, embedding and position bias stay float32)."""
        import dataclasses

        blocks = tuple(dataclasses.replace(
            block, qkv_weight=block.qkv_weight.to(compute_dtype),
            out_weight=block.out_weight.to(compute_dtype),
            in_weight=block.in_weight.to(compute_dtype),
            ff_out_weight=block.ff_out_weight.to(compute_dtype)) for block in self.blocks)
        return dataclasses.replace(self, blocks=blocks, compute_dtype=compute_dtype)

    def __call__(self, ids_B_L: torch.Tensor, mask_B_L: torch.Tensor) -> torch.Tensor:
        """float32 ``[B, L, D]`` last hidden state (padded positions hold garbage)."""
        return encode(self, ids_B_L, mask_B_L)


def offset_buckets(offset: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bucket of each key − query offset, bidirectional as in its encoder: half the
    buckets per direction, exact offsets below a quarter of them, then log-spaced up to
    ``max_distance`` (farther offsets share the last bucket)."""
    half = num_buckets // 2
    exact = half // 2
    distance = offset.abs()
    spread = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    far = (exact + (spread * (half - exact)).long()).clamp(max=half - 1)
    return (offset > 0).long() * half + torch.where(distance < exact, distance, far)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int,
                              device: torch.device) -> torch.Tensor:
    """``[L, L]`` bucket of each (query, key) pair."""
    position = torch.arange(length, device=device)
    return offset_buckets(position[None, :] - position[:, None], num_buckets, max_distance)


def offset_bias(encoder: T5Encoder, max_length: int, device: torch.device) -> torch.Tensor:
    """``[H, 2·max_length − 1]`` float32 position bias of each key − query offset (offset
    ``o`` at column ``o + max_length − 1``): all the packed attention kernel needs."""
    offsets = torch.arange(-(max_length - 1), max_length, device=device)
    buckets = offset_buckets(offsets, encoder.num_buckets, encoder.max_distance)
    return encoder.position_bias_buckets_H[buckets].t().contiguous()


@dataclass(frozen=True)
class AttentionBias:
    """What is added to the scores: T5's relative position bias, and a large negative value on
    padded keys (finite, so even an all-padding row stays a number)."""

    position_H_L_L: torch.Tensor  # float32
    padding_B_L: torch.Tensor  # float32: 0 on real keys, float32's lowest on padding

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        """The whole ``[B, H, L, L]`` bias in ``dtype``. Its rows start on 16-byte boundaries
        whatever L is (fused attention kernels read the bias in aligned vectors), so batches
        need not be padded to a multiple of 8 tokens."""
        lowest = torch.finfo(dtype).min
        heads, length = self.position_H_L_L.shape[0], self.position_H_L_L.shape[-1]
        per_vector = 16 // torch.empty((), dtype=dtype).element_size()
        row = -(-length // per_vector) * per_vector
        storage = torch.empty(self.padding_B_L.shape[0], heads, length, row, dtype=dtype,
                              device=self.padding_B_L.device)
        bias_B_H_L_L = storage[..., :length]
        summed = self.position_H_L_L[None] + self.padding_B_L[:, None, None, :]
        bias_B_H_L_L.copy_(summed.clamp(min=lowest))
        return bias_B_H_L_L


def attention_bias(encoder: T5Encoder, mask_B_L: torch.Tensor) -> AttentionBias:
    """The relative position bias of this length and the key padding of this batch."""
    length = mask_B_L.shape[1]
    buckets_L_L = relative_position_buckets(length, encoder.num_buckets, encoder.max_distance,
                                            mask_B_L.device)
    position_H_L_L = encoder.position_bias_buckets_H[buckets_L_L].permute(2, 0, 1).contiguous()
    padding_B_L = (1.0 - mask_B_L.float()) * torch.finfo(torch.float32).min
    return AttentionBias(position_H_L_L, padding_B_L)


ATTENTION = ("eager", "cudnn", "packed")


def attend(encoder: T5Encoder, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           dense_bias: torch.Tensor) -> torch.Tensor:
    """Unscaled softmax attention over ``[B, H, L, Dk]`` with an additive bias."""
    if encoder.attention == "cudnn":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=dense_bias, scale=1.0)
    # Products in the compute dtype on tensor cores, the softmax in float32: cheaper than the
    # float32 fallback SDPA takes with a dense bias (bench/NOTES.md).
    batch, heads, length, head_dim = q.shape
    if encoder.fused_products and q.is_cuda and q.dtype != torch.float32:
        # One kernel for q·kᵀ + bias, written in float32 (no cast, no separate add).
        scores = torch.baddbmm(dense_bias.view(batch * heads, length, length),
                               q.reshape(batch * heads, length, head_dim),
                               k.reshape(batch * heads, length, head_dim).transpose(1, 2),
                               out_dtype=torch.float32).view(batch, heads, length, length)
    else:
        scores = torch.matmul(q, k.transpose(-1, -2)).float() + dense_bias
    weights_B_H_L_L = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(weights_B_H_L_L, v)


def add_product(hidden: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, *,
                fused: bool) -> torch.Tensor:
    """``hidden + x @ weight.T`` on the float32 residual stream. On CUDA the product writes
    float32 (no rounding of the update to the compute dtype); ``fused`` adds into ``hidden``
    in place, inside the product, instead of in a separate pass."""
    if x.is_cuda and x.dtype != torch.float32:
        hidden_2d, x_2d = hidden.view(-1, hidden.shape[-1]), x.reshape(-1, x.shape[-1])
        if fused:
            torch.addmm(hidden_2d, x_2d, weight.t(), out_dtype=torch.float32, out=hidden_2d)
            return hidden
        return hidden + torch.mm(x_2d, weight.t(), out_dtype=torch.float32).view(hidden.shape)
    return hidden + F.linear(x, weight).float()


def linear_relu(x: torch.Tensor, weight: torch.Tensor, zero_bias: torch.Tensor | None
                ) -> torch.Tensor:
    """``relu(x @ weight.T)``. Given a zero bias of the output width (CUDA), the ReLU runs in
    the product's epilogue (cuBLASLt) instead of as a pass over the ``[tokens, d_ff]`` output."""
    if zero_bias is not None:
        out_2d = torch._addmm_activation(zero_bias, x.reshape(-1, x.shape[-1]), weight.t())
        return out_2d.view(*x.shape[:-1], weight.shape[0])
    return torch.relu_(F.linear(x, weight))


def rms_norm(x: torch.Tensor, weight_D: torch.Tensor, eps: float) -> torch.Tensor:
    """T5's norm (no mean subtraction, no bias), in float32."""
    return F.rms_norm(x, (x.shape[-1],), weight_D, eps)


def encode(encoder: T5Encoder, ids_B_L: torch.Tensor, mask_B_L: torch.Tensor) -> torch.Tensor:
    """The encoder stack over one padded batch: float32 ``[B, L, D]``."""
    if encoder.packed:
        raise ValueError("a packed-attention encoder runs on packed captions: encode_packed")
    batch, length = ids_B_L.shape
    heads, head_dim = encoder.heads, encoder.head_dim
    dense_bias = attention_bias(encoder, mask_B_L).dense(
        torch.float32 if encoder.attention == "eager" else encoder.compute_dtype)

    def attention(qkv: torch.Tensor) -> torch.Tensor:
        q, k, v = qkv.view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attended = attend(encoder, q, k, v, dense_bias)  # [B, H, L, Dk]
        return attended.transpose(1, 2).reshape(batch, length, heads * head_dim)

    def norm(hidden: torch.Tensor, weight_D: torch.Tensor) -> torch.Tensor:
        return rms_norm(hidden, weight_D, encoder.eps).to(encoder.compute_dtype)

    return _stack(encoder, encoder.embedding_V_D[ids_B_L], attention, norm)


def encode_packed(encoder: T5Encoder, ids_T: torch.Tensor, lengths: Sequence[int]
                  ) -> torch.Tensor:
    """The encoder stack over captions packed end to end (``ids_T``: the token ids of each
    caption in turn, no padding): float32 ``[T, D]``. Attention is
    :func:`ctrlpost.embed.kernels.packed_attention.packed_attention`, and the norms before the
    products are :func:`ctrlpost.embed.kernels.fused_norm.rms_norm_to` (both Triton kernels)."""
    from ctrlpost.embed.kernels.fused_norm import rms_norm_to
    from ctrlpost.embed.kernels.packed_attention import caption_bounds, packed_attention

    starts_S, lengths_S = caption_bounds(lengths, ids_T.device)
    longest = max(lengths)
    bias_H_O = offset_bias(encoder, longest, ids_T.device)

    def attention(qkv_T_3HD: torch.Tensor) -> torch.Tensor:
        return packed_attention(qkv_T_3HD, bias_H_O, starts_S, lengths_S, max_length=longest,
                                heads=encoder.heads, head_dim=encoder.head_dim)

    def norm(hidden: torch.Tensor, weight_D: torch.Tensor) -> torch.Tensor:
        return rms_norm_to(hidden, weight_D, encoder.eps, encoder.compute_dtype)

    return _stack(encoder, encoder.embedding_V_D[ids_T], attention, norm)


def _stack(encoder: T5Encoder, hidden: torch.Tensor,
           attention: Callable[[torch.Tensor], torch.Tensor],
           norm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The layers and the final norm over float32 token embeddings (``hidden``, a new tensor:
    the residual stream is updated in place); ``attention`` maps each layer's fused q/k/v
    product to the attended values, token by token; ``norm`` maps the stream and a norm's
    weight to the products' input in the compute dtype."""
    low, eps, fused = encoder.compute_dtype, encoder.eps, encoder.fused_products
    zero_bias = None
    if fused and hidden.is_cuda and not encoder.gated:
        zero_bias = torch.zeros(encoder.blocks[0].in_weight.shape[0], dtype=low,
                                device=hidden.device)
    for block in encoder.blocks:
        x = norm(hidden, block.attn_norm_D)
        attended = attention(F.linear(x, block.qkv_weight))
        hidden = add_product(hidden, attended, block.out_weight, fused=fused)
        x = norm(hidden, block.ff_norm_D)
        if encoder.gated:
            gate, linear = F.linear(x, block.in_weight).chunk(2, dim=-1)
            inner = encoder.activation(gate) * linear
        else:
            inner = linear_relu(x, block.in_weight, zero_bias)
        hidden = add_product(hidden, inner, block.ff_out_weight, fused=fused)
    return rms_norm(hidden, encoder.final_norm_D, eps)
