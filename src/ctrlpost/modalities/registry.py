"""The registries of modalities, data sources, model flavors and base precisions, read from the
plugins.

Plugins come through the ``ctrlpost`` entry-point group; ctrlpost's own data sources, flavors
and base precisions (:mod:`ctrlpost.builtin`) are registered by module name first, as pytest
registers its default plugins, and answer the same hooks. The plugin manager is the one piece
of global state ctrlpost keeps: it is built, and entry points are read, on the first lookup of a
process (never at import). Tests build their own with
``build_plugin_manager(load_entrypoints=False)``.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
from collections.abc import Mapping
from typing import Any

import pluggy

from ctrlpost.errors import PluginError
from ctrlpost.modalities import hookspecs
from ctrlpost.modalities.base import FidelityMetric, Modality
from ctrlpost.modalities.base_precisions import BasePrecision
from ctrlpost.modalities.flavors import ModelFlavor
from ctrlpost.modalities.hint_files import HintFile
from ctrlpost.modalities.online import OnlineHint
from ctrlpost.modalities.sources import DataSource

#: ctrlpost's own plugin modules, registered by name (so the registry imports none of them).
BUILTIN_PLUGINS: tuple[str, ...] = ("ctrlpost.builtin",)
BUILTIN_DISTRIBUTION = "ctrlpost"
_UNKNOWN_DISTRIBUTION = "unknown distribution"

#: Each extension point: its registering hook and the descriptor that hook returns.
_KINDS: dict[str, tuple[str, type]] = {
    "modality": ("ctrlpost_register_modalities", Modality),
    "data source": ("ctrlpost_register_data_sources", DataSource),
    "flavor": ("ctrlpost_register_flavors", ModelFlavor),
    "base precision": ("ctrlpost_register_base_precisions", BasePrecision),
}


def build_plugin_manager(*, load_entrypoints: bool = True,
                         builtins: bool = True) -> pluggy.PluginManager:
    """A plugin manager with ctrlpost's hookspecs and built-in plugins, optionally loading
    installed plugins."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs.ModalitySpec)
    if builtins:
        for module in BUILTIN_PLUGINS:
            manager.register(importlib.import_module(module),
                             name=f"{BUILTIN_DISTRIBUTION}/{module}")
    if load_entrypoints:
        _register_entry_points(manager)
    manager.check_pending()
    return manager


def _register_entry_points(manager: pluggy.PluginManager) -> None:
    """Register every ``ctrlpost`` entry point under ``"<dist> <version>/<entry point>"``.

    pluggy's own loader skips an entry point whose name is already taken, which would hide a
    second distribution that provides the same modality; registering under the distribution's
    name keeps both, so the clash is reported instead.
    """
    for ep in sorted(importlib.metadata.entry_points(group=hookspecs.PROJECT), key=str):
        dist = ep.dist
        origin = f"{dist.name} {dist.version}" if dist is not None else _UNKNOWN_DISTRIBUTION
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} of {origin} failed to import: {type(exc).__name__}: {exc}",
                hint=f"reinstall or uninstall {origin.split()[0]}",
            ) from None
        if not manager.is_registered(plugin):
            manager.register(plugin, name=f"{origin}/{ep.name}")


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with every installed plugin loaded."""
    return build_plugin_manager()


def _distribution_of(manager: pluggy.PluginManager, plugin: object) -> str:
    name = manager.get_name(plugin) or "unnamed plugin"
    return name.rsplit("/", 1)[0] if "/" in name else f"plugin {name!r}"


def _provided(manager: pluggy.PluginManager, kind: str = "modality") -> list[tuple[str, Any]]:
    """(origin, descriptor) for every ``kind`` (a key of ``_KINDS``) every plugin returns."""
    hook, descriptor = _KINDS[kind]
    provided: list[tuple[str, Any]] = []
    for impl in getattr(manager.hook, hook).get_hookimpls():
        origin = _distribution_of(manager, impl.plugin)
        returned: list[Any] = list(impl.function() or [])
        for item in returned:
            if not isinstance(item, descriptor):
                raise PluginError(
                    f"{origin} returned {type(item).__name__} from {hook}, expected "
                    f"ctrlpost.modalities.{descriptor.__name__}"
                )
            provided.append((origin, item))
    return provided


def _installed(kind: str, manager: pluggy.PluginManager | None) -> dict[str, Any]:
    """Every ``kind`` registered, by name, sorted by name; duplicate names are an error."""
    found: dict[str, tuple[Any, str]] = {}
    for origin, item in _provided(manager or plugin_manager(), kind):
        if item.name in found:
            first = found[item.name][1]
            raise PluginError(
                f"{kind} {item.name!r} is provided twice: by {first} and by {origin}",
                hint="uninstall one of the two distributions",
            )
        found[item.name] = (item, origin)
    return {name: found[name][0] for name in sorted(found)}


def _get(kind: str, name: str, manager: pluggy.PluginManager | None) -> Any:
    """The registered ``kind`` called ``name``, or an error listing the registered ones."""
    available = _installed(kind, manager)
    if name in available:
        return available[name]
    installed = ", ".join(available) or "none"
    close = difflib.get_close_matches(name, list(available), n=1)
    hint = f"did you mean {close[0]!r}?" if close else "install a plugin that provides it"
    raise PluginError(f"unknown {kind} {name!r} (installed: {installed})", hint=hint)


def installed_modalities(manager: pluggy.PluginManager | None = None) -> dict[str, Modality]:
    """Every installed modality by name, sorted by name; duplicate names are an error."""
    return _installed("modality", manager)


def get_modality(name: str, manager: pluggy.PluginManager | None = None) -> Modality:
    """The installed modality called ``name``, or an error listing what is installed."""
    modality: Modality = _get("modality", name, manager)
    return modality


def installed_data_sources(
    manager: pluggy.PluginManager | None = None,
) -> dict[str, DataSource]:
    """Every registered `fetch-data` source by name, sorted by name."""
    return _installed("data source", manager)


def get_data_source(name: str, manager: pluggy.PluginManager | None = None) -> DataSource:
    """The registered data source called ``name``, or an error listing the registered ones."""
    source: DataSource = _get("data source", name, manager)
    return source


def installed_flavors(manager: pluggy.PluginManager | None = None) -> dict[str, ModelFlavor]:
    """Every registered model flavor by name, sorted by name."""
    return _installed("flavor", manager)


def get_flavor(name: str, manager: pluggy.PluginManager | None = None) -> ModelFlavor:
    """The registered model flavor called ``name``, or an error listing the registered ones."""
    flavor: ModelFlavor = _get("flavor", name, manager)
    return flavor


def installed_base_precisions(
    manager: pluggy.PluginManager | None = None,
) -> dict[str, BasePrecision]:
    """Every registered base precision by name, sorted by name."""
    return _installed("base precision", manager)


def get_base_precision(name: str,
                       manager: pluggy.PluginManager | None = None) -> BasePrecision:
    """The registered base precision called ``name``, or an error listing the registered ones."""
    precision: BasePrecision = _get("base precision", name, manager)
    return precision


def origin_of(name: str, manager: pluggy.PluginManager | None = None,
              kind: str = "modality") -> str:
    """The distribution that provides the ``kind`` called ``name`` (for summaries)."""
    for origin, item in _provided(manager or plugin_manager(), kind):
        if item.name == name:
            return origin
    raise PluginError(f"unknown {kind} {name!r}")


def plugin_distributions(manager: pluggy.PluginManager | None = None) -> list[str]:
    """The distributions that registered a modality, data source, flavor or base precision
    (ctrlpost's own built-ins included), by name; plugins registered without a distribution are
    left out."""
    manager = manager or plugin_manager()
    found: set[str] = set()
    for hook, _ in _KINDS.values():
        for impl in getattr(manager.hook, hook).get_hookimpls():
            name = _distribution_name(manager, impl.plugin)
            if name is not None and impl.function():
                found.add(name)
    return sorted(found)


def _distribution_name(manager: pluggy.PluginManager, plugin: object) -> str | None:
    """``ctrlpost-edge`` of a plugin registered as ``"ctrlpost-edge 0.1.0/edge"``; None for one
    registered by hand (tests) or whose distribution is unknown."""
    origin, slash, _ = (manager.get_name(plugin) or "").rpartition("/")
    if not slash or origin == _UNKNOWN_DISTRIBUTION:
        return None
    return origin.split(" ")[0]


def fidelity_metric(modality: Modality, params: Any,
                    manager: pluggy.PluginManager | None = None) -> FidelityMetric | None:
    """The fidelity metric a plugin supplies for ``modality`` (validated ``params``), or None."""
    metric: FidelityMetric | None = (manager or plugin_manager()).hook.ctrlpost_fidelity_metric(
        modality=modality.name, params=params)
    return metric


def fidelity_headline(modality: Modality,
                      manager: pluggy.PluginManager | None = None) -> str | None:
    """The headline value of the modality's fidelity metric at default params (for listings),
    or None without a metric (or when its params have no defaults)."""
    from pydantic import ValidationError

    try:
        params = modality.validate_params({})
    except ValidationError:
        return None
    metric = fidelity_metric(modality, params, manager)
    return metric.headline if metric is not None else None


def validate_params(modality: Modality, raw: Mapping[str, Any]) -> Any:
    """Validate ``raw`` with the modality's params model; errors name the modality."""
    from pydantic import ValidationError

    try:
        return modality.validate_params(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "params"
        raise PluginError(f"{modality.name}.{where}: {first['msg']}") from None


def control_hint_file(name: str, raw_params: Mapping[str, Any]) -> HintFile | None:
    """The per-clip file a control of modality ``name`` with ``raw_params`` reads, or None (its
    hints come from the frames, or are computed online)."""
    modality = get_modality(name)
    return modality.hint_file_for(validate_params(modality, raw_params))


def control_online_hint(name: str, raw_params: Mapping[str, Any]) -> OnlineHint | None:
    """The online hint a control of modality ``name`` with ``raw_params`` selects, or None."""
    modality = get_modality(name)
    return modality.online_hint_for(validate_params(modality, raw_params))


def exactness(modality: Modality) -> list[dict[str, Any]]:
    """Per library the modality's hints depend on: the versions on which they equal the
    reference's byte for byte, the version in use (None: not installed) and whether it is one."""
    return [
        {"library": entry.library, "module": entry.module, "versions": entry.versions,
         "why": entry.why, "installed": entry.installed_version(), "exact": entry.holds()}
        for entry in modality.exact_on
    ]
