"""`ctrlpost embed`'s encoder path against the reference's way, same random T5-11B weights.

* **reference way** (Cosmos-Transfer1's T5 script): the encoder in float32 (TF32 off, torch's
  default), one caption per call, padded to 512 tokens, outputs zeroed past the caption, cast
  to float16 and trimmed. Every call does the same 512-token work, so its rate is measured on a
  sample (``--reference-captions`` per repetition, 3 repetitions) and holds for any caption mix.
* **ctrlpost**: :class:`ctrlpost.data.embed.TextEncoder` exactly as ``ctrlpost embed`` runs it
  (captions sorted by token length, batches of ``data.embed.batch_size`` padded to their
  longest caption, the lean forward of :mod:`ctrlpost.data.t5` in bf16, the next batch queued
  while the last is copied out), over all ``--captions``; plus variants: batch sizes, float16
  products, ``torch.compile``, token budgets, transformers' own ``T5EncoderModel`` (bf16, eager
  or SDPA attention) in the same loop, and "simple batched" (batches of 32 in caption order,
  padded to the longest) for comparison with the issue's figure.

Weights: ``T5EncoderModel`` at google-t5/t5-11b's config (d_model 1024, d_ff 65536, 128 heads of
128, 24 layers, ReLU MLP), random (transformers' own init, seed 0), built on the device; the
float32 model is the reference's, the bf16 copy is cast from it. No tokenizer can be downloaded
on the GPU box: captions are drawn from a word list whose words are one token each of
``ctrlpost.hub.tiny.caption_tokenizer`` (a T5-like WordPiece: EOS appended, pad 0, EOS 1), so
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

from ctrlpost.data.embed import TextEncoder, lean_network, length_batches  # noqa: E402
from ctrlpost.data.t5 import T5Encoder, encode  # noqa: E402

T5_11B = dict(vocab_size=32128, d_model=1024, d_kv=128, d_ff=65536, num_layers=24, num_heads=128,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="relu",
              pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
TINY = dict(T5_11B, d_model=64, d_kv=16, d_ff=256, num_layers=2, num_heads=4)
MAX_LENGTH = 512


def caption_words(tokenizer: Any) -> list[str]:
    """Words that the tokenizer maps to exactly one token."""
    from ctrlpost.hub.tiny import caption_vocabulary

    words = [w for w in caption_vocabulary() if w.isalpha() and len(w) > 1]
    return [w for w in words if len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1]


def make_captions(tokenizer: Any, count: int, *, median: float, seed: int) -> list[str]:
    """``count`` captions whose token lengths (EOS included) follow the log-normal mix."""
    rng = np.random.default_rng(seed)
    words = caption_words(tokenizer)
    lengths = np.clip(np.round(rng.lognormal(np.log(median), 0.5, count)), 8, MAX_LENGTH)
    return [" ".join(rng.choice(words, int(n) - 1)) for n in lengths]


class TransformersNetwork:
    """transformers' ``T5EncoderModel`` behind the call :class:`TextEncoder` makes."""

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


def token_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Longest first, each batch as many captions as keep (count × longest) ≤ ``max_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def ctrlpost_pass(encoder: TextEncoder, captions: Sequence[str], batch_size: int, *,
                  sort: bool = True, max_tokens: int = 0) -> dict[int, np.ndarray]:
    """``ctrlpost embed``'s loop minus the pickle writes (or, unsorted, "simple batched")."""
    out: dict[int, np.ndarray] = {}
    if max_tokens:
        batches = token_batches(encoder.token_lengths(list(captions)), max_tokens)
    elif sort:
        batches = length_batches(encoder.token_lengths(list(captions)), batch_size)
    else:
        batches = [list(range(i, min(i + batch_size, len(captions))))
                   for i in range(0, len(captions), batch_size)]
    encoded = encoder.encode_batches([captions[i] for i in batch] for batch in batches)
    for batch, embeddings in zip(batches, encoded, strict=True):
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


def profile_pass(encoder: TextEncoder, captions: Sequence[str], batch_size: int,
                 device: torch.device) -> dict[str, Any]:
    """Kernel time vs wall time of one pass, and the costliest kernels."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    ctrlpost_pass(encoder, captions, batch_size)  # warm-up: compiles what it compiles
    common.synchronize(device)
    with profile(activities=activities) as prof:
        wall, _ = common.timed(lambda: ctrlpost_pass(encoder, captions, batch_size), device)
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
    parser.add_argument("--batch-sizes", default="32,64,128",
                        help="ctrlpost batch sizes to time; the first is the recipe default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--networks", default="lean-fp16,lean-sdpa,transformers-eager",
                        help="extra variants at the first batch size: lean-fused, lean-fp16, "
                             "lean-sdpa, "
                             "lean-cudnn, lean-flex, lean-fp16-flex, lean-compiled, "
                             "transformers-eager, transformers-sdpa")
    parser.add_argument("--max-tokens", default="", help="extra variants: token budgets")
    parser.add_argument("--simple", action="store_true", help="also time simple batching")
    parser.add_argument("--profile", action="store_true", help="profile one pass (kernels)")
    parser.add_argument("--profile-network", default="lean", help="network to profile")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from ctrlpost.hub.tiny import caption_tokenizer

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
    ref_rates = []
    for rep in range(3):
        idx = range(rep * n_ref, (rep + 1) * n_ref)
        seconds, _ = common.timed(lambda idx=idx: [reference.__setitem__(
            i, reference_embed(fp32, tokenizer, ref_captions[i], device)) for i in idx], device)
        ref_rates.append(n_ref / seconds)
    ref_rate = common.median(ref_rates)
    record["reference"] = {"captions_per_s": ref_rate, "rates": ref_rates,
                           "captions_timed": 3 * n_ref,
                           "note": "every call encodes 512 tokens, so the rate holds for any mix"}
    print(f"reference way: {ref_rate:.2f} captions/s (median of {ref_rates})", flush=True)
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
        "lean": lambda: lean_network(bf16),
        "lean-fp16-cudnn": lambda: T5Encoder.from_transformers(fp32, torch.float16,
                                                               attention="cudnn",
                                                               fused_products=True),
        "lean-fused": lambda: T5Encoder.from_transformers(bf16, low, fused_products=True),
        "lean-fp16": lambda: T5Encoder.from_transformers(fp32, torch.float16),
        "lean-sdpa": lambda: T5Encoder.from_transformers(bf16, low, attention="sdpa"),
        "lean-cudnn": lambda: T5Encoder.from_transformers(bf16, low, attention="cudnn"),
        "lean-flex": lambda: T5Encoder.from_transformers(bf16, low, attention="flex",
                                                         fused_products=True),
        "lean-fp16-flex": lambda: T5Encoder.from_transformers(fp32, torch.float16,
                                                              attention="flex",
                                                              fused_products=True),
        "lean-compiled": lambda: compiled(T5Encoder.from_transformers(bf16, low)),
        "transformers-eager": lambda: TransformersNetwork(bf16, "eager"),
        "transformers-sdpa": lambda: TransformersNetwork(bf16, "sdpa"),
    }
    first = int(args.batch_sizes.split(",")[0])
    variants: list[dict[str, Any]] = []
    for k, size in enumerate(int(b) for b in args.batch_sizes.split(",")):
        label = "ctrlpost (recipe default)" if k == 0 else "ctrlpost"
        variants.append({"label": f"{label} batch {size}", "batch": size, "network": "lean"})
    for net in filter(None, args.networks.split(",")):
        variants.append({"label": f"{net} batch {first}", "batch": first, "network": net})
    for budget in filter(None, args.max_tokens.split(",")):
        variants.append({"label": f"ctrlpost batches of <= {budget} tokens", "batch": first,
                         "max_tokens": int(budget), "network": "lean"})
    if args.simple:
        variants.append({"label": "simple batched batch 32 (unsorted)", "batch": 32,
                         "sort": False, "network": "lean"})
    variants.append({"label": f"ctrlpost batch {first}", "batch": first, "mix": "long",
                     "network": "lean"})

    built: dict[str, Any] = {}
    for v in variants:
        label, mix, size = v["label"], v.get("mix", "mixed"), v["batch"]
        sort, budget, net = v.get("sort", True), v.get("max_tokens", 0), v["network"]
        captions = mixes[mix]
        try:
            if net not in built:
                built.clear()  # one extra weight copy at a time
                gc.collect()
                built[net] = networks[net]()
            encoder = TextEncoder(tokenizer, built[net], device, MAX_LENGTH)

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
               "sorted": sort, "warm_up_s": warm_s, "times_s": times, "captions_per_s": rate,
               "vs_reference": rate / ref_rate, "real_tokens": tokens,
               "dense_tflops_on_real_tokens": flops * rate / args.captions / 1e12}
        if mix == "mixed":
            row["accuracy_vs_reference"] = compare(outputs, reference)
        record["mixes"][mix]["variants"].append(row)
        print(f"{mix:5s} {label}: {rate:.1f} captions/s = {rate / ref_rate:.1f}x reference, "
              f"{row['dense_tflops_on_real_tokens']:.0f} TFLOP/s on real tokens", flush=True)
        del outputs
        gc.collect()
        common.write_json(record, out_path)
    built.clear()

    if args.profile:
        if device.type == "cuda":
            record["sdpa_backends"] = sdpa_backends(config, device)
        # Kernel time far below wall time would mean the GPU waits on the host.
        try:
            network = networks[args.profile_network]()
            record["profile"] = profile_pass(TextEncoder(tokenizer, network, device, MAX_LENGTH),
                                             mixes["mixed"], first, device)
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
