#!/usr/bin/env bash
# The accelerator benchmark in one script: `fedln-jax bench --protocol paper` (the full grid)
# on whatever device JAX finds, inside about 10 minutes, with the PyTorch rows when torch is
# installed. Meant for a GPU machine with no network that already has jax (with CUDA), flax,
# optax, orbax, chex and torch: it installs only this project, without its dependencies.
#
#   OUT=/some/dir bash benchmarks/gpu_protocol.sh            # from the repository root
#   OUT=/tmp/p SKIP_INSTALL=1 bash benchmarks/gpu_protocol.sh --quick   # a check on a CPU
#
# Rows go to "$OUT"/protocol.jsonl and the table to "$OUT"/protocol.md as each configuration
# finishes (the most important first), so a run cut short still leaves its results.
# Environment: OUT (default ./protocol_out), BUDGET (seconds of grid before the configurations
# left are skipped, default 360), CONFIG_LIMIT (default 90: a configuration whose rounds
# alone would take longer is skipped), PYTHON (default python, else python3), SKIP_INSTALL=1.
# Extra arguments go to `fedln-jax bench` (e.g. --quick, --runs 1,8).
# The grid's conv formulations are lax and patches (the protocol's default --conv-impl): the
# first GPU run settles which `auto` should pick there (docs/benchmarks.md, "Defaults per
# backend"): lax's vmapped backward is a grouped conv, slow on CUDA per jax issue 13800.
set -uo pipefail
OUT=${OUT:-$PWD/protocol_out}
BUDGET=${BUDGET:-360}
CONFIG_LIMIT=${CONFIG_LIMIT:-90}
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
mkdir -p "$OUT"
# JAX would otherwise take 75% of the GPU's memory up front: the torch rows share the device,
# and the peak bytes in use then measure what the programs need.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    "$PYTHON" -m pip install --no-deps --no-build-isolation -q -e . || exit 1
fi
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
    "$PYTHON" - <<'PY'
import platform
import jax
print("python", platform.python_version(), "jax", jax.__version__, "backend", jax.default_backend(),
      "devices", jax.devices())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
except ImportError:
    print("torch not installed: no PyTorch rows")
PY
    uptime
} 2>&1 | tee "$OUT/device.txt"

# The grid's budget plus time for the configuration under way when it runs out.
timeout --signal=TERM $((BUDGET + 120)) "$PYTHON" -m fedln_jax.cli bench --protocol paper \
    --budget "$BUDGET" --config-limit "$CONFIG_LIMIT" --out "$OUT/protocol.jsonl" "$@" \
    > "$OUT/stdout.txt"
status=$?
cat "$OUT/protocol.md"
echo "exit status $status; rows in $OUT/protocol.jsonl, table in $OUT/protocol.md"
exit $status
