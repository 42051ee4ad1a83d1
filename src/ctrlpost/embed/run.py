"""`ctrlpost embed`: T5 embeddings of every caption, written as the reference's pickles.

For each ``metas/<stem>.txt`` without a valid ``t5_xxl/<stem>.pickle`` (so a rerun resumes), the
caption is encoded by a T5 encoder and saved as ``[float16 [L, D]]`` (see
:mod:`ctrlpost.data.text`). Same meaning as the reference script (docs/reference.md#t5-embeddings),
faster:

* each caption is tokenized once (on a background thread), captions are grouped by token
  length into batches of at most ``batch_size`` captions and ``batch_tokens`` tokens, and on
  GPU a batch's tokens are packed end to end with no padding, the budget counting the tokens it
  holds (on CPU padded to the longest, the budget counting the padding).
  T5 masks padded keys and its relative position bias depends only on key − query offsets,
  so a token's output does not depend on its batch; the reference pads every caption to 512
  and runs one per forward pass;
* a lean forward of the same weights (:mod:`ctrlpost.embed.t5`): on GPU float16 (or bf16)
  products around a float32 residual stream, our packed attention kernel, the residual adds
  and ReLU inside the products; fp32 on CPU; the next batch is queued on the GPU while the
  previous one is written; a batch whose float16 output overflowed is encoded again with
  bf16 products and counted in the summary (its speed against the reference's way: README,
  bench/NOTES.md);
* ``--model`` and ``max_length`` are honoured (the reference ignores both flags).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ctrlpost.data import text
from ctrlpost.data.layout import DatasetLayout
from ctrlpost.embed.kernels import packed_attention
from ctrlpost.embed.t5 import T5Encoder, encode_packed
from ctrlpost.errors import CtrlpostError, DataError, WeightsError

if TYPE_CHECKING:
    from ctrlpost.recipe import EmbedOptions


@dataclass
class TextEncoder:
    """A T5 encoder and its tokenizer, ready to turn captions into trimmed embeddings."""

    tokenizer: Any
    network: T5Encoder
    device: torch.device
    max_length: int
    pad_multiple: int = 1  # batches are padded to a multiple of this many tokens
    # Batches whose float16 output overflowed, redone with bf16 products (float32's range).
    redone_in_bf16: int = 0
    _bf16: T5Encoder | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        """Hidden width D of the embeddings."""
        return self.network.dim

    def tokenize(self, captions: Sequence[str]) -> list[list[int]]:
        """Token ids per caption after truncation, EOS included."""
        ids: list[list[int]] = self.tokenizer(list(captions), truncation=True,
                                              max_length=self.max_length)["input_ids"]
        return ids

    def token_lengths(self, captions: Sequence[str]) -> list[int]:
        """Tokens per caption after truncation, EOS included (= the saved L)."""
        return [len(ids) for ids in self.tokenize(captions)]

    def encode(self, captions: Sequence[str]) -> list[np.ndarray]:
        """float16 ``[L_i, D]`` per caption: last hidden state, padding zeroed and trimmed."""
        return next(self.encode_batches([self.tokenize(captions)]))

    def encode_batches(self, batches: Iterable[Sequence[Sequence[int]]]
                       ) -> Iterator[list[np.ndarray]]:
        """:meth:`encode` of each batch of token ids in turn, with the next batch already queued
        on the device while the host copies out and hands over the previous one (so the GPU
        does not wait for pickling or writing). On CUDA the outputs come to the host on a
        stream of their own, so the next batch's products do not wait for the copy."""
        in_flight: _Launched | None = None
        copies = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        for token_ids in batches:
            launched = self._launch(token_ids, copies)
            if in_flight is not None:
                yield self._collect(in_flight)
            in_flight = launched
        if in_flight is not None:
            yield self._collect(in_flight)

    def _collect(self, launched: _Launched) -> list[np.ndarray]:
        """A batch's embeddings; one whose float16 products overflowed (released T5
        checkpoints are known to) is encoded again with bf16 products, and counted."""
        if launched.all_finite():
            return launched.collect()
        if self.network.compute_dtype != torch.float16:
            raise CtrlpostError(
                f"the T5 encoder's output is not finite (inf/nan) in a batch of "
                f"{len(launched.lengths)} caption(s), with {self.network.compute_dtype} products",
                hint="the weights themselves may hold inf/nan: check the checkpoint; "
                "embeddings already written are kept")
        if self._bf16 is None:
            self._bf16 = self.network.with_compute_dtype(torch.bfloat16)
        fp16, self.network = self.network, self._bf16
        try:
            redone = self._launch(launched.token_ids, None)
        finally:
            self.network = fp16
        self.redone_in_bf16 += 1
        if not redone.all_finite():
            raise CtrlpostError(
                f"the T5 encoder's output is not finite (inf/nan) in a batch of "
                f"{len(launched.lengths)} caption(s), even with bf16 products",
                hint="the weights themselves may hold inf/nan: check the checkpoint")
        return redone.collect()

    @torch.inference_mode()
    def _launch(self, token_ids: Sequence[Sequence[int]],
                copies: torch.cuda.Stream | None) -> _Launched:
        lengths = [len(ids) for ids in token_ids]
        cuda = copies is not None
        if self.network.packed:
            ids_T = torch.from_numpy(np.concatenate([np.asarray(ids, np.int64)
                                                     for ids in token_ids]))
            ids_T = ids_T.pin_memory() if cuda else ids_T
            hidden_T_D = encode_packed(self.network, ids_T.to(self.device, non_blocking=True),
                                       lengths)
            out = hidden_T_D.to(torch.float16)
        else:
            out = self._padded(token_ids, lengths)
        host = torch.empty(out.shape, dtype=torch.float16, pin_memory=cuda)
        finite = torch.empty((), dtype=torch.bool, pin_memory=cuda)
        all_finite = torch.isfinite(out).all()
        if copies is None:
            host.copy_(out)
            finite.copy_(all_finite)
            return _Launched(host, token_ids, lengths, finite, None)
        copies.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(copies):
            host.copy_(out, non_blocking=True)
            finite.copy_(all_finite, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        for tensor in (out, all_finite):  # not reused by the next batch before the copy ends
            tensor.record_stream(copies)
        return _Launched(host, token_ids, lengths, finite, done)

    def _padded(self, token_ids: Sequence[Sequence[int]], lengths: list[int]) -> torch.Tensor:
        """float16 ``[B, L, D]`` of a batch padded to its longest caption (rounded up to
        ``pad_multiple``), zero past each caption as the reference leaves it; extra padding
        keys are masked and extra rows trimmed, so no output changes."""
        cuda = self.device.type == "cuda"
        padded = -(-max(lengths) // self.pad_multiple) * self.pad_multiple
        ids_array = np.full((len(token_ids), padded), self.tokenizer.pad_token_id or 0, np.int64)
        for row, ids in enumerate(token_ids):
            ids_array[row, :len(ids)] = ids
        mask_B_L = torch.from_numpy(np.arange(padded) < np.array(lengths)[:, None]).long()
        ids_B_L = torch.from_numpy(ids_array)
        if cuda:
            ids_B_L, mask_B_L = ids_B_L.pin_memory(), mask_B_L.pin_memory()
        mask_B_L = mask_B_L.to(self.device, non_blocking=True)
        hidden_B_L_D = self.network(ids_B_L.to(self.device, non_blocking=True), mask_B_L)
        return (hidden_B_L_D * mask_B_L[..., None]).to(torch.float16)


@dataclass(frozen=True)
class _Launched:
    """One batch queued on the device: its host buffer (float16, ``[B, L, D]`` padded or
    ``[T, D]`` packed) fills when ``done`` fires."""

    host: torch.Tensor
    token_ids: Sequence[Sequence[int]]  # kept to encode the batch again if it overflowed
    lengths: list[int]
    finite: torch.Tensor  # whether every output is a number (float16 can overflow)
    done: torch.cuda.Event | None

    def all_finite(self) -> bool:
        """Whether every output is a number (waits for the batch)."""
        if self.done is not None:
            self.done.synchronize()
        return bool(self.finite)

    def collect(self) -> list[np.ndarray]:
        """The batch's float16 ``[L_i, D]`` embeddings (after :meth:`all_finite`)."""
        if self.done is not None:
            self.done.synchronize()
        out = self.host.numpy()
        if out.ndim == 2:  # packed: each caption's rows in turn
            ends = np.cumsum(self.lengths)
            return [np.ascontiguousarray(out[end - n:end])
                    for end, n in zip(ends, self.lengths, strict=True)]
        return [np.ascontiguousarray(out[i, :n]) for i, n in enumerate(self.lengths)]


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


PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16}


def load_text_encoder(name_or_path: str, *, device: torch.device,
                      max_length: int = text.TEXT_TOKENS, precision: str = "fp16") -> TextEncoder:
    """Tokenizer + ``T5EncoderModel`` on ``device``: on GPU its matrix products in
    ``precision`` (the checkpoint's weights rounded once to it), on CPU float32.

    With ``HF_HUB_OFFLINE=1`` a hub id is looked up in the local cache only.
    """
    if precision not in PRECISIONS:
        raise CtrlpostError(f"data.embed.precision={precision!r}: unknown",
                            hint=f"choose one of {', '.join(PRECISIONS)}")
    if not 1 <= max_length <= text.TEXT_TOKENS:
        raise CtrlpostError(f"data.embed.max_length={max_length}: must be 1..{text.TEXT_TOKENS}",
                            hint="the DiT reads 512 text tokens")
    from transformers import AutoTokenizer, T5EncoderModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar reports the encoding
    dtype = PRECISIONS[precision] if device.type == "cuda" else torch.float32
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
    """`embed`'s forward of a loaded ``T5EncoderModel``, on the model's device. On CUDA:
    products in the model's dtype (float16 or bf16, float32 accumulation and residual stream)
    with the residual adds and ReLU fused into them, captions packed end to end with
    the packed attention kernel where Triton runs it (the fastest of the variants in
    bench/NOTES.md), else padded batches with cuDNN attention, else plain products and float32
    softmax; on CPU: float32, plain ops."""
    if model.device.type != "cuda":
        return T5Encoder.from_transformers(model, torch.float32)
    head_dim = model.config.d_kv
    if packed_attention.runs(model.device, head_dim):
        attention = "packed"
    elif cudnn_attention_runs(model.device, head_dim):
        attention = "cudnn"
    else:
        attention = "eager"
    low = model.dtype if model.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    return T5Encoder.from_transformers(model, low, attention=attention, fused_products=True)


def cudnn_attention_runs(device: torch.device, head_dim: int) -> bool:
    """Whether cuDNN's fused attention takes a bf16 call with a dense additive bias here, at a
    length that is not a multiple of 8 (batches are not padded) with the bias laid out as
    :meth:`ctrlpost.embed.t5.AttentionBias.dense` lays it out."""
    if device.type != "cuda":
        return False
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.zeros(1, 2, 9, head_dim, device=device, dtype=torch.bfloat16)
    bias = torch.zeros(1, 2, 9, 16, device=device, dtype=torch.bfloat16)[..., :9]
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
    layout = DatasetLayout(Path(root))
    files = layout.captions()
    if not files:
        raise DataError(f"no captions: {layout.metas} has no .txt files",
                        hint="run `ctrlpost fetch-data RECIPE` first")
    pending = Pending()
    for path in files:
        try:
            caption = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read caption: {exc}") from None
        if not caption:
            pending.empty.append(path.stem)
        elif _valid(layout.embedding(path.stem), dim):
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


def length_batches(lengths: Sequence[int], *, max_captions: int, max_tokens: int,
                   packed: bool = False) -> list[list[int]]:
    """Indices grouped into batches of similar token length, longest first (so a batch that
    does not fit in memory fails at once, not at the end). A batch grows while it holds at
    most ``max_captions`` captions and at most ``max_tokens`` tokens: the tokens it holds if
    ``packed`` (no padding), else captions × its longest. A caption longer than that still
    gets a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    held = 0  # the last batch's real tokens
    for i in order:
        if batches and len(batches[-1]) < max_captions:
            batch = batches[-1]
            grown = held + lengths[i] if packed else (len(batch) + 1) * lengths[batch[0]]
            if grown <= max_tokens:
                batch.append(i)
                held += lengths[i]
                continue
        batches.append([i])
        held = lengths[i]
    return batches


FIRST_CHUNK, CHUNK = 64, 4096  # captions tokenized at a time: a small chunk first


def planned_batches(encoder: TextEncoder, texts: Sequence[str], *, max_captions: int,
                    max_tokens: int) -> Iterator[tuple[list[int], list[list[int]]]]:
    """(caption indices, their token ids) per batch, each caption tokenized once.

    Tokenizing is on a background thread, chunk by chunk and a small chunk first, so the
    device starts on the first batches while the rest are still being tokenized (the
    tokenizer releases the GIL). Within a chunk, batches follow :func:`length_batches`."""
    if not texts:
        return
    bounds = [(0, min(FIRST_CHUNK, len(texts)))]
    bounds += [(a, min(a + CHUNK, len(texts))) for a in range(bounds[0][1], len(texts), CHUNK)]
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
    try:
        futures = [pool.submit(encoder.tokenize, texts[a:b]) for a, b in bounds]
        for (start, _), future in zip(bounds, futures, strict=True):
            ids = future.result()
            for batch in length_batches([len(x) for x in ids], max_captions=max_captions,
                                        max_tokens=max_tokens, packed=encoder.network.packed):
                yield [start + i for i in batch], [ids[i] for i in batch]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def encode_captions(encoder: TextEncoder, texts: Sequence[str], *, max_captions: int,
                    max_tokens: int) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """(indices into ``texts``, their float16 ``[L_i, D]`` embeddings) batch by batch, as
    :func:`planned_batches` groups them and :meth:`TextEncoder.encode_batches` runs them."""
    launched: deque[list[int]] = deque()  # indices of the batches handed to the encoder

    def token_ids() -> Iterator[list[list[int]]]:
        for indices, ids in planned_batches(encoder, texts, max_captions=max_captions,
                                            max_tokens=max_tokens):
            launched.append(indices)
            yield ids

    for embeddings in encoder.encode_batches(token_ids()):
        yield launched.popleft(), embeddings


def embed_captions(root: str | Path, encoder: TextEncoder, captions: dict[str, str], *,
                   batch_size: int, batch_tokens: int,
                   on_batch: Callable[[int], None] | None = None) -> int:
    """Encode ``captions`` (stem → text) and write their pickles; returns how many.

    Each batch is written as soon as it is encoded (atomically), so an interrupted run loses at
    most the two batches in flight.
    """
    stems = list(captions)
    texts = [captions[s] for s in stems]
    layout = DatasetLayout(Path(root))
    for batch, embeddings in encode_captions(encoder, texts, max_captions=batch_size,
                                             max_tokens=batch_tokens):
        for i, embedding_L_D in zip(batch, embeddings, strict=True):
            text.write_embedding(layout.embedding(stems[i]), embedding_L_D)
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
    redone_in_bf16: int = 0  # batches whose float16 products overflowed

    def line(self) -> str:
        """One human line for the end of the command."""
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        extra = f", {len(self.empty)} empty caption(s) skipped" if self.empty else ""
        if self.redone_in_bf16:
            extra += (f", {self.redone_in_bf16} batch(es) redone with bf16 products (float16 "
                      "overflowed)")
        return (f"embedded {self.embedded} caption(s) in {self.seconds:.1f} s ({rate:.1f}/s), "
                f"{self.skipped} already done{extra} -> {self.out_dir}")


def run(root: str | Path, *, model: str, options: EmbedOptions,
        show_progress: bool = True) -> EmbedSummary:
    """Embed every pending caption of the dataset at ``root`` with the T5 encoder ``model``,
    as the recipe's ``[data.embed]`` says."""
    start = time.perf_counter()
    torch_device = resolve_device(options.device)
    pending = pending_captions(root, dim=model_dim(model))
    embedded = redone = 0
    if pending.todo:  # a finished dataset never loads the (45 GB for T5-11B) weights
        encoder = load_text_encoder(model, device=torch_device, max_length=options.max_length,
                                    precision=options.precision)
        with _Progress(len(pending.todo), enabled=show_progress) as advance:
            embedded = embed_captions(root, encoder, pending.todo,
                                      batch_size=options.batch_size,
                                      batch_tokens=options.batch_tokens, on_batch=advance)
        redone = encoder.redone_in_bf16
    return EmbedSummary(embedded, len(pending.done), pending.empty,
                        time.perf_counter() - start, str(DatasetLayout(Path(root)).embeddings),
                        redone_in_bf16=redone)


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
