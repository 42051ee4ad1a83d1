"""The models `ctrlpost annotate` runs, as `fetch-weights` sees them.

A modality whose hint file has an annotator (``HintFile.annotator``) names the hub repos of its
models (``Annotator.models``). For a recipe of that modality `fetch-weights` has each repo in
``<weights.dir>/<org>/<repo>/``: the files the catalog lists for it
(:data:`~ctrlpost.weights.catalog.ANNOTATION_MODEL_FILES`), else the files its plugin says its
loader reads (``Annotator.model_files``), else the whole repo as the hub lists it, hash-checked
like every other file. A flavor that makes its weights locally (``tiny``) gets
small random stand-ins from the plugin instead (``Annotator.make_tiny``), in the same folders and
format, so `annotate` loads them exactly as it loads the released models.

No torch here: this module is read on every `fetch-weights` and by `annotate` before any model.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ctrlpost.errors import WeightsError
from ctrlpost.files import commit_folder, temp_path
from ctrlpost.modalities import Annotator, registry
from ctrlpost.weights import catalog

ROLE = "annotation model"


def annotators(modalities: Sequence[str]) -> dict[str, Annotator]:
    """The annotator of each named modality that has one, by modality, in the order given."""
    found: dict[str, Annotator] = {}
    for name in dict.fromkeys(modalities):
        hint_file = registry.get_modality(name).hint_file
        if hint_file is not None and hint_file.annotator is not None:
            found[name] = hint_file.annotator
    return found


def annotation_repos(modalities: Sequence[str]) -> list[str]:
    """The hub repos the annotators of ``modalities`` run, each once, in order."""
    return list(dict.fromkeys(repo for annotator in annotators(modalities).values()
                              for repo in annotator.models))


def repo_patterns(modalities: Sequence[str], repo_id: str) -> tuple[str, ...]:
    """The files of ``repo_id`` the annotators of ``modalities`` read (fnmatch patterns);
    ``("*",)``: the whole repo."""
    for annotator in annotators(modalities).values():
        if repo_id in annotator.model_files:
            return tuple(annotator.model_files[repo_id])
    return ("*",)


def model_folder(root: str | Path, repo_id: str) -> Path:
    """``<root>/<org>/<repo>``: where `fetch-weights` puts a model repo."""
    return Path(root) / repo_id


def folder_ready(folder: Path, repo_id: str) -> bool:
    """Whether ``folder`` holds the repo: every required file the catalog lists for it, else at
    least one finished file (downloads and tiny stand-ins appear under their names only when
    complete)."""
    known = catalog.annotation_model_files(repo_id)
    if known is not None:
        return all((folder / f.path).is_file() for f in known if not f.optional)
    return folder.is_dir() and any(
        p.is_file() and not p.name.startswith(".") and not p.name.endswith(".incomplete")
        for p in folder.rglob("*"))


def missing_models(root: str | Path, repos: Sequence[str]) -> list[str]:
    """The repos of ``repos`` whose folder under ``root`` is not ready."""
    return [repo for repo in repos if not folder_ready(model_folder(root, repo), repo)]


@dataclass(frozen=True)
class TinyModels:
    """What :func:`make_tiny_models` did: folders made, and repos it could not make."""

    made: tuple[Path, ...]
    notes: tuple[str, ...] = ()


def make_tiny_models(root: str | Path, modalities: Sequence[str]) -> TinyModels:
    """Have a small random stand-in of every annotation model of ``modalities`` under ``root``,
    made by its plugin (``Annotator.make_tiny``) through a temp folder renamed into place;
    folders already complete are kept."""
    made: list[Path] = []
    notes: list[str] = []
    for name, annotator in annotators(modalities).items():
        for repo in annotator.models:
            target = model_folder(root, repo)
            if folder_ready(target, repo):
                continue
            if annotator.make_tiny is None:
                notes.append(f"{repo}: the {name} plugin makes no tiny stand-in; `ctrlpost "
                             f"annotate` needs the released model in {target}")
                continue
            if _make(target, repo, annotator):
                made.append(target)
    return TinyModels(tuple(made), tuple(notes))


def _make(target: Path, repo: str, annotator: Annotator) -> bool:
    assert annotator.make_tiny is not None
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise WeightsError(f"{target} exists but is not a complete copy of {repo}",
                           hint=f"delete {target} and run `ctrlpost fetch-weights` again")
    temp = temp_path(target)
    temp.mkdir(parents=True)
    try:
        annotator.make_tiny(repo, temp)
        if not folder_ready(temp, repo):
            raise WeightsError(f"the tiny {repo} its plugin made lacks files its loader reads",
                               hint="report it to the plugin's authors")
        try:
            commit_folder(temp, target)  # replaces an empty folder; fails on a full one
        except OSError:
            if not folder_ready(target, repo):
                raise
            return False  # another process made it first
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return True
