"""What the host provides: JAX's backends and accelerator plugins, the multi-process start,
the compilation cache, optional writers (TensorBoard). Imports only the package's base
modules (docs/architecture.md#layers)."""
