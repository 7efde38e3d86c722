"""Finding plugins and looking things up by name.

Built-ins and third-party packages go through the same door: a module with ``@hookimpl``
functions, registered on a pluggy ``PluginManager``. Third-party packages are found through
the ``rvgen`` entry-point group. ``RVGEN_LOAD_PLUGINS`` limits which of them load: a comma
list of entry-point or distribution names, and the empty string loads none (the test suite
uses that so whatever happens to be installed does not leak in).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from rvgen import hookspecs
from rvgen.errors import PluginError
from rvgen.params import Param, unknown

ENTRY_POINT_GROUP = "rvgen"
ENV_VAR = "RVGEN_LOAD_PLUGINS"
BUILTIN_MODULES = (
    "rvgen.backbones.vgg", "rvgen.backbones.resnet", "rvgen.backbones.trained", "rvgen.backbones.multiscale",
    "rvgen.losses.builtin", "rvgen.tasks.builtin",
)
BUILTIN_SOURCE = "rvgen (built-in)"

# kind -> (hook name, base class path); the base classes are imported lazily because
# they pull in torch, and ``rvgen --help`` should not.
PLUGIN_KINDS = {
    "backbone": ("register_backbones", "rvgen.backbones:Backbone"),
    "loss": ("register_losses", "rvgen.losses:Loss"),
    "task": ("register_tasks", "rvgen.tasks:Task"),
}


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    cls: Any
    source: str

    @property
    def description(self) -> str:
        return getattr(self.cls, "description", "") or (self.cls.__doc__ or "").strip().split("\n")[0]

    @property
    def params(self) -> tuple[Param, ...]:
        return tuple(self.cls.params)


def _base_class(kind: str) -> type:
    module, _, attr = PLUGIN_KINDS[kind][1].partition(":")
    return getattr(importlib.import_module(module), attr)


class Registry:
    """Everything the installed plugins registered, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager, sources: dict[int, str]):
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in PLUGIN_KINDS}
        for kind, (hook_name, _) in PLUGIN_KINDS.items():
            base = _base_class(kind)
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                source = sources.get(id(impl.plugin)) or pm.get_name(impl.plugin) or "?"
                impl.function(register=lambda cls, k=kind, s=source, b=base: self._add(k, cls, s, b))

    def _add(self, kind: str, cls: Any, source: str, base: type) -> None:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"{source} registered {cls!r} as a {kind}, which is not a subclass of {base.__name__}")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{source} registered {kind} {cls.__name__} without a name")
        if not all(isinstance(p, Param) for p in getattr(cls, "params", ())):
            raise PluginError(f"{source}: {kind} {name!r} declares params that are not rvgen.params.Param")
        clash = self.entries[kind].get(name)
        if clash is not None:
            raise PluginError(f"two plugins register the {kind} {name!r}: {clash.source} and {source}")
        self.entries[kind][name] = Entry(kind, name, cls, source)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str, key: str) -> Entry:
        """The entry named ``name``; a recipe error naming ``key`` and the choices if none."""
        try:
            return self.entries[kind][name]
        except KeyError:
            raise unknown(kind, key, name, self.names(kind)) from None


def normalize_name(name: str) -> str:
    """Distribution names compare as pip compares them: case and -_. do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _wanted_entry_points() -> tuple[list[importlib.metadata.EntryPoint], list[str]]:
    setting = os.environ.get(ENV_VAR)
    eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    if setting is None:
        return eps, []
    wanted = {normalize_name(s.strip()) for s in setting.split(",") if s.strip()}

    def names(ep: importlib.metadata.EntryPoint) -> set[str]:
        return {normalize_name(ep.name)} | ({normalize_name(ep.dist.name)} if ep.dist else set())

    chosen = [ep for ep in eps if names(ep) & wanted]
    found = set().union(*(names(ep) for ep in chosen)) if chosen else set()
    missing = [f"{ENV_VAR} names {name!r}, which is not installed" for name in sorted(wanted - found)]
    return chosen, missing


def make_plugin_manager(entry_points: bool = True) -> tuple[pluggy.PluginManager, dict[int, str], list[str]]:
    """A plugin manager with the built-ins and (optionally) the installed plugins.

    Returns the manager, a map from plugin object id to a readable source, and warnings
    about plugins that could not be loaded (one line each).
    """
    pm = pluggy.PluginManager("rvgen")
    pm.add_hookspecs(hookspecs)
    sources: dict[int, str] = {}
    for module_name in BUILTIN_MODULES:
        module = importlib.import_module(module_name)
        pm.register(module, name=module_name)
        sources[id(module)] = BUILTIN_SOURCE
    warnings: list[str] = []
    if entry_points:
        chosen, warnings = _wanted_entry_points()
        for ep in chosen:
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else ep.name
            if pm.has_plugin(ep.name):
                warnings.append(f"plugin {ep.name!r} ({dist}) skipped: {sources.get(id(pm.get_plugin(ep.name)))} "
                                "uses the same entry-point name")
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the tool down
                warnings.append(f"plugin {ep.name!r} ({dist}) failed to load: {type(exc).__name__}: {exc}")
                continue
            if pm.is_registered(plugin):
                warnings.append(f"plugin {ep.name!r} ({dist}) skipped: its module is already registered as "
                                f"{pm.get_name(plugin)!r}")
                continue
            pm.register(plugin, name=ep.name)
            sources[id(plugin)] = dist
    return pm, sources, warnings


_cache: tuple[Registry, list[str]] | None = None


def get_registry() -> Registry:
    """The registry of the built-ins and installed plugins, built once per process."""
    return _load()[0]


def load_warnings() -> list[str]:
    return _load()[1]


def _load() -> tuple[Registry, list[str]]:
    global _cache
    if _cache is None:
        pm, sources, warnings = make_plugin_manager()
        _cache = (Registry(pm, sources), warnings)
    return _cache


def describe_plugin(plugin: Any) -> str:
    """A readable name for a plugin object registered through the API."""
    if inspect.ismodule(plugin):
        return plugin.__name__
    cls = plugin if isinstance(plugin, type) else type(plugin)
    return f"{cls.__module__}.{cls.__qualname__}"


def registry_with(plugins: Iterable[Any] = (), entry_points: bool = False) -> Registry:
    """A registry of the built-ins plus the given plugin objects (for tests and embedding)."""
    pm, sources, _ = make_plugin_manager(entry_points=entry_points)
    for plugin in plugins:
        pm.register(plugin)
        sources[id(plugin)] = describe_plugin(plugin)
    return Registry(pm, sources)
