"""Checkpoint overhead: seconds per save, and the demo run's wall time with and without checkpoints.

    PYTHONPATH=. python benchmarks/checkpoint_overhead.py [--reps 2] [--rounds 60]

Runs the demo protocol (digits, 10 clients x 1 class, norm none, seed 0) with checkpoint_every
in {0 (only at the end), 10, 5, 1}, interleaved so machine load hits every setting alike, then
times saves of the paper CNN's state (CIFAR-size, ~797k parameters) directly.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp

from fedln_jax.algorithms import get_algorithm
from fedln_jax.config import Config
from fedln_jax.engine.placement import client_mesh, replicate
from fedln_jax.engine.state import init_state
from fedln_jax.models import build_model
from fedln_jax.studies.demo import demo_config
from fedln_jax.training import checkpoint, train


def demo_runs(rounds: int, reps: int, settings=(0, 10, 5, 1)) -> dict:
    walls = {k: [] for k in settings}
    saves = {k: [] for k in settings}
    counts = {}
    for _ in range(reps):
        for every in settings:
            workdir = tempfile.mkdtemp(prefix="fedln_ckpt_bench_")
            summary = train.run(demo_config("none", 0, rounds).replace(checkpoint_every=every),
                                workdir, quiet=True)
            walls[every].append(summary["wall_seconds"])
            saves[every].append(summary["seconds_per_checkpoint"])
            counts[every] = summary["checkpoints_saved"]
            shutil.rmtree(workdir)
    return {every: {"checkpoints": counts[every],
                    "wall_seconds_median": statistics.median(walls[every]),
                    "wall_seconds": walls[every],
                    "seconds_per_save_median": statistics.median(saves[every])}
            for every in settings}


def paper_cnn_save_seconds(reps: int = 5) -> float:
    config = Config(dataset="cifar10", model="cnn")
    # The CNN's state without loading CIFAR-10: init needs only a sample image.
    model = build_model("cnn", "none", 10)
    state = init_state(model, jnp.zeros((1, 32, 32, 3)), 0, get_algorithm("fedavg"),
                       hparams={}, num_clients=1)
    state = replicate(state, client_mesh())
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    workdir = tempfile.mkdtemp(prefix="fedln_ckpt_bench_")
    manager = checkpoint.open_manager(workdir, 3)
    times = []
    for r in range(reps):
        times.append(checkpoint.save(manager, state._replace(round=jnp.int32(r + 1)),
                                     {"config": config.to_dict(), "progress": {}}))
    shutil.rmtree(workdir)
    return n_params, statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    start = time.time()
    result = {"demo_run": demo_runs(args.rounds, args.reps)}
    n_params, seconds = paper_cnn_save_seconds()
    result["paper_cnn"] = {"parameters": int(n_params), "seconds_per_save_median": seconds}
    result["bench_seconds"] = round(time.time() - start, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
