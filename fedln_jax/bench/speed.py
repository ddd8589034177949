"""Throughput benchmark: client steps/s and GFLOP/s of a federated round, vectorized or looped.

Useful work is counted analytically from the architecture (`forward_macs`): a training step
costs 3x the forward MACs (forward, gradient w.r.t. activations, gradient w.r.t. weights),
2 FLOPs per MAC. Element-wise work (ReLU, pooling, normalizers, the optimizer) is not counted,
so GFLOP/s is a lower bound on what the hardware executes and comparable with the usual
PyTorch/JAX figures. The machine's own ceiling is measured in the same process: the best
time of a large float32 matmul.

Data are synthetic uint8 images of the model's input shape, built directly with
`synthetic_dataset` (no dataset needed) and the run is built as training builds it
(`training/experiment.build_experiment`), so every number depends only on shapes.
"""
from __future__ import annotations

import math
import platform
import resource
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedln_jax.choices import ENGINES, INPUT_SHAPES
from fedln_jax.config import INT32_MAX, Config
from fedln_jax.data.dataset import Dataset
from fedln_jax.engine.placement import client_mesh, default_chunk_size, replicate
from fedln_jax.engine.reference import make_loop_round
from fedln_jax.engine.round import make_multi_round_fn, make_round_fn
from fedln_jax.errors import FedlnError
from fedln_jax.models import (forward_macs, resolve_conv_impl,  # noqa: F401
                              train_flops_per_example)
from fedln_jax.models.resnet import resnet_feature_dim
from fedln_jax.runtime.plugins import version_of
from fedln_jax.training.experiment import build_experiment, hparams_of, initial_state
from fedln_jax.training.memory import analysis_of, describe, device_capacity, peak_of

# How many clients one device vmaps per chunk: the backend's default, one (the CPU default),
# or the whole per-device cohort (the GPU/TPU default).
CHUNK_POLICIES = ("auto", "narrow", "cohort")
NUM_CLASSES = 10
# Timed rounds of one benchmark: the median of a few is the figure; millions would only hang.
MAX_TIMED_ROUNDS = 10_000


# ----------------------------------------------------------------------------- FLOP counting


def resnet18_forward_macs(num_classes: int = 10, size: int = 32) -> int:
    """MACs of the CIFAR-style ResNet-18 of the paper (docs/method.md#models) (3x3 stem, stride 1, no max-pool,
    BasicBlocks [2,2,2,2] of widths 64..512, 1x1 projection shortcuts, avg_pool 4 + flatten,
    linear head), for predictions before that model is built; normalizers, the pooling and the
    residual adds are not counted."""
    head = resnet_feature_dim(512, (size, size)) * num_classes   # 512 x classes at 32x32
    macs = size * size * 64 * 9 * 3                          # stem
    cin = 64
    for stage, width in enumerate((64, 128, 256, 512)):
        if stage:
            size //= 2                                        # first block of a stage: stride 2
        for block in range(2):
            macs += size * size * width * 9 * cin             # conv a (strided in block 0)
            macs += size * size * width * 9 * width           # conv b
            if cin != width:
                macs += size * size * width * cin             # 1x1 projection shortcut
            cin = width
    return macs + head


# ----------------------------------------------------------------------------- measurements


def matmul_peak_gflops(n: int = 2048, repeats: int = 7, dtype: str = "float32") -> float:
    """Best-of-`repeats` GFLOP/s of an n x n matmul in dtype: the machine's practical ceiling."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(jnp.dot)
    matmul(a, b).block_until_ready()
    best = min(_timed(lambda: matmul(a, b).block_until_ready()) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn: Callable) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_rss_mb() -> float:
    """The process's peak resident set size (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024 if platform.system() == "Darwin" else 1024)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else (platform.processor() or "unknown")


def device_peak_mb() -> float | None:
    """Peak bytes in use on the first device (GPU/TPU report it; XLA:CPU does not: None)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2 ** 20


def synthetic_dataset(num_examples: int, input_shape, seed: int = 0) -> Dataset:
    """Random uint8 images and labels of the model's input shape (a test set of one batch's
    worth: the benchmark times rounds, not evaluations)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (num_examples,) + tuple(input_shape), dtype=np.uint8)
    y = rng.integers(0, NUM_CLASSES, num_examples, dtype=np.int32)
    return Dataset(name="bench", x_train=x, y_train=y, x_test=x[:32], y_test=y[:32],
                   num_classes=NUM_CLASSES, pixel_scale=1 / 255)


def check_images_fit(clients: int, examples: int, input_shape) -> None:
    """The synthetic images alone against the device (build_experiment checks the whole floor
    once they exist): a huge --clients is one line, not an allocation failure."""
    need = clients * examples * (math.prod(input_shape) + 8)
    capacity, what = device_capacity()
    if capacity is not None and need > capacity:
        raise FedlnError(f"this benchmark needs at least {describe(need)} for its synthetic "
                         f"images alone ({clients} clients x {examples} images of "
                         f"{'x'.join(map(str, input_shape))}) but the device has "
                         f"{describe(capacity)} ({what}); lower --clients or --batch-size")


def run_bench(model: str = "cnn", clients: int = 10, local_steps: int = 5, batch_size: int = 32,
              rounds: int = 3, engine_name: str = "vectorized", chunk_size: int = 0,
              norm: str = "none", dtype: str = "float32", rounds_per_call: int = 1,
              matmul_size: int = 2048, conv_features: str = "", dense_features: str = "",
              conv_impl: str = "auto", chunk_policy: str = "auto") -> dict:
    """Time `rounds` calls after a warm-up one; return the result record (see module doc).

    conv_features / dense_features set the widths as the config keys of the same names do.

    rounds_per_call > 1 (vectorized engine only) fuses that many rounds into one jitted call
    (`round.make_multi_round_fn`, as `train.run` does between evaluations); the reported
    round time is the call time divided by it.
    conv_impl: any of `models.CONV_IMPLS` ("auto" = the backend's default).
    chunk_policy: when chunk_size is 0, "auto" (the backend's default), "narrow" (1 client per
    device) or "cohort" (the whole per-device cohort in one vmap). An explicit chunk_size wins.
    """
    if engine_name not in ENGINES:
        raise FedlnError(f"unknown engine {engine_name!r}; expected one of {', '.join(ENGINES)}")
    for key, value in (("clients", clients), ("local_steps", local_steps),
                       ("batch_size", batch_size), ("rounds", rounds),
                       ("rounds_per_call", rounds_per_call)):
        if value < 1:
            raise FedlnError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
        if value > INT32_MAX:
            raise FedlnError(f"--{key.replace('_', '-')}={value} is too large: at most "
                             f"{INT32_MAX} (an int32 inside the compiled round)")
    if local_steps * batch_size > INT32_MAX:
        raise FedlnError(f"--local-steps x --batch-size = {local_steps * batch_size} examples "
                         f"per client and round is too large: at most {INT32_MAX}")
    if rounds * rounds_per_call > MAX_TIMED_ROUNDS:
        raise FedlnError(f"--rounds x --rounds-per-call = {rounds * rounds_per_call} timed "
                         f"rounds is more than a benchmark needs: at most {MAX_TIMED_ROUNDS}")
    if rounds_per_call > 1 and engine_name != "vectorized":
        raise FedlnError("--rounds-per-call applies to the vectorized engine only")
    if chunk_size < 0:
        raise FedlnError(f"--chunk-size must be >= 0, got {chunk_size}")
    if chunk_size > clients:
        raise FedlnError(f"--chunk-size={chunk_size} is wider than the {clients} clients "
                         f"(a wider chunk is only padding)")
    if chunk_policy not in CHUNK_POLICIES:
        raise FedlnError(f"unknown chunk policy {chunk_policy!r}; expected one of "
                         f"{', '.join(CHUNK_POLICIES)}")
    input_shape = INPUT_SHAPES.get(model)
    if input_shape is None:
        raise FedlnError(f"unknown model {model!r}; expected one of {', '.join(INPUT_SHAPES)}")
    mesh = client_mesh()
    chunk = chunk_size or chunk_for_policy(chunk_policy, clients, mesh.size)
    examples = 4 * batch_size           # a few full batches per client: reshuffles are exercised
    # The run as training builds it (model, spec, algorithm, data, the memory floor checked),
    # on synthetic images of the model's input shape.
    config = Config(model=model, norm=norm, dtype=dtype, conv_impl=conv_impl,
                    conv_features=conv_features, dense_features=dense_features,
                    num_clients=clients, local_steps=local_steps, batch_size=batch_size,
                    client_chunk_size=chunk if engine_name == "vectorized" else 1,
                    partition="iid", lr=0.01, seed=0).validate()
    check_images_fit(clients, examples, input_shape)   # before they are made
    exp = build_experiment(config, dataset=synthetic_dataset(clients * examples, input_shape))
    spec, data, hparams, state = exp.spec, exp.data, hparams_of(config), initial_state(exp)
    fedavg, apply_fn = exp.algorithm, exp.apply_fn
    if engine_name == "vectorized":
        state, hparams, data = replicate((state, hparams, data), mesh)
        round_fn = make_round_fn(apply_fn, spec, fedavg, mesh)
        if rounds_per_call > 1:
            multi = make_multi_round_fn(round_fn)
            blocks = jnp.int32(rounds_per_call)
            round_fn = lambda state, hparams, data: _loss_as_metrics(multi(state, hparams, data, blocks))
        jitted = jax.jit(round_fn, donate_argnums=0)
        start = time.perf_counter()
        round_fn = jitted.lower(state, hparams, data).compile()
        compile_seconds = time.perf_counter() - start
        plan_bytes = peak_of(analysis_of(round_fn))   # XLA's sizes of this very executable
    else:
        round_fn = make_loop_round(apply_fn, spec, fedavg)
        compile_seconds = None          # jitted lazily: estimated from the first round below
        plan_bytes = None

    def one_round(state):
        state, metrics = round_fn(state, hparams, data)
        jax.block_until_ready((state, metrics))
        return state, metrics

    start = time.perf_counter()
    state, metrics = one_round(state)   # warm-up (the loop engine compiles here)
    first_round = time.perf_counter() - start
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        state, metrics = one_round(state)
        times.append((time.perf_counter() - start) / rounds_per_call)
    loss = float(metrics["train_loss"])
    if not math.isfinite(loss):
        raise FedlnError(f"the benchmark round produced a non-finite loss ({loss})")
    median = statistics.median(times)
    steps = clients * local_steps
    flops = steps * batch_size * train_flops_per_example(model, input_shape, NUM_CLASSES,
                                                            conv_features, dense_features)
    peak = matmul_peak_gflops(matmul_size)
    gflops = flops / median / 1e9
    return {
        "model": model, "conv_features": conv_features, "dense_features": dense_features,
        "engine": engine_name, "clients": clients, "local_steps": local_steps,
        "batch_size": batch_size, "rounds_timed": rounds * rounds_per_call,
        "rounds_per_call": rounds_per_call,
        "chunk_size": chunk if engine_name == "vectorized" else None,
        "norm": norm, "dtype": dtype, "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind, "devices": jax.device_count(),
        "conv_impl": resolve_conv_impl(conv_impl)[0] if model != "mlp" else None,
        "chunk_policy": chunk_policy if not chunk_size else "explicit",
        "client_steps_per_second": steps / median,
        "examples_per_second": steps * batch_size / median,
        "gflops_per_second": gflops,
        "gflop_per_round": flops / 1e9,
        "round_seconds_median": median,
        "round_seconds_min": min(times),
        "round_seconds_max": max(times),
        "compile_seconds": (compile_seconds if compile_seconds is not None
                            else max(first_round - median, 0.0)),
        "first_round_seconds": first_round,
        "peak_rss_mb": peak_rss_mb(),
        "device_peak_mb": device_peak_mb(),
        "memory_plan_mb": None if plan_bytes is None else plan_bytes / 2 ** 20,
        "matmul_peak_gflops": peak,
        "fraction_of_matmul_peak": gflops / peak,
        "train_loss": loss,
        "jax_version": jax.__version__,
        "jaxlib_version": version_of("jaxlib"),
    }


def chunk_for_policy(policy: str, clients: int, num_devices: int) -> int:
    if policy == "narrow":
        return 1
    if policy == "cohort":
        return max(1, math.ceil(clients / num_devices))
    return default_chunk_size(clients, num_devices)


def _loss_as_metrics(result):
    state, mean_loss = result
    return state, {"train_loss": mean_loss}
