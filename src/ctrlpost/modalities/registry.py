"""Discovery of installed modality plugins through the ``ctrlpost`` entry-point group.

The plugin manager is the one piece of global state ctrlpost keeps: entry points are read once
per process. Tests build their own manager with ``build_plugin_manager(load_entrypoints=False)``.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
from collections.abc import Mapping
from typing import Any

import pluggy

from ctrlpost.errors import PluginError
from ctrlpost.modalities import hookspecs
from ctrlpost.modalities.base import FidelityMetric, Modality


def build_plugin_manager(*, load_entrypoints: bool = True) -> pluggy.PluginManager:
    """A plugin manager with ctrlpost's hookspecs, optionally loading installed plugins."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs.ModalitySpec)
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
        origin = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
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


def _provided(manager: pluggy.PluginManager) -> list[tuple[str, Modality]]:
    """(origin, modality) for every modality every registered plugin returns."""
    provided: list[tuple[str, Modality]] = []
    for impl in manager.hook.ctrlpost_register_modalities.get_hookimpls():
        origin = _distribution_of(manager, impl.plugin)
        returned: list[Any] = list(impl.function() or [])  # type: ignore[call-overload]
        for modality in returned:
            if not isinstance(modality, Modality):
                raise PluginError(
                    f"{origin} returned {type(modality).__name__} from "
                    "ctrlpost_register_modalities, expected ctrlpost.modalities.Modality"
                )
            provided.append((origin, modality))
    return provided


def installed_modalities(manager: pluggy.PluginManager | None = None) -> dict[str, Modality]:
    """Every installed modality by name, sorted by name; duplicate names are an error."""
    found: dict[str, tuple[Modality, str]] = {}
    for origin, modality in _provided(manager or plugin_manager()):
        if modality.name in found:
            first = found[modality.name][1]
            raise PluginError(
                f"modality {modality.name!r} is provided twice: by {first} and by {origin}",
                hint="uninstall one of the two distributions",
            )
        found[modality.name] = (modality, origin)
    return {name: found[name][0] for name in sorted(found)}


def get_modality(name: str, manager: pluggy.PluginManager | None = None) -> Modality:
    """The installed modality called ``name``, or an error listing what is installed."""
    available = installed_modalities(manager)
    if name in available:
        return available[name]
    installed = ", ".join(available) or "none"
    close = difflib.get_close_matches(name, list(available), n=1)
    hint = f"did you mean {close[0]!r}?" if close else "install a plugin that provides it"
    raise PluginError(f"unknown modality {name!r} (installed: {installed})", hint=hint)


def origin_of(name: str, manager: pluggy.PluginManager | None = None) -> str:
    """The distribution that provides modality ``name`` (for summaries)."""
    for origin, modality in _provided(manager or plugin_manager()):
        if modality.name == name:
            return origin
    raise PluginError(f"unknown modality {name!r}")


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


def exactness(modality: Modality) -> list[dict[str, Any]]:
    """Per library the modality's hints depend on: the versions on which they equal the
    reference's byte for byte, the version in use (None: not installed) and whether it is one."""
    return [
        {"library": entry.library, "module": entry.module, "versions": entry.versions,
         "why": entry.why, "installed": entry.installed_version(), "exact": entry.holds()}
        for entry in modality.exact_on
    ]
