"""`fedln-jax bench --protocol paper`: the paper's default protocol timed on this backend.

The paper's run: the paper CNN on CIFAR-10, 10 clients with one class each, 10 local SGD
steps of batch 32 per round, 10,000 rounds (docs/method.md). Here on synthetic data of the
same shapes (uint8 32x32x3 images, 10 classes, client c holds class c mod 10, CIFAR-10's
50,000 training images split evenly: 5,000 per client at a cohort of 10), so nothing is
downloaded and every figure depends only on shapes.

Each configuration of the grid (conv_impl x dtype x runs R x cohort x chunk width) is built
as the training loop builds a program (`program.build_program`: R seeds stacked on a runs
axis and trained as one vectorized program), compiled once, then timed over whole blocks of
rounds (`run_block`, as `train.py` calls it). A row reports the compile time, rounds/s (one
round = one round of every one of the R runs), client steps/s, GFLOP/s of useful work
(bench.py's analytic count), the fraction of a large matmul's speed measured in the same
process in the row's dtype, the compiled program's memory (XLA's memory analysis), the
process's peak memory (the device's peak bytes in use where the backend reports it, else
the peak RSS, labelled) and the projected wall time of the 10,000-round protocol.
The PyTorch alternatives (torch_loop.py) are timed in the same command when torch is
importable. docs/benchmarks.md describes the command and its output.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedln_jax.algorithms import get_algorithm
from fedln_jax.bench import torch_loop
from fedln_jax.bench.grid import (DEFAULT_GRID, FULL, MAX_RUNS, NUM_CLASSES, PROTOCOL_ROUNDS, QUICK,
                                  TRAIN_IMAGES, Point, Sizes, build_grid, chunk_width,
                                  client_images, memory_reason, protocol_floors)
from fedln_jax.bench.report import add_ratios, format_seconds, markdown_table, time_calls
from fedln_jax.bench.speed import cpu_model, device_peak_mb, matmul_peak_gflops, peak_rss_mb
from fedln_jax.config import Config
from fedln_jax.engine.client import epochs_needed, make_apply_fn
from fedln_jax.engine.state import RoundSpec, make_data
from fedln_jax.errors import FedlnError, first_line
from fedln_jax.models import build_model, train_flops_per_example
from fedln_jax.runtime.plugins import version_of
from fedln_jax.training.experiment import Experiment
from fedln_jax.training.lock import check_file_path, hold_file
from fedln_jax.training.memory import Floor, device_capacity
from fedln_jax.training.program import build_program
from fedln_jax.training.workdir import write_text

def protocol_data(cohort: int, images_per_client: int, side: int = 32):
    """Random uint8 images; client c holds images_per_client images of class c mod 10."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (cohort * images_per_client, side, side, 3), dtype=np.uint8)
    y = np.repeat(np.arange(cohort, dtype=np.int32) % NUM_CLASSES, images_per_client)
    blocks = np.arange(x.shape[0], dtype=np.int32).reshape(cohort, images_per_client)
    return make_data(x, y, list(blocks), NUM_CLASSES)


def protocol_members(point: Point, data, images_per_client: int, sizes: Sizes,
                     floor: Floor) -> list[Experiment]:
    """The R runs (seeds 0..R-1) of one configuration, as the training loop's Experiments;
    `floor`: the configuration's (protocol_floors), of which each run holds one run's share."""
    width = chunk_width(point.chunk, point.cohort)
    widths = dict(conv_features=sizes.conv_features, dense_features=sizes.dense_features)
    config = Config(model="cnn", norm="none", conv_impl=point.conv_impl, dtype=point.dtype,
                    num_clients=point.cohort, local_steps=sizes.local_steps,
                    batch_size=sizes.batch_size, client_chunk_size=width, lr=0.01, **widths)
    net = build_model("cnn", "none", NUM_CLASSES, dtype=point.dtype, conv_impl=point.conv_impl,
                      **widths)
    spec = RoundSpec(num_clients=point.cohort, cohort_size=point.cohort,
                     local_steps=sizes.local_steps, batch_size=sizes.batch_size,
                     pixel_scale=1 / 255, chunk_size=width,
                     max_epochs=epochs_needed(images_per_client, sizes.local_steps, sizes.batch_size),
                     momentum=0.0, weight_decay=0.0)
    counts_CK = np.asarray(data.class_counts_CK)
    exp = Experiment(config=config, model=net, apply_fn=make_apply_fn(net), spec=spec, data=data,
                     x_test=data.x[:1], y_test=data.y[:1], num_classes=NUM_CLASSES,
                     counts_CK=counts_CK, test_weights_CK=counts_CK,
                     algorithm=get_algorithm("fedavg"),
                     floor=floor._replace(runs=1, chunk=1))
    return [exp._replace(config=config.replace(seed=seed)) for seed in range(point.runs)]


def block_args(program, state, rounds: int, runs: int) -> tuple:
    """The arguments of `run_block` for `rounds` rounds of `runs` runs from `state`."""
    return state, program.hparams, program.data, jnp.int32(rounds), program.scalars([0.0] * runs)


def time_point(point: Point, data, images_per_client: int, sizes: Sizes, floor: Floor) -> dict:
    """Build one configuration as the training loop does, compile its block of rounds and time
    it; the measured part of its row."""
    program = build_program(protocol_members(point, data, images_per_client, sizes, floor),
                            jax.devices())
    state = program.fresh
    start = time.perf_counter()
    compiled = program.run_block.lower(*block_args(program, state, 1, point.runs)).compile()
    compile_seconds = time.perf_counter() - start

    def call(n):
        nonlocal state
        start = time.perf_counter()
        state, loss, bad = jax.block_until_ready(compiled(*block_args(program, state, n, point.runs)))
        return (loss, bad), time.perf_counter() - start

    results, first, n = time_calls(call, sizes)
    loss, bad = results[-1][0]
    mean_loss = float(np.max(np.asarray(loss))) / n
    if not math.isfinite(mean_loss) or np.any(np.asarray(bad) >= 0):
        raise FedlnError(f"{point}: the timed rounds produced a non-finite loss")
    memory = compiled.memory_analysis()
    program_bytes = (None if memory is None else memory.temp_size_in_bytes
                     + memory.argument_size_in_bytes + memory.output_size_in_bytes
                     - memory.alias_size_in_bytes)
    return {"compile_seconds": compile_seconds, "first_round_seconds": first,
            "rounds_per_call": n, "calls": sizes.calls,
            "round_seconds_median": statistics.median(t for _, t in results) / n,
            "train_loss": mean_loss,
            "program_memory_mb": None if program_bytes is None else program_bytes / 2 ** 20}


def protocol_row(point: Point, measured: dict, peaks: dict, sizes: Sizes) -> dict:
    """The row of a measured configuration: the rates derived from its round time."""
    rounds_per_second = 1 / measured["round_seconds_median"]
    steps_per_round = point.runs * point.cohort * sizes.local_steps
    flops = steps_per_round * sizes.batch_size * train_flops_per_example(
        "cnn", (sizes.side, sizes.side, 3), NUM_CLASSES, sizes.conv_features, sizes.dense_features)
    gflops = flops * rounds_per_second / 1e9
    device_peak = device_peak_mb()
    return {**point._asdict(),
            "chunk_size": None if point.chunk == "-" else chunk_width(point.chunk, point.cohort),
            "status": "ok", "size": sizes.name, "local_steps": sizes.local_steps,
            "batch_size": sizes.batch_size, "image_side": sizes.side,
            "images_per_client": client_images(point.cohort, sizes), **measured, "rounds_per_second": rounds_per_second,
            "run_rounds_per_second": rounds_per_second * point.runs,
            "client_steps_per_second": steps_per_round * rounds_per_second,
            "gflop_per_round": flops / 1e9, "gflops_per_second": gflops,
            "matmul_peak_gflops": peaks[point.dtype],
            "fraction_of_matmul_peak": gflops / peaks[point.dtype],
            "peak_memory_mb": device_peak if device_peak is not None else peak_rss_mb(),
            "peak_memory_source": ("device peak bytes in use, process so far"
                                   if device_peak is not None else "host peak RSS, process so far"),
            "protocol_seconds": PROTOCOL_ROUNDS / rounds_per_second + measured["compile_seconds"]}


def torch_row(impl: str, cohort: int, measured: dict, peaks: dict, sizes: Sizes) -> dict:
    """A PyTorch implementation's row, in the columns of the JAX rows (one run, float32)."""
    point = Point(impl, "float32", 1, cohort, "-")
    measured = {**measured, "compile_seconds": 0.0}      # eager: nothing compiled up front
    row = protocol_row(point, measured, peaks, sizes)
    row.update(compile_seconds=None,
               protocol_seconds=PROTOCOL_ROUNDS * measured["round_seconds_median"])
    if measured["torch_peak_mb"] is not None:
        row.update(peak_memory_mb=measured["torch_peak_mb"],
                   peak_memory_source="torch.cuda.max_memory_allocated")
    return row


# ----------------------------------------------------------------------------- the command


def environment() -> dict:
    """Where and with what the rows were measured (added to every row)."""
    env = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
           "devices": jax.device_count(), "jax_version": jax.__version__,
           "jaxlib_version": version_of("jaxlib"), "cpu_model": cpu_model(),
           "python": sys.version.split()[0]}
    if torch_loop.available():
        env["torch_version"] = torch_loop.torch_version()
    return env


def skip_reason(point: Point, rows: list[dict], elapsed: float, budget: float | None,
                config_limit: float | None, sizes: Sizes) -> str | None:
    """Why a configuration is not run: the total budget is spent, or its rounds alone, at the
    best client-step rate measured so far, would take longer than the per-configuration limit
    (so one slow configuration cannot eat the run)."""
    if budget is not None and elapsed >= budget:
        return f"skipped: the budget of {budget:g} s is spent"
    rates = [r["client_steps_per_second"] for r in rows if r["status"] == "ok"
             and not r["conv_impl"].startswith("torch")]
    if config_limit is None or not rates:
        return None
    estimate = sizes.fewest_rounds * point.runs * point.cohort * sizes.local_steps / max(rates)
    if estimate > config_limit:
        return (f"skipped: its rounds would take about {estimate:.0f} s at the best rate measured "
                f"so far, over the --config-limit of {config_limit:g} s")
    return None


def memory_reasons(grid: list[Point], sizes: Sizes) -> tuple[dict, dict]:
    """Each configuration's memory floor, and why it cannot fit this device (None where it
    fits); a grid of which none fits is refused."""
    floors, (capacity, what) = protocol_floors(grid, sizes), device_capacity()
    reasons = {p: memory_reason(floors[p], capacity, what) for p in grid}
    if all(reasons.values()):   # not one configuration fits: a grid no device here could run
        raise FedlnError(f"no configuration of the grid fits this device; the first one "
                         f"{reasons[grid[0]].removeprefix('skipped: ')}; lower --runs or --cohort")
    return floors, reasons


def run_protocol(grid: list[Point], sizes: Sizes, floors: dict, reasons: dict,
                 out: str | None = None, budget: float | None = None,
                 config_limit: float | None = None, with_torch: bool = True,
                 log=None) -> list[dict]:
    """Measure every configuration (the torch rows of a cohort before its first JAX row),
    writing each row to `out` (JSON lines) and the table to out's .md as it finishes.
    floors, reasons: memory_reasons of the grid; one whose floor exceeds the device is a
    skipped row."""
    log = log or sys.stderr            # looked up now: a redirected stderr counts
    start, env = time.perf_counter(), environment()
    matmul_size = sizes.matmul_size or (2048 if env["backend"] == "cpu" else 8192)
    peaks = {d: matmul_peak_gflops(matmul_size, dtype=d) for d in sorted({p.dtype for p in grid} | {"float32"})}
    print(f"protocol bench on {env['backend']} ({env['device_kind']}), jax {env['jax_version']}; "
          f"{len(grid)} configurations; matmul peak " + ", ".join(
              f"{d} {g:.0f} GFLOP/s" for d, g in peaks.items()), file=log, flush=True)
    if out:   # a fresh file each time, so a run cut short leaves only its own rows
        for path in (out, os.path.splitext(out)[0] + ".md"):
            write_text(path, "")
    rows, images = [], {}
    torch_cohorts = set()
    for point in grid:
        per_client = client_images(point.cohort, sizes)
        if with_torch and point.cohort not in torch_cohorts:
            torch_cohorts.add(point.cohort)
            for impl in torch_loop.IMPLS:
                reason = skip_reason(Point(impl, "float32", 1, point.cohort, "-"), rows,
                                     time.perf_counter() - start, budget, config_limit, sizes)
                row = _measure(lambda: torch_row(impl, point.cohort, torch_loop.time_torch(
                    impl, point.cohort, per_client, sizes), peaks, sizes),
                    Point(impl, "float32", 1, point.cohort, "-"), reason)
                _emit(rows, {**row, **env}, out, log)
        reason = (reasons[point]
                  or skip_reason(point, rows, time.perf_counter() - start, budget, config_limit, sizes))
        if point.cohort not in images and reason is None:
            images.clear()                              # one cohort's images on the device at a time
            images[point.cohort] = protocol_data(point.cohort, per_client, sizes.side)
        row = _measure(lambda: protocol_row(point, time_point(point, images[point.cohort],
                                                              per_client, sizes, floors[point]),
                                            peaks, sizes),
                       point, reason)
        _emit(rows, {**row, **env}, out, log)
    return rows


def _measure(measure, point: Point, reason: str | None) -> dict:
    """The row, or the row of a skipped or failed configuration (out of memory, say): the
    grid goes on."""
    if reason is not None:
        return {**point._asdict(), "status": reason}
    try:
        return measure()
    except (RuntimeError, MemoryError) as exc:   # e.g. XLA's or CUDA's out of memory: recorded
        return {**point._asdict(), "status": f"failed: {first_line(exc, 300)}"}


def _emit(rows: list[dict], row: dict, out: str | None, log) -> None:
    rows.append(row)
    add_ratios(rows)
    text = (f"  {row['conv_impl']:10s} {row['dtype']:8s} R={row['runs']:<3d} cohort={row['cohort']:<4d}"
            f" chunk={row['chunk']:7s} ")
    if row["status"] == "ok":
        text += (f"{row['rounds_per_second']:9.3f} rounds/s  {row['gflops_per_second']:8.1f} GFLOP/s"
                 f"  compile {row['compile_seconds'] or 0:6.1f} s  10,000 rounds "
                 f"{format_seconds(row['protocol_seconds'])}")
    else:
        text += row["status"]
    print(text, file=log, flush=True)
    if out:   # both files replaced whole: a kill leaves the rows so far, never a torn line
        write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
        write_text(os.path.splitext(out)[0] + ".md", markdown_table(rows) + "\n")



PROTOCOL_FLAGS = ("quick", "runs", "cohort", "out", "budget", "config_limit", "no_torch")
SINGLE_FLAGS = ("model", "conv_features", "dense_features", "clients", "local_steps",
                "batch_size", "rounds", "engine", "chunk_size", "norm", "rounds_per_call")


def check_bench_flags(args, defaults: dict) -> None:
    """Each flag belongs to one form of `fedln-jax bench`: refuse it in the other one."""
    given = lambda key: getattr(args, key) != defaults[key]
    other = SINGLE_FLAGS if args.protocol else PROTOCOL_FLAGS
    if (wrong := next((key for key in other if given(key)), None)) is not None:
        flag = "--" + wrong.replace("_", "-")
        raise FedlnError(f"{flag} does not apply to --protocol paper, which fixes the model and "
                         f"the sizes" if args.protocol else f"{flag} applies to --protocol paper only")


def protocol_main(args) -> int:
    """`fedln-jax bench --protocol paper`: the rows as JSON lines on stdout (and in --out),
    then the markdown table; progress on stderr."""
    given = lambda value, key: DEFAULT_GRID[key] if value is None else value   # "" is refused
    grid = build_grid(given(args.conv_impl, "conv_impl"), given(args.dtype, "dtype"),
                      given(args.runs, "runs"), given(args.cohort, "cohort"),
                      given(args.chunk_policy, "chunk"))
    for flag, value in (("--budget", args.budget), ("--config-limit", args.config_limit)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise FedlnError(f"{flag} must be a positive number of seconds, got {value}")
    sizes = QUICK if args.quick else FULL
    if (runs := max(p.runs for p in grid)) > MAX_RUNS:
        raise FedlnError(f"--runs {runs} is too large: at most {MAX_RUNS} runs in one program")
    if (cohort := max(p.cohort for p in grid)) > TRAIN_IMAGES:
        raise FedlnError(f"--cohort {cohort} is too large: at most {TRAIN_IMAGES} (CIFAR-10's "
                         f"{TRAIN_IMAGES} training images shared out, one at least per client)")
    if args.out is not None:
        table = os.path.splitext(args.out)[0] + ".md"
        if os.path.abspath(table) == os.path.abspath(args.out):
            raise FedlnError(f"--out {args.out!r} ends in .md, the name of the table written "
                             f"beside the rows: name the rows' file, e.g. rows.jsonl")
        check_file_path(args.out, "--out", (table,))
    floors, reasons = memory_reasons(grid, sizes)   # refused here, before the lock file
    with hold_file(args.out, "--out") if args.out is not None else contextlib.nullcontext():
        rows = run_protocol(grid, sizes, floors, reasons, out=args.out, budget=args.budget,
                            config_limit=args.config_limit,
                            with_torch=not args.no_torch and torch_loop.available())
    for row in rows:
        print(json.dumps(row))
    print(markdown_table(rows))
    return 0
