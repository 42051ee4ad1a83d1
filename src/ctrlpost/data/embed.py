"""`ctrlpost embed`: T5 embeddings of every caption, written as the reference's pickles.

For each ``metas/<stem>.txt`` without a valid ``t5_xxl/<stem>.pickle`` (so a rerun resumes), the
caption is encoded by a T5 encoder and saved as ``[float16 [L, D]]`` (see
:mod:`ctrlpost.data.text`). Same meaning as the reference script, faster:

* captions are sorted by token length and batched, each batch padded only to its longest
  caption. The T5 encoder masks padded keys and its relative position bias depends only on
  (query, key) offsets, so a real token's output does not depend on how much padding follows;
  the reference pads every caption to 512 and runs one per forward pass;
* bf16 on GPU (plain matmul + softmax attention there), fp32 on CPU, under
  ``torch.inference_mode``;
* ``--model`` and ``max_length`` are honoured (the reference ignores both flags).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctrlpost.data import text
from ctrlpost.data.dataset import META_DIR
from ctrlpost.errors import CtrlpostError, DataError, WeightsError


@dataclass(frozen=True)
class TextEncoder:
    """A T5 encoder and its tokenizer, ready to turn captions into trimmed embeddings."""

    tokenizer: Any
    model: Any
    device: torch.device
    max_length: int

    @property
    def dim(self) -> int:
        """Hidden width D of the embeddings."""
        return int(self.model.config.d_model)

    def token_lengths(self, captions: Sequence[str]) -> list[int]:
        """Tokens per caption after truncation, EOS included (= the saved L)."""
        ids = self.tokenizer(list(captions), truncation=True, max_length=self.max_length)
        return [len(x) for x in ids["input_ids"]]

    @torch.inference_mode()
    def encode(self, captions: Sequence[str]) -> list[np.ndarray]:
        """float16 ``[L_i, D]`` per caption: last hidden state, padding zeroed and trimmed."""
        batch = self.tokenizer(list(captions), padding="longest", truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        ids_B_L = batch["input_ids"].to(self.device)
        mask_B_L = batch["attention_mask"].to(self.device)
        hidden_B_L_D = self.model(input_ids=ids_B_L, attention_mask=mask_B_L).last_hidden_state
        # The reference zeroes every position at or beyond the caption's length before the cast.
        hidden_B_L_D = hidden_B_L_D * mask_B_L[..., None].to(hidden_B_L_D.dtype)
        out_B_L_D = hidden_B_L_D.to(torch.float16).cpu().numpy()
        lengths = mask_B_L.sum(dim=1).tolist()
        return [np.ascontiguousarray(out_B_L_D[i, :n]) for i, n in enumerate(lengths)]


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
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    # transformers' SDPA path for T5 (its relative position bias becomes a dense float mask)
    # was 1.41x slower than plain matmul + softmax for T5-11B on an H100 (bench/embed.py,
    # bench/NOTES.md); on CPU it is the faster one.
    attention: dict[str, Any] = {"attn_implementation": "eager"} if cuda else {}
    with _loading(name_or_path) as offline:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=offline)
        model: Any = T5EncoderModel.from_pretrained(name_or_path, dtype=dtype,
                                                    local_files_only=offline, **attention)
    tokenizer.padding_side = "right"  # trimming keeps the first L positions
    return TextEncoder(tokenizer, model.to(device).eval(), device, max_length)


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
    most one batch.
    """
    stems = list(captions)
    texts = [captions[s] for s in stems]
    if not stems:
        return 0
    for batch in length_batches(encoder.token_lengths(texts), batch_size):
        embeddings = encoder.encode([texts[i] for i in batch])
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
