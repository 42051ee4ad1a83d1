"""Sharded, resumable sampling and the DataLoader that feeds one rank.

**Order.** Epoch ``e`` has one *global* order: a permutation of all ``N`` clips drawn from
``(seed, e)`` alone, so it does not depend on the world size. The sampler position is
``(epoch, consumed)``: how many positions of that order the whole job has used. From there, rank
``r`` of ``W`` takes positions ``consumed + r``, ``consumed + r + W``, … for
``(N - consumed) // W`` rounds (drop_last: the last ``(N - consumed) % W`` positions are skipped so
every rank gets as many samples), then the next epoch starts at position 0 with a new order.
Because the position is global, a run saved at world size 4 resumes at world size 2 (or 8) with
exactly the next positions of the same order.

**Resume.** DataLoader workers prefetch ahead of training, so the position that matters is the
one of the last sample *handed to the trainer*: :meth:`TrainBatches.state_dict` reports it from
the keys that come back with the samples. Ranks advance in lockstep, so every rank reports the
same position unless one skipped bad samples (it then drew more keys); save the rank-wise
maximum: nothing is replayed, and the others skip at most as many positions as were bad.

**Bad samples** (unreadable clips, missing embeddings) are skipped, logged and counted: the rank
moves on to its next position; nothing is silently replaced by another sample's data. More than
``max_bad_samples`` of them stops the run with a :class:`DataError` naming the files.
"""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ctrlpost.data.dataset import BadSampleError, SampleKey
from ctrlpost.errors import DataError
from ctrlpost.processes import ProcessIdentity, watch_owner

log = logging.getLogger("ctrlpost.data")

# Separates the order's random stream from sample_rng(seed, epoch, index): SeedSequence pads
# short entropy with zeros, so [seed, epoch] alone would equal sample_rng(seed, epoch, 0).
_ORDER_STREAM = 0x0D3E5


def epoch_order(num_samples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The global order of epoch ``epoch``: a permutation of ``range(num_samples)``."""
    sequence = np.random.SeedSequence([seed, epoch], spawn_key=(_ORDER_STREAM,))
    return np.random.default_rng(sequence).permutation(num_samples)


class ShardedSampler(Sampler[SampleKey]):
    """Endless :class:`SampleKey` stream of one rank (see the module docstring for the order).

    ``state_dict()`` is the position after the last key this sampler yielded; use
    :meth:`TrainBatches.state_dict` for the position of what training consumed.
    """

    def __init__(self, num_samples: int, *, rank: int, world_size: int, seed: int,
                 epoch: int = 0, consumed: int = 0) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank {rank} of world size {world_size}")
        if num_samples < world_size:
            raise DataError(f"{num_samples} clips cannot feed {world_size} ranks",
                            hint="add clips (`ctrlpost fetch-data`) or use fewer processes")
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = epoch
        self.consumed = consumed
        self._check_position()

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "consumed"}``: where the next key comes from."""
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from a saved position (of any world size)."""
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self._check_position()

    def _check_position(self) -> None:
        if self.epoch < 0 or not 0 <= self.consumed <= self.num_samples:
            raise DataError(f"bad sampler position epoch={self.epoch} consumed={self.consumed} "
                            f"for {self.num_samples} clips",
                            hint="the checkpoint belongs to another dataset; resume = 'never'")

    def __iter__(self) -> Iterator[SampleKey]:
        W = self.world_size
        while True:
            epoch, start = self.epoch, self.consumed
            rounds = (self.num_samples - start) // W
            order = epoch_order(self.num_samples, seed=self.seed, epoch=epoch)
            for j in range(rounds):
                position = start + j * W + self.rank
                last = j + 1 == rounds
                next_epoch, next_consumed = (epoch + 1, 0) if last else (epoch, start + (j + 1) * W)
                self.epoch, self.consumed = next_epoch, next_consumed
                yield SampleKey(epoch, int(order[position]), position, next_epoch, next_consumed)
            if rounds == 0:
                self.epoch, self.consumed = epoch + 1, 0


@dataclass(frozen=True)
class BadSample:
    """A skipped sample: the offending file and why."""

    path: str
    reason: str
    epoch: int
    index: int


class _Guarded(Dataset[tuple[SampleKey, Any]]):
    """Returns ``(key, sample)``, or ``(key, BadSample)`` instead of raising in a worker (an
    exception there would end the whole DataLoader iterator)."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __getitem__(self, key: SampleKey) -> tuple[SampleKey, Any]:
        try:
            return key, self.dataset[key]
        except BadSampleError as exc:
            return key, BadSample(str(exc.path), exc.reason, key.epoch, key.clip)


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A batch: tensors stacked on a new dim 0, numbers as tensors, anything else as a list.

    A single sample is batched with ``unsqueeze`` (a view), so its pinned memory stays pinned
    and a 121-frame 720p clip is not copied.
    """
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if all(isinstance(v, torch.Tensor) for v in values):
            batch[key] = values[0].unsqueeze(0) if len(values) == 1 else torch.stack(values)
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


def _shape_of(sample: Mapping[str, Any]) -> tuple[Any, ...]:
    """What must match for samples to be stacked: the shapes of their tensors."""
    return tuple(tuple(v.shape) for v in sample.values() if isinstance(v, torch.Tensor))


def _keep(item: Any) -> Any:
    return item


def _worker_init(worker_id: int, *, owner: ProcessIdentity) -> None:
    # Several workers share the cores; OpenCV's own threads would only oversubscribe them
    # (docs/environment.md#opencv-threads). 0 = no pool at all.
    import cv2

    cv2.setNumThreads(0)
    # Ctrl-C is the training process's to handle: it finishes the step and saves. The launcher
    # passes it to the rank's whole process group, workers included; a worker that quit on it
    # would fail the rank's batch in flight before it saves. (SIGTERM keeps its default: the
    # loader stops its own workers with it.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker's parent is the fork server, which outlives a training process killed with
    # SIGKILL; torch's own watchdog looks at the parent, so watch the training process.
    watch_owner(owner)


class TrainBatches:
    """Endless batches of ``batch_size`` good samples for one rank (an iterator).

    ``state_dict()`` is the sampler position after the last batch handed out; ``bad_samples``
    lists what was skipped. ``close()`` (or leaving a ``with`` block) stops the workers.

    A batch holds clips of one aspect bucket only; with ``batch_size > 1`` and several buckets,
    samples wait for their bucket's batch, and a resume skips those still waiting (at most
    ``batch_size - 1`` per other bucket). With one bucket, or batch size 1 (the reference's),
    resume is exact.
    """

    def __init__(self, loader: DataLoader[Any], sampler: ShardedSampler, *, batch_size: int,
                 max_bad_samples: int, pin_memory: bool) -> None:
        self.loader = loader
        self.sampler = sampler
        self.batch_size = batch_size
        self.max_bad_samples = max_bad_samples
        self.pin_memory = pin_memory
        self.bad_samples: list[BadSample] = []
        self._state = sampler.state_dict()
        self._batches: Generator[dict[str, Any], None, None] | None = None

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "consumed"}`` after the last batch handed out (resume from here)."""
        return dict(self._state)

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._batches is None:
            self._batches = self._generate()
        return next(self._batches)

    def __enter__(self) -> TrainBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (they would otherwise live until the process exits)."""
        if self._batches is not None:
            self._batches.close()

    def _generate(self) -> Generator[dict[str, Any], None, None]:
        iterator = iter(self.loader)
        # Clips of different aspect buckets cannot share a batch: samples wait per shape.
        pending: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
        try:
            for key, item in iterator:
                if isinstance(item, BadSample):
                    self._skip(item)
                    continue
                group = pending.setdefault(_shape_of(item), [])
                group.append(item)
                if len(group) < self.batch_size:
                    continue
                batch = collate(group)
                group.clear()
                if self.pin_memory and self.batch_size > 1:
                    batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v
                             for k, v in batch.items()}
                self._state = {"epoch": key.next_epoch, "consumed": key.next_consumed}
                yield batch
        finally:
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _skip(self, bad: BadSample) -> None:
        self.bad_samples.append(bad)
        log.warning("skipped bad sample %d (limit %d): %s: %s", len(self.bad_samples),
                    self.max_bad_samples, bad.path, bad.reason)
        if len(self.bad_samples) > self.max_bad_samples:
            shown = "; ".join(f"{b.path}: {b.reason}" for b in self.bad_samples[:10])
            more = len(self.bad_samples) - 10
            raise DataError(
                f"{len(self.bad_samples)} bad samples, more than data.max_bad_samples="
                f"{self.max_bad_samples}: {shown}" + (f"; and {more} more" if more > 0 else ""),
                hint="run `ctrlpost verify RECIPE` to list every problem, then fix or remove "
                "those clips",
            )


def build_loader(
    dataset: Dataset[Any],
    *,
    rank: int,
    world_size: int,
    seed: int,
    batch_size: int = 1,
    num_workers: int = 0,
    prefetch_factor: int = 2,
    max_bad_samples: int = 100,
    pin_memory: bool = False,
    state: Mapping[str, int] | None = None,
    start_method: str = "forkserver",
) -> TrainBatches:
    """Batches of ``dataset`` for rank ``rank`` of ``world_size``, from ``state`` if given.

    ``pin_memory`` is for CUDA training (page-locked host memory makes the copy asynchronous).
    Workers are persistent: the stream is endless, so they live as long as the run.
    ``prefetch_factor`` counts samples per worker (batches are assembled afterwards).

    Workers come from a fork server, not from forking this process: a child forked from a
    process that has used cv2 (as `verify`'s checks do in the launching process) inherits
    OpenCV's thread pool without its threads and hangs in its first cv2 call. Plain ``spawn``
    avoids that too, but a spawned worker that ran torch ops can abort at exit ("terminate
    called without an active exception") while the loader shuts it down; fork-server children
    leave with ``os._exit``. Starting a worker costs a few seconds, once.
    """
    sampler = ShardedSampler(len(dataset), rank=rank, world_size=world_size,  # type: ignore[arg-type]
                             seed=seed)
    if state is not None:
        sampler.load_state_dict(state)
    workers = num_workers > 0
    loader: DataLoader[Any] = DataLoader(
        _Guarded(dataset),
        sampler=sampler,
        batch_size=None,  # batches are assembled from good samples only, in TrainBatches
        collate_fn=_keep,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor if workers else None,
        persistent_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=functools.partial(_worker_init, owner=ProcessIdentity.current())
        if workers else None,
        multiprocessing_context=start_method if workers else None,
    )
    return TrainBatches(loader, sampler, batch_size=batch_size, max_bad_samples=max_bad_samples,
                        pin_memory=pin_memory)
