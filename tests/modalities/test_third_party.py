"""A third party's modality, data source and flavor, installed as a distribution with an entry
point, are picked up everywhere their built-in counterparts are: recipe, completion, verify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = '''
from pydantic import BaseModel, ConfigDict
from ctrlpost.modalities import Modality, hookimpl


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    strength: float = 1.0


class Invert:
    def __init__(self, params):
        self.params = params

    def draw(self, rng):
        return {}

    def render(self, frames, drawn):
        return 255 - frames


@hookimpl
def ctrlpost_register_modalities():
    return [Modality(name="{name}", summary="inverted frames", params_model=Params,
                     build_generator=Invert)]
'''


def install_fake_distribution(site: Path, dist: str, module: str, modality: str,
                              plugin: str = PLUGIN) -> None:
    (site / f"{module}.py").write_text(plugin.replace("{name}", modality))
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[ctrlpost]\n{modality} = {module}\n")


def verify(exe: list[str], recipe: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([*exe, "verify", str(recipe), "--json", "--stages", "recipe,plugins"],
                          capture_output=True, text=True, env=env, timeout=120)


def write_recipe(tmp_path: Path, modality: str) -> Path:
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[job]\nname = "x"\n[[control]]\nmodality = "{modality}"\n'
                      "[control.params]\nstrength = 0.5\n[train]\nsteps = 1\n")
    return recipe


def test_verify_accepts_an_entry_point_modality(tmp_path: Path, ctrlpost_exe: list[str]) -> None:
    site = tmp_path / "site"
    site.mkdir()
    install_fake_distribution(site, "acme_invert", "acme_invert", "invert")
    result = verify(ctrlpost_exe, write_recipe(tmp_path, "invert"), site)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["stages"][1]["summary"]["installed"] == [
        "blur", "depth", "edge", "invert", "keypoint", "seg", "upscale"]


def test_duplicate_names_fail_naming_both_distributions(
    tmp_path: Path, ctrlpost_exe: list[str]
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    install_fake_distribution(site, "acme_edge", "acme_edge", "edge")
    result = verify(ctrlpost_exe, write_recipe(tmp_path, "edge"), site)
    assert result.returncode == 2
    (problem,) = json.loads(result.stdout)["problems"]
    assert "modality 'edge' is provided twice" in problem["message"]
    assert "ctrlpost-edge 0.1.0" in problem["message"] and "acme_edge 0.1" in problem["message"]


# One plugin module registering one of each extension point: each addition is one hook, and
# nothing in ctrlpost names it.
EXTENSIONS = PLUGIN.replace(
    "from ctrlpost.modalities import Modality, hookimpl",
    "from ctrlpost.modalities import DataSource, HubRelease, Modality, ModelFlavor, hookimpl",
).replace("build_generator=Invert)", 'build_generator=Invert,\n'
          '                     released_control_file="invert_control.pt")') + '''

def plan_drone(request):
    from ctrlpost.data.fetch.plan import Plan

    return Plan(units=())


def build_wide():
    import dataclasses

    from ctrlpost.models.args import get_flavor

    return dataclasses.replace(get_flavor("tiny"), name="wide")


@hookimpl
def ctrlpost_register_data_sources():
    return [DataSource("drone", "acme's drone footage", plan_drone)]


@hookimpl
def ctrlpost_register_flavors():
    return [ModelFlavor("wide", "the tiny flavor, released by acme", build_wide,
                        release=HubRelease("acme/wide-transfer"))]
'''


@pytest.fixture
def acme(tmp_path: Path) -> Path:
    """A site folder with the acme_drone distribution: source 'drone', flavor 'wide' and
    modality 'invert' (released as acme/wide-transfer/invert_control.pt)."""
    site = tmp_path / "site"
    site.mkdir()
    install_fake_distribution(site, "acme_drone", "acme_drone", "invert", EXTENSIONS)
    return site


def extended_recipe(tmp_path: Path, source: str = "drone", flavor: str = "wide",
                    modality: str = "invert") -> Path:
    recipe = write_recipe(tmp_path, modality)
    recipe.write_text(recipe.read_text() + f'[data]\nsource = "{source}"\n'
                      f'[model]\nflavor = "{flavor}"\n')
    return recipe


def run_with(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ctrlpost", *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(site), **env},
                          timeout=120)


def test_verify_accepts_a_plugins_source_flavor_and_modality(
        tmp_path: Path, acme: Path, ctrlpost_exe: list[str]) -> None:
    result = verify(ctrlpost_exe, extended_recipe(tmp_path), acme)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert [s["status"] for s in report["stages"]] == ["ok", "ok"]
    plugins = report["stages"][1]["summary"]
    assert "invert" in plugins["installed"] and plugins["controls"] == ["invert"]
    assert plugins["data_source"] == "drone (acme_drone 0.1)"
    assert plugins["flavor"] == "wide (acme_drone 0.1)"


def test_typos_of_a_plugins_names_get_a_did_you_mean(
        tmp_path: Path, acme: Path, ctrlpost_exe: list[str]) -> None:
    result = verify(ctrlpost_exe, extended_recipe(tmp_path, source="drnoe", flavor="wdie"), acme)
    assert result.returncode == 2
    problems = {p["path"]: p["message"] for p in json.loads(result.stdout)["problems"]}
    assert set(problems) == {"data.source", "model.flavor"}
    assert problems["data.source"] == ("Input should be 'drone', 'hdvila', 'local' or 'synthetic' "
                                       "(got 'drnoe'); did you mean 'drone'?")
    assert problems["model.flavor"].endswith("(got 'wdie'); did you mean 'wide'?")
    assert "'wide'" in problems["model.flavor"] and "'tiny'" in problems["model.flavor"]
    result = verify(ctrlpost_exe, extended_recipe(tmp_path, modality="invret"), acme)
    (problem,) = json.loads(result.stdout)["problems"]
    assert problem["path"] == "control[0].modality"
    assert "did you mean 'invert'?" in problem["message"]


def test_completion_and_help_offer_a_plugins_names(tmp_path: Path, acme: Path) -> None:
    def complete(words: str) -> list[str]:
        cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
        return run_with(acme, COMP_WORDS=words, COMP_CWORD=cword,
                        _CTRLPOST_COMPLETE="complete_bash").stdout.split()

    assert "drone" in complete("ctrlpost fetch-data r.toml --source ")
    assert complete("ctrlpost fetch-data r.toml --source dr") == ["drone"]
    assert "invert" in complete("ctrlpost modalities ")
    assert complete("ctrlpost verify r.toml --set model.flavor=w") == ["model.flavor=wide"]
    assert complete("ctrlpost verify r.toml --set data.source=d") == ["data.source=drone"]
    # Released in the wide flavor's repo: fetch-weights offers it next to the 7B's files.
    assert "invert" in complete("ctrlpost fetch-weights r.toml --modality ")
    shown = " ".join(run_with(acme, "fetch-data", "--help", COLUMNS="200").stdout.split())
    assert ("Where the clips come from: drone, hdvila, local, synthetic; default: "
            "[data].source.") in shown


def test_fetch_weights_takes_the_modalitys_file_from_the_flavors_release(
        tmp_path: Path, acme: Path) -> None:
    recipe = extended_recipe(tmp_path)
    result = run_with(acme, "fetch-weights", str(recipe), "--dry-run", "--json",
                      HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr
    control = [f for f in json.loads(result.stdout)["files"] if f["role"] == "control"]
    assert [(f["repo"], f["file"]) for f in control] == [("acme/wide-transfer",
                                                          "invert_control.pt")]
