"""A third party's modality, installed as a distribution with an entry point, is picked up."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

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


def install_fake_distribution(site: Path, dist: str, module: str, modality: str) -> None:
    (site / f"{module}.py").write_text(PLUGIN.replace("{name}", modality))
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
    assert report["stages"][1]["summary"]["installed"] == ["blur", "edge", "invert"]


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
