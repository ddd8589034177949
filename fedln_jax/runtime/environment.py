"""Where a run runs: library versions, the backend and its devices, and the CPU-fallback check.

An accelerator user's worst outcome is a run that quietly trains on the CPU, 100x slower,
because the GPU or TPU plugin did not load (a plugin built for another jaxlib, a missing CUDA
library, `JAX_PLATFORMS=cpu` left in the environment). JAX logs at most one line about it, or a
traceback that looks like a crash and is not one. `fallback_warning()` names every plugin that
is installed but gave JAX no backend (found as JAX finds them: fedln_jax.runtime.plugins), with the
reason, in one line; `fedln-jax info` and every training command print it
(docs/install.md#no-silent-cpu-fallback), after jax.distributed.initialize, never before.
"""
from __future__ import annotations

import dataclasses
import platform
import sys

import jax

# PLUGIN_PLATFORMS, fallback_reason, installed_plugins, start_backends: for callers of before
from fedln_jax.runtime.plugins import (PLUGIN_PLATFORMS, fallback_reason, installed_plugins,  # noqa: F401
                               plugin_report, start_backends, version_of)
from fedln_jax.version import __version__

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint", "numpy")
_warned = False   # the fallback warning is printed once per process


def library_versions() -> dict:
    """fedln_jax, Python and every library of LIBRARIES that is installed."""
    versions = {"fedln_jax": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        versions[name] = version_of(name)
    return versions


def fallback_warning() -> str | None:
    """One line naming every installed plugin that gave JAX no backend, with the reason; None
    when there is none."""
    broken = [(p, why) for p, gave, why in plugin_report() if why is not None]
    if not broken:
        return None
    # The CUDA kernels beside a failed CUDA plugin: one entry (module plugins sort first).
    merged = []
    for plugin, why in broken:
        owner = next((p for p, _ in merged if p.module is not None and plugin.module is None
                      and p.platform and p.platform == plugin.platform), None)
        if owner is not None:
            owner.also.append(f"{plugin.name} {plugin.version}")
        else:
            merged.append((dataclasses.replace(plugin, also=[]), why))
    backend = jax.default_backend()
    if backend == "cpu":
        tail = "training goes on, on the CPU"
        if len(merged) == 1:
            plugin, why = merged[0]
            return f"warning: {plugin.label()} is installed but JAX runs on the CPU: {why}; {tail}"
        head = f"warning: {len(merged)} JAX plugins are installed but JAX runs on the CPU: "
    else:
        tail = f"JAX runs on {backend}"
        if len(merged) == 1:
            plugin, why = merged[0]
            return f"warning: {plugin.label()} is installed but gave JAX no backend: {why}; {tail}"
        head = f"warning: {len(merged)} JAX plugins are installed but gave JAX no backend: "
    return head + "; ".join(f"{p.label()}: {why}" for p, why in merged) + f"; {tail}"


def warn_if_cpu_fallback() -> None:
    """Start the backends and print the plugin warning on stderr, once per process (also under
    --quiet). After jax.distributed.initialize, never before."""
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
    report = plugin_report()
    lines.append("plugins           " + (", ".join(
        p.label() + (f" -> {gave}" if gave else " -> no backend" if why else "")
        for p, gave, why in report) or "none (CPU only)"))
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
