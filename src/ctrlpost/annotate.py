"""`ctrlpost annotate`: a modality's per-clip hint files, made by its plugin's models.

A modality whose hints come from per-clip files (``HintFile``) may declare how to make them for
real clips (``HintFile.annotator``: hub models, ``load``, ``annotate``). For each clip of the
dataset (``videos/<clip>.mp4``, sorted) this decodes every frame and has the plugin write
``<folder>/<clip><suffix>`` in exactly the format its reader reads. The plugin owns the producer;
this module owns the loop:

- **Resumable.** A clip whose file exists and passes the plugin's check (``HintFile.check``:
  complete, and matching the clip's frame count and size) is skipped, and the model is not even
  loaded when every clip is. A file just written is checked the same way and removed if it
  fails, so the next run makes it again.
- **Atomic.** The plugin writes under a temp name (``.*.tmp``) and renames it into place; the
  temp files of a killed run are swept when the next one starts. The dataset folder's lock (the
  one `fetch-data` holds) is held throughout: two writers never meet.
- **Failures are per clip.** A clip that cannot be decoded or annotated is reported (exit 1,
  named); the others are still written. A full or read-only disk stops the run (exit 2).

The next clip is decoded in a thread while the model runs on the current one (OpenCV releases
the GIL while it decodes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from ctrlpost.data.layout import DatasetLayout, exclusive
from ctrlpost.errors import CtrlpostError, DataError, PluginError, WeightsError
from ctrlpost.files import remove_temps
from ctrlpost.modalities import Annotator, ClipInfo, HintFile, registry
from ctrlpost.weights.annotation import missing_models, model_folder

if TYPE_CHECKING:
    from ctrlpost.recipe import ControlSection

Status = Literal["written", "skipped", "failed"]


@dataclass(frozen=True)
class AnnotationTarget:
    """The modality to annotate for: its hint file, annotator and validated parameters."""

    modality: str
    hint_file: HintFile
    annotator: Annotator
    params: Any
    in_recipe: bool = True  # one of the recipe's [[control]] modalities

    def fetch_command(self, recipe: str) -> str:
        """The `fetch-weights` command that brings this modality's models."""
        extra = "" if self.in_recipe else f" --modality {self.modality}"
        return f"ctrlpost fetch-weights {recipe}{extra}"


def annotation_target(controls: Sequence[ControlSection],
                      modality: str | None = None) -> AnnotationTarget:
    """What to annotate for: ``modality`` (its parameters from the recipe's control of that
    name, else its defaults), or the recipe's own file-based control modality. A modality
    without an annotator is an input error naming those that have one."""
    if modality is None:
        names = list(dict.fromkeys(c.modality for c in controls))
        with_files = [n for n in names if registry.get_modality(n).hint_file is not None]
        if len(with_files) > 1:
            raise PluginError(f"the recipe has several modalities with hint files: "
                              f"{', '.join(with_files)}", hint="choose one with --modality")
        modality = (with_files or names)[0]
    found = registry.get_modality(modality)
    hint_file = found.hint_file
    if hint_file is None or hint_file.annotator is None:
        what = ("computes its hints from the clip's frames: it has no files to annotate"
                if hint_file is None else
                f"reads {hint_file.folder}/<clip>{hint_file.suffix} files but its plugin has "
                "no annotator: make them as its README says")
        raise PluginError(f"modality {modality!r} {what}",
                          hint=f"modalities `ctrlpost annotate` makes files for: "
                          f"{', '.join(annotated_modalities()) or 'none installed'}")
    own = [c.params for c in controls if c.modality == modality]
    return AnnotationTarget(modality, hint_file, hint_file.annotator,
                            registry.validate_params(found, own[0] if own else {}),
                            in_recipe=bool(own))


def annotated_modalities() -> list[str]:
    """Installed modalities whose plugin makes their hint files (`annotate` accepts them)."""
    return [name for name, m in registry.installed_modalities().items()
            if m.hint_file is not None and m.hint_file.annotator is not None]


def model_folders(target: AnnotationTarget, weights_dir: str | Path, *,
                  recipe: str = "RECIPE") -> dict[str, Path]:
    """The local folder of each model the annotator runs; a missing one names the fix."""
    repos = target.annotator.models
    missing = missing_models(weights_dir, repos)
    if missing:
        folders = ", ".join(str(model_folder(weights_dir, repo)) for repo in missing)
        raise WeightsError(f"{target.modality} annotation model(s) not in place: {folders}",
                           hint=f"run `{target.fetch_command(recipe)}`")
    return {repo: model_folder(weights_dir, repo) for repo in repos}


def resolve_device(name: str) -> str:
    """``auto`` (CUDA when there is one, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise CtrlpostError(f"device {name!r}: CUDA is not available here",
                                hint="use --device cpu (slow) or run on a GPU machine")
        return name
    raise CtrlpostError(f"unknown device {name!r}", hint="choose auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class ClipOutcome:
    """What happened to one clip's hint file."""

    name: str
    status: Status
    detail: str = ""
    frames: int = 0
    seconds: float = 0.0


class AnnotateFailed(DataError):
    """Some clips got no file (a run failure, exit 1): each is named; a rerun retries them."""

    exit_code = 1


@dataclass(frozen=True)
class AnnotateResult:
    """The outcome of :func:`annotate_dataset`, clip by clip."""

    root: Path
    modality: str
    folder: Path
    device: str
    outcomes: tuple[ClipOutcome, ...]
    seconds: float

    def count(self, status: Status) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> tuple[ClipOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "failed")

    @property
    def frames_written(self) -> int:
        return sum(o.frames for o in self.outcomes if o.status == "written")

    def raise_for_failures(self, rerun: str = "ctrlpost annotate RECIPE") -> None:
        """:class:`AnnotateFailed` naming the clips that failed and why, if any did."""
        if self.failed:
            shown = "; ".join(f"{o.name} ({o.detail})" for o in self.failed[:5])
            more = f"; and {len(self.failed) - 5} more" if len(self.failed) > 5 else ""
            raise AnnotateFailed(f"{len(self.failed)} of {len(self.outcomes)} clips got no "
                                 f"{self.modality} file: {shown}{more}",
                                 hint=f"rerun `{rerun}`: it keeps every file written and "
                                 "retries only these")


class AnnotateProgress(Protocol):
    """Told the number of clips, then each clip's outcome as it settles."""

    def start(self, total: int) -> None: ...

    def clip_done(self, outcome: ClipOutcome) -> None: ...


def annotate_dataset(root: str | Path, target: AnnotationTarget, *, weights_dir: str | Path,
                     device: str = "auto", batch_size: int = 8, recipe: str = "RECIPE",
                     progress: AnnotateProgress | None = None) -> AnnotateResult:
    """Have ``target``'s hint file for every clip of the dataset at ``root`` (see the module
    docstring). Bad input (no clips, missing models, a device that is not there) raises before
    anything is written; failed clips do not raise."""
    started = time.monotonic()
    layout = DatasetLayout(Path(root))
    names = layout.clips() if layout.videos.is_dir() else []
    if not names:
        raise DataError(f"no clips in {layout.videos}", hint=f"run `ctrlpost fetch-data "
                        f"{recipe}` first, or set [data].root to your dataset")
    folders = model_folders(target, weights_dir, recipe=recipe)
    device = resolve_device(device)
    folder = layout.root / target.hint_file.folder
    outcomes: dict[str, ClipOutcome] = {}
    with exclusive(layout.root):
        folder.mkdir(parents=True, exist_ok=True)
        remove_temps(folder)
        if progress is not None:
            progress.start(len(names))
        todo: list[tuple[str, ClipInfo]] = []
        for name in names:
            settled = _probe(layout, target.hint_file, name, todo)
            if settled is not None:
                outcomes[name] = _report(settled, progress)
        if todo:
            loaded = _load(target, folders, device, recipe=recipe)
            for outcome in _annotate(layout, target, loaded, todo, batch_size=batch_size):
                outcomes[outcome.name] = _report(outcome, progress)
    return AnnotateResult(root=layout.root, modality=target.modality, folder=folder,
                          device=device, outcomes=tuple(outcomes[n] for n in names),
                          seconds=time.monotonic() - started)


def _load(target: AnnotationTarget, folders: dict[str, Path], device: str, *,
          recipe: str) -> Any:
    """The plugin's loaded models; weights that do not load are named with the fix."""
    try:
        return target.annotator.load(folders, device, target.params)
    except (OSError, ValueError, KeyError) as exc:  # what from_pretrained raises for bad files
        first = (str(exc).strip().splitlines() or [""])[0]
        raise WeightsError(f"the {target.modality} annotation model(s) in "
                           f"{', '.join(map(str, folders.values()))} do not load: "
                           f"{type(exc).__name__}: {first}",
                           hint=f"delete them and run `{target.fetch_command(recipe)}`") from exc


def _report(outcome: ClipOutcome, progress: AnnotateProgress | None) -> ClipOutcome:
    if progress is not None:
        progress.clip_done(outcome)
    return outcome


def _probe(layout: DatasetLayout, hint_file: HintFile, name: str,
             todo: list[tuple[str, ClipInfo]]) -> ClipOutcome | None:
    """The clip's outcome when nothing is to be written (its file is good, or its video cannot
    be read); else None, and the clip is added to ``todo``."""
    from ctrlpost.data.video import VideoError, VideoReader

    try:
        with VideoReader(layout.video(name)) as reader:
            clip = ClipInfo(name=name, frame_count=reader.frame_count(), width=reader.info.width,
                            height=reader.info.height, fps=reader.info.fps)
    except VideoError as exc:
        return ClipOutcome(name, "failed", exc.message.removeprefix(f"{layout.video(name)}: "))
    path = hint_file.path(layout.root, name)
    if path.is_file() and _problem(hint_file, path, clip) is None:
        return ClipOutcome(name, "skipped", frames=clip.frame_count)
    todo.append((name, clip))
    return None


def _problem(hint_file: HintFile, path: Path, clip: ClipInfo) -> str | None:
    try:
        return hint_file.check(path, clip)
    except Exception as exc:  # a plugin's check failing is a finding, not a crash
        return f"cannot be checked: {type(exc).__name__}: {exc}"


def _annotate(layout: DatasetLayout, target: AnnotationTarget, loaded: Any,
              todo: list[tuple[str, ClipInfo]], *, batch_size: int) -> Iterator[ClipOutcome]:
    """Write the file of every clip of ``todo``, decoding the next clip while this one runs."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        decoding: Future[tuple[np.ndarray, float]] = pool.submit(_decode, layout, todo[0][1])
        for index, (name, clip) in enumerate(todo):
            began = time.monotonic()
            current = decoding
            if index + 1 < len(todo):
                decoding = pool.submit(_decode, layout, todo[index + 1][1])
            try:
                frames_T_H_W_C, fps = current.result()
            except CtrlpostError as exc:
                yield ClipOutcome(name, "failed", exc.message.removeprefix(
                    f"{layout.video(name)}: "))
                continue
            outcome = _write_one(layout, target, loaded, clip, frames_T_H_W_C, fps,
                                 batch_size=batch_size)
            yield ClipOutcome(outcome.name, outcome.status, outcome.detail, outcome.frames,
                              time.monotonic() - began)


def _decode(layout: DatasetLayout, clip: ClipInfo) -> tuple[np.ndarray, float]:
    """Every frame of the clip, uint8 RGB ``[T, H, W, 3]``, and its fps."""
    from ctrlpost.data.video import VideoReader

    with VideoReader(layout.video(clip.name)) as reader:
        return reader.read(0, clip.frame_count), reader.info.fps


def _write_one(layout: DatasetLayout, target: AnnotationTarget, loaded: Any, clip: ClipInfo,
               frames_T_H_W_C: np.ndarray, fps: float, *, batch_size: int) -> ClipOutcome:
    """Have the plugin write the clip's file, then check it as `verify` will."""
    path = target.hint_file.path(layout.root, clip.name)
    try:
        target.annotator.annotate(loaded, frames_T_H_W_C, fps, path, batch_size)
    except OSError:
        raise  # a full or read-only disk stops the run: the CLI names the path and the fix
    except Exception as exc:  # the plugin's failure on this clip; the others go on
        first = (str(exc).strip().splitlines() or [""])[0]
        return ClipOutcome(clip.name, "failed", f"{type(exc).__name__}: {first}")
    problem = _problem(target.hint_file, path, clip) if path.is_file() else "no file written"
    if problem is not None:
        path.unlink(missing_ok=True)
        return ClipOutcome(clip.name, "failed", f"the written file fails its check: {problem}")
    return ClipOutcome(clip.name, "written", frames=clip.frame_count)

