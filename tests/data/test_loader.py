"""Sharded sampler (epochs, drop_last, resume at any world size), batches, bad samples."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ctrlpost.data.dataset import BadSampleError, SampleKey, build_dataset
from ctrlpost.data.loader import ShardedSampler, build_loader, collate, epoch_order
from ctrlpost.errors import DataError
from ctrlpost.recipe import ControlSection, DataSection


def keys(sampler: ShardedSampler, n: int) -> list[SampleKey]:
    return list(itertools.islice(iter(sampler), n))


def samplers(n: int, world: int, seed: int = 0, **state: int) -> list[ShardedSampler]:
    return [ShardedSampler(n, rank=r, world_size=world, seed=seed, **state) for r in range(world)]


def test_shards_are_disjoint_and_cover_the_epoch_with_drop_last() -> None:
    shards = [keys(s, 3) for s in samplers(10, 3)]  # 10 // 3 = 3 rounds per epoch
    positions = sorted(k.position for shard in shards for k in shard)
    assert positions == list(range(9))  # position 9 is dropped
    clips = [k.clip for shard in shards for k in shard]
    assert len(set(clips)) == 9 and set(clips) <= set(range(10))
    order = epoch_order(10, seed=0, epoch=0)
    assert all(k.clip == order[k.position] for shard in shards for k in shard)
    assert [k.position for k in shards[1]] == [1, 4, 7]
    # the next key of every rank starts epoch 1
    assert {keys(s, 4)[3].epoch for s in samplers(10, 3)} == {1}


def test_new_order_every_epoch_and_per_seed() -> None:
    orders = [tuple(epoch_order(50, seed=0, epoch=e)) for e in range(4)]
    assert len(set(orders)) == 4
    assert tuple(epoch_order(50, seed=1, epoch=0)) != orders[0]
    (s,) = samplers(50, 1)
    stream = keys(s, 100)
    assert [k.clip for k in stream[:50]] == list(orders[0])
    assert [k.clip for k in stream[50:]] == list(orders[1])


def global_stream(n: int, world: int, steps: int, **state: int) -> list[int]:
    """Clips consumed by the whole job, round by round, rank order within a round."""
    per_rank = [keys(s, steps) for s in samplers(n, world, **state)]
    return [per_rank[r][j].clip for j in range(steps) for r in range(world)]


def test_resume_mid_epoch_continues_exactly() -> None:
    full = global_stream(23, 2, 20)
    (first,) = samplers(23, 2)[:1]
    consumed = keys(first, 4)
    state = first.state_dict()
    assert state == {"epoch": 0, "consumed": 8}
    assert (consumed[-1].next_epoch, consumed[-1].next_consumed) == (0, 8)
    assert global_stream(23, 2, 16, **state) == full[8:]


def test_resume_at_another_world_size_continues_the_global_order() -> None:
    n = 24
    one_epoch = list(epoch_order(n, seed=0, epoch=0))
    assert global_stream(n, 4, 2)[:8] == one_epoch[:8]
    # saved by 4 ranks after 2 rounds (8 positions); resumed by 2, then by 3 ranks
    assert global_stream(n, 2, 8, epoch=0, consumed=8) == one_epoch[8:24]
    assert global_stream(n, 3, 5, epoch=0, consumed=8) == one_epoch[8:23]


def test_sampler_rejects_bad_setups() -> None:
    with pytest.raises(DataError, match="cannot feed 4 ranks"):
        ShardedSampler(3, rank=0, world_size=4, seed=0)
    with pytest.raises(ValueError):
        ShardedSampler(8, rank=2, world_size=2, seed=0)
    with pytest.raises(DataError, match="bad sampler position"):
        ShardedSampler(8, rank=0, world_size=2, seed=0, consumed=9)


def test_collate_stacks_tensors_and_lists_the_rest() -> None:
    samples = [{"x": torch.full((2,), i), "n": i, "f": 0.5, "name": f"s{i}", "d": {"k": i}}
               for i in range(3)]
    batch = collate(samples)
    assert batch["x"].shape == (3, 2) and batch["n"].tolist() == [0, 1, 2]
    assert batch["f"].tolist() == [0.5] * 3
    assert batch["name"] == ["s0", "s1", "s2"] and batch["d"] == [{"k": 0}, {"k": 1}, {"k": 2}]
    one = torch.zeros(3, 4)
    assert collate([{"x": one}])["x"].data_ptr() == one.data_ptr()  # a view, no copy


class FakeClips(torch.utils.data.Dataset[dict[str, Any]]):
    """Clip ``k`` is a tensor holding ``k``; the clips in ``bad`` raise like unreadable files."""

    def __init__(self, n: int, bad: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        if key.clip in self.bad:
            raise BadSampleError(Path(f"videos/c{key.clip}.mp4"), "cannot open video")
        return {"x": torch.tensor([key.clip]), "name": f"c{key.clip}"}


def take(batches: Any, n: int) -> list[list[int]]:
    it = iter(batches)
    return [next(it)["x"][:, 0].tolist() for _ in range(n)]


def test_train_batches_resume_exactly_across_world_sizes() -> None:
    n = 17
    order = list(epoch_order(n, seed=5, epoch=0)) + list(epoch_order(n, seed=5, epoch=1))
    loader = build_loader(FakeClips(n), rank=1, world_size=2, seed=5, batch_size=2)
    got = take(loader, 3)  # positions 1,3 | 5,7 | 9,11
    assert got == [[order[1], order[3]], [order[5], order[7]], [order[9], order[11]]]
    state = loader.state_dict()
    assert state == {"epoch": 0, "consumed": 12}
    resumed = build_loader(FakeClips(n), rank=0, world_size=1, seed=5, batch_size=1, state=state)
    assert take(resumed, 5) == [[order[p]] for p in (12, 13, 14, 15, 16)]
    assert take(resumed, 1) == [[order[17]]] and resumed.state_dict() == {"epoch": 1,
                                                                           "consumed": 1}


def test_bad_samples_are_skipped_counted_and_limited() -> None:
    n = 12
    order = list(epoch_order(n, seed=0, epoch=0))
    bad = {order[1], order[4]}
    loader = build_loader(FakeClips(n, bad), rank=0, world_size=1, seed=0, batch_size=2,
                          max_bad_samples=2)
    got = take(loader, 3)
    assert got == [[order[0], order[2]], [order[3], order[5]], [order[6], order[7]]]
    assert [b.path for b in loader.bad_samples] == [f"videos/c{order[1]}.mp4",
                                                    f"videos/c{order[4]}.mp4"]
    strict = build_loader(FakeClips(n, bad), rank=0, world_size=1, seed=0, max_bad_samples=1)
    with pytest.raises(DataError) as info:
        take(strict, 6)
    message = info.value.message
    assert "2 bad samples, more than data.max_bad_samples=1" in message
    assert f"videos/c{order[1]}.mp4: cannot open video" in message
    assert f"videos/c{order[4]}.mp4" in message and "verify" in (info.value.hint or "")


class TwoBuckets(FakeClips):
    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        side = 2 if key.clip % 2 else 3
        return {"x": torch.full((side,), key.clip), "name": f"c{key.clip}"}


def test_batches_never_mix_aspect_buckets() -> None:
    loader = build_loader(TwoBuckets(20), rank=0, world_size=1, seed=0, batch_size=3)
    for _ in range(8):
        clips = next(loader)["x"][:, 0].tolist()
        assert len({c % 2 for c in clips}) == 1 and len(clips) == 3


def test_real_clips_through_a_worker_process(make_dataset: Callable[..., Path]) -> None:
    root = make_dataset(["a", "b", "c"])
    (root / "t5_xxl" / "b.pickle").unlink()
    data = DataSection(root=str(root), num_frames=4, resolution="128")
    dataset = build_dataset(data, ControlSection(modality="edge"), seed=0, text_dim=16)
    with build_loader(dataset, rank=0, world_size=1, seed=0, batch_size=2, num_workers=1,
                      prefetch_factor=1, max_bad_samples=5) as loader:
        batch = next(loader)
    assert batch["video"].shape == (2, 3, 4, 128, 224) and batch["t5"].shape == (2, 512, 16)
    assert sorted(batch["name"]) == ["a", "c"] and batch["hint_key"] == ["control_input_edge"] * 2
    assert [b.path for b in loader.bad_samples] == [str(root / "t5_xxl" / "b.pickle")]
    assert loader.state_dict() == {"epoch": 1, "consumed": 0}
