"""Data sources and model flavors are registries like modalities: ctrlpost's own come through
the same hooks as a third party's, and everything that names them reads the registry."""

from __future__ import annotations

import re
from typing import Any

import pluggy
import pytest

from ctrlpost import recipe as recipes
from ctrlpost.data.fetch import runner
from ctrlpost.data.fetch.plan import Plan
from ctrlpost.errors import PluginError
from ctrlpost.modalities import (
    DataSource,
    FetchRequest,
    HubRelease,
    Modality,
    ModelFlavor,
    hookimpl,
    registry,
)
from ctrlpost.recipe import RecipeInvalid
from ctrlpost.weights import catalog

MINIMAL = {"job": {"name": "x"}, "control": [{"modality": "edge"}], "train": {"steps": 1}}


class Extensions:
    """An instance plugin registering the data sources and flavors it is given."""

    def __init__(self, sources: tuple[DataSource, ...] = (),
                 flavors: tuple[ModelFlavor, ...] = (), modalities: tuple[Any, ...] = ()) -> None:
        self.sources, self.flavors, self.modalities = sources, flavors, modalities

    @hookimpl
    def ctrlpost_register_data_sources(self) -> list[DataSource]:
        return list(self.sources)

    @hookimpl
    def ctrlpost_register_flavors(self) -> list[ModelFlavor]:
        return list(self.flavors)

    @hookimpl
    def ctrlpost_register_modalities(self) -> list[Any]:
        return list(self.modalities)


def source(name: str, planned: list[FetchRequest] | None = None) -> DataSource:
    def plan(request: FetchRequest) -> Plan:
        if planned is not None:
            planned.append(request)
        return Plan(units=())

    return DataSource(name, f"{name} for tests", plan)


def manager(*plugins: tuple[str, object], entry_points: bool = False) -> pluggy.PluginManager:
    built = registry.build_plugin_manager(load_entrypoints=entry_points)
    for name, plugin in plugins:
        built.register(plugin, name=name)
    return built


def test_builtins_are_registered_through_the_same_hooks() -> None:
    isolated = manager()
    assert list(registry.installed_data_sources(isolated)) == ["hdvila", "local", "synthetic"]
    assert list(registry.installed_flavors(isolated)) == ["7b", "tiny"]
    assert registry.origin_of("local", isolated, "data source") == "ctrlpost"
    seven, tiny = registry.get_flavor("7b", isolated), registry.get_flavor("tiny", isolated)
    assert seven.release == HubRelease(catalog.TRANSFER_7B) and seven.make_weights is None
    assert tiny.release is None and tiny.make_weights is not None
    assert registry.installed_modalities(isolated) == {}  # modalities come from plugins only
    bare = registry.build_plugin_manager(load_entrypoints=False, builtins=False)
    assert registry.installed_data_sources(bare) == {} and registry.installed_flavors(bare) == {}


def test_a_name_registered_twice_names_both_providers() -> None:
    twice = manager(("acme 1.0/a", Extensions(sources=(source("local"),))))
    with pytest.raises(PluginError, match=r"data source 'local' is provided twice: by ctrlpost "
                                          r"and by acme 1.0"):
        registry.installed_data_sources(twice)
    wide = ModelFlavor("wide", "", lambda: None)  # type: ignore[arg-type,return-value]
    clash = manager(("a", Extensions(flavors=(wide,))), ("b", Extensions(flavors=(wide,))))
    with pytest.raises(PluginError, match="flavor 'wide' is provided twice"):
        registry.get_flavor("wide", clash)


def test_unknown_names_list_the_registered_ones() -> None:
    with pytest.raises(PluginError, match=r"unknown data source 'hdvla' \(installed: hdvila, "
                                          r"local, synthetic\)") as info:
        registry.get_data_source("hdvla", manager())
    assert info.value.hint == "did you mean 'hdvila'?"


def test_a_hook_returning_the_wrong_descriptor_is_named() -> None:
    wrong = manager(("acme 1.0/a", Extensions(sources=("drone",))))  # type: ignore[arg-type]
    expected = ("acme 1.0 returned str from ctrlpost_register_data_sources, expected "
                "ctrlpost.modalities.DataSource")
    with pytest.raises(PluginError, match=re.escape(expected)):
        registry.installed_data_sources(wrong)


def test_a_flavor_has_a_release_or_makes_its_weights_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        ModelFlavor("x", "", lambda: None, release=HubRelease("a/b"),  # type: ignore[arg-type,return-value]
                    make_weights=lambda weights: None)


def test_plugin_distributions_are_those_that_registered_something() -> None:
    found = registry.plugin_distributions(manager(entry_points=True))
    assert {"ctrlpost", "ctrlpost-blur", "ctrlpost-edge"} <= set(found)
    by_hand = manager(("hand-made", Extensions(sources=(source("drone"),))))
    assert registry.plugin_distributions(by_hand) == ["ctrlpost"]
    silent = manager(("quiet 2.0/q", Extensions()))
    assert "quiet" not in registry.plugin_distributions(silent)


def test_fetch_data_dispatches_through_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    planned: list[FetchRequest] = []
    extended = manager(("acme 1.0/a", Extensions(sources=(source("drone", planned),))),
                       entry_points=True)
    monkeypatch.setattr(registry, "plugin_manager", lambda: extended)
    data = recipes.DataSection.model_validate({"source": "drone", "root": "ds"})
    plan = runner.plan_source(data, seed=7, num_videos=3)
    assert plan.units == ()
    (request,) = planned
    assert (request.data, request.seed, request.num_videos) == (data, 7, 3)


def test_the_recipe_takes_any_registered_name(monkeypatch: pytest.MonkeyPatch) -> None:
    wide = ModelFlavor("wide", "", lambda: None)  # type: ignore[arg-type,return-value]
    extended = manager(("acme 1.0/a", Extensions(sources=(source("drone"),), flavors=(wide,))),
                       entry_points=True)
    monkeypatch.setattr(registry, "plugin_manager", lambda: extended)
    rec = recipes.validate({**MINIMAL, "data": {"source": "drone"}, "model": {"flavor": "wide"}})
    assert (rec.data.source, rec.model.flavor) == ("drone", "wide")
    with pytest.raises(RecipeInvalid) as info:
        recipes.validate({**MINIMAL, "model": {"flavor": "Wide"}})
    (problem,) = info.value.problems
    assert (problem.path, problem.message) == (
        "model.flavor", "Input should be '7b', 'tiny' or 'wide' (got 'Wide'); did you mean 'wide'?")


def test_more_controls_than_training_takes_is_one_line_at_validation() -> None:
    two = {**MINIMAL, "control": [{"modality": "edge"}, {"modality": "blur"}]}
    with pytest.raises(RecipeInvalid) as info:
        recipes.validate(two)
    (problem,) = info.value.problems
    assert problem.path == "control"
    assert problem.message == ("2 [[control]] entries, but training builds one control branch per "
                               "run: keep one and train each modality in its own recipe")


def test_released_control_files_are_named_by_the_modality_that_claims_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ctrlpost_edge

    gray = Modality(name="gray", summary="", params_model=ctrlpost_edge.EdgeParams,
                    build_generator=ctrlpost_edge.build_generator,
                    released_control_file="depth_control.pt")
    extended = manager(("edge", ctrlpost_edge), ("acme 1.0/a", Extensions(modalities=(gray,))))
    monkeypatch.setattr(registry, "plugin_manager", lambda: extended)
    released = catalog.released_controls()
    # Claimed files go by the claiming modality's name; the others by the release's own.
    assert {name: f.path for name, f in released.items()} == {
        "edge": "edge_control.pt", "gray": "depth_control.pt", "keypoint": "keypoint_control.pt",
        "seg": "seg_control.pt", "vis": "vis_control.pt"}
    assert catalog.control_file("gray", "acme/other").repo_id == "acme/other"
