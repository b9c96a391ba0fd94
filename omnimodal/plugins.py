"""Plugin manager: loads ``omnimodal`` entry points one by one and builds the registry.

pluggy's ``load_setuptools_entrypoints`` stops at the first plugin that fails to import, so
one broken plugin would take every plugin down. Here each entry point is loaded on its own;
a failure is recorded (entry point, distribution, cause) and the healthy plugins still load.
Set ``OMNIMODAL_DISABLE_PLUGINS=name1,name2`` to skip entry points by name.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy

from omnimodal import hookspecs
from omnimodal.errors import ConfigError, PluginError, did_you_mean
from omnimodal.specs import DemoSpec, ExportSpec, ModalitySpec, PluginInfo, ProjectorSpec

ENTRY_POINT_GROUP = "omnimodal"
DISABLE_ENV = "OMNIMODAL_DISABLE_PLUGINS"


@dataclass
class Registry:
    """Everything the loaded plugins provide, by name."""

    plugins: list[PluginInfo] = field(default_factory=list)
    modalities: dict[str, ModalitySpec] = field(default_factory=dict)
    modality_owner: dict[str, str] = field(default_factory=dict)
    projectors: dict[str, ProjectorSpec] = field(default_factory=dict)
    config_dirs: list[str] = field(default_factory=list)
    demos: dict[str, DemoSpec] = field(default_factory=dict)
    exports: dict[str, ExportSpec] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # modality -> install hint

    def plugin(self, name: str) -> PluginInfo:
        """Return the info of the plugin with entry-point name ``name``."""
        for info in self.plugins:
            if info.name == name:
                return info
        raise PluginError(f"No plugin named {name!r}.{did_you_mean(name, [p.name for p in self.plugins])}")

    def modality(self, name: str) -> ModalitySpec:
        """Return the spec of modality ``name`` or a clear error listing the valid ones."""
        if name in self.modalities:
            return self.modalities[name]
        if name in self.unavailable:
            raise PluginError(f"Modality {name!r} is unavailable: {self.unavailable[name]}")
        raise ConfigError(f"Unknown modality {name!r}.{did_you_mean(name, self.modalities)}{self.failed_hint(name)}")

    def failed_plugins(self) -> list[PluginInfo]:
        """Plugins that failed to import or register (their ``reason`` holds the error)."""
        return [p for p in self.plugins if p.status in ("failed", "incompatible")]

    def failed_hint(self, modality: str) -> str:
        """Why ``modality`` may be missing: the plugins that failed, each with its error."""
        failed = self.failed_plugins()
        for p in failed:
            if p.name == modality or modality in p.value:
                return (
                    f" Plugin {p.name!r} ({p.distribution} {p.version}, entry point {p.value}) "
                    f"failed to load: {p.reason.splitlines()[0]}"
                )
        if not failed:
            return ""
        listed = "; ".join(f"{p.name} ({p.reason.splitlines()[0]})" for p in failed)
        return f" Plugins that failed to load (one may provide it): {listed}."

    def export(self, name: str) -> ExportSpec:
        """Return the export format ``name`` or a clear error listing the registered ones."""
        if name not in self.exports:
            raise ConfigError(f"Unknown export format {name!r}.{did_you_mean(name, self.exports)}")
        return self.exports[name]

    def projector(self, name: str) -> ProjectorSpec:
        """Return the spec of projector kind ``name`` or a clear error listing the valid ones."""
        if name not in self.projectors:
            raise ConfigError(f"Unknown projector kind {name!r}.{did_you_mean(name, self.projectors)}")
        return self.projectors[name]

    def modality_for_part_type(self, part_type: str) -> ModalitySpec | None:
        """Return the modality whose data-file part type is ``part_type`` (or None)."""
        for spec in self.modalities.values():
            if spec.part_type == part_type:
                return spec
        return None


def _missing_requirements(requires: tuple[str, ...]) -> list[str]:
    return [name for name in requires if importlib.util.find_spec(name) is None]


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def new_plugin_manager() -> pluggy.PluginManager:
    """Return an empty plugin manager with omnimodal's hook specifications."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_entry_points(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Load each ``omnimodal`` entry point on its own; return one :class:`PluginInfo` each."""
    infos: list[PluginInfo] = []
    disabled = _disabled()
    seen: set[str] = set()
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(ep.name)
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            value=ep.value,
            distribution=dist.metadata["Name"] if dist else "?",
            version=dist.version if dist else "?",
        )
        infos.append(info)
        if ep.name in disabled:
            info.status, info.reason = "disabled", f"disabled by {DISABLE_ENV}"
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is reported, not fatal
            info.status = "failed"
            info.reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            continue
        _register(pm, plugin, info)
    return infos


def _register(pm: pluggy.PluginManager, plugin: Any, info: PluginInfo) -> None:
    declared = getattr(plugin, "OMNIMODAL_API_VERSION", hookspecs.API_VERSION)
    if declared not in hookspecs.SUPPORTED_API_VERSIONS:
        supported = ", ".join(str(v) for v in hookspecs.SUPPORTED_API_VERSIONS)
        info.status = "incompatible"
        info.reason = (
            f"plugin {info.name!r} ({info.distribution} {info.version}) declares "
            f"OMNIMODAL_API_VERSION={declared}, but this omnimodal supports API {supported}; "
            f"install a version of {info.distribution} built for it"
        )
        return
    try:
        pm.register(plugin, name=info.name)
    except Exception as exc:  # noqa: BLE001 - e.g. a hookimpl with an unknown hook name
        info.status, info.reason = "failed", f"{type(exc).__name__}: {exc}"


def build_registry(pm: pluggy.PluginManager, infos: list[PluginInfo]) -> Registry:
    """Call every plugin's hooks, one plugin at a time, and check names for clashes."""
    reg = Registry(plugins=infos)
    by_name = {info.name: info for info in infos}
    for name, plugin in pm.list_name_plugin():
        info = by_name.get(name)
        if info is None:  # registered in code (tests, notebooks)
            info = PluginInfo(name=name, value=repr(plugin), distribution="(in-process)")
            infos.append(info)
            by_name[name] = info
        info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        try:
            _collect(pm, plugin, info, reg)
        except PluginError:
            raise
        except _PluginFailure as exc:
            info.status, info.reason = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001
            info.status, info.reason = "failed", f"{type(exc).__name__}: {exc}"
    return reg


def _call(pm: pluggy.PluginManager, plugin: Any, hook: str, **kwargs: Any) -> list[Any]:
    caller = pm.subset_hook_caller(hook, remove_plugins=[p for p in pm.get_plugins() if p is not plugin])
    return caller(**kwargs)


def _collect(pm: pluggy.PluginManager, plugin: Any, info: PluginInfo, reg: Registry) -> None:
    modalities: list[ModalitySpec] = []
    projectors: list[ProjectorSpec] = []
    _call(pm, plugin, "omnimodal_register_modalities", register=modalities.append)
    _call(pm, plugin, "omnimodal_register_projectors", register=projectors.append)
    for spec in modalities:
        if spec.name in reg.modality_owner or spec.name in reg.unavailable:
            other = reg.modality_owner.get(spec.name) or "another plugin"
            raise PluginError(
                f"Modality {spec.name!r} is registered by two plugins: {other!r} and "
                f"{info.name!r} ({info.distribution}). Uninstall one, or disable one with "
                f"{DISABLE_ENV}={info.name}."
            )
        missing = _missing_requirements(spec.requires)
        info.modalities.append(spec.name)
        reg.modality_owner[spec.name] = info.name
        if missing:
            hint = spec.install_hint or f"pip install {' '.join(missing)}"
            reg.unavailable[spec.name] = f"missing {', '.join(missing)}; install with: {hint}"
            info.status = "unavailable"
            info.reason = reg.unavailable[spec.name]
        else:
            reg.modalities[spec.name] = spec
    for spec in projectors:
        if spec.name in reg.projectors:
            raise PluginError(
                f"Projector kind {spec.name!r} is registered twice (second by plugin {info.name!r})."
            )
        reg.projectors[spec.name] = spec
        info.projectors.append(spec.name)
    for dirs in _call(pm, plugin, "omnimodal_config_dirs"):
        for d in dirs or []:
            if not Path(d).is_dir():
                raise _PluginFailure(f"config directory {d} (from omnimodal_config_dirs) does not exist")
            reg.config_dirs.append(str(d))
            info.config_dirs.append(str(d))
    for demos in _call(pm, plugin, "omnimodal_demo_data"):
        for demo in demos or []:
            reg.demos[demo.modality] = demo
            info.demos.append(demo.modality)
    for exports in _call(pm, plugin, "omnimodal_export_formats"):
        for spec in exports or []:
            if spec.name in reg.exports:
                raise PluginError(f"Export format {spec.name!r} is registered twice (second by plugin {info.name!r}).")
            reg.exports[spec.name] = spec
            info.exports.append(spec.name)


class _PluginFailure(Exception):
    """A plugin's hooks returned something unusable: the plugin is reported as failed."""


_PM: pluggy.PluginManager | None = None
_REGISTRY: Registry | None = None


_LOCK = threading.RLock()  # first use may come from several threads at once (server requests)


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, loading entry points on first use."""
    global _PM
    with _LOCK:
        if _PM is None:
            pm = new_plugin_manager()
            pm._omnimodal_infos = load_entry_points(pm)  # type: ignore[attr-defined]
            _PM = pm  # published only once complete
        return _PM


def get_registry(refresh: bool = False) -> Registry:
    """Return the registry of all loaded plugins (cached; ``refresh`` re-reads the hooks)."""
    global _REGISTRY
    with _LOCK:
        if _REGISTRY is None or refresh:
            pm = get_plugin_manager()
            infos = [PluginInfo(**vars(i)) for i in pm._omnimodal_infos]  # type: ignore[attr-defined]
            for i in infos:
                i.modalities, i.projectors, i.config_dirs, i.demos, i.exports = [], [], [], [], []
            _REGISTRY = build_registry(pm, infos)
        return _REGISTRY


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register an in-process plugin object (tests, notebooks) and refresh the registry."""
    get_plugin_manager().register(plugin, name=name)
    get_registry(refresh=True)


def unregister_plugin(name: str) -> None:
    """Remove an in-process plugin registered with :func:`register_plugin`."""
    get_plugin_manager().unregister(name=name)
    get_registry(refresh=True)


def reset() -> None:
    """Forget the loaded plugins (the next call reloads entry points)."""
    global _PM, _REGISTRY
    _PM, _REGISTRY = None, None
