"""The training dataset: ``videos/<stem>.mp4`` paired with ``t5_xxl/<stem>.pickle`` by stem.

One sample = ``num_frames`` consecutive frames of one clip, its control hint, its T5 embedding.
All randomness of a sample comes from ``sample_rng(seed, epoch, index)``, drawn in this order:
the start frame (uniform in ``[0, n - num_frames]``), then the hint generator's ``draw``. So a
sample is a pure function of (seed, epoch, index), whichever worker or rank loads it.

A clip that cannot be used (unreadable video, too few frames, missing or malformed embedding)
raises :class:`BadSampleError`; the loader (:mod:`ctrlpost.data.loader`) skips and counts it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ctrlpost.data import buckets, text, video
from ctrlpost.data.layout import DatasetLayout
from ctrlpost.errors import DataError
from ctrlpost.modalities import ClipInfo, ClipWindow, HintFile, HintFileError, sample_rng

if TYPE_CHECKING:
    import pluggy

    from ctrlpost.recipe import ControlSection, DataSection


class SampleKey(NamedTuple):
    """What the sampler hands the dataset: which clip, in which epoch, and where in the epoch's
    global order it sits. ``next_*`` is the sampler position once this sample is consumed."""

    epoch: int
    clip: int
    position: int
    next_epoch: int
    next_consumed: int


class BadSampleError(DataError):
    """A clip that cannot become a sample; ``path`` is the offending file."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def list_clips(root: str | Path) -> list[str]:
    """Sorted stems of ``<root>/videos/*.mp4`` (the reference lists only ``.mp4``)."""
    return DatasetLayout(Path(root)).clips()


class ClipDataset(Dataset[dict[str, Any]]):
    """Map-style dataset of clips; ``dataset[SampleKey]`` (or ``dataset[index]`` = epoch 0).

    Returned sample (one clip):

    * ``video`` uint8 ``[3, T, H, W]`` and ``hint`` uint8 ``[C_hint, T, H, W]``, both fitted to
      the clip's aspect bucket (resized, reflection-padded); ``hint_key`` names the hint as the
      reference does (e.g. ``control_input_edge``). With ``online_hint`` the hint is computed
      on the rank's device later (:mod:`ctrlpost.engine.online_hints`) and is ``[C_hint, 0, 0,
      0]`` here;
    * ``t5`` float32 ``[512, D]`` zero-padded, ``t5_length`` the real tokens;
    * ``padding_mask`` float32 ``[1, H, W]`` (1 = padded), ``image_size`` float32 ``[4]``;
    * ``fps``, ``frame_start``, ``num_frames``, ``name``, ``index``, ``epoch``, ``bucket``,
      ``hint_draw`` (the generator's JSON-able draw).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        num_frames: int,
        resolution: str,
        generator: Any,
        hint_key: str,
        seed: int,
        text_dim: int | None = None,
        text_tokens: int = text.TEXT_TOKENS,
        hint_file: HintFile | None = None,
        replaces_video: bool = False,
        hint_channels: int = 3,
        online_hint: bool = False,
    ) -> None:
        self.root = Path(root)
        self.layout = DatasetLayout(self.root)
        self.names = self.layout.clips()
        if not self.names:
            raise DataError(f"no clips: {self.layout.videos} has no .mp4 files",
                            hint="run `ctrlpost fetch-data RECIPE` first")
        buckets.bucket_size(resolution, 1, 1)  # an unknown family fails here, not in a worker
        self.num_frames = num_frames
        self.resolution = resolution
        self.generator = generator
        self.hint_key = hint_key
        self.seed = seed
        self.text_dim = text_dim
        self.text_tokens = text_tokens
        self.hint_file = hint_file
        self.replaces_video = replaces_video
        self.hint_channels = hint_channels
        self.online_hint = online_hint

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key: SampleKey | int) -> dict[str, Any]:
        if isinstance(key, tuple):
            return self.load(key.clip, epoch=key.epoch)
        return self.load(int(key), epoch=0)

    def video_path(self, index: int) -> Path:
        """``videos/<stem>.mp4`` of clip ``index``."""
        return self.layout.video(self.names[index])

    def load(self, index: int, *, epoch: int) -> dict[str, Any]:
        """The sample of clip ``index`` in ``epoch``; raises :class:`BadSampleError`."""
        name = self.names[index]
        t5_N_D, t5_length = self._embedding(name)
        rng = sample_rng(self.seed, epoch, index)
        frames_T_H_W_C, start, clip = self._frames(index, rng)
        target_T_H_W_C, hint_T_h_w_C, drawn = self._hint(frames_T_H_W_C, start, clip, rng)
        T, H, W, _ = target_T_H_W_C.shape
        fit = buckets.fit(self.resolution, W, H)
        return {
            "video": video.fit_frames(target_T_H_W_C, fit),
            "hint": self._fit_hint(hint_T_h_w_C, fit),
            "hint_key": self.hint_key,
            "t5": torch.from_numpy(t5_N_D),
            "t5_length": t5_length,
            "padding_mask": video.padding_mask(fit),
            "image_size": torch.tensor(fit.image_size, dtype=torch.float32),
            "fps": clip.fps,
            "frame_start": start,
            "num_frames": T,
            "name": name,
            "index": index,
            "epoch": epoch,
            "bucket": fit.bucket,
            "hint_draw": _jsonable(drawn),
        }

    def _hint(self, frames_T_H_W_C: np.ndarray, start: int, clip: ClipInfo,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, Mapping[str, Any]]:
        """(frames to train on, hint, draw) of a sample, in the way the modality makes hints:
        from a per-clip file, from the frames with a new target, or from the frames (brought
        inside the bucket box first, as the reference does for edge and blur). An online hint
        is made later, on the rank's device: here it is None."""
        if self.online_hint:
            return frames_T_H_W_C, None, {}
        if self.hint_file is not None:
            source = self._hint_source(frames_T_H_W_C, start, clip)
            drawn = self.generator.draw(rng, source)
            return frames_T_H_W_C, self.generator.render(frames_T_H_W_C, drawn, source), drawn
        drawn = self.generator.draw(rng)
        if self.replaces_video:
            target_T_H_W_C = self.generator.target(frames_T_H_W_C, drawn)
            return target_T_H_W_C, self.generator.render(frames_T_H_W_C, drawn), drawn
        fit = buckets.fit(self.resolution, clip.width, clip.height)
        hint = self.generator.render(video.shrink_for_hint(frames_T_H_W_C, fit), drawn)
        return frames_T_H_W_C, hint, drawn

    def _hint_source(self, frames_T_H_W_C: np.ndarray, start: int, clip: ClipInfo) -> Any:
        assert self.hint_file is not None
        path = self.hint_file.path(self.root, clip.name)
        if not path.is_file():
            made_by = f" (made by `{self.hint_file.made_by}`)" if self.hint_file.made_by else ""
            raise BadSampleError(path, f"missing {self.hint_file.folder} file{made_by}")
        try:
            return self.hint_file.read(path, ClipWindow(clip, start, len(frames_T_H_W_C)))
        except HintFileError as exc:
            raise BadSampleError(path, exc.message.removeprefix(f"{path}: ")) from None

    def _fit_hint(self, hint_T_h_w_C: np.ndarray | None, fit: buckets.Fit) -> torch.Tensor:
        """The hint in the bucket; an online hint's place holds no frames (``[C, 0, 0, 0]``)
        until :mod:`ctrlpost.engine.online_hints` fills it."""
        if hint_T_h_w_C is None:
            return torch.empty((self.hint_channels, 0, 0, 0), dtype=torch.uint8)
        return video.fit_frames(hint_T_h_w_C, self._hint_fit(hint_T_h_w_C, fit))

    def _hint_fit(self, hint_T_H_W_C: np.ndarray, fit: buckets.Fit) -> buckets.Fit:
        """The fit of the hint: the video's, unless the hint has a size of its own (an upscale
        crop larger than a small clip), which is then fitted into the same bucket."""
        _, H, W, _ = hint_T_H_W_C.shape
        if (W, H) in {(fit.source_width, fit.source_height), (fit.scaled_width, fit.scaled_height)}:
            return fit
        return buckets.fit(self.resolution, W, H)

    def _embedding(self, name: str) -> tuple[np.ndarray, int]:
        path = self.layout.embedding(name)
        if not path.is_file():
            raise BadSampleError(path, "missing T5 embedding (run `ctrlpost embed RECIPE`)")
        try:
            embedding_L_D = text.read_embedding(path, dim=self.text_dim)
        except DataError as exc:
            raise BadSampleError(path, exc.message.removeprefix(f"{path}: ")) from None
        return text.pad_embedding(embedding_L_D, self.text_tokens), len(embedding_L_D)

    def _frames(self, index: int,
                rng: np.random.Generator) -> tuple[np.ndarray, int, ClipInfo]:
        path = self.video_path(index)
        try:
            with video.VideoReader(path) as reader:
                count = reader.frame_count()
                if count < self.num_frames:
                    raise BadSampleError(path, f"{count} frames, fewer than num_frames="
                                               f"{self.num_frames}")
                start = int(rng.integers(0, count - self.num_frames, endpoint=True))
                frames_T_H_W_C = reader.read(start, self.num_frames)
                info = reader.info
        except video.VideoError as exc:
            raise BadSampleError(path, exc.message.removeprefix(f"{path}: ")) from None
        clip = ClipInfo(name=self.names[index], frame_count=count, width=info.width,
                        height=info.height, fps=info.fps)
        return frames_T_H_W_C, start, clip


def _jsonable(drawn: Mapping[str, Any]) -> dict[str, Any]:
    """The draw with numpy scalars turned into Python numbers (for logs and collation)."""
    def convert(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        return value

    return convert(drawn)


def build_dataset(
    data: DataSection,
    control: ControlSection,
    *,
    seed: int,
    text_dim: int | None = None,
    plugins: pluggy.PluginManager | None = None,
) -> ClipDataset:
    """The dataset of a recipe's ``[data]`` and one ``[[control]]`` section.

    ``seed`` is the job seed; ``text_dim`` (the flavor's T5 width) makes a wrong-width embedding
    a bad sample instead of a shape error deep in the model.
    """
    from ctrlpost.modalities import registry

    modality = registry.get_modality(control.modality, plugins)
    params = registry.validate_params(modality, control.params)
    return ClipDataset(
        data.root,
        num_frames=data.num_frames,
        resolution=data.resolution,
        generator=modality.build_generator(params),
        hint_key=modality.hint_key or f"control_input_{modality.name}",
        seed=seed,
        text_dim=text_dim,
        hint_file=modality.hint_file_for(params),
        replaces_video=modality.replaces_video,
        hint_channels=modality.hint_channels,
        online_hint=modality.online_hint_for(params) is not None,
    )
