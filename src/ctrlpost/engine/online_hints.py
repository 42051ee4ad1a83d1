"""Online hints: a modality's model run in the training process on the sampled frames.

When a control's params select its modality's online hint (depth's ``source = "online"``), the
loader's samples carry no hint (``[C, 0, 0, 0]``, see :class:`ctrlpost.data.dataset.ClipDataset`)
and this stage fills it on the rank, with the models loaded once on the rank's device: the
clip's own pixels of the fitted video (the bucket's reflection padding cut off by the sample's
``padding_mask``) go to the modality's ``render``, and its hint is padded back exactly as the
loader pads a hint read from a file. For a clip already at its bucket's scale and a window that
is the whole clip this is the file path's hint level for level; otherwise the model sees the
frames after the bucket's resize (the file's hint is resized after the model) and normalises
over the window (a file over the whole clip).

Training batches are filled one ahead, in a thread, while the current step runs
(:class:`FilledBatches`); what is not hidden shows in the step's data wait.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ctrlpost.data import video
from ctrlpost.modalities import OnlineHint


class OnlineHints:
    """The loaded models of one control's online hint, filling samples' and batches' hints."""

    def __init__(self, hint: OnlineHint, params: Any, *, weights_dir: str | Path,
                 device: torch.device) -> None:
        # weights.dir/<org>/<repo>: where fetch-weights puts a model repo.
        folders = {repo: Path(weights_dir) / repo for repo in hint.models}
        self.hint, self.params, self.device = hint, params, device
        self.loaded = hint.load(folders, str(device), params)

    def render(self, video_3_T_H_W: torch.Tensor, padding_mask_1_H_W: torch.Tensor) -> torch.Tensor:
        """uint8 ``[C, T, H, W]`` hint of one fitted clip (CPU tensors in, CPU tensor out)."""
        padding = video.padding_of(padding_mask_1_H_W)
        _, _, height, width = video_3_T_H_W.shape
        own_3_T_h_w = video_3_T_H_W[:, :, padding.top:height - padding.bottom,
                                    padding.left:width - padding.right]
        frames_T_h_w_3 = own_3_T_h_w.permute(1, 2, 3, 0).contiguous().numpy()
        hint_T_h_w_C = self.hint.render(self.loaded, frames_T_h_w_3, self.params)
        hint_C_T_h_w = torch.from_numpy(hint_T_h_w_C).permute(3, 0, 1, 2).contiguous()
        return video.pad_planes(hint_C_T_h_w, padding)

    def fill(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """A loader sample (no batch axis) with its hint made."""
        return {**sample, "hint": self.render(sample["video"], sample["padding_mask"])}

    def fill_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """A collated batch with every sample's hint made."""
        hints = [self.render(clip, mask) for clip, mask in zip(batch["video"],
                                                                batch["padding_mask"], strict=True)]
        return {**batch, "hint": torch.stack(hints)}


class FilledBatches:
    """The loader's batches with their online hints made one batch ahead, in a thread, while
    the trainer runs the current step (the model's image processing is CPU work that releases
    the GIL; its network runs on a side stream). The data position reported is that of the
    batch last handed to the trainer, not of the one being filled."""

    def __init__(self, batches: Any, hints: OnlineHints) -> None:
        self.batches, self.hints = batches, hints
        self._position: dict[str, int] = dict(batches.state_dict())
        device = hints.device
        # Off the training step's stream, so the hint's kernels can run beside the step's.
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with ThreadPoolExecutor(1, thread_name_prefix="online-hints") as pool:
            source = iter(self.batches)
            pending = self._submit(pool, source)
            while pending is not None:
                filled, position = pending
                pending = self._submit(pool, source)
                batch = filled.result()
                self._position = position
                yield batch

    def _submit(self, pool: ThreadPoolExecutor, source: Iterator[Mapping[str, Any]]
                ) -> tuple[Future[dict[str, Any]], dict[str, int]] | None:
        batch = next(source, None)
        if batch is None:
            return None
        return pool.submit(self._fill, batch), dict(self.batches.state_dict())

    def _fill(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        if self._stream is None:
            return self.hints.fill_batch(batch)
        with torch.cuda.stream(self._stream):
            filled = self.hints.fill_batch(batch)
        self._stream.synchronize()
        return filled

    def state_dict(self) -> dict[str, int]:
        """The position after the last batch handed to the trainer (what checkpoints record)."""
        return dict(self._position)
