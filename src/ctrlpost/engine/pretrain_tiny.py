"""Pre-training of the tiny flavor's base: what makes the base `ctrlpost fetch-weights` installs.

    python -m ctrlpost.engine.pretrain_tiny recipes/edge_tiny.toml --device cuda \\
        --clips 2048 --batch-size 128 --steps 5000 --log-every-steps 250 \\
        --out src/ctrlpost/weights/tiny_base/base_model.pt.xz

(the shipped base: 205 s of training on one H200; GPU kernels are not bit-reproducible, so
a remade file differs in its last bits). A random base draws noise, so a control branch
post-trained on it has nothing to steer. This trains the base DiT from its reference
initialisation with a base's objective, the EDM denoising loss of
:func:`ctrlpost.diffusion.training_loss` at the reference's constants (:data:`BASE_EDM`: noise
levels ``ln σ ~ N(0, 1)``, 0-2 conditioning frames, text dropout, the learned uncertainty
``logvar``), not the recipe's ``[diffusion]``, which is post-training's; on clips made as the
quick start makes them, in ``--work``:

* the tiny tokenizer and T5 exactly as `fetch-weights` makes them (:func:`tiny.make_encoders`);
* ``--clips`` clips of the recipe's data source with the recipe's ``[data]`` settings (the
  synthetic source: plain backgrounds, the demo's size), drawn with ``--data-seed``, not the
  recipe's ``job.seed``, so the demo's own clips are new to the base (`fetch-data`'s code);
* their captions embedded by that T5 (`embed`'s code);
* every window of ``data.num_frames`` consecutive frames of every clip, fitted to its bucket and
  encoded by the tokenizer once, as training encodes its batches.

The saved weights are the power EMA (s = ``--ema-s``) of the base and its logvar head, in the
released ``base_model.pt`` layout (the strict loader reads it unchanged), the DiT's matrices in
bfloat16 as in the released files (the engine loads them into its compute dtype). An ``--out``
ending in ``.xz`` is written lzma-compressed (how the package ships it: the matrices' exponent
bytes compress well, 2.6 MB → 1.9 MB); ``fetch-weights`` installs it decompressed. Every random
draw is a pure function of (``--seed``, step), so the same command on the same device and thread
count writes the same bytes. A record of the command, its settings and the sha256 of the
``base_model.pt`` bytes (decompressed) is written beside it (``<out>`` less ``.xz``, as
``.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ctrlpost.diffusion import (
    EDMConfig,
    UncertaintyHead,
    apply_text_dropout,
    training_loss,
    x0_from_latent,
)
from ctrlpost.engine.ema import PowerEMA
from ctrlpost.engine.optim import build_optimizer, lr_factor, set_lr
from ctrlpost.engine.seeding import seeded_generator
from ctrlpost.errors import CtrlpostError, DataError
from ctrlpost.files import write_bytes_atomic, write_text_atomic
from ctrlpost.models import DiT, get_flavor
from ctrlpost.models.args import DiTArgs
from ctrlpost.models.state_dict import BASE_LOGVAR_PREFIX, BASE_NET_PREFIX
from ctrlpost.models.tokenizer import VideoTokenizer
from ctrlpost.tokenizer_geometry import latent_frames

if TYPE_CHECKING:
    from ctrlpost.recipe import DataSection, EmbedOptions

BASE_EDM = EDMConfig()
"""The base's training objective: the reference's constants, whatever the recipe post-trains
with."""
STORAGE_DTYPE = torch.bfloat16
"""dtype of the DiT's matrices in the written file, the released checkpoints' (vectors and the
logvar head stay float32)."""
COMPRESSED_SUFFIX = ".xz"
"""An ``--out`` with this suffix is written lzma-compressed (:func:`compress`)."""
DEFAULT_DATA_SEED = 1
"""Seed of the pre-training clips: not the embedded default's ``job.seed`` (0)."""
CLIPS = "clips"
"""Folder of the pre-training clips (a dataset folder: videos/, metas/, t5_xxl/) in ``--work``."""


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """The pre-training run's knobs (the command's options)."""

    clips: int = 512
    data_seed: int = DEFAULT_DATA_SEED
    seed: int = 0
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip_norm: float = 1.0
    ema_s: float = 0.05
    log_every_steps: int = 100
    max_seconds: float = 0.0
    """Stop after the first logged step past this many seconds of training (0: no limit); the
    record names the steps taken."""


@dataclass
class TrainingSet:
    """Every training window of the pre-training clips, encoded once (on the training device).

    Attributes:
        x0_N_C_T_H_W: Diffusion-space latents (tokenizer latent × σ_data) of every window.
        clip_N: Index of each window's clip (into ``text_K_L_D``).
        text_K_L_D: Each clip's zero-padded T5 embedding.
        padding_mask_1_H_W: The bucket's padding mask (every clip has the recipe's size).
        fps: Frames per second of the clips.
    """

    x0_N_C_T_H_W: torch.Tensor
    clip_N: torch.Tensor
    text_K_L_D: torch.Tensor
    padding_mask_1_H_W: torch.Tensor
    fps: float

    def __len__(self) -> int:
        return int(self.x0_N_C_T_H_W.shape[0])


def make_clips(work: Path, data: DataSection, embed: EmbedOptions, *, clips: int,
               seed: int) -> list[str]:
    """The tiny tokenizer and T5, ``clips`` clips of ``data``'s source and their embeddings
    under ``work`` (each step resumes: what is there and complete is kept); returns the clips'
    names (in ``<work>/clips``)."""
    from ctrlpost.data.fetch.runner import fetch_data
    from ctrlpost.embed import run as embed_run
    from ctrlpost.weights import tiny

    tiny.make_encoders(work / "weights")
    root = work / CLIPS
    spec = data.synthetic.model_copy(update={"num_clips": clips})
    fetched = fetch_data(data.model_copy(update={"root": str(root), "synthetic": spec}),
                         seed=seed, num_videos=clips)
    failed = [record.id for record in fetched.records if not record.usable]
    if failed:
        raise DataError(f"{root}: {len(failed)} pre-training clip(s) failed: "
                        f"{', '.join(failed[:5])}", hint="see manifest.jsonl there; run again")
    embed_run.run(root, model=str(work / "weights" / tiny.TINY_TEXT_ENCODER), options=embed,
                  show_progress=False)
    return [record.id for record in fetched.records]


def load_training_set(root: Path, names: Sequence[str], tokenizer: VideoTokenizer, *,
                      num_frames: int, resolution: str, sigma_data: float,
                      text_dim: int) -> TrainingSet:
    """Every window of ``num_frames`` frames of the clips ``names`` under ``root``, fitted to
    its bucket as the training dataset fits it and encoded by ``tokenizer``, with the clips'
    embeddings."""
    from ctrlpost.data import buckets, text, video
    from ctrlpost.data.layout import DatasetLayout

    if not names:
        raise DataError(f"{root}: no pre-training clips", hint="pass --clips N with N >= 1")
    layout = DatasetLayout(root)
    latents: list[torch.Tensor] = []
    clip_of: list[int] = []
    texts: list[torch.Tensor] = []
    padding, fps = None, 0.0
    for index, name in enumerate(names):
        with video.VideoReader(layout.video(name)) as reader:
            frames_T_H_W_C = reader.read(0, reader.frame_count())
            fps = reader.info.fps
        T, H, W, _ = frames_T_H_W_C.shape
        fit = buckets.fit(resolution, W, H)
        fitted_3_T_H_W = video.fit_frames(frames_T_H_W_C, fit)
        padding = video.padding_mask(fit)
        windows = torch.stack([fitted_3_T_H_W[:, start:start + num_frames]
                               for start in range(T - num_frames + 1)])
        pixels = windows.to(tokenizer.device, tokenizer.dtype) / 127.5 - 1.0
        latents.append(x0_from_latent(tokenizer.encode(pixels), sigma_data=sigma_data))
        clip_of += [index] * len(windows)
        embedding_L_D = text.read_embedding(layout.embedding(name), dim=text_dim)
        texts.append(torch.from_numpy(text.pad_embedding(embedding_L_D)))
    assert padding is not None  # names is not empty
    device = tokenizer.device
    return TrainingSet(x0_N_C_T_H_W=torch.cat(latents), clip_N=torch.tensor(clip_of),
                       text_K_L_D=torch.stack(texts).to(device),
                       padding_mask_1_H_W=padding.to(device), fps=fps)


class BaseWithLogvar(nn.Module):
    """The base DiT and its uncertainty head, trained together: ``net.*`` and ``logvar.*`` are
    the released file's ``base_model.net.*`` and ``base_model.logvar.*``."""

    def __init__(self, args: DiTArgs, *, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # the caller's global stream is left alone
            torch.manual_seed(seed)
            self.net = DiT(args)
            self.net.init_weights()
        self.logvar = UncertaintyHead(trainable=True,
                                      generator=torch.Generator().manual_seed(seed))

    def released_state(self, averages: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weights as ``base_model.pt`` holds them, ``averages`` (by parameter name) in
        place of the parameters; the DiT's matrices in :data:`STORAGE_DTYPE`."""
        state = {}
        for name, tensor in self.state_dict().items():
            value = averages.get(name, tensor).detach().to("cpu", torch.float32)
            if name.startswith("net.") and value.ndim >= 2:
                value = value.to(STORAGE_DTYPE)
            prefix = BASE_NET_PREFIX if name.startswith("net.") else BASE_LOGVAR_PREFIX
            state[prefix + name.split(".", 1)[1]] = value.contiguous()
        return state


def step_loss(model: BaseWithLogvar, data: TrainingSet, edm: EDMConfig, *, batch_size: int,
              generator: torch.Generator) -> torch.Tensor:
    """The EDM loss of one batch of windows drawn with ``generator`` (then its noise and text
    dropout, from the same generator)."""
    device = data.x0_N_C_T_H_W.device
    pick = torch.randint(len(data), (batch_size,), generator=generator, device=generator.device)
    pick = pick.to(device)
    x0 = data.x0_N_C_T_H_W[pick]
    text = apply_text_dropout(data.text_K_L_D[data.clip_N.to(device)[pick]], rate=edm.text_dropout,
                              generator=generator)
    padding = data.padding_mask_1_H_W[None].expand(batch_size, -1, -1, -1)
    fps = torch.full((batch_size,), data.fps, device=device)

    def denoiser(net_in: torch.Tensor, c_noise_B: torch.Tensor,
                 mask_B_1_T_H_W: torch.Tensor) -> torch.Tensor:
        return model.net(net_in, c_noise_B, text, condition_mask_B_1_T_H_W=mask_B_1_T_H_W,
                         padding_mask_B_1_H_W=padding, fps_B=fps)

    return training_loss(denoiser, x0, cfg=edm, uncertainty=model.logvar,
                         generator=generator).loss


def train(model: BaseWithLogvar, data: TrainingSet, edm: EDMConfig, cfg: PretrainConfig, *,
          log: Callable[[str], None] = print) -> tuple[PowerEMA, list[float]]:
    """Train ``model`` on ``data`` for ``cfg.steps`` AdamW steps; returns its EMA and the mean
    loss of every ``cfg.log_every_steps`` steps."""
    device = data.x0_N_C_T_H_W.device
    optimizer = build_optimizer(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99),
                                weight_decay=cfg.weight_decay, eps=1e-8, fused=False,
                                device=device)
    ema = PowerEMA(model.named_parameters(), s=cfg.ema_s)
    losses: list[float] = []
    window = torch.zeros((), device=device)
    start = time.perf_counter()
    for step in range(cfg.steps):
        set_lr(optimizer, cfg.lr * lr_factor(step, warmup_steps=cfg.warmup_steps,
                                             start_factor=0.01))
        generator = seeded_generator([cfg.seed, step], device)
        loss = step_loss(model, data, edm, batch_size=cfg.batch_size, generator=generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(step)
        window += loss.detach()
        if (step + 1) % cfg.log_every_steps == 0 or step + 1 == cfg.steps:
            count = (step % cfg.log_every_steps) + 1
            losses.append(float(window) / count)
            window.zero_()
            if not math.isfinite(losses[-1]):
                raise CtrlpostError(f"the pre-training loss became non-finite by step {step + 1}",
                                    hint="lower --lr")
            elapsed = time.perf_counter() - start
            log(f"step {step + 1}/{cfg.steps}  loss {losses[-1]:.4f}  {elapsed:.0f} s")
            if cfg.max_seconds and elapsed > cfg.max_seconds:
                log(f"stopping at step {step + 1}: --max-seconds {cfg.max_seconds:g} reached")
                break
    return ema, losses


def pretrain(work: Path, out: Path, data: DataSection, embed: EmbedOptions, edm: EDMConfig,
             cfg: PretrainConfig, *, flavor: str = "tiny", device: torch.device,
             command: Sequence[str] = (), log: Callable[[str], None] = print) -> Path:
    """Make the clips, train the base, write it to ``out`` and its record to ``<out>.json``."""
    start = time.perf_counter()
    args = get_flavor(flavor).base
    names = make_clips(work, data, embed, clips=cfg.clips, seed=cfg.data_seed)
    from ctrlpost.weights import tiny

    tokenizer = VideoTokenizer.from_files(
        work / "weights" / tiny.TINY_TOKENIZER, device=device, dtype=torch.float32,
        pixel_chunk_frames=data.num_frames, latent_chunk_frames=latent_frames(data.num_frames))
    training_set = load_training_set(work / CLIPS, names, tokenizer, num_frames=data.num_frames,
                                     resolution=data.resolution, sigma_data=edm.sigma_data,
                                     text_dim=args.text_dim)
    log(f"{cfg.clips} clips, {len(training_set)} windows of {data.num_frames} frames on "
        f"{device}")
    model = BaseWithLogvar(args, seed=cfg.seed).to(device)
    ema, losses = train(model, training_set, edm, cfg, log=log)
    released = checkpoint_bytes(model.released_state(ema.state_dict()))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, compress(released) if out.suffix == COMPRESSED_SUFFIX else released)
    record = {"command": " ".join(command), "config": asdict(cfg), "flavor": flavor,
              "device": str(device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "edm": asdict(edm), "losses": losses,
              "steps_taken": min(cfg.steps, len(losses) * cfg.log_every_steps),
              "seconds": round(time.perf_counter() - start, 1),
              "sha256": hashlib.sha256(released).hexdigest()}
    write_text_atomic(record_path(out), json.dumps(record, indent=2) + "\n")
    return out


def checkpoint_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """``torch.save`` of ``state`` as bytes (the same bytes for the same tensors)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def compress(data: bytes) -> bytes:
    """lzma at its strongest preset: ~3 s for the tiny base, decompressed in ~0.1 s."""
    return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)


def record_path(out: Path) -> Path:
    """``base_model.json`` for ``base_model.pt`` and for ``base_model.pt.xz``."""
    return out.with_suffix("").with_suffix(".json") if out.suffix == COMPRESSED_SUFFIX \
        else out.with_suffix(".json")


def main(argv: Sequence[str]) -> int:
    """Parse the command line and pre-train; returns the exit status."""
    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(prog="python -m ctrlpost.engine.pretrain_tiny",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("recipe", help="a tiny-flavor recipe: its [data] and [data.embed]")
    parser.add_argument("--out", required=True, type=Path,
                        help="the base_model.pt to write (.pt.xz: lzma-compressed)")
    parser.add_argument("--work", type=Path, default=Path("checkpoints/pretrain_tiny"),
                        help="folder of the clips, embeddings and encoders (resumable)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, as `ctrlpost train --set` does")
    for field, value in asdict(defaults).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)

    from ctrlpost import recipe as recipes

    try:
        loaded = recipes.load(args.recipe, args.set)
        if loaded.model.flavor != "tiny" or loaded.data.source != "synthetic":
            raise CtrlpostError(
                f"{args.recipe}: pre-training makes the tiny flavor's base from synthetic clips; "
                f"this recipe has model.flavor={loaded.model.flavor!r}, "
                f"data.source={loaded.data.source!r}", hint="pass recipes/edge_tiny.toml")
        cfg = PretrainConfig(**{field: getattr(args, field) for field in asdict(defaults)})
        pretrain(args.work, args.out, loaded.data, loaded.data.embed, BASE_EDM, cfg,
                 device=torch.device(args.device),
                 command=["python -m ctrlpost.engine.pretrain_tiny", *argv])
    except CtrlpostError as exc:
        print(f"error: {exc.message}", file=sys.stderr)  # one line; the hint on the next
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
