"""The accelerator plugins as JAX sees them, and JAX's backends started while watching them.

JAX finds its plugins (`jax._src.xla_bridge.discover_pjrt_plugins`) as the modules of the
`jax_plugins` namespace package and the modules named by the `jax_plugins` entry-point group,
and imports each and calls its `initialize()`, which registers a platform. A plugin that fails
is one of JAX's log records (a traceback that looks like a crash and is not one) and the run
goes on, on the CPU.

`discover_plugins()` finds the same modules without importing them, each with the distribution
that installed it (its RECORD, or the entry point's distribution), plus the distributions of
PLUGIN_PLATFORMS that JAX loads another way (libtpu) or that only help a plugin (the CUDA
kernels). `start_backends()` starts JAX's backends while watching them load: which plugin
registered which platform, and the log records about plugins (kept, not printed; records about
anything else go on to JAX's log). `plugin_report()` says for each plugin the platform it gave
JAX or why it gave none; fedln_jax.runtime.environment turns that into the one-line warning. A JAX that
cannot start at all (a plugin raising on import, JAX_PLATFORMS naming a platform that is not
there) is one FedlnError.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import logging
import os
import pkgutil
import re
import sys
import traceback

import jax

from fedln_jax.errors import FedlnError

# Distributions that bring an accelerator backend to JAX, and the JAX platform each serves.
# Those with a module JAX imports are also found by discover_plugins(); these names add the
# platform JAX will register for them, and libtpu (loaded by JAX itself, not as a plugin).
PLUGIN_PLATFORMS = {
    "jax-cuda12-plugin": "cuda", "jax-cuda13-plugin": "cuda",
    "jax-cuda12-pjrt": "cuda", "jax-cuda13-pjrt": "cuda",
    "jax-rocm7-plugin": "rocm", "jax-rocm7-pjrt": "rocm",
    "jax-rocm6-plugin": "rocm", "jax-rocm6-pjrt": "rocm",
    "libtpu": "tpu", "libtpu-nightly": "tpu",
}
PLUGIN_GROUP = "jax_plugins"   # JAX's namespace package and its entry-point group
# JAX's logger, which reports a plugin that fails to load (with a traceback)
JAX_LOGGER = "jax._src.xla_bridge"
_watch = None     # what start_backends() saw: a _Watch


@dataclasses.dataclass
class Plugin:
    """One accelerator plugin as JAX would load it."""
    name: str                   # its distribution's name, else its module's
    version: str | None
    module: str | None = None   # the module JAX imports (None: a distribution JAX loads
                                # another way, or that brings no module of its own)
    location: str | None = None  # the module's file or folder, where found
    platform: str | None = None  # the platform it serves, where known before it loads
    also: list = dataclasses.field(default_factory=list)   # distributions of the same platform

    def label(self) -> str:
        text = f"{self.name} {self.version}" if self.version else self.name
        if self.module and self.module != self.name:
            text += f" ({self.module})"
        return " with ".join([text] + self.also)


@dataclasses.dataclass
class _Watch:
    plugins: list          # discover_plugins() when the backends started
    registered: dict       # module -> the platforms it registered
    records: list          # the log records about plugins (JAX's and their own)
    captured: bool         # False when the backends were up before start_backends() ran


def version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _namespace_modules() -> list[tuple[str, str]]:
    """(module, location) of each module under the `jax_plugins` namespace package, as
    pkgutil.iter_modules lists them for JAX (nothing is imported)."""
    package = sys.modules.get(PLUGIN_GROUP)   # JAX imports it when it is imported itself
    if package is not None:
        paths = list(getattr(package, "__path__", ()))
    else:
        try:
            spec = importlib.util.find_spec(PLUGIN_GROUP)
        except (ImportError, ValueError):
            return []
        paths = list(spec.submodule_search_locations or ()) if spec else []
    found = []
    for info in pkgutil.iter_modules(paths, PLUGIN_GROUP + "."):
        base = getattr(info.module_finder, "path", None)
        short = info.name.rsplit(".", 1)[1]
        location = None
        if base:
            location = os.path.join(base, short) if info.ispkg else next(
                (os.path.join(base, f) for f in sorted(os.listdir(base))
                 if f.split(".", 1)[0] == short), None)
        found.append((info.name, location))
    return found


def _owner(module: str, location: str | None):
    """(name, version) of the distribution whose RECORD lists a namespace module's files: the
    dist-info folders beside its `jax_plugins` folder (cheaper than packages_distributions)."""
    if not location:
        return None
    site = os.path.dirname(os.path.dirname(location))
    rel = module.replace(".", "/")
    try:
        infos = [e for e in os.listdir(site) if e.endswith(".dist-info")]
    except OSError:
        return None
    for info in sorted(infos):
        try:
            with open(os.path.join(site, info, "RECORD"), encoding="utf-8") as f:
                record = f.read()
        except OSError:
            continue
        if re.search(rf"^{re.escape(rel)}(/|\\.|,)", record, flags=re.MULTILINE):
            dist = importlib.metadata.Distribution.at(os.path.join(site, info))
            return dist.metadata["Name"] or info, dist.version
    return None


def _top_location(module: str) -> str | None:
    """Where an entry point's module lives, from its top-level package (not imported)."""
    try:
        spec = importlib.util.find_spec(module.split(".", 1)[0])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return spec.origin


def discover_plugins() -> list[Plugin]:
    """Every plugin JAX would load (namespace modules, entry points) and every distribution of
    PLUGIN_PLATFORMS installed, each once, with its distribution's name and version."""
    plugins: dict[str, Plugin] = {}   # by module, else by distribution
    for module, location in _namespace_modules():
        owner = _owner(module, location)
        name, version = owner if owner else (module, None)
        plugins[module] = Plugin(name, version, module, location)
    try:
        entry_points = importlib.metadata.entry_points(group=PLUGIN_GROUP)
    except Exception:   # a broken metadata file must not stop the run
        entry_points = ()
    for entry in entry_points:
        module = entry.value.split(":", 1)[0].strip()
        dist = getattr(entry, "dist", None)
        if module in plugins:
            if plugins[module].version is None and dist is not None:
                plugins[module].name, plugins[module].version = dist.metadata["Name"], dist.version
            continue
        plugins[module] = Plugin(dist.metadata["Name"] if dist else module,
                                 dist.version if dist else None, module, _top_location(module))
    named = {_normal(p.name) for p in plugins.values()}
    for name, platform_name in PLUGIN_PLATFORMS.items():
        version = version_of(name)
        if version is not None and _normal(name) not in named:
            plugins[name] = Plugin(name, version, platform=platform_name)
    for plugin in plugins.values():
        plugin.platform = plugin.platform or PLUGIN_PLATFORMS.get(_normal(plugin.name))
    return sorted(plugins.values(), key=lambda p: (p.module is None, p.name))


def installed_plugins() -> dict:
    """{distribution (or module): version} of the plugins installed beside JAX."""
    return {p.name: p.version for p in discover_plugins()}


class _Keep(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _summary(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _plugin_of(frames, plugins) -> Plugin | None:
    """The plugin whose files a traceback passes through (the last such frame wins)."""
    found = None
    for frame in frames:
        path = os.path.abspath(frame.filename)
        for plugin in plugins:
            where = plugin.location and os.path.abspath(plugin.location)
            if where and (path == where or path.startswith(where + os.sep)):
                found = plugin
    return found


def start_backends() -> None:
    """Start JAX's backends (once), watching the plugins load: the platforms each plugin
    registers and the log records about them are kept for fallback_warning(); records about
    anything else go on to JAX's log as usual. A JAX that cannot start is one FedlnError.
    Call after jax.distributed.initialize (fedln_jax.runtime.distributed), never before."""
    global _watch
    if _watch is not None:
        return
    from jax._src import xla_bridge
    plugins = discover_plugins()
    if xla_bridge.backends_are_initialized():
        _watch = _Watch(plugins, {}, [], captured=False)
        return
    modules = [p.module for p in plugins if p.module]
    loggers = [logging.getLogger(n) for n in
               dict.fromkeys([JAX_LOGGER, PLUGIN_GROUP] + [m.split(".", 1)[0] for m in modules])]
    keep, saved = _Keep(), [(lg, lg.propagate) for lg in loggers]
    registered: dict[str, list] = {}
    original = getattr(xla_bridge, "register_backend_factory", None)

    def watched(name, *args, **kwargs):   # which plugin module's initialize() is calling?
        frame = sys._getframe(1)
        while frame is not None:
            caller = frame.f_globals.get("__name__", "")
            owner = next((m for m in modules if caller == m or caller.startswith(m + ".")), None)
            if owner:
                registered.setdefault(owner, []).append(name)
                break
            frame = frame.f_back
        return original(name, *args, **kwargs)

    for lg in loggers:
        lg.addHandler(keep)
        lg.propagate = False
    if original is not None:
        xla_bridge.register_backend_factory = watched
    failure = None
    try:
        jax.devices()
    except Exception as exc:   # noqa: BLE001 -- turned into one error line below
        failure = exc
    finally:
        if original is not None:
            xla_bridge.register_backend_factory = original
        for lg, propagate in saved:
            lg.removeHandler(keep)
            lg.propagate = propagate
    _watch = _Watch(plugins, registered, [], captured=True)
    for record in keep.records:
        if _record_plugin(record, plugins) is not None:
            _watch.records.append(record)
        elif record.levelno >= logging.WARNING:   # not about a plugin: JAX's log, as before
            logging.getLogger(record.name).handle(record)
    if failure is not None:
        _watch = None   # JAX is not started: a later call raises the same
        raise FedlnError(_start_failure(failure, plugins)) from None


def _start_failure(exc: BaseException, plugins) -> str:
    culprit = _plugin_of(traceback.extract_tb(exc.__traceback__), plugins)
    if culprit is not None:
        fix = f"pip uninstall {culprit.name}" if culprit.version else f"remove {culprit.location}"
        return (f"JAX cannot start: the plugin {culprit.label()} raised {_summary(exc)} when "
                f"JAX loaded it ({fix}, or reinstall it for jaxlib {version_of('jaxlib')})")
    return f"JAX cannot start: {_summary(exc, 400)}"


def _record_plugin(record, plugins) -> Plugin | None:
    """The plugin a log record is about: its own logger's, one JAX names, or one its
    traceback passes through."""
    for plugin in plugins:
        m = plugin.module
        if m and (record.name == m or record.name.startswith(m + ".")
                  or record.name == m.split(".", 1)[0] != PLUGIN_GROUP):
            return plugin
    args = record.args if isinstance(record.args, tuple) else ()
    for plugin in plugins:
        if plugin.module and plugin.module in args:
            return plugin
    if record.exc_info and record.exc_info[2] is not None:
        return _plugin_of(traceback.extract_tb(record.exc_info[2]), plugins)
    return None


def _platform_reason(platform_name: str, plugin: Plugin) -> str:
    """Why JAX has no backend of `platform_name` that `plugin` serves."""
    try:   # JAX keeps the error of each backend it failed to initialize (private, may vanish)
        from jax._src import xla_bridge
        recorded = getattr(xla_bridge, "_backend_errors", {}).get(platform_name)
    except ImportError:
        recorded = None
    if recorded:
        return f"JAX said: {' '.join(str(recorded).split())}"
    requested = os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME")
    if requested and platform_name not in requested.lower() and not (
            "gpu" in requested.lower() and platform_name in ("cuda", "rocm")):
        return f"JAX_PLATFORMS={requested} excludes it"
    jaxlib = version_of("jaxlib")
    if platform_name in ("cuda", "rocm") and plugin.version and jaxlib and plugin.version != jaxlib:
        return f"it was built for jaxlib {plugin.version}, this is jaxlib {jaxlib}"
    try:
        from jax._src import hardware_utils
        if platform_name == "cuda" and not hardware_utils.has_visible_nvidia_gpu():
            return "no NVIDIA GPU is visible on this machine (/dev/nvidia*)"
        if platform_name == "tpu" and hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0:
            return "no TPU is visible on this machine"
    except Exception:   # private helpers: a JAX without them gives the general reason
        pass
    return "it registered no backend (is its driver or runtime missing?)"


def fallback_reason(plugin: str, plugin_version: str) -> str:
    """Why JAX is not using the distribution `plugin` of PLUGIN_PLATFORMS."""
    return _platform_reason(PLUGIN_PLATFORMS[plugin], Plugin(plugin, plugin_version))


def plugin_report() -> list[tuple[Plugin, str | None, str | None]]:
    """(plugin, the platform it gave JAX or None, why not or None) for each installed plugin."""
    start_backends()
    from jax._src import xla_bridge
    up = set(xla_bridge.backends())
    watch = _watch
    report = []
    for plugin in watch.plugins:
        records = [r for r in watch.records if _record_plugin(r, [plugin]) is plugin]
        report.append((plugin, *_status(plugin, up, watch, records)))
    return report


def _status(plugin: Plugin, up: set, watch: _Watch, records: list):
    if plugin.module is None or not watch.captured:
        if plugin.module and plugin.module not in sys.modules:
            return None, "JAX could not import it (see JAX's log above)"
        if plugin.platform is None:   # loaded before we watched: nothing more is known
            return None, None
        if plugin.platform in up:
            return plugin.platform, None
        return None, _platform_reason(plugin.platform, plugin)
    said = [r for r in records if r.levelno >= logging.WARNING]
    if plugin.module not in sys.modules:   # JAX's import of it failed
        for record in said:
            if record.exc_info and record.exc_info[1] is not None:
                return None, f"it failed to import ({_summary(record.exc_info[1])})"
        if plugin.location:   # JAX says "does not exist" for any ModuleNotFoundError inside it
            return None, "it failed to import (ModuleNotFoundError: a module it needs is missing)"
        return None, f"its module {plugin.module} is not installed"
    for record in said:
        if record.exc_info and record.exc_info[1] is not None:
            return None, f"its initialize() raised {_summary(record.exc_info[1])}"
    platforms = watch.registered.get(plugin.module, [])
    for name in platforms:
        if name in up:
            return name, None
    if platforms:
        return None, _platform_reason(platforms[0], plugin)
    if said:   # the plugin's own explanation (e.g. the CUDA plugin's version check)
        message = " ".join(said[0].getMessage().split())
        return None, f"it registered no backend; it said: {message[:240]}"
    if plugin.platform and plugin.platform not in up:
        return None, _platform_reason(plugin.platform, plugin)
    return None, "its initialize() registered no backend"
