"""Finding plugins and looking things up by name.

Built-ins and third-party packages go through the same door: a module with ``@hookimpl``
functions, registered on a pluggy ``PluginManager``. Third-party packages are found through
the ``rvgen`` entry-point group. ``RVGEN_LOAD_PLUGINS`` limits which of them load: a comma
list of entry-point or distribution names, and the empty string loads none (the test suite
uses that so whatever happens to be installed does not leak in).

A plugin at fault (it does not import, a hook is misspelt or takes another parameter, a
hook raises, a class it registers breaks the contract of its kind, a name clashes) is
*left out* whole, never half registered: :attr:`Registry.broken` holds one
:class:`Broken` per such plugin, whose :attr:`~Broken.line` names its distribution and what
to change. The command line shows each line as a warning and goes on; a recipe that names
something such a plugin provides (or might provide, when it did not even import) fails
with that line instead of "unknown loss" (:meth:`Registry.get`). ``registry_with`` (tests,
embedding) raises the first fault as a :class:`~rvgen.errors.PluginError` by default.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import re
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from rvgen import hookspecs
from rvgen.errors import PluginError
from rvgen.params import Param, suggest, unknown

ENTRY_POINT_GROUP = "rvgen"
ENV_VAR = "RVGEN_LOAD_PLUGINS"
BUILTIN_MODULES = (
    "rvgen.backbones.vgg", "rvgen.backbones.resnet", "rvgen.backbones.trained", "rvgen.backbones.multiscale",
    "rvgen.losses.builtin", "rvgen.tasks.builtin",
)
BUILTIN_SOURCE = "rvgen (built-in)"
HOOK_PARAMETER = "register"

# kind -> (hook name, base class path); the base classes are imported lazily because
# they pull in torch, and ``rvgen --help`` should not.
PLUGIN_KINDS = {
    "backbone": ("register_backbones", "rvgen.backbones:Backbone"),
    "loss": ("register_losses", "rvgen.losses:Loss"),
    "task": ("register_tasks", "rvgen.tasks:Task"),
}
HOOK_KINDS = {hook: kind for kind, (hook, _) in PLUGIN_KINDS.items()}

# kind -> methods a class must define itself (the base class's raise NotImplementedError),
# each with what it must do, for the one-line fault; and the methods a class attribute
# that promises more (tiled, blendable) makes required.
REQUIRED_METHODS = {
    "backbone": {"layer_names": "layer_names(cls, options), a classmethod returning the layer names in order",
                 "features": "features(self, x, layers) returning {layer: tensor}"},
    "loss": {"forward": "forward(self, features, target) returning one loss per image, shape (B,)"},
    "task": {"terms": "terms(self) returning a list of rvgen.engine.Term"},
}
PROMISED_METHODS = {
    ("loss", "tiled"): {"statistic": "statistic(self, features, target, window)",
                        "finish": "finish(self, statistic, target)"},
    ("loss", "blendable"): {"mean_target": "mean_target(self, targets)"},
}
LAYER_KINDS = ("layer", "layers")


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    cls: Any
    source: str
    package: tuple[str, str] | None = None
    """(distribution, version) of the plugin that registered it; None for the built-ins."""

    @property
    def description(self) -> str:
        return getattr(self.cls, "description", "") or (self.cls.__doc__ or "").strip().split("\n")[0]

    @property
    def params(self) -> tuple[Param, ...]:
        return tuple(self.cls.params)


@dataclass(frozen=True)
class Broken:
    """A plugin left out: ``plugin`` (its entry-point name, or the object registered), its
    ``source`` (distribution and version), the ``problem`` in one line saying what to change,
    and the (kind, name) pairs it tried to register, as far as they are known."""

    plugin: str
    source: str
    problem: str
    names: frozenset[tuple[str, str]] = frozenset()

    @property
    def line(self) -> str:
        source = f" ({self.source})" if self.source != self.plugin else ""
        return f"plugin {self.plugin!r}{source} is left out: {self.problem}"

    def provides(self, kind: str, name: str) -> bool:
        return (kind, name) in self.names


class PluginFault(Exception):
    """What is wrong with one plugin, and the names it tried to register (internal)."""

    def __init__(self, problem: str, names: Iterable[tuple[str, str]] = ()):
        super().__init__(problem)
        self.problem = problem
        self.names = frozenset(names)


def _base_class(kind: str) -> type:
    module, _, attr = PLUGIN_KINDS[kind][1].partition(":")
    return getattr(importlib.import_module(module), attr)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return textwrap.shorten(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, 300, placeholder="...")


def class_problem(kind: str, cls: Any, base: type) -> str | None:
    """What breaks the contract of ``kind`` in a registered class, in one line; None if nothing.
    Only what can be seen without running it: the base class, the name, the parameters, the
    methods it must define, and (tasks) its ``layer_option``."""
    if not (isinstance(cls, type) and issubclass(cls, base)):
        return f"it registers {cls!r} as a {kind}, which is not a subclass of {base.__module__}.{base.__name__}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        return f"its {kind} {cls.__name__} has no name: give the class a name = \"...\" attribute"
    where = f"{kind} {name!r} ({cls.__name__})"
    params = getattr(cls, "params", ())
    if not isinstance(params, (tuple, list)) or not all(isinstance(p, Param) for p in params):
        return f"{where} declares params that are not a tuple of rvgen.params.Param"
    required = dict(REQUIRED_METHODS[kind])
    for (promised_kind, flag), methods in PROMISED_METHODS.items():
        if promised_kind == kind and getattr(cls, flag, False):
            required.update({method: f"{signature} (it declares {flag} = True)"
                             for method, signature in methods.items()})
    for method, what in required.items():
        if getattr(cls, method, None) is getattr(base, method, None):
            return f"{where} does not define {what}"
    option = getattr(cls, "layer_option", None)
    if kind == "task" and option is not None:
        kinds = {p.name: p.kind for p in params}
        if kinds.get(option) not in LAYER_KINDS:
            return (f"{where} declares layer_option = {option!r}, which is not one of its params of kind \"layer\" "
                    "or \"layers\"; declare that param, or set layer_option = None")
    return None


class Registry:
    """Everything the installed plugins registered, by kind and name, and the plugins left out.

    With ``strict``, the first plugin at fault raises :class:`PluginError` (its line) instead
    of being left out."""

    def __init__(self, found: Discovery, strict: bool = False):
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in PLUGIN_KINDS}
        self.broken: list[Broken] = list(found.broken)
        self.warnings: list[str] = list(found.warnings)
        bases = {kind: _base_class(kind) for kind in PLUGIN_KINDS}
        pm = found.pm
        plugins = {id(p): p for p in pm.get_plugins()}
        for plugin_id, source in found.sources.items():  # in the order they were registered: built-ins first
            plugin = plugins[plugin_id]
            try:
                entries = self._collect(pm, plugin, source, found.packages.get(plugin_id), bases)
            except PluginFault as fault:
                broken = Broken(found.labels[plugin_id], source, fault.problem, fault.names)
                if strict or source == BUILTIN_SOURCE:
                    raise PluginError(broken.line) from None
                self.broken.append(broken)
                continue
            for entry in entries:
                self.entries[entry.kind][entry.name] = entry
        self.broken.sort(key=lambda b: normalize_name(b.source))  # by distribution, whatever found them

    def _collect(self, pm: pluggy.PluginManager, plugin: Any, source: str, package: tuple[str, str] | None,
                 bases: dict[str, type]) -> list[Entry]:
        """The entries ``plugin`` registers, all checked; a :class:`PluginFault` if any is wrong."""
        staged: list[Entry] = []
        for kind, (hook_name, _) in PLUGIN_KINDS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                classes: list[Any] = []
                try:
                    impl.function(**{HOOK_PARAMETER: classes.append})
                except Exception as exc:
                    raise PluginFault(f"its hook {hook_name} raised {_short(exc)}", _names(kind, classes)) from None
                staged += [Entry(kind, getattr(cls, "name", None), cls, source, package) for cls in classes]
        names = {(e.kind, e.name) for e in staged if isinstance(e.name, str)}
        seen: dict[tuple[str, str], Entry] = {}
        for entry in staged:
            problem = class_problem(entry.kind, entry.cls, bases[entry.kind])
            earlier = self.entries[entry.kind].get(entry.name)
            if problem is None and earlier is not None:
                problem = (f"two plugins register the {entry.kind} {entry.name!r}: {earlier.source} and {source}; "
                           "give one of them another name")
            elif problem is None and (entry.kind, entry.name) in seen:
                problem = f"it registers the {entry.kind} {entry.name!r} twice"
            if problem is not None:
                raise PluginFault(problem, names)
            seen[(entry.kind, entry.name)] = entry
        return staged

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str, key: str) -> Entry:
        """The entry named ``name``. If there is none: a :class:`PluginError` with the line of
        a plugin left out that registers it (or, when a plugin left out could not say what it
        provides, the recipe error naming ``key`` and the choices, with that plugin's line),
        else the recipe error alone."""
        try:
            return self.entries[kind][name]
        except KeyError:
            pass
        error = unknown(kind, key, name, self.names(kind))
        for broken in self.broken:
            if broken.provides(kind, name):
                raise PluginError(f"{key}: the {kind} {name!r} is not available: {broken.line}") from None
        silent = [b for b in self.broken if not b.names]
        if silent:
            raise PluginError(f"{error}; {silent[0].line}") from None
        raise error

    def packages(self, entries: Iterable[Entry]) -> dict[str, str]:
        """{distribution: version} of the plugins that registered ``entries`` (built-ins left out)."""
        return dict(sorted(e.package for e in entries if e.package is not None))

    def installed(self) -> dict[str, str]:
        """{distribution: version} of every plugin with something in this registry, the names
        normalised (:func:`normalize_name`)."""
        return {normalize_name(e.package[0]): e.package[1]
                for kind in self.entries.values() for e in kind.values() if e.package is not None}


def _names(kind: str, classes: Iterable[Any]) -> set[tuple[str, str]]:
    return {(kind, name) for cls in classes if isinstance(name := getattr(cls, "name", None), str)}


def normalize_name(name: str) -> str:
    """Distribution names compare as pip compares them: case and -_. do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _wanted_entry_points() -> tuple[list[importlib.metadata.EntryPoint], list[str]]:
    setting = os.environ.get(ENV_VAR)
    # In a fixed order (by distribution, then entry-point name), not the file system's: which of
    # two clashing plugins is left out, and the order of the lines, are the same everywhere.
    eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                 key=lambda ep: (normalize_name(ep.dist.name) if ep.dist else "", ep.name))
    if setting is None:
        return eps, []
    wanted = {normalize_name(s.strip()) for s in setting.split(",") if s.strip()}

    def names(ep: importlib.metadata.EntryPoint) -> set[str]:
        return {normalize_name(ep.name)} | ({normalize_name(ep.dist.name)} if ep.dist else set())

    chosen = [ep for ep in eps if names(ep) & wanted]
    found = set().union(*(names(ep) for ep in chosen)) if chosen else set()
    missing = [f"{ENV_VAR} names {name!r}, which is not installed" for name in sorted(wanted - found)]
    return chosen, missing


def hook_problem(pm: pluggy.PluginManager, plugin: Any) -> PluginFault | None:
    """A misspelt hook or one whose parameter is not ``register``, in ``plugin``, before it is
    registered (pluggy would keep a misspelt hook pending silently, and reject a parameter
    with a multi-line message). The names it would register are found by calling it with a
    collecting callback, so a recipe that uses one of them is told why it is missing."""
    for attr in dir(plugin):
        if pm.parse_hookimpl_opts(plugin, attr) is None:
            continue
        function: Callable[..., Any] = getattr(plugin, attr)
        if attr not in HOOK_KINDS:
            return PluginFault(f"{attr} is not an rvgen hook{suggest(attr, HOOK_KINDS)}; the hooks are "
                               f"{', '.join(HOOK_KINDS)}", _probe(function, _nearest_kind(attr)))
        try:
            parameters = list(inspect.signature(function).parameters)
        except (TypeError, ValueError):
            continue
        if parameters != [HOOK_PARAMETER]:
            return PluginFault(f"its hook {attr}({', '.join(parameters)}) must take one parameter named "
                               f"{HOOK_PARAMETER!r}: def {attr}({HOOK_PARAMETER})", _probe(function, HOOK_KINDS[attr]))
    return None


def _nearest_kind(hook: str) -> str | None:
    close = [name for name in HOOK_KINDS if name.startswith(hook[:11])]  # "register_lo..." -> losses
    return HOOK_KINDS[close[0]] if len(close) == 1 else None


def _probe(function: Callable[..., Any], kind: str | None) -> set[tuple[str, str]]:
    """The names a hook that cannot be registered would register, as far as calling it tells."""
    if kind is None:
        return set()
    classes: list[Any] = []
    try:
        function(classes.append)
    except Exception:  # it is left out anyway; this only makes the message of a recipe that needs it better
        pass
    return _names(kind, classes)


@dataclass
class Discovery:
    """The plugin manager with the built-ins and the installed plugins that could be registered;
    ``sources`` (distribution and version), ``labels`` (entry-point name) and ``packages`` by
    plugin object id, in the order they were registered; the plugins left out; other warnings."""

    pm: pluggy.PluginManager
    sources: dict[int, str] = field(default_factory=dict)
    labels: dict[int, str] = field(default_factory=dict)
    packages: dict[int, tuple[str, str]] = field(default_factory=dict)
    broken: list[Broken] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, plugin: Any, name: str | None, source: str, package: tuple[str, str] | None = None) -> None:
        """Register ``plugin``, or record it as left out when its hooks are wrong."""
        fault = hook_problem(self.pm, plugin)
        if fault is None:
            try:
                self.pm.register(plugin, name=name)
            except pluggy.PluginValidationError as exc:  # what hook_problem does not foresee, in one line
                fault = PluginFault(f"pluggy rejects it: {_short(exc)}")
        if fault is not None:
            self.broken.append(Broken(name or describe_plugin(plugin), source, fault.problem, fault.names))
            return
        self.sources[id(plugin)] = source
        self.labels[id(plugin)] = name or describe_plugin(plugin)
        if package is not None:
            self.packages[id(plugin)] = package

    def registry(self, strict: bool = False) -> Registry:
        if strict and self.broken:
            raise PluginError(self.broken[0].line)
        return Registry(self, strict=strict)


def discover(entry_points: bool = True) -> Discovery:
    """The built-ins and (optionally) the plugins of the ``rvgen`` entry-point group that
    :data:`ENV_VAR` lets in; a plugin that fails to import is left out with its line."""
    pm = pluggy.PluginManager("rvgen")
    pm.add_hookspecs(hookspecs)
    found = Discovery(pm)
    for module_name in BUILTIN_MODULES:
        found.add(importlib.import_module(module_name), module_name, BUILTIN_SOURCE)
    if not entry_points:
        return found
    chosen, found.warnings = _wanted_entry_points()
    for ep in chosen:
        package = (ep.dist.name, ep.dist.version) if ep.dist else None
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else ep.name
        if pm.has_plugin(ep.name):
            other = found.sources.get(id(pm.get_plugin(ep.name)))
            found.warnings.append(f"plugin {ep.name!r} ({dist}) skipped: {other} uses the same entry-point name")
            continue
        try:
            plugin = ep.load()
        except (Exception, SystemExit) as exc:  # a broken plugin must not take the tool down (sys.exit too)
            found.broken.append(Broken(ep.name, dist, f"importing {ep.value} raised {_short(exc)}; fix it, or "
                                                      f"uninstall {ep.dist.name if ep.dist else ep.name}"))
            continue
        if pm.is_registered(plugin):
            found.warnings.append(f"plugin {ep.name!r} ({dist}) skipped: its module is already registered as "
                                  f"{pm.get_name(plugin)!r}")
            continue
        found.add(plugin, ep.name, dist, package)
    return found


_cache: Registry | None = None


def get_registry() -> Registry:
    """The registry of the built-ins and installed plugins, built once per process. Plugins at
    fault are left out (:attr:`Registry.broken`), never raised."""
    global _cache
    if _cache is None:
        _cache = discover().registry()
    return _cache


def load_warnings() -> list[str]:
    """One line per plugin left out, then the other discovery warnings (RVGEN_LOAD_PLUGINS)."""
    registry = get_registry()
    return [b.line for b in registry.broken] + registry.warnings


def describe_plugin(plugin: Any) -> str:
    """A readable name for a plugin object registered through the API."""
    if inspect.ismodule(plugin):
        return plugin.__name__
    cls = plugin if isinstance(plugin, type) else type(plugin)
    return f"{cls.__module__}.{cls.__qualname__}"


def registry_with(plugins: Iterable[Any] = (), entry_points: bool = False, strict: bool = True) -> Registry:
    """A registry of the built-ins plus the given plugin objects (for tests and embedding).
    With ``strict`` (the default) a plugin at fault raises :class:`PluginError`; without, it
    is left out and listed in :attr:`Registry.broken`, as the command line does."""
    found = discover(entry_points=entry_points)
    for plugin in plugins:  # no distribution: nothing to record in sidecars (Registry.packages)
        found.add(plugin, None, describe_plugin(plugin))
    return found.registry(strict=strict)


def built() -> Registry | None:
    """The process's registry if :func:`get_registry` built it already, else None."""
    return _cache
