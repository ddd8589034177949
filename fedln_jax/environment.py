"""Where a run runs: library versions, the backend and its devices, and the CPU-fallback check.

An accelerator user's worst outcome is a run that quietly trains on the CPU, 100x slower,
because the GPU or TPU plugin did not load (a plugin built for another jaxlib, a missing CUDA
library, `JAX_PLATFORMS=cpu` left in the environment). JAX logs at most one line about it.
`fallback_warning()` turns that state into one warning line naming the plugin and the reason;
`fedln-jax info` and every training command print it (docs/install.md#no-silent-cpu-fallback).
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

import jax

from fedln_jax.version import __version__

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint", "numpy")
# Distributions that bring an accelerator backend to JAX, and the JAX platform each serves.
PLUGIN_PLATFORMS = {
    "jax-cuda12-plugin": "cuda", "jax-cuda13-plugin": "cuda",
    "jax-cuda12-pjrt": "cuda", "jax-cuda13-pjrt": "cuda",
    "jax-rocm7-plugin": "rocm", "jax-rocm7-pjrt": "rocm",
    "libtpu": "tpu", "libtpu-nightly": "tpu",
}
_warned = False   # the fallback warning is printed once per process


def version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict:
    """fedln_jax, Python and every library of LIBRARIES that is installed."""
    versions = {"fedln_jax": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        versions[name] = version_of(name)
    return versions


def installed_plugins() -> dict:
    """{distribution: version} of the accelerator plugins installed beside JAX."""
    found = {name: version_of(name) for name in PLUGIN_PLATFORMS}
    return {name: version for name, version in found.items() if version is not None}


def fallback_reason(plugin: str, plugin_version: str) -> str:
    """Why JAX is not using `plugin`: the error JAX recorded, the platform list the user set,
    or a plugin built for another jaxlib; else that it did not register a backend."""
    platform_name = PLUGIN_PLATFORMS[plugin]
    try:   # JAX keeps the error of each backend it failed to initialize (private, may vanish)
        from jax._src import xla_bridge
        recorded = getattr(xla_bridge, "_backend_errors", {}).get(platform_name)
    except ImportError:
        recorded = None
    if recorded:
        return f"JAX said: {' '.join(str(recorded).split())}"
    requested = os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME")
    if requested and platform_name not in requested.lower() and "gpu" not in requested.lower():
        return f"JAX_PLATFORMS={requested} excludes it"
    jaxlib = version_of("jaxlib")
    if platform_name != "tpu" and jaxlib and plugin_version != jaxlib:
        return f"it was built for jaxlib {plugin_version}, this is jaxlib {jaxlib}"
    return "it registered no backend (is its driver or runtime missing?)"


def fallback_warning() -> str | None:
    """One line when an accelerator plugin is installed but JAX's backend is the CPU, else None."""
    plugins = installed_plugins()
    if not plugins or jax.default_backend() != "cpu":
        return None
    name, version = sorted(plugins.items())[0]
    return (f"warning: {name} {version} is installed but JAX runs on the CPU: "
            f"{fallback_reason(name, version)}; training goes on, on the CPU")


def warn_if_cpu_fallback() -> None:
    """Print the fallback warning on stderr, once per process (also under --quiet)."""
    global _warned
    line = fallback_warning()
    if line and not _warned:
        print(line, file=sys.stderr)
        _warned = True


def device_summary() -> dict:
    """What a run records about where it ran: backend, device kind and count, versions."""
    devices = jax.devices()
    return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind,
            "device_count": len(devices), "process_count": jax.process_count(),
            "jax": jax.__version__, "jaxlib": version_of("jaxlib")}


def device_memory_bytes(device) -> int | None:
    """The memory JAX reports for a device (GPU/TPU: bytes_limit); None where it reports none."""
    try:
        stats = device.memory_stats() or {}
    except Exception:   # some backends raise instead of returning None
        return None
    return stats.get("bytes_limit")


def describe(cache_dir: str | None) -> list[str]:
    """The lines of `fedln-jax info`."""
    lines = [f"{name:<17} {version or '-'}" for name, version in library_versions().items()]
    plugins = installed_plugins()
    lines.append("plugins           " + (", ".join(f"{n} {v}" for n, v in sorted(plugins.items()))
                                         or "none (CPU only)"))
    lines.append(f"backend           {jax.default_backend()}")
    kinds: dict[str, list] = {}
    for device in jax.devices():
        kinds.setdefault(device.device_kind, []).append(device)
    for kind, devices in kinds.items():
        memory = device_memory_bytes(devices[0])
        lines.append(f"devices           {len(devices)} x {kind}"
                     + (f", {memory / 2 ** 30:.1f} GiB each" if memory else ""))
    lines.append(f"processes         {jax.process_count()}")
    lines.append(f"compile cache     {cache_dir or 'off'}")
    return lines
