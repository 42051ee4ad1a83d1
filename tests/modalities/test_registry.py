"""Modality discovery: the installed edge/blur plugins and a throwaway third-party one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pluggy
import pytest
from pydantic import BaseModel, ConfigDict, Field

import ctrlpost_blur
import ctrlpost_edge
from ctrlpost.errors import PluginError
from ctrlpost.modalities import Modality, hookimpl, sample_rng
from ctrlpost.modalities.registry import (
    build_plugin_manager,
    get_modality,
    installed_modalities,
    origin_of,
    validate_params,
)


class GrayParams(BaseModel):
    """A third party's params model."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gain: float = Field(default=1.0, description="Multiplier on the grey level.")


@dataclass(frozen=True)
class GrayHints:
    params: GrayParams

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"offset": int(rng.integers(0, 10))}

    def render(self, frames_T_H_W_C: np.ndarray, drawn: Mapping[str, Any]) -> np.ndarray:
        grey = frames_T_H_W_C.mean(axis=-1, keepdims=True) * self.params.gain + drawn["offset"]
        return np.repeat(np.clip(grey, 0, 255).astype(np.uint8), 3, axis=-1)


def fake_modality(name: str) -> Modality:
    return Modality(
        name=name,
        summary=f"{name} for tests",
        params_model=GrayParams,
        build_generator=GrayHints,
        hint_key=f"control_input_{name}",
    )


class FakePlugin:
    """An instance plugin providing the given modality names."""

    def __init__(self, *names: str) -> None:
        self.names = names

    @hookimpl
    def ctrlpost_register_modalities(self) -> list[Modality]:
        return [fake_modality(name) for name in self.names]


def isolated(*plugins: tuple[str, object]) -> pluggy.PluginManager:
    manager = build_plugin_manager(load_entrypoints=False)
    for name, plugin in plugins:
        manager.register(plugin, name=name)
    return manager


def test_installed_entry_points_give_exactly_edge_and_blur() -> None:
    assert list(installed_modalities()) == ["blur", "depth", "edge", "keypoint", "seg", "upscale"]
    assert get_modality("edge") is ctrlpost_edge.EDGE
    assert get_modality("blur") is ctrlpost_blur.BLUR
    assert origin_of("edge").startswith("ctrlpost-edge ")
    assert origin_of("blur").startswith("ctrlpost-blur ")


def test_plugin_modules_register_like_third_parties() -> None:
    manager = isolated(("edge", ctrlpost_edge), ("blur", ctrlpost_blur))
    assert list(installed_modalities(manager)) == ["blur", "edge"]


def test_modalities_are_sorted_by_name_not_registration_order() -> None:
    manager = isolated(
        ("z", FakePlugin("zeta")), ("a", FakePlugin("alpha", "mu")), ("m", FakePlugin("beta"))
    )
    assert list(installed_modalities(manager)) == ["alpha", "beta", "mu", "zeta"]


def test_duplicate_names_fail_naming_both_providers() -> None:
    manager = isolated(("first-dist", FakePlugin("gray")), ("second-dist", FakePlugin("gray")))
    with pytest.raises(PluginError, match="'gray' is provided twice") as info:
        installed_modalities(manager)
    assert "'first-dist'" in str(info.value) and "'second-dist'" in str(info.value)
    assert info.value.hint and "uninstall" in info.value.hint


def test_duplicate_of_an_installed_modality_names_its_distribution() -> None:
    manager = build_plugin_manager()
    manager.register(FakePlugin("edge"), name="impostor")
    with pytest.raises(PluginError) as info:
        installed_modalities(manager)
    assert "ctrlpost-edge" in str(info.value) and "'impostor'" in str(info.value)


INSTALLED = "blur, depth, edge, keypoint, seg, upscale"  # the plugins of this repository


def test_unknown_name_lists_installed_and_suggests() -> None:
    with pytest.raises(
        PluginError, match=rf"unknown modality 'egde' \(installed: {INSTALLED}\)"
    ) as info:
        get_modality("egde")
    assert info.value.hint == "did you mean 'edge'?"
    with pytest.raises(PluginError, match=f"installed: {INSTALLED}") as info:
        get_modality("lidar")
    assert info.value.hint == "install a plugin that provides it"


def test_unknown_name_with_nothing_installed() -> None:
    with pytest.raises(PluginError, match=r"installed: none"):
        get_modality("edge", isolated())


def test_third_party_modality_works_end_to_end() -> None:
    manager = isolated(("gray-plugin", FakePlugin("gray")))
    modality = get_modality("gray", manager)
    params = validate_params(modality, {"gain": 0.5})
    frames = np.full((2, 4, 6, 3), 100, dtype=np.uint8)
    hint = modality.make_hint(frames, params, sample_rng(0, 0, 0))
    offset = int(sample_rng(0, 0, 0).integers(0, 10))
    assert hint.shape == (2, 4, 6, 3)
    assert (hint == 50 + offset).all()
    with pytest.raises(PluginError, match=r"gray\.colour: Extra inputs are not permitted"):
        validate_params(modality, {"colour": 1})


def test_module_plugin_is_registered_as_a_module() -> None:
    # Entry points name modules: the hook must be a module-level function, not a method.
    for module in (ctrlpost_edge, ctrlpost_blur):
        manager = isolated((module.__name__, module))
        assert manager.is_registered(module)
        assert len(manager.hook.ctrlpost_register_modalities()) == 1
