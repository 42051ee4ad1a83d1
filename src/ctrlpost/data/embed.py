"""`ctrlpost embed`: T5 embeddings of every caption, written as the reference's pickles.

For each ``metas/<stem>.txt`` without a valid ``t5_xxl/<stem>.pickle`` (so a rerun resumes), the
caption is encoded by a T5 encoder and saved as ``[float16 [L, D]]`` (see
:mod:`ctrlpost.data.text`). Same meaning as the reference script, faster:

* captions are sorted by token length and batched, each batch padded only to its longest
  caption. The T5 encoder masks padded keys and its relative position bias depends only on
  (query, key) offsets, so a real token's output does not depend on how much padding follows;
  the reference pads every caption to 512 and runs one per forward pass;
* a lean forward of the same weights (:mod:`ctrlpost.data.t5`): on GPU bf16 products around a
  float32 residual stream, cuDNN attention with the position bias, the residual adds and ReLU
  inside the products; fp32 on CPU; the next batch is queued on the GPU while the previous one
  is written (T5-11B on an H200: 97x the reference's captions/s, bench/NOTES.md);
* ``--model`` and ``max_length`` are honoured (the reference ignores both flags).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctrlpost.data import text
from ctrlpost.data.dataset import META_DIR
from ctrlpost.data.t5 import T5Encoder
from ctrlpost.errors import CtrlpostError, DataError, WeightsError


@dataclass(frozen=True)
class TextEncoder:
    """A T5 encoder and its tokenizer, ready to turn captions into trimmed embeddings."""

    tokenizer: Any
    network: T5Encoder
    device: torch.device
    max_length: int

    @property
    def dim(self) -> int:
        """Hidden width D of the embeddings."""
        return self.network.dim

    def token_lengths(self, captions: Sequence[str]) -> list[int]:
        """Tokens per caption after truncation, EOS included (= the saved L)."""
        ids = self.tokenizer(list(captions), truncation=True, max_length=self.max_length)
        return [len(x) for x in ids["input_ids"]]

    def encode(self, captions: Sequence[str]) -> list[np.ndarray]:
        """float16 ``[L_i, D]`` per caption: last hidden state, padding zeroed and trimmed."""
        return next(self.encode_batches([captions]))

    def encode_batches(self, batches: Iterable[Sequence[str]]) -> Iterator[list[np.ndarray]]:
        """:meth:`encode` of each batch in turn, with the next batch already queued on the
        device while the host copies out and hands over the previous one (so the GPU does
        not wait for tokenizing, pickling or writing)."""
        in_flight: _Launched | None = None
        for captions in batches:
            launched = self._launch(captions)
            if in_flight is not None:
                yield in_flight.collect()
            in_flight = launched
        if in_flight is not None:
            yield in_flight.collect()

    @torch.inference_mode()
    def _launch(self, captions: Sequence[str]) -> _Launched:
        # Lengths padded to a multiple of 8 keep the matrix shapes tensor-core friendly; the
        # extra keys are masked and the extra rows trimmed, so no output changes.
        batch = self.tokenizer(list(captions), padding="longest", truncation=True,
                               max_length=self.max_length, pad_to_multiple_of=8,
                               return_tensors="pt")
        ids_B_L = batch["input_ids"].to(self.device, non_blocking=True)
        mask_B_L = batch["attention_mask"]
        mask_on_device_B_L = mask_B_L.to(self.device, non_blocking=True)
        hidden_B_L_D = self.network(ids_B_L, mask_on_device_B_L)
        # The reference zeroes every position at or beyond the caption's length before the cast.
        out_B_L_D = (hidden_B_L_D * mask_on_device_B_L[..., None]).to(torch.float16)
        cuda = self.device.type == "cuda"
        host_B_L_D = torch.empty(out_B_L_D.shape, dtype=torch.float16, pin_memory=cuda)
        host_B_L_D.copy_(out_B_L_D, non_blocking=cuda)
        done = torch.cuda.Event() if cuda else None
        if done is not None:
            done.record()
        return _Launched(host_B_L_D, mask_B_L.sum(dim=1).tolist(), done)


@dataclass(frozen=True)
class _Launched:
    """One batch queued on the device: its host buffer fills when ``done`` fires."""

    host_B_L_D: torch.Tensor
    lengths: list[int]
    done: torch.cuda.Event | None

    def collect(self) -> list[np.ndarray]:
        if self.done is not None:
            self.done.synchronize()
        out_B_L_D = self.host_B_L_D.numpy()
        return [np.ascontiguousarray(out_B_L_D[i, :n]) for i, n in enumerate(self.lengths)]


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise CtrlpostError(f"device {name!r}: CUDA is not available here",
                                hint="use --device cpu (slow for T5-11B) or run on a GPU machine")
        return torch.device(name)
    raise CtrlpostError(f"unknown device {name!r}", hint="choose auto, cpu, cuda or cuda:N")


def resolve_model(text_encoder: str, *, weights_dir: str | Path) -> str:
    """``<weights_dir>/<text_encoder>`` if that folder exists (what `fetch-weights` writes),
    else ``text_encoder`` itself: a folder path or a hub id."""
    local = Path(weights_dir) / text_encoder
    return str(local) if local.is_dir() else text_encoder


def load_text_encoder(name_or_path: str, *, device: torch.device,
                      max_length: int = text.TEXT_TOKENS) -> TextEncoder:
    """Tokenizer + ``T5EncoderModel`` (bf16 on GPU, fp32 on CPU), in eval mode on ``device``.

    With ``HF_HUB_OFFLINE=1`` a hub id is looked up in the local cache only.
    """
    if not 1 <= max_length <= text.TEXT_TOKENS:
        raise CtrlpostError(f"data.embed.max_length={max_length}: must be 1..{text.TEXT_TOKENS}",
                            hint="the DiT reads 512 text tokens")
    from transformers import AutoTokenizer, T5EncoderModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar reports the encoding
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with _loading(name_or_path) as offline:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=offline)
        model: Any = T5EncoderModel.from_pretrained(name_or_path, dtype=dtype,
                                                    local_files_only=offline)
    try:
        network = lean_network(model.to(device))
    except ValueError as exc:
        raise WeightsError(f"{name_or_path}: {exc}",
                           hint="use a T5 encoder with a ReLU or gated feed-forward") from None
    tokenizer.padding_side = "right"  # trimming keeps the first L positions
    return TextEncoder(tokenizer, network, device, max_length)


def lean_network(model: Any) -> T5Encoder:
    """`embed`'s forward of a loaded ``T5EncoderModel``, on the model's device. On CUDA: bf16
    products with the residual adds, score bias and ReLU fused into them, and cuDNN attention
    with the dense position bias where this GPU and build run it (the fastest of the variants in
    bench/NOTES.md), else plain products and float32 softmax; on CPU: float32, plain ops."""
    if model.device.type != "cuda":
        return T5Encoder.from_transformers(model, torch.float32)
    attention = "cudnn" if cudnn_attention_runs(model.device, model.config.d_kv) else "eager"
    return T5Encoder.from_transformers(model, torch.bfloat16, attention=attention,
                                       fused_products=True)


def cudnn_attention_runs(device: torch.device, head_dim: int) -> bool:
    """Whether cuDNN's fused attention takes a bf16 call with a dense additive bias here."""
    if device.type != "cuda":
        return False
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.zeros(1, 2, 8, head_dim, device=device, dtype=torch.bfloat16)
    bias = torch.zeros(1, 2, 8, 8, device=device, dtype=torch.bfloat16)
    try:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=bias)
    except (RuntimeError, NotImplementedError):  # "No available kernel" and its kin
        return False
    return True


def model_dim(name_or_path: str) -> int:
    """Hidden width of a T5 encoder from its config alone (no weights are read)."""
    from transformers import AutoConfig

    with _loading(name_or_path) as offline:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=offline)
    return int(config.d_model)


@contextlib.contextmanager
def _loading(name_or_path: str) -> Iterator[bool]:
    """Yields whether the hub is offline; turns a failed load into a one-line WeightsError."""
    from huggingface_hub import constants

    try:
        yield bool(constants.HF_HUB_OFFLINE)
    except (OSError, ValueError) as exc:
        lines = str(exc).strip().splitlines()
        raise WeightsError(f"cannot load the T5 encoder {name_or_path!r}: "
                           f"{lines[0] if lines else type(exc).__name__}",
                           hint="run `ctrlpost fetch-weights RECIPE`, or pass --model PATH") \
            from None


@dataclass
class Pending:
    """Captions of a dataset split by what `embed` has to do with them."""

    todo: dict[str, str] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)


def pending_captions(root: str | Path, *, dim: int | None) -> Pending:
    """Every ``metas/*.txt`` caption whose embedding is missing or invalid (sorted by stem)."""
    metas = Path(root) / META_DIR
    files = sorted(metas.glob("*.txt")) if metas.is_dir() else []
    if not files:
        raise DataError(f"no captions: {metas} has no .txt files",
                        hint="run `ctrlpost fetch-data RECIPE` first")
    pending = Pending()
    for path in files:
        try:
            caption = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read caption: {exc}") from None
        if not caption:
            pending.empty.append(path.stem)
        elif _valid(text.embedding_path(root, path.stem), dim):
            pending.done.append(path.stem)
        else:
            pending.todo[path.stem] = caption
    return pending


def _valid(path: Path, dim: int | None) -> bool:
    if not path.is_file():
        return False
    try:
        text.read_embedding(path, dim=dim)
    except DataError:
        return False
    return True


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar token length, longest first (so a batch that
    does not fit in memory fails at once, not at the end)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def embed_captions(root: str | Path, encoder: TextEncoder, captions: dict[str, str], *,
                   batch_size: int, on_batch: Callable[[int], None] | None = None) -> int:
    """Encode ``captions`` (stem → text) and write their pickles; returns how many.

    Each batch is written as soon as it is encoded (atomically), so an interrupted run loses at
    most the two batches in flight.
    """
    stems = list(captions)
    texts = [captions[s] for s in stems]
    if not stems:
        return 0
    batches = length_batches(encoder.token_lengths(texts), batch_size)
    encoded = encoder.encode_batches([texts[i] for i in batch] for batch in batches)
    for batch, embeddings in zip(batches, encoded, strict=True):
        for i, embedding_L_D in zip(batch, embeddings, strict=True):
            text.write_embedding(text.embedding_path(root, stems[i]), embedding_L_D)
        if on_batch is not None:
            on_batch(len(batch))
    return len(stems)


@dataclass(frozen=True)
class EmbedSummary:
    """What a run of `embed` did."""

    embedded: int
    skipped: int
    empty: list[str]
    seconds: float
    out_dir: str

    def line(self) -> str:
        """One human line for the end of the command."""
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        extra = f", {len(self.empty)} empty caption(s) skipped" if self.empty else ""
        return (f"embedded {self.embedded} caption(s) in {self.seconds:.1f} s ({rate:.1f}/s), "
                f"{self.skipped} already done{extra} -> {self.out_dir}")


def run(root: str | Path, *, model: str, device: str = "auto", batch_size: int = 32,
        max_length: int = text.TEXT_TOKENS, show_progress: bool = True) -> EmbedSummary:
    """Embed every pending caption of the dataset at ``root`` with the T5 encoder ``model``."""
    start = time.perf_counter()
    torch_device = resolve_device(device)
    pending = pending_captions(root, dim=model_dim(model))
    embedded = 0
    if pending.todo:  # a finished dataset never loads the (45 GB for T5-11B) weights
        encoder = load_text_encoder(model, device=torch_device, max_length=max_length)
        with _Progress(len(pending.todo), enabled=show_progress) as advance:
            embedded = embed_captions(root, encoder, pending.todo, batch_size=batch_size,
                                      on_batch=advance)
    return EmbedSummary(embedded, len(pending.done), pending.empty,
                        time.perf_counter() - start, str(Path(root) / text.EMBED_DIR))


class _Progress:
    """A rich progress bar on stderr with captions/s; ``advance(n)`` when ``n`` are done."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self._bar: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("embedding"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} captions/s"),
            TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self._bar.start()
        task = self._bar.add_task("embed", total=self.total, rate="-")
        started = time.perf_counter()
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            rate = done / max(1e-9, time.perf_counter() - started)
            self._bar.update(task, advance=n, rate=f"{rate:.1f}")

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
