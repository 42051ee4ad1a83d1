"""The 7B edge ControlNet training step on one GPU, against diffusers' Cosmos DiT and the chip.

Measures, in one process on one device:

* ``ceiling``: a bf16 8192³ matrix product (the same-run matmul rate every ratio divides by),
  at the start and at the end of the run;
* ``attention``: the self-attention kernel alone (fwd, fwd+bwd) per SDPA backend;
* ``base``: the frozen base DiT's forward + input-gradient backward (what the control branch's
  training pays for the base), ctrlpost against diffusers' ``CosmosTransformer3DModel`` at the
  Cosmos 7B config, same weights (ctrlpost's tensors assigned to diffusers' names, shared, not
  copied), same inputs, bf16, each with its activation checkpointing; outputs and input
  gradients are compared;
* ``control``: the full ControlNet step (control branch forward + backward with weight
  gradients, base forward + input-gradient backward) of ctrlpost's model, without the optimizer
  and EMA (the engine's step on one 80 GB GPU only fits with "full" checkpointing because of
  their state; see bench/train_recipe.py for the whole engine).

Model FLOPs: ``bench/flops.py`` (only work that runs; ``part="control"`` counts no backward for
the base blocks before the first control residual).

Usage (on the GPU, from the repository root)::

    python bench/train_step.py                      # everything, 7b, 56,320 and 14,080 tokens
    python bench/train_step.py --flavor tiny --device cpu   # smoke test, a minute on a CPU

Writes ``bench/results/train_step-<device>.json`` (or ``--out``) after every measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common
import flops as flops_module
from flops import model_flops

common.ensure_ctrlpost_importable()

from ctrlpost.engine import parallel  # noqa: E402
from ctrlpost.models import (  # noqa: E402
    ControlledDiT,
    DiT,
    Flavor,
    base_precision,
    build_controlled_dit,
    fp8,
    fp8_attention,
    get_flavor,
)

# Latent (T, H, W): 121 frames of 704x1280 (56,320 tokens) and 25 frames (14,080 tokens).
LATENTS_7B = {56320: (16, 88, 160), 14080: (4, 88, 160)}
LATENTS_TINY = {512: (2, 32, 32), 128: (2, 16, 16)}
DEFAULT_BASE_VARIANTS = ("diffusers", "ctrlpost/selective/compile/cudnn", "diffusers/cudnn")
DEFAULT_CONTROL_VARIANTS = ("ctrlpost/selective/compile/cudnn",)


# ----------------------------------------------------------------------------- models


def randomise_gates_(model: torch.nn.Module, std: float = 0.02) -> None:
    """The reference init zeroes every AdaLN gate/shift/scale projection and the control
    outputs, which would make every block an identity: give them small random values so the
    output depends on every block (for the equivalence checks; timings do not care)."""
    gen = torch.Generator(device="cpu").manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "adaLN_modulation.2" in name or "zero_blocks" in name or (
                    "input_hint_block" in name and param.ndim == 2):
                noise = torch.randn(param.shape, generator=gen) * std
                param.copy_(noise.to(param))


def build_model(flavor: Flavor, device: torch.device, dtype: torch.dtype) -> ControlledDiT:
    torch.manual_seed(0)
    with torch.device("meta"):
        model = build_controlled_dit(flavor)
    model = model.to(dtype=dtype)
    model.to_empty(device=device)
    model.init_weights()
    randomise_gates_(model)
    model.base.requires_grad_(False)
    model.control.final_layer.requires_grad_(False)
    return model


def diffusers_key(name: str) -> str | None:
    """ctrlpost base ``state_dict`` name → diffusers ``CosmosTransformer3DModel`` name."""
    simple = {
        "x_embedder.proj.1.weight": "patch_embed.proj.weight",
        "t_embedder.1.linear_1.weight": "time_embed.t_embedder.linear_1.weight",
        "t_embedder.1.linear_2.weight": "time_embed.t_embedder.linear_2.weight",
        "affline_norm.weight": "time_embed.norm.weight",
        "final_layer.linear.weight": "proj_out.weight",
        "final_layer.adaLN_modulation.1.weight": "norm_out.linear_1.weight",
        "final_layer.adaLN_modulation.2.weight": "norm_out.linear_2.weight",
    }
    if name in simple:
        return simple[name]
    if name.startswith("extra_pos_embedder."):
        return "learnable_pos_embed." + name.removeprefix("extra_pos_embedder.")
    if name == "pos_embedder.seq":
        return None  # diffusers recomputes it
    parts = name.split(".")
    if parts[0] != "blocks":
        raise KeyError(name)
    index = int(parts[1].removeprefix("block"))
    sub = int(parts[3])
    rest = ".".join(parts[4:])
    prefix = f"transformer_blocks.{index}."
    if rest.startswith("adaLN_modulation."):
        linear = {"1": "linear_1", "2": "linear_2"}[parts[5]]
        return f"{prefix}norm{sub + 1}.{linear}.weight"
    if sub == 2:
        return prefix + {"block.layer1.weight": "ff.net.0.proj.weight",
                         "block.layer2.weight": "ff.net.2.weight"}[rest]
    attn = f"attn{sub + 1}."
    return prefix + attn + {
        "block.attn.to_q.0.weight": "to_q.weight", "block.attn.to_q.1.weight": "norm_q.weight",
        "block.attn.to_k.0.weight": "to_k.weight", "block.attn.to_k.1.weight": "norm_k.weight",
        "block.attn.to_v.0.weight": "to_v.weight", "block.attn.to_out.0.weight": "to_out.0.weight",
    }[rest]


def build_diffusers(base: DiT) -> torch.nn.Module:
    """diffusers' Cosmos DiT at ``base``'s config holding ``base``'s own tensors (no copy)."""
    from diffusers import CosmosTransformer3DModel
    from diffusers.models.transformers import transformer_cosmos

    if getattr(transformer_cosmos, "transforms", None) is None:  # no torchvision (CPU smoke)
        transformer_cosmos.transforms = _NearestResize()
    a = base.args
    with torch.device("meta"):
        model = CosmosTransformer3DModel(
            in_channels=a.in_channels, out_channels=a.out_channels, num_attention_heads=a.num_heads,
            attention_head_dim=a.head_dim, num_layers=a.num_blocks, mlp_ratio=a.mlp_ratio,
            text_embed_dim=a.text_dim, adaln_lora_dim=a.adaln_lora_dim,
            max_size=(a.max_frames, a.max_img_h, a.max_img_w),
            patch_size=(a.patch_temporal, a.patch_spatial, a.patch_spatial),
            rope_scale=(a.rope_t_ratio, a.rope_h_ratio, a.rope_w_ratio),
            concat_padding_mask=True, extra_pos_embed_type="learnable")
    state = {}
    for name, tensor in base.state_dict().items():
        key = diffusers_key(name)
        if key is not None:
            state[key] = tensor
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
    model.enable_gradient_checkpointing()
    return model


class _NearestResize:
    """Stand-in for ``torchvision.transforms`` (only ``functional.resize`` NEAREST is used)."""

    class InterpolationMode:
        NEAREST = "nearest"

    class functional:
        @staticmethod
        def resize(x: torch.Tensor, size: list[int], interpolation: str) -> torch.Tensor:
            return torch.nn.functional.interpolate(x, size=size, mode="nearest")


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Variant:
    """``impl[/ac][/compile][/backend][/fp8]``, e.g. ``ctrlpost/selective/compile/cudnn/fp8``.

    ``diffusers`` runs with its own (full, per block) checkpointing; ``diffusers/compile`` is
    diffusers tuned as far as its public API allows: each transformer block compiled
    (``nn.Module.compile``, what ``ModelMixin.compile_repeated_blocks`` does where a model
    declares its repeated blocks). ``fp8``: ctrlpost's base with ``model.base_precision =
    "fp8"`` (token-wise linears as FP8 products, :mod:`ctrlpost.models.fp8`); ``fp8attn``:
    those and the self-attention in FP8 too (:mod:`ctrlpost.models.fp8_attention`);
    ``autotune``: the FP8 attention's cuDNN graphs time every plan on their first call and keep
    the fastest (fresh graphs whenever this changes); ``multikernel``: the blocks compiled with
    inductor's multi-kernel option (reductions up to 16x wider tried persistent, the faster
    kept at the first run).
    """

    impl: str
    ac: str
    compile: bool
    attention: str
    fp8: bool = False
    fp8_attention: bool = False
    autotune: bool = False
    multi_kernel: bool = False

    @classmethod
    def parse(cls, text: str) -> Variant:
        tokens = text.split("/")
        impl = tokens[0]
        if impl not in ("ctrlpost", "diffusers"):
            raise ValueError(f"unknown implementation in {text!r}")
        ac = "diffusers" if impl == "diffusers" else "selective"
        compiled, attention, fp8, fp8_attention = False, "default", False, False
        autotune = multi_kernel = False
        for token in tokens[1:]:
            if token in ("full", "selective", "selective-all", "none"):
                ac = token
            elif token == "compile":
                compiled = True
            elif token == "fp8":
                fp8 = True
            elif token == "fp8attn":
                fp8 = fp8_attention = True
            elif token == "autotune":
                autotune = True
            elif token == "multikernel":
                multi_kernel = True
            elif token in ("default", "cudnn", "flash", "efficient", "best"):
                attention = token
            else:
                raise ValueError(f"unknown option {token!r} in {text!r}")
        if impl == "diffusers" and (ac != "diffusers" or fp8):
            raise ValueError("diffusers runs with its own checkpointing and bf16 weights")
        if (autotune and not fp8_attention) or (multi_kernel and not compiled):
            raise ValueError(f"{text!r}: autotune needs fp8attn, multikernel needs compile")
        return cls(impl, ac, compiled, attention, fp8, fp8_attention, autotune, multi_kernel)

    def __str__(self) -> str:
        parts = [self.impl] + ([] if self.impl == "diffusers" else [self.ac])
        parts += ["compile"] if self.compile else []
        parts += [] if self.attention == "default" else [self.attention]
        parts += ["fp8attn"] if self.fp8_attention else ["fp8"] if self.fp8 else []
        parts += ["autotune"] if self.autotune else []
        parts += ["multikernel"] if self.multi_kernel else []
        return "/".join(parts)


_BACKENDS = {
    "cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
}


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """SDPA backend priority: ``name`` first, the others after it (a shape it refuses still
    runs). ``default`` leaves torch's own order."""
    if name == "default":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    first = getattr(SDPBackend, _BACKENDS[name])
    order = [first] + [b for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                                   SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH) if b != first]
    with sdpa_kernel(order, set_priority=True):
        yield


class Configurator:
    """Switches ctrlpost's checkpointing mode, compilation and FP8 base in place between
    variants, and diffusers' compilation."""

    def __init__(self, model: ControlledDiT) -> None:
        self.model = model
        self.state: tuple[Any, ...] | None = None
        self.diffusers_compiled: bool | None = None

    def apply(self, variant: Variant) -> None:
        state = (variant.ac, variant.compile, variant.attention, variant.fp8,
                 variant.fp8_attention, variant.autotune, variant.multi_kernel)
        if state == self.state:
            return
        if fp8_attention._GRAPHS.autotune != variant.autotune:
            # Fresh graphs: a tuned graph keeps its chosen plan.
            fp8_attention._GRAPHS = fp8_attention._CudnnGraphs(autotune=variant.autotune)
        blocks = [m for m in self.model.modules() if isinstance(m, parallel.DiTBlock)]
        for block in blocks:
            block.__dict__.pop("forward", None)
            block.__dict__.pop(parallel._MARK, None)
            block._compiled_call_impl = None  # type: ignore[attr-defined]
        if variant.compile or (self.state is not None and self.state[1]):
            _fresh_dynamo()
        for layer in base_precision.token_linears(self.model.base):
            layer.__class__ = fp8.Fp8FrozenLinear if variant.fp8 else torch.nn.Linear
        for attention in base_precision.self_attentions(self.model.base):
            if variant.fp8_attention:
                attention.use_fp8()  # type: ignore[operator]
            else:
                attention.fp8_backward_scales = None
        mode = "selective" if variant.ac == "selective-all" else variant.ac
        parallel.apply_activation_checkpointing(self.model, mode)  # type: ignore[arg-type]
        # "selective-all": the first selective policy, which kept cross-attention outputs too.
        parallel._is_self_attention = (  # type: ignore[attr-defined]
            (lambda args: True) if variant.ac == "selective-all" else _IS_SELF_ATTENTION)
        if variant.compile:
            options = {"triton.multi_kernel": 1} if variant.multi_kernel else None
            parallel.apply_compile(self.model, options=options)
        self.state = state
        self.diffusers_compiled = None  # a reset graph cache drops diffusers' graphs too

    def apply_diffusers(self, model: Any, variant: Variant) -> None:
        if variant.compile == self.diffusers_compiled:
            return
        _fresh_dynamo()
        self.state = None  # ctrlpost's compiled blocks must be compiled again after a reset
        for block in model.transformer_blocks:
            block._compiled_call_impl = None
            if variant.compile:
                block.compile()
        self.diffusers_compiled = variant.compile


def _fresh_dynamo() -> None:
    torch._dynamo.reset()
    # One static graph per token count (no dynamic-shape kernels); a few graphs per shape: base
    # blocks with/without an input gradient, trained control blocks.
    torch._dynamo.config.automatic_dynamic_shapes = False
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)


_IS_SELF_ATTENTION = parallel._is_self_attention  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- steps


def make_inputs(flavor: Flavor, thw: tuple[int, int, int], device: torch.device,
                dtype: torch.dtype) -> dict[str, Any]:
    frames, height, width = thw
    c = flavor.base.latent_channels
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    condition = torch.zeros(1, 1, frames, height, width, device=device, dtype=dtype)
    condition[:, :, :1] = 1
    return {
        "x": randn(1, c, frames, height, width),
        "c_noise": torch.tensor([0.25], device=device),
        "text": randn(1, flavor.base.text_tokens, flavor.base.text_dim),
        "hint": randn(1, c, frames, height, width),
        "condition": condition,
        "padding": torch.zeros(1, 1, 8 * height, 8 * width, device=device, dtype=dtype),
        "fps": 24,
        "target": randn(1, c, frames, height, width).float(),
    }


def base_forward(impl: str, model: ControlledDiT, diffusers_model: Any, x: torch.Tensor,
                 batch: dict[str, Any]) -> torch.Tensor:
    if impl == "diffusers":
        return diffusers_model(hidden_states=x, timestep=batch["c_noise"],
                               encoder_hidden_states=batch["text"], fps=batch["fps"],
                               condition_mask=batch["condition"], padding_mask=batch["padding"],
                               return_dict=False)[0]
    fps = torch.tensor([float(batch["fps"])], device=x.device)
    return model.base(x, batch["c_noise"], batch["text"],
                      condition_mask_B_1_T_H_W=batch["condition"],
                      padding_mask_B_1_H_W=batch["padding"], fps_B=fps)


def base_step(impl: str, model: ControlledDiT, diffusers_model: Any,
              batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen base: forward, MSE, backward to the input only. Returns (output, input grad)."""
    x = batch["x"].detach().requires_grad_(True)
    out = base_forward(impl, model, diffusers_model, x, batch)
    loss = (out.float() - batch["target"]).square().mean()
    loss.backward()
    assert x.grad is not None
    return out.detach(), x.grad


def control_step(model: ControlledDiT, batch: dict[str, Any]) -> tuple[torch.Tensor, None]:
    fps = torch.tensor([float(batch["fps"])], device=batch["x"].device)
    out = model(batch["x"], batch["c_noise"], batch["text"], hint_B_C_T_H_W=batch["hint"],
                condition_mask_B_1_T_H_W=batch["condition"],
                padding_mask_B_1_H_W=batch["padding"], fps_B=fps)
    loss = (out.float() - batch["target"]).square().mean()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return out.detach(), None


def rel_error(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """‖a − b‖ / ‖b‖ and max |a − b| / max |b| in float32."""
    a, b = a.float(), b.float()
    diff = a - b
    return {"rel_l2": float(diff.norm() / b.norm().clamp_min(1e-30)),
            "max_abs_over_max_ref": float(diff.abs().max() / b.abs().max().clamp_min(1e-30)),
            "finite": bool(torch.isfinite(a).all())}


# ----------------------------------------------------------------------------- runner


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.perf_counter()
        self.device = torch.device(args.device)
        self.dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        self.flavor = get_flavor(args.flavor)
        self.latents = LATENTS_7B if self.flavor.name == "7b" else LATENTS_TINY
        self.record: dict[str, Any] = {
            "benchmark": "train_step", "device": common.device_name(self.device),
            "torch": torch.__version__, "date": common.now(), "flavor": self.flavor.name,
            "dtype": args.dtype, "command": " ".join(sys.argv), "ceiling": [],
            "attention": [], "equivalence": [], "base": [], "control": [], "errors": [],
            "skipped": [], "flops_formula": flops_module.__doc__,
        }
        try:
            import diffusers

            self.record["diffusers"] = diffusers.__version__
        except ImportError:
            self.record["diffusers"] = None
        if self.device.type == "cuda":
            self.record["cudnn"] = torch.backends.cudnn.version()
        slug = common.slug(self.record["device"].split(" (")[0])
        self.out = args.out or common.RESULTS / f"train_step-{slug}.json"
        self.model: ControlledDiT | None = None
        self.diffusers_model: Any = None
        self.reference_outputs: dict[int, tuple[str, torch.Tensor, torch.Tensor]] = {}
        self.truth: dict[int, torch.Tensor] = {}

    # -- bookkeeping
    def save(self) -> None:
        self.record["elapsed_s"] = time.perf_counter() - self.t0
        common.write_json(self.record, self.out)

    def time_left(self, what: str) -> bool:
        if self.args.deadline and time.perf_counter() - self.t0 > self.args.deadline:
            self.record["skipped"].append(what)
            print(f"skipped (deadline): {what}", flush=True)
            return False
        return True

    def guarded(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # keep measuring the rest; the error is in the record
            torch.cuda.empty_cache() if self.device.type == "cuda" else None
            message = f"{type(exc).__name__}: {str(exc)[:400]}"
            print(f"ERROR in {what}: {message}", flush=True)
            traceback.print_exc(limit=4)
            self.record["errors"].append({"what": what, "error": message})
            return None
        finally:
            self.save()

    # -- phases
    def ceiling(self, when: str) -> None:
        result = common.matmul_ceiling(self.device)
        result["when"] = when
        self.record["ceiling"].append(result)
        print(f"matmul ceiling ({when}): {result['tflops_median']:.0f} TFLOP/s", flush=True)

    def ceiling_rate(self) -> float:
        rates = [c["tflops_median"] for c in self.record["ceiling"]]
        return max(rates) if rates else float("nan")

    def attention(self) -> None:
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        a = self.flavor.base
        sizes = ([int(t) for t in self.args.attention_sizes.split(",")]
                 if self.args.attention_sizes else self.sizes())
        for tokens in sizes:
            gen = torch.Generator(device=self.device).manual_seed(3)
            q, k, v = (torch.randn(1, a.num_heads, tokens, a.head_dim, device=self.device,
                                   dtype=self.dtype, generator=gen).requires_grad_(True)
                       for _ in range(3))
            grad = torch.randn_like(q)
            outputs = {}
            try:
                choice = int(torch._fused_sdp_choice(q, k, v))
            except Exception:
                choice = -1
            flops = 4 * tokens * tokens * a.model_channels
            for backend in ("flash", "cudnn", "efficient", "cudnn-model-layout"):
                if self.device.type != "cuda" and backend != "flash":
                    continue
                if backend == "cudnn-model-layout":  # [B, L, H, Dh] storage, as the model has
                    q, k, v = (t.detach().transpose(1, 2).contiguous().transpose(1, 2)
                               .requires_grad_(True) for t in (q, k, v))

                name = backend.removesuffix("-model-layout")

                def fwd(name: str = name, qkv: tuple[torch.Tensor, ...] = (q, k, v)
                        ) -> torch.Tensor:
                    with attention_backend(name), torch.no_grad():
                        return sdpa(*qkv)

                def fwd_bwd(name: str = name, qkv: tuple[torch.Tensor, ...] = (q, k, v),
                            grad: torch.Tensor = grad) -> None:
                    with attention_backend(name):
                        out = sdpa(*qkv)
                    out.backward(grad)
                    for t in qkv:
                        t.grad = None

                try:
                    outputs[backend] = fwd()
                    fwd_bwd()
                    t_f = common.median([common.timed(fwd, self.device)[0] for _ in range(5)])
                    t_fb = common.median([common.timed(fwd_bwd, self.device)[0] for _ in range(3)])
                except Exception as exc:
                    self.record["attention"].append({"tokens": tokens, "backend": backend,
                                                     "error": str(exc)[:300]})
                    continue
                row = {"tokens": tokens, "backend": backend, "fwd_s": t_f, "fwd_bwd_s": t_fb,
                       "fwd_tflops": flops / t_f / 1e12,
                       "bwd_model_tflops": 2 * flops / (t_fb - t_f) / 1e12,
                       "default_choice_id": choice}
                if backend != "flash" and "flash" in outputs:
                    row["vs_flash"] = rel_error(outputs[backend], outputs["flash"])
                self.record["attention"].append(row)
                print(f"attention {tokens} {backend}: fwd {t_f * 1e3:.1f} ms "
                      f"({row['fwd_tflops']:.0f} TFLOP/s), fwd+bwd {t_fb * 1e3:.1f} ms", flush=True)
            outputs.clear()  # free the outputs before the next size
        self.save()

    def sizes(self) -> list[int]:
        return [int(s) for s in self.args.sizes.split(",")] if self.args.sizes else list(
            self.latents)

    def ensure_models(self, need_diffusers: bool) -> None:
        if self.model is None:
            self.model = build_model(self.flavor, self.device, self.dtype)
            self.configurator = Configurator(self.model)
            count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
            self.record["base_params"] = count(self.model.base)
            self.record["control_params"] = count(self.model.control)
        if need_diffusers and self.diffusers_model is None:
            self.diffusers_model = build_diffusers(self.model.base)

    def resolve(self, variant: Variant) -> Variant:
        """``best`` → the SDPA backend with the fastest self-attention fwd+bwd at the largest
        size of the attention phase (torch's default order if that phase did not run)."""
        if variant.attention != "best":
            return variant
        rows = [r for r in self.record["attention"] if "fwd_bwd_s" in r]
        if not rows:
            return dataclasses.replace(variant, attention="default")
        largest = max(r["tokens"] for r in rows)
        best = min((r for r in rows if r["tokens"] == largest), key=lambda r: r["fwd_bwd_s"])
        return dataclasses.replace(variant, attention=best["backend"].removesuffix("-model-layout"))

    def measure(self, part: str, variant: Variant, tokens: int) -> None:
        assert self.model is not None
        variant = self.resolve(variant)
        thw = self.latents[tokens]
        batch = make_inputs(self.flavor, thw, self.device, self.dtype)
        if variant.impl == "ctrlpost":
            self.configurator.apply(variant)
        else:
            self.configurator.apply_diffusers(self.diffusers_model, variant)
        flops = model_flops(self.flavor, tokens, thw[0], part=part)
        work = flops["total"]
        model, dm = self.model, self.diffusers_model
        if part == "base":
            def step() -> tuple[torch.Tensor, torch.Tensor | None]:
                return base_step(variant.impl, model, dm, batch)
        else:
            def step() -> tuple[torch.Tensor, torch.Tensor | None]:
                return control_step(model, batch)

        repeats = self.args.repeats
        warmup = self.args.warmup + (1 if variant.compile else 0)
        common.reset_peak(self.device)
        with attention_backend(variant.attention):
            warm_times = []
            first = None
            for _ in range(warmup):
                t, result = common.timed(step, self.device)
                warm_times.append(t)
                first = first or result
                del result
            times = []
            for _ in range(repeats):
                t, result = common.timed(step, self.device)
                times.append(t)
                del result
            # one more step, after the timed ones, so the profiler's overhead is in none of them
            profile = common.kernel_profile(step, self.device) if self.args.profile else None
        s = common.median(times)
        row = {
            "part": part, "variant": str(variant), "tokens": tokens,
            "latent_B_C_T_H_W": [1, self.flavor.base.latent_channels, *thw],
            "warmup_s": warm_times, "times_s": times, "s_per_step": s,
            "model_flops": flops, "model_tflops": work / s / 1e12,
            "ratio_to_matmul": work / s / 1e12 / self.ceiling_rate(),
            **common.peak_memory(self.device),
        }
        if variant.autotune:
            row["cudnn_plans"] = [{"graph": str(key[0]), "plans": plans} for key, plans
                                  in fp8_attention._GRAPHS.plan_times.items()]
        if profile is not None:
            row["profile"] = profile
            common.print_profile(profile)
        if part == "base" and first is not None:
            out, grad = first[0].float().cpu(), first[1].float().cpu()
            if tokens in self.truth:
                row["output_vs_fp32"] = rel_error(out, self.truth[tokens])
            ref = self.reference_outputs.get(tokens)
            if ref is None:
                self.reference_outputs[tokens] = (str(variant), out, grad)
            else:
                row["vs"] = ref[0]
                row["output_vs_ref"] = rel_error(out, ref[1])
                row["input_grad_vs_ref"] = rel_error(grad, ref[2])
        self.record[part].append(row)
        print(f"{part} {tokens} {variant}: {s:.3f} s/step, {row['model_tflops']:.0f} TFLOP/s "
              f"({row['ratio_to_matmul']:.2f} of matmul), "
              f"peak {row.get('peak_allocated_gib', float('nan')):.1f} GiB"
              + (f", output vs {row['vs']}: {row['output_vs_ref']['rel_l2']:.2e}"
                 if "vs" in row else ""), flush=True)
        first = None  # free the outputs before the next variant
        gc.collect()

    def equivalence(self, tokens: int) -> None:
        """Forward outputs of diffusers and ctrlpost (eager) on the same weights and inputs,
        without gradients, and of a float32 copy of the base (the truth every base variant's
        first output is compared with: TF32 matmuls, ~1e-3, ten times under bf16's error)."""
        assert self.model is not None
        thw = self.latents[tokens]
        batch = make_inputs(self.flavor, thw, self.device, self.dtype)
        self.configurator.apply(Variant.parse("ctrlpost/selective"))
        with torch.no_grad():
            ours = base_forward("ctrlpost", self.model, None, batch["x"], batch)
            theirs = base_forward("diffusers", self.model, self.diffusers_model, batch["x"], batch)
            row: dict[str, Any] = {"tokens": tokens,
                                   "ctrlpost_vs_diffusers": rel_error(ours, theirs)}
            truth = self.float32_truth(batch)
            if truth is not None:
                self.truth[tokens] = truth.float().cpu()
                row["ctrlpost_vs_fp32"] = rel_error(ours, truth)
                row["diffusers_vs_fp32"] = rel_error(theirs, truth)
                row["fp32_truth"] = "float32 copy of the base, TF32 matmuls, SDPA float32"
        self.record["equivalence"].append(row)
        print(f"equivalence {tokens}: {row}", flush=True)

    def float32_truth(self, batch: dict[str, Any]) -> torch.Tensor | None:
        assert self.model is not None
        if self.dtype == torch.float32:
            return None
        with torch.device("meta"):
            truth = DiT(self.flavor.base)
        truth.to_empty(device=self.device)
        truth.load_state_dict(self.model.base.state_dict())
        fp32 = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
                for k, v in batch.items()}
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            fps = torch.tensor([float(batch["fps"])], device=self.device)
            out = truth(fp32["x"], fp32["c_noise"], fp32["text"],
                        condition_mask_B_1_T_H_W=fp32["condition"],
                        padding_mask_B_1_H_W=fp32["padding"], fps_B=fps)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
            del truth
            gc.collect()
            torch.cuda.empty_cache()
        return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavor", default="7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                        help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--sizes", help="tokens, comma separated (default: all of the flavor)")
    parser.add_argument("--parts", default="ceiling,attention,equivalence,base,control")
    parser.add_argument("--base-variants", default=",".join(DEFAULT_BASE_VARIANTS))
    parser.add_argument("--base-variants-large",
                        help="base variants for the largest size (default: --base-variants)")
    parser.add_argument("--control-variants", default=",".join(DEFAULT_CONTROL_VARIANTS))
    parser.add_argument("--control-sizes", help="tokens for the control step (default: --sizes)")
    parser.add_argument("--attention-sizes",
                        help="tokens for the attention phase (default: --sizes)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=0.0,
                        help="seconds after which remaining measurements are skipped")
    parser.add_argument("--profile", action="store_true",
                        help="one more step of each variant, not timed, under torch's profiler: "
                             "its GPU kernels by kind (the wall time minus their sum is idle)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bf16" if args.device.startswith("cuda") else "fp32"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    parts = args.parts.split(",")
    sizes = bench.sizes()
    if "ceiling" in parts:
        bench.guarded("ceiling", lambda: bench.ceiling("start"))
    if "attention" in parts and bench.time_left("attention"):
        bench.guarded("attention", bench.attention)
    base_variants = [Variant.parse(v) for v in args.base_variants.split(",") if v]
    need_diffusers = "equivalence" in parts or any(
        v.impl == "diffusers"
        for v in [*base_variants, *map(Variant.parse, filter(None, (args.base_variants_large
                                                                    or "").split(",")))])
    bench.guarded("build", lambda: bench.ensure_models(need_diffusers))
    if bench.model is None:
        return 1
    if "equivalence" in parts and bench.time_left("equivalence"):
        bench.guarded("equivalence", lambda: bench.equivalence(min(sizes)))
    # Smaller size first (cheap, and it surfaces errors early), eager before compiled; the
    # control step of a size right after its base part.
    large = [Variant.parse(v) for v in (args.base_variants_large or "").split(",") if v]
    control_sizes = ([int(s) for s in args.control_sizes.split(",")] if args.control_sizes
                     else sizes)
    for tokens in sorted(set(sizes) | set(control_sizes)):
        if "base" in parts and tokens in sizes:
            chosen = large if large and tokens == max(sizes) else base_variants
            for variant in chosen:
                run_variant(bench, "base", variant, tokens)
        if "control" in parts and tokens in control_sizes:
            for text in args.control_variants.split(","):
                run_variant(bench, "control", Variant.parse(text), tokens)
    if "ceiling" in parts:
        bench.guarded("ceiling end", lambda: bench.ceiling("end"))
    summarise(bench)
    return 0


def run_variant(bench: Bench, part: str, variant: Variant, tokens: int) -> None:
    """Measure; a compiled variant that fails on a non-flash backend is retried with flash."""
    resolved = bench.resolve(variant)
    what = f"{part} {tokens} {resolved}"
    if not bench.time_left(what):
        return
    before = len(bench.record["errors"])
    bench.guarded(what, lambda: bench.measure(part, resolved, tokens))
    failed = len(bench.record["errors"]) > before
    if failed and resolved.compile and resolved.attention not in ("flash", "default"):
        retry = Variant(resolved.impl, resolved.ac, resolved.compile, "flash")
        if bench.time_left(f"{part} {tokens} {retry}"):
            bench.guarded(f"{part} {tokens} {retry}", lambda: bench.measure(part, retry, tokens))


def summarise(bench: Bench) -> None:
    record = bench.record
    ceiling = bench.ceiling_rate()
    rows: list[tuple[str, ...]] = []
    for part in ("base", "control"):
        for row in record[part]:
            row["ratio_to_matmul"] = row["model_tflops"] / ceiling
            rows.append((part, f"{row['tokens']:,}", row["variant"], f"{row['s_per_step']:.3f}",
                         f"{row['model_tflops']:.0f}", f"{row['ratio_to_matmul']:.3f}",
                         f"{row.get('peak_allocated_gib', float('nan')):.1f}"))
    print()
    print(f"device {record['device']}, torch {record['torch']}, diffusers {record['diffusers']}, "
          f"matmul ceiling {ceiling:.0f} TFLOP/s (max of start/end medians)")
    common.print_table(rows, ("part", "tokens", "variant", "s/step", "TFLOP/s", "of matmul",
                              "peak GiB"))
    speedups = {}
    for tokens in sorted({r["tokens"] for r in record["base"]}):
        by = {r["variant"]: r["s_per_step"] for r in record["base"] if r["tokens"] == tokens}
        if "diffusers" in by:
            for name, s in by.items():
                if name.startswith("ctrlpost"):
                    speedups[f"{tokens} {name} vs diffusers"] = by["diffusers"] / s
                    if "diffusers/cudnn" in by:
                        speedups[f"{tokens} {name} vs diffusers/cudnn"] = by["diffusers/cudnn"] / s
    record["speedups"] = speedups
    for name, value in speedups.items():
        print(f"speedup {name}: {value:.3f}x")
    for row in record["equivalence"]:
        print(f"equivalence {row['tokens']} (eager, no grad): ctrlpost vs diffusers rel L2 "
              f"{row['ctrlpost_vs_diffusers']['rel_l2']:.2e}" + (
                  f"; vs float32: ctrlpost {row['ctrlpost_vs_fp32']['rel_l2']:.2e}, diffusers "
                  f"{row['diffusers_vs_fp32']['rel_l2']:.2e}" if "ctrlpost_vs_fp32" in row else ""))
    for row in record["base"]:
        against = row.get("vs", "-")
        parts = [f"{label} {row[key]['rel_l2']:.2e}" for key, label in (
            ("output_vs_fp32", "output vs float32"), ("output_vs_ref", f"output vs {against}"),
            ("input_grad_vs_ref", f"input grad vs {against}")) if key in row]
        if parts:  # no float32 copy fits at the largest size: print only what was compared
            print(f"base {row['tokens']} {row['variant']}: " + ", ".join(parts))
    for error in record["errors"]:
        print(f"ERROR {error['what']}: {error['error'][:200]}")
    if math.isnan(ceiling):
        print("no ceiling measured")
    bench.save()
    print(f"wrote {bench.out}")


if __name__ == "__main__":
    sys.exit(main())
