"""`fetch-weights` and the models `ctrlpost annotate` runs: planned for the recipe's modality,
downloaded and hash-checked like every other file (from the local fake hub), or made locally as
tiny stand-ins for the tiny flavor."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ctrlpost import recipe as recipes
from ctrlpost.errors import WeightsError
from ctrlpost.modalities import Annotator
from ctrlpost.weights import annotation, catalog
from ctrlpost.weights import fetch as weights
from ctrlpost.weights.download import Retry

REPO = Path(__file__).resolve().parents[2]
DEPTH = REPO / "recipes" / "depth_hdvila.toml"
EDGE = REPO / "recipes" / "edge_hdvila.toml"
DEPTH_MODEL = catalog.DEPTH_ANYTHING_V2_SMALL
FILES = {"config.json": 950, "model.safetensors": 60_000, "preprocessor_config.json": 775}


def _fakehub() -> ModuleType:
    name = "ctrlpost_tests_fakehub"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("fakehub.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def body(name: str) -> bytes:
    return (name.encode() * (FILES[name] // len(name) + 1))[:FILES[name]]


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with _fakehub().FakeHub(tmp_path / "hub") as server:
        for name in FILES:
            server.write(DEPTH_MODEL, name, body(name))
        yield server


def annotation_plan(root: Path) -> weights.WeightsPlan:
    plan = weights.plan_downloads(recipes.load(DEPTH).weights, flavor="7b",
                                  modalities=["depth"], root=root)
    return replace(plan, files=tuple(f for f in plan.files if f.role == annotation.ROLE))


def test_a_depth_recipe_plans_its_annotation_model(tmp_path: Path) -> None:
    plan = weights.plan_downloads(recipes.load(DEPTH).weights, flavor="7b",
                                  modalities=["depth"], root=tmp_path)
    models = [f for f in plan.files if f.role == annotation.ROLE]
    assert [f.path for f in models] == ["config.json", "model.safetensors",
                                        "preprocessor_config.json", "README.md", ".gitattributes"]
    assert {f.repo_id for f in models} == {DEPTH_MODEL}
    assert all(f.dest == tmp_path / DEPTH_MODEL / f.path for f in models)
    assert [f.optional for f in models] == [False, False, False, True, True]
    edge = weights.plan_downloads(recipes.load(EDGE).weights, flavor="7b", modalities=["edge"],
                                  root=tmp_path)
    assert not [f for f in edge.files if f.role == annotation.ROLE] and edge.patterns == ()
    # `--modality depth` on another recipe brings depth's models too
    forced = weights.plan_downloads(recipes.load(EDGE).weights, flavor="7b",
                                    modalities=["depth"], root=tmp_path,
                                    control_from_modalities=True)
    assert {f.repo_id for f in forced.files if f.role == annotation.ROLE} == {DEPTH_MODEL}


def test_fetch_downloads_and_hash_checks_the_model(hub: Any, tmp_path: Path) -> None:
    root = tmp_path / "ck"
    report = weights.fetch(annotation_plan(root), endpoint=hub.url, token=False,
                           retry=Retry(attempts=2, wait_s=0.0))
    assert {o.file.path: o.status for o in report.outcomes} == dict.fromkeys(FILES, "downloaded")
    for name in FILES:  # the absent optional side files are dropped
        assert (root / DEPTH_MODEL / name).read_bytes() == body(name)
    by_path = {o.file.path: o.file for o in report.outcomes}
    assert by_path["model.safetensors"].sha256 and by_path["config.json"].git_sha1
    assert annotation.missing_models(root, [DEPTH_MODEL]) == []
    hub.wrong_body(DEPTH_MODEL, "model.safetensors", times=None)
    (root / DEPTH_MODEL / "model.safetensors").unlink()
    failed = weights.fetch(annotation_plan(root), endpoint=hub.url, token=False,
                           retry=Retry(attempts=2, wait_s=0.0))
    assert [o.file.path for o in failed.failed] == ["model.safetensors"]
    assert annotation.missing_models(root, [DEPTH_MODEL]) == [DEPTH_MODEL]


def test_an_uncatalogued_model_repo_is_fetched_whole(hub: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(catalog.ANNOTATION_MODEL_FILES, DEPTH_MODEL)
    plan = weights.plan_downloads(recipes.load(DEPTH).weights, flavor="7b",
                                  modalities=["depth"], root=tmp_path)
    assert [(p.repo_id, p.patterns, p.purpose) for p in plan.patterns] == [
        (DEPTH_MODEL, ("*",), annotation.ROLE)]
    plan = replace(plan, files=())
    report = weights.fetch(plan, endpoint=hub.url, token=False,
                           retry=Retry(attempts=2, wait_s=0.0))
    assert sorted(o.file.path for o in report.outcomes) == sorted(FILES)
    assert {o.file.role for o in report.outcomes} == {annotation.ROLE}
    assert annotation.folder_ready(tmp_path / DEPTH_MODEL, DEPTH_MODEL)


def test_folder_ready_ignores_partial_downloads(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / DEPTH_MODEL
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert not annotation.folder_ready(folder, DEPTH_MODEL)  # catalogued: all required files
    monkeypatch.delitem(catalog.ANNOTATION_MODEL_FILES, DEPTH_MODEL)
    other = tmp_path / "acme" / "m"
    other.mkdir(parents=True)
    (other / "w.bin.abc.incomplete").write_bytes(b"x")
    (other / ".gitattributes").write_text("")
    assert not annotation.folder_ready(other, "acme/m")
    (other / "w.bin").write_bytes(b"x")
    assert annotation.folder_ready(other, "acme/m")


def fake_annotators(monkeypatch: pytest.MonkeyPatch, *, make_tiny: Any) -> list[str]:
    made: list[str] = []

    def make(repo: str, folder: Path) -> None:
        made.append(repo)
        (folder / "weights.bin").write_bytes(b"tiny")

    annotator = Annotator(models=("acme/a", "acme/b"), load=lambda *a: None,
                          annotate=lambda *a: None, make_tiny=make if make_tiny else None)
    monkeypatch.setattr(annotation, "annotators",
                        lambda modalities: {"fake": annotator} if "fake" in modalities else {})
    return made


def test_make_tiny_models_once_through_a_temp_folder(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    made = fake_annotators(monkeypatch, make_tiny=True)
    first = annotation.make_tiny_models(tmp_path, ["fake"])
    assert first.made == (tmp_path / "acme" / "a", tmp_path / "acme" / "b") and not first.notes
    assert made == ["acme/a", "acme/b"]
    assert sorted(p.name for p in (tmp_path / "acme").iterdir()) == ["a", "b"]  # no temp left
    assert annotation.make_tiny_models(tmp_path, ["fake"]).made == ()  # complete: kept
    assert made == ["acme/a", "acme/b"]
    assert annotation.make_tiny_models(tmp_path, ["edge"]).made == ()


def test_a_foreign_folder_is_not_overwritten(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fake_annotators(monkeypatch, make_tiny=True)
    (tmp_path / "acme" / "a").mkdir(parents=True)
    (tmp_path / "acme" / "a" / "notes.txt.incomplete").write_text("x")
    with pytest.raises(WeightsError, match="not a complete copy") as info:
        annotation.make_tiny_models(tmp_path, ["fake"])
    assert "delete" in (info.value.hint or "")


def test_a_plugin_without_tiny_models_gets_a_note(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fake_annotators(monkeypatch, make_tiny=False)
    result = annotation.make_tiny_models(tmp_path, ["fake"])
    assert result.made == () and len(result.notes) == 2
    assert "makes no tiny stand-in" in result.notes[0] and "acme/a" in result.notes[0]


@pytest.mark.parametrize(("modality", "repo", "fetched", "left"), [
    ("seg", "facebook/sam2-hiera-large", ["config.json", "model.safetensors",
                                          "video_preprocessor_config.json"],
     ["sam2_hiera_large.pt", "README.md"]),
    ("seg", "IDEA-Research/grounding-dino-tiny",
     ["config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json",
      "vocab.txt"], ["pytorch_model.bin"]),
    ("keypoint", "yzd-v/DWPose", ["dw-ll_ucoco_384.onnx", "yolox_l.onnx"],
     ["dw-ll_ucoco_384.pth", "dw-mm_ucoco.pth", "yolox_l.pth"]),
])
def test_only_the_files_a_plugin_loads_are_fetched(hub: Any, tmp_path: Path, modality: str,
                                                   repo: str, fetched: list[str],
                                                   left: list[str]) -> None:
    """A repo that also ships the same weights in other formats: the plugin's ``model_files``
    patterns select what its loader reads, against the hub's real listing."""
    for name in [*fetched, *left]:
        hub.write(repo, name, name.encode() * 10)
    plan = weights.plan_downloads(recipes.load(EDGE).weights, flavor="7b",
                                  modalities=[modality], root=tmp_path)
    patterns = {p.repo_id: p for p in plan.patterns}
    assert patterns[repo].purpose == annotation.ROLE and patterns[repo].patterns != ("*",)
    plan = replace(plan, files=(), patterns=(patterns[repo],))
    report = weights.fetch(plan, endpoint=hub.url, token=False,
                           retry=Retry(attempts=2, wait_s=0.0))
    assert sorted(o.file.path for o in report.outcomes) == sorted(fetched)
    assert sorted(p.name for p in (tmp_path / repo).iterdir()) == sorted(fetched)
