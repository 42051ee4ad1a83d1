"""`ctrlpost embed`'s encoder path against the reference's way, same random T5-11B weights.

* **reference way** (Cosmos-Transfer1's T5 script): the encoder in float32 (TF32 off, torch's
  default), one caption per call, padded to 512 tokens, outputs zeroed past the caption, cast
  to float16 and trimmed. Every call does the same 512-token work, so its rate is measured on a
  sample (``--reference-captions`` per repetition, 3 repetitions, before the variants and again
  after them; ratios divide by the faster of the two medians) and holds for any caption mix.
* **ctrlpost**: :func:`ctrlpost.embed.run.encode_captions` exactly as ``ctrlpost embed`` runs
  it (captions tokenized once on a background thread, sorted by length within chunks, batches
  of at most ``data.embed.batch_size`` captions and ``data.embed.batch_tokens`` tokens packed
  end to end, the lean forward of :mod:`ctrlpost.embed.t5` with float16 products and the
  packed attention kernel, the next batch queued while the last is copied out), over all
  ``--captions``; plus variants: bf16 products, padded batches with cuDNN attention, token
  budgets, other attention paths (``bench/_t5_variants.py``), transformers' own
  ``T5EncoderModel`` (bf16, eager or SDPA attention) in the same loop, "simple batched"
  (batches of 32 in caption order, padded to the longest), and ``--kernel-sweep`` (the
  attention kernel's tile settings on one layer).

Weights: ``T5EncoderModel`` at google-t5/t5-11b's config (d_model 1024, d_ff 65536, 128 heads of
128, 24 layers, ReLU MLP), random (transformers' own init, seed 0), built on the device; the
float32 model is the reference's, the float16 and bf16 copies are rounded from it (what loading
the float32 checkpoint with ``dtype=`` gives). No tokenizer can be downloaded
on the GPU box: captions are drawn from a word list whose words are one token each of
``ctrlpost.weights.tiny.caption_tokenizer`` (a T5-like WordPiece: EOS appended, pad 0, EOS 1), so
token counts are exact. Writing the pickles is left out of both sides.

Caption length mix (tokens, EOS included): log-normal, median ``--median-tokens`` (64),
sigma 0.5, clipped to [8, 512] ("mixed", the acceptance figure); a second "long" mix (median 160)
is reported too, because the ratio scales with 512 / mean length.

Usage::

    python bench/embed.py                                  # GPU, T5-11B
    python bench/embed.py --model tiny --device cpu --captions 64 --reference-captions 4

Writes ``bench/results/embed-<device>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

common.ensure_ctrlpost_importable()

import _t5_variants as t5_variants  # noqa: E402  (bench-only attention paths and kernel settings)

from ctrlpost.embed.run import TextEncoder, encode_captions, lean_network  # noqa: E402
from ctrlpost.embed.t5 import T5Encoder, encode  # noqa: E402

T5_11B = dict(vocab_size=32128, d_model=1024, d_kv=128, d_ff=65536, num_layers=24, num_heads=128,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="relu",
              pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
TINY = dict(T5_11B, d_model=64, d_kv=16, d_ff=256, num_layers=2, num_heads=4)
MAX_LENGTH = 512


def caption_words(tokenizer: Any) -> list[str]:
    """Words that the tokenizer maps to exactly one token."""
    from ctrlpost.weights.tiny import caption_vocabulary

    words = [w for w in caption_vocabulary() if w.isalpha() and len(w) > 1]
    return [w for w in words if len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1]


def make_captions(tokenizer: Any, count: int, *, median: float, seed: int) -> list[str]:
    """``count`` captions whose token lengths (EOS included) follow the log-normal mix."""
    rng = np.random.default_rng(seed)
    words = caption_words(tokenizer)
    lengths = np.clip(np.round(rng.lognormal(np.log(median), 0.5, count)), 8, MAX_LENGTH)
    return [" ".join(rng.choice(words, int(n) - 1)) for n in lengths]


def mixed_caption_lengths(count: int = 1024) -> list[int]:
    """Token lengths (EOS included) of the default "mixed" caption mix: ``count`` captions,
    median 64 tokens, seed 0, as ``main`` builds it."""
    from ctrlpost.weights.tiny import caption_tokenizer

    tokenizer = caption_tokenizer()
    captions = make_captions(tokenizer, count, median=64.0, seed=0)
    return TextEncoder(tokenizer, None, torch.device("cpu"), MAX_LENGTH).token_lengths(captions)


class TransformersNetwork:
    """transformers' ``T5EncoderModel`` behind the call :class:`TextEncoder` makes."""

    packed = False

    def __init__(self, model: Any, attention: str) -> None:
        self.model, self.attention = model, attention
        self.dim = model.config.d_model

    def __call__(self, ids_B_L: torch.Tensor, mask_B_L: torch.Tensor) -> torch.Tensor:
        default = self.model.config._attn_implementation
        self.model.config._attn_implementation = self.attention
        try:
            return self.model(input_ids=ids_B_L, attention_mask=mask_B_L).last_hidden_state
        finally:
            self.model.config._attn_implementation = default


def cast_copy(model: Any, dtype: torch.dtype) -> Any:
    """A copy of ``model`` with every weight rounded once to ``dtype`` (what loading the
    float32 checkpoint with ``dtype=`` gives)."""
    with torch.device("meta"):
        copy = type(model)(model.config).eval()
    copy = copy.to_empty(device=model.device).to(dtype)
    copy.load_state_dict(model.state_dict())
    return copy.requires_grad_(False)


def build_encoders(config: dict[str, Any], device: torch.device) -> tuple[Any, Any]:
    """(float32, bf16) transformers T5 encoders with the same random weights."""
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(**config)
    torch.manual_seed(0)
    with torch.device(device):
        fp32 = T5EncoderModel(cfg).eval()
    low = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device("meta"):
        bf16 = T5EncoderModel(cfg).eval()
    bf16 = bf16.to_empty(device=device).to(low)
    bf16.load_state_dict(fp32.state_dict())  # copy_ casts to bf16
    return fp32.requires_grad_(False), bf16.requires_grad_(False)


@torch.no_grad()
def reference_embed(model: Any, tokenizer: Any, caption: str, device: torch.device) -> np.ndarray:
    """The reference's way for one caption (its ``batch_encode_plus`` call, which transformers 5
    spells ``tokenizer(...)``): pad to 512, encode, zero the padding, float16, trim."""
    batch = tokenizer([caption], return_tensors="pt", truncation=True, padding="max_length",
                      max_length=MAX_LENGTH, return_length=True, return_offsets_mapping=False)
    ids = batch.input_ids.to(device)
    mask = batch.attention_mask.to(device)
    encoded = model(input_ids=ids, attention_mask=mask).last_hidden_state
    lengths = mask.sum(dim=1).cpu()
    for i in range(encoded.shape[0]):
        encoded[i][lengths[i]:] = 0
    out = encoded.cpu().numpy().astype(np.float16)
    return out[0, : int(lengths[0])]


def ctrlpost_pass(encoder: TextEncoder, captions: Sequence[str], batch_size: int, *,
                  sort: bool = True, max_tokens: int = 0) -> dict[int, np.ndarray]:
    """``ctrlpost embed``'s loop minus the pickle writes: batches of at most ``batch_size``
    captions and ``max_tokens`` tokens (0: no token limit); unsorted, "simple batched"."""
    if sort:
        batches = encode_captions(encoder, captions, max_captions=batch_size,
                                  max_tokens=max_tokens or batch_size * MAX_LENGTH)
    else:
        plan = [list(range(i, min(i + batch_size, len(captions))))
                for i in range(0, len(captions), batch_size)]
        batches = zip(plan, encoder.encode_batches(
            encoder.tokenize([captions[i] for i in batch]) for batch in plan), strict=True)
    out: dict[int, np.ndarray] = {}
    for batch, embeddings in batches:
        for i, emb in zip(batch, embeddings, strict=True):
            out[i] = emb
    return out


def compare(ours: dict[int, np.ndarray], ref: dict[int, np.ndarray]) -> dict[str, Any]:
    """Errors of ``ours`` against the reference's float16 outputs, over the reference sample.

    "within float16 tolerance" is |a − b| ≤ 2⁻¹⁰·|b| + 2⁻¹⁰·rms(b) elementwise (one float16
    rounding step relative to the value, plus one relative to the output's scale); also the
    fraction within ``torch.testing``'s float16 defaults (rtol 1e-3, atol 1e-5)."""
    rel, worst, within, within_testing, shapes_equal = [], 0.0, [], [], True
    for i, r in ref.items():
        a, b = ours[i].astype(np.float32), r.astype(np.float32)
        if a.shape != b.shape:
            shapes_equal = False
            continue
        diff = np.abs(a - b)
        rms = float(np.sqrt(np.mean(b * b)))
        rel.append(float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)))
        worst = max(worst, float(diff.max()) / max(rms, 1e-30))
        within.append(float(np.mean(diff <= 2**-10 * np.abs(b) + 2**-10 * rms)))
        within_testing.append(float(np.mean(diff <= 1e-5 + 1e-3 * np.abs(b))))
    return {"captions": len(rel), "shapes_equal": shapes_equal,
            "rel_l2_median": float(np.median(rel)), "rel_l2_max": float(np.max(rel)),
            "max_abs_over_rms": worst, "fraction_within_fp16_tolerance": float(np.mean(within)),
            "all_within_fp16_tolerance": bool(min(within) == 1.0),
            "fraction_within_torch_testing_fp16": float(np.mean(within_testing))}


def compiled(network: T5Encoder) -> Any:
    """The lean forward under ``torch.compile`` (dynamic lengths: one graph for all batches)."""
    forward = torch.compile(encode, dynamic=True)

    class Compiled:
        dim = network.dim

        def __call__(self, ids_B_L: torch.Tensor, mask_B_L: torch.Tensor) -> torch.Tensor:
            return forward(network, ids_B_L, mask_B_L)

    return Compiled()


def sdpa_backends(config: dict[str, Any], device: torch.device) -> dict[str, str]:
    """Which fused SDPA kernel takes T5's call (batch 32 of 72 tokens, dense bf16 bias, scale
    1), and why the others refuse it."""
    import warnings

    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, head_dim = config["num_heads"], config["d_kv"]
    q, k, v = (torch.randn(32, heads, 72, head_dim, device=device, dtype=torch.bfloat16)
               for _ in range(3))
    bias = torch.randn(32, heads, 72, 72, device=device, dtype=torch.bfloat16)
    out: dict[str, str] = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH):
        with warnings.catch_warnings(record=True) as caught, sdpa_kernel([backend]):
            warnings.simplefilter("always")
            try:
                torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                                 scale=1.0)
                out[backend.name] = "ok"
            except RuntimeError as exc:
                reasons = " | ".join(str(w.message).strip()[:200] for w in caught)
                out[backend.name] = f"refused: {str(exc)[:120]} ({reasons})"
        print(f"sdpa {backend.name}: {out[backend.name]}", flush=True)
    return out


KERNEL_TILES = ((32, 32), (32, 64), (64, 16), (64, 32), (64, 64), (128, 32))


def sweep_settings() -> list[dict[str, Any]]:
    """The tile and launch settings ``--kernel-sweep`` tries."""
    return [{"block_m": block_m, "block_n": block_n, "warps": warps, "stages": stages}
            for (block_m, block_n) in KERNEL_TILES for warps, stages in ((4, 2), (4, 3), (8, 3))]


def kernel_sweep(config: dict[str, Any], lengths: Sequence[int], batch_size: int,
                 batch_tokens: int, device: torch.device,
                 settings: Sequence[dict[str, Any]] | None = None,
                 dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """One layer's attention over all captions, batch by batch as ``embed`` groups them: the
    packed kernel in each tile and launch setting, and cuDNN on the same batches padded (dense
    bf16 bias); milliseconds per layer, and the bytes a perfect kernel has to move (q, k, v in,
    the output out)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ctrlpost.embed.kernels.packed_attention import caption_bounds
    from ctrlpost.embed.run import length_batches

    heads, head_dim = config["num_heads"], config["d_kv"]
    batches = [[lengths[i] for i in batch] for batch in
               length_batches(lengths, max_captions=batch_size, max_tokens=batch_tokens,
                              packed=True)]
    inputs = []
    for batch in batches:
        starts_S, lengths_S = caption_bounds(batch, device)
        inputs.append((torch.randn(sum(batch), 3 * heads * head_dim, device=device,
                                   dtype=dtype),
                       torch.randn(heads, 2 * max(batch) - 1, device=device),
                       starts_S, lengths_S, max(batch)))

    def layer_ms(run: Callable[[], Any]) -> float:
        run()
        times = [common.timed(run, device)[0] * 1e3 for _ in range(5)]
        return common.median(times)

    rows: list[dict[str, Any]] = []
    for setting in settings or sweep_settings():
        try:
            ms = layer_ms(lambda setting=setting: [
                t5_variants.packed_attention_with(qkv, bias, starts, lens, max_length=longest,
                                                  heads=heads, head_dim=head_dim, **setting)
                for qkv, bias, starts, lens, longest in inputs])
            rows.append({**setting, "ms_per_layer": ms})
        except Exception as exc:
            rows.append({**setting, "error": f"{type(exc).__name__}: {str(exc)[:160]}"})
    padded = []
    for batch in batches:
        longest = max(batch)
        qkv = torch.randn(len(batch), longest, 3, heads, head_dim, device=device,
                          dtype=dtype)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        row = -(-longest // 8) * 8
        bias = torch.randn(len(batch), heads, longest, row, device=device,
                           dtype=dtype)[..., :longest]
        padded.append((q, k, v, bias))

    def cudnn() -> None:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            for q, k, v, bias in padded:
                torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                                 scale=1.0)

    cudnn_ms = layer_ms(cudnn)
    tokens = sum(sum(batch) for batch in batches)
    moved = tokens * heads * head_dim * 2 * 4
    ok = sorted((r for r in rows if "ms_per_layer" in r), key=lambda r: r["ms_per_layer"])
    for r in ok[:12]:
        print(f"kernel {r['block_m']:3d}x{r['block_n']:3d} warps {r['warps']} stages "
              f"{r['stages']}: {r['ms_per_layer']:.2f} ms/layer "
              f"({moved / r['ms_per_layer'] / 1e6:.0f} GB/s)", flush=True)
    print(f"cuDNN padded: {cudnn_ms:.2f} ms/layer; {len(batches)} batches, {tokens} tokens",
          flush=True)
    return {"batches": len(batches), "tokens": tokens, "bytes_moved_per_layer": moved,
            "cudnn_padded_ms_per_layer": cudnn_ms, "packed": rows}


def profile_pass(encoder: TextEncoder, captions: Sequence[str], batch_size: int,
                 max_tokens: int, device: torch.device) -> dict[str, Any]:
    """Kernel time vs wall time of one pass, and the costliest kernels."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    def one_pass() -> Any:
        return ctrlpost_pass(encoder, captions, batch_size, max_tokens=max_tokens)

    one_pass()  # warm-up: compiles what it compiles
    common.synchronize(device)
    with profile(activities=activities) as prof:
        wall, _ = common.timed(one_pass, device)
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    top = sorted(events, key=lambda e: getattr(e, attr, 0), reverse=True)[:15]
    kernels = [{"name": e.key[:120], "ms": getattr(e, attr, 0) / 1e3, "calls": e.count}
               for e in top]
    total = sum(getattr(e, attr, 0) for e in events if e.device_type.name == (
        "CUDA" if device.type == "cuda" else "CPU")) / 1e3
    print(f"profile: wall {wall * 1e3:.0f} ms, kernel time {total:.0f} ms")
    for k in kernels:
        print(f"  {k['ms']:9.1f} ms {k['calls']:6d}  {k['name']}")
    return {"wall_ms": wall * 1e3, "kernel_ms": total, "top": kernels}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("t5-11b", "tiny"), default="t5-11b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--captions", type=int, default=1024)
    parser.add_argument("--reference-captions", type=int, default=24,
                        help="captions per timed repetition of the reference way (3 repetitions)")
    parser.add_argument("--median-tokens", type=float, default=64.0)
    parser.add_argument("--batch-sizes", default="512",
                        help="most captions per batch; the first is the recipe default")
    parser.add_argument("--batch-tokens", type=int, default=8192,
                        help="most tokens per batch (the recipe default) for every variant "
                             "but the --max-tokens ones")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--networks", default="lean-fp16-cudnn,transformers-eager",
                        help="extra variants with the default batching: lean-bf16, "
                             "lean-fp16-cudnn, "
                             "lean-fp16-loaded, lean-cudnn-padded, "
                             "lean-efficient, lean-fused, lean-fp16, "
                             "lean-sdpa, lean-cudnn, lean-flex, lean-fp16-flex, lean-compiled, "
                             "transformers-eager, transformers-sdpa")
    parser.add_argument("--max-tokens", default="", help="extra variants: token budgets")
    parser.add_argument("--budget-networks", default="lean",
                        help="networks timed with each token budget")
    parser.add_argument("--pad-multiples", default="1",
                        help="pad each --max-tokens batch to a multiple of these (one variant "
                             "each)")
    parser.add_argument("--simple", action="store_true", help="also time simple batching")
    parser.add_argument("--profile", action="store_true", help="profile one pass (kernels)")
    parser.add_argument("--kernel-sweep", action="store_true",
                        help="time the packed attention kernel's settings on one layer")
    parser.add_argument("--profile-network", default="lean", help="network to profile")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from ctrlpost.weights.tiny import caption_tokenizer

    device = torch.device(args.device)
    t0 = time.perf_counter()
    tokenizer = caption_tokenizer()
    tokenizer.padding_side = "right"
    mixes = {"mixed": make_captions(tokenizer, args.captions, median=args.median_tokens, seed=0),
             "long": make_captions(tokenizer, args.captions, median=160.0, seed=1)}
    config = T5_11B if args.model == "t5-11b" else TINY
    fp32, bf16 = build_encoders(config, device)
    params = sum(p.numel() for p in fp32.parameters())
    build_s = time.perf_counter() - t0
    name = common.device_name(device)
    record: dict[str, Any] = {
        "benchmark": "embed", "device": name, "torch": torch.__version__, "date": common.now(),
        "model": args.model, "config": config, "encoder_params": params, "build_s": build_s,
        "command": " ".join(sys.argv), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "captions": args.captions, "mixes": {}, "errors": [],
    }
    out_path = args.out or common.RESULTS / f"embed-{common.slug(name.split(' (')[0])}.json"
    print(f"built {args.model} encoder ({params / 1e9:.2f} B params) in {build_s:.0f} s",
          flush=True)

    # -- the reference way: one caption at a time, fp32, padded to 512
    ref_captions = mixes["mixed"]
    n_ref = args.reference_captions
    reference: dict[int, np.ndarray] = {}
    common.synchronize(device)
    for i in range(2):  # warm-up
        reference_embed(fp32, tokenizer, ref_captions[-1 - i], device)

    def reference_rates() -> list[float]:
        """captions/s of 3 timed repetitions of ``n_ref`` captions each (outputs kept)."""
        rates = []
        for rep in range(3):
            idx = range(rep * n_ref, (rep + 1) * n_ref)
            seconds, _ = common.timed(lambda idx=idx: [reference.__setitem__(
                i, reference_embed(fp32, tokenizer, ref_captions[i], device)) for i in idx],
                device)
            rates.append(n_ref / seconds)
        return rates

    # Timed again after the variants: the ratios divide by the faster of the two medians, so
    # a reference that ran slow once (the GPU's state drifts) cannot flatter them.
    start_rates = reference_rates()
    ref_rate = common.median(start_rates)
    record["reference"] = {"captions_per_s": ref_rate, "start_rates": start_rates,
                           "captions_timed": 3 * n_ref,
                           "note": "every call encodes 512 tokens, so the rate holds for any mix"}
    print(f"reference way: {ref_rate:.2f} captions/s (median of {start_rates})", flush=True)
    common.write_json(record, out_path)

    lengths_by_mix = {}
    for mix, captions in mixes.items():
        lengths = TextEncoder(tokenizer, bf16, device, MAX_LENGTH).token_lengths(captions)
        lengths_by_mix[mix] = lengths
        record["mixes"][mix] = {
            "token_lengths": {"mean": float(np.mean(lengths)), "median": float(np.median(lengths)),
                              "p10": float(np.percentile(lengths, 10)),
                              "p90": float(np.percentile(lengths, 90)), "max": int(max(lengths))},
            "variants": []}

    low = torch.bfloat16 if device.type == "cuda" else torch.float32
    networks: dict[str, Callable[[], Any]] = {
        "lean": lambda: lean_network(cast_copy(fp32, torch.float16) if device.type == "cuda"
                                     else fp32),
        "lean-bf16": lambda: lean_network(bf16),
        "lean-fp16-cudnn": lambda: T5Encoder.from_transformers(fp32, torch.float16,
                                                               attention="cudnn",
                                                               fused_products=True),
        "lean-cudnn-padded": lambda: T5Encoder.from_transformers(bf16, low, attention="cudnn",
                                                                 fused_products=True),
        "lean-efficient": lambda: t5_variants.variant(bf16, low, "efficient", fused_products=True),
        "lean-fp16-loaded": lambda: T5Encoder.from_transformers(
            cast_copy(fp32, torch.float16), torch.float16, attention="cudnn",
            fused_products=True),
        "lean-fused": lambda: T5Encoder.from_transformers(bf16, low, fused_products=True),
        "lean-fp16": lambda: T5Encoder.from_transformers(fp32, torch.float16),
        "lean-sdpa": lambda: t5_variants.variant(bf16, low, "sdpa"),
        "lean-cudnn": lambda: T5Encoder.from_transformers(bf16, low, attention="cudnn"),
        "lean-flex": lambda: t5_variants.variant(bf16, low, "flex", fused_products=True),
        "lean-fp16-flex": lambda: t5_variants.variant(fp32, torch.float16, "flex",
                                                      fused_products=True),
        "lean-compiled": lambda: compiled(T5Encoder.from_transformers(bf16, low)),
        "transformers-eager": lambda: TransformersNetwork(bf16, "eager"),
        "transformers-sdpa": lambda: TransformersNetwork(bf16, "sdpa"),
    }
    first = int(args.batch_sizes.split(",")[0])
    default = {"batch": first, "max_tokens": args.batch_tokens, "pad": 1}
    variants: list[dict[str, Any]] = []
    for k, size in enumerate(int(b) for b in args.batch_sizes.split(",")):
        label = "ctrlpost (recipe default)" if k == 0 else "ctrlpost"
        variants.append({**default, "label": f"{label} batch {size}, <= {args.batch_tokens} "
                         "tokens", "batch": size, "network": "lean"})
    for net in filter(None, args.networks.split(",")):
        variants.append({**default, "label": f"{net}", "network": net})
    for net in args.budget_networks.split(","):
        for budget in filter(None, args.max_tokens.split(",")):
            for multiple in (int(m) for m in args.pad_multiples.split(",")):
                variants.append({**default, "label": f"{net} batches of <= {budget} tokens, "
                                 f"padded to {multiple}", "max_tokens": int(budget),
                                 "pad": multiple, "network": net})
    if args.simple:
        variants.append({"label": "simple batched batch 32 (unsorted)", "batch": 32,
                         "sort": False, "pad": 8, "network": "lean"})
    variants.append({**default, "label": "ctrlpost (recipe default)", "mix": "long",
                     "network": "lean"})

    built: dict[str, Any] = {}
    for v in variants:
        label, mix, size = v["label"], v.get("mix", "mixed"), v["batch"]
        sort, budget, net = v.get("sort", True), v.get("max_tokens", 0), v["network"]
        pad = v["pad"]
        captions = mixes[mix]
        try:
            if net not in built:
                built.clear()  # one extra weight copy at a time
                gc.collect()
                built[net] = networks[net]()
            encoder = TextEncoder(tokenizer, built[net], device, MAX_LENGTH, pad)

            def one_pass(encoder: TextEncoder = encoder, captions: list[str] = captions,
                         size: int = size, sort: bool = sort, budget: int = budget) -> Any:
                return ctrlpost_pass(encoder, captions, size, sort=sort, max_tokens=budget)

            warm_s, outputs = common.timed(one_pass, device)  # warm-up (compiles, if any)
            times = [common.timed(one_pass, device)[0] for _ in range(args.repeats)]
        except Exception as exc:
            record["errors"].append({"variant": label, "error": f"{type(exc).__name__}: {exc}"})
            print(f"ERROR {label}: {exc}", flush=True)
            continue
        rate = args.captions / common.median(times)
        tokens = sum(lengths_by_mix[mix])
        flops = 2 * (params - config["vocab_size"] * config["d_model"]) * tokens
        row = {"variant": label, "network": net, "batch_size": size, "max_tokens": budget,
               "pad_multiple": pad,
               "sorted": sort, "warm_up_s": warm_s, "times_s": times, "captions_per_s": rate,
               "vs_reference": rate / ref_rate, "real_tokens": tokens,
               "dense_tflops_on_real_tokens": flops * rate / args.captions / 1e12}
        if mix == "mixed":
            row["accuracy_vs_reference"] = compare(outputs, reference)
        record["mixes"][mix]["variants"].append(row)
        print(f"{mix:5s} {label}: {rate:.1f} captions/s = {rate / ref_rate:.1f}x the first "
              "reference timing, "
              f"{row['dense_tflops_on_real_tokens']:.0f} TFLOP/s on real tokens", flush=True)
        del outputs
        gc.collect()
        common.write_json(record, out_path)
    built.clear()

    end_rates = reference_rates()
    ref_rate = max(ref_rate, common.median(end_rates))
    record["reference"].update(captions_per_s=ref_rate, end_rates=end_rates)
    for entry in record["mixes"].values():
        for row in entry["variants"]:
            row["vs_reference"] = row["captions_per_s"] / ref_rate
    print(f"reference way again: median of {end_rates}; ratios divide by {ref_rate:.2f} "
          "captions/s (the faster median)", flush=True)
    common.write_json(record, out_path)

    if args.kernel_sweep:
        try:
            record["kernel_sweep"] = kernel_sweep(config, lengths_by_mix["mixed"], first,
                                                  args.batch_tokens, device)
        except Exception as exc:
            record["errors"].append({"variant": "kernel sweep",
                                     "error": f"{type(exc).__name__}: {exc}"})
        common.write_json(record, out_path)

    if args.profile:
        if device.type == "cuda":
            record["sdpa_backends"] = sdpa_backends(config, device)
        # Kernel time far below wall time would mean the GPU waits on the host.
        try:
            network = networks[args.profile_network]()
            record["profile"] = profile_pass(TextEncoder(tokenizer, network, device, MAX_LENGTH),
                                             mixes["mixed"], first, args.batch_tokens,
                                             device)
            record["profile"]["network"] = args.profile_network
        except Exception as exc:
            record["errors"].append({"variant": "profile", "error": f"{type(exc).__name__}: {exc}"})
        common.write_json(record, out_path)

    record["elapsed_s"] = time.perf_counter() - t0
    common.write_json(record, out_path)
    rows = []
    for mix, entry in record["mixes"].items():
        for row in entry["variants"]:
            acc = row.get("accuracy_vs_reference", {})
            rows.append((mix, row["variant"], f"{row['captions_per_s']:.1f}",
                         f"{row['vs_reference']:.1f}x",
                         f"{acc['rel_l2_median']:.1e}" if acc else "-",
                         f"{acc['fraction_within_fp16_tolerance']:.4f}" if acc else "-"))
    print()
    print(f"device {name}, torch {torch.__version__}; reference way {ref_rate:.2f} captions/s; "
          f"mixed mean {record['mixes']['mixed']['token_lengths']['mean']:.1f} tokens, "
          f"long mean {record['mixes']['long']['token_lengths']['mean']:.1f}")
    common.print_table(rows, ("mix", "variant", "captions/s", "vs ref", "rel L2",
                              "within fp16 tol"))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
