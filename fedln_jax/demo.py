"""The headline comparison: none vs ln vs fn under one-class label skew on the digits."""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from fedln_jax.config import Config
from fedln_jax.plots import plot_accuracy_curves
from fedln_jax.errors import FedlnError
from fedln_jax.train import run_group, write_json

DEMO_NORMS = ("none", "ln", "fn")
DEMO_SEEDS = (0, 1, 2)


def demo_config(norm: str, seed: int, rounds: int = 60) -> Config:
    """The paper's protocol (docs/method.md#protocol) on digits: 10 clients x 1 class, 10 local steps of batch 32, lr 0.01."""
    return Config(dataset="digits", partition="n_class", classes_per_client=1, num_clients=10,
                  local_steps=10, batch_size=32, lr=0.01, rounds=rounds, eval_every=5,
                  norm=norm, seed=seed)


def load_history(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_demo(workdir: str, *, norms=DEMO_NORMS, seeds=DEMO_SEEDS, rounds: int = 60,
             quiet: bool = False) -> dict:
    """Run every (norm, seed), then write results.json, accuracy.png and print the table."""
    from fedln_jax import lock
    lock.check_path(workdir)
    lock.check_own(workdir, ("runs", "results.json"), "a demo's runs")
    start = time.time()
    cells = [(norm, seed) for norm in norms for seed in seeds]
    # The seeds of a normalizer differ only in values: run_group trains them as one program.
    summaries = run_group([demo_config(norm, seed, rounds) for norm, seed in cells],
                          [os.path.join(workdir, "runs", f"{norm}_seed{seed}") for norm, seed in cells],
                          quiet=True)
    results = {}
    for (norm, seed), summary in zip(cells, summaries):
        if summary["status"] != "completed":
            raise FedlnError(f"demo run {norm}/seed{seed} ended {summary['status']}")
        results.setdefault(norm, []).append(summary)
        if not quiet:
            print(f"  {norm:<5} seed {seed}: final {summary['final_test_accuracy']:.3f}",
                  file=sys.stderr)
    curves = {norm: [load_history(os.path.join(workdir, "runs", f"{norm}_seed{s}")) for s in seeds]
              for norm in norms}
    table = {norm: {"final_mean": float(np.mean([s["final_test_accuracy"] for s in sums])),
                    "final_std": float(np.std([s["final_test_accuracy"] for s in sums])),
                    "last3_mean": float(np.mean([s["mean_last3_test_accuracy"] for s in sums])),
                    "per_seed": [s["final_test_accuracy"] for s in sums]}
             for norm, sums in results.items()}
    report = {"table": table, "seeds": list(seeds), "rounds": rounds,
              "protocol": demo_config("none", 0, rounds).to_dict(),
              "wall_seconds": round(time.time() - start, 1)}
    write_json(os.path.join(workdir, "results.json"), report)
    plot_accuracy_curves(curves, os.path.join(workdir, "accuracy.png"),
                         title="digits, 10 clients x 1 class (mean over seeds, min-max band)")
    print(format_table(table, seeds, rounds))
    print(f"wrote {os.path.join(workdir, 'results.json')} and accuracy.png "
          f"({report['wall_seconds']} s)")
    return report


def format_table(table: dict, seeds, rounds: int) -> str:
    lines = [f"final test accuracy after {rounds} rounds, seeds {list(seeds)}",
             "norm   mean +- std      mean of last 3 evals   per seed",
             "-----  ---------------  ---------------------  --------"]
    for norm, row in table.items():
        lines.append(f"{norm:<5}  {row['final_mean']:.3f} +- {row['final_std']:.3f}    "
                     f"{row['last3_mean']:.3f}                  "
                     + " ".join(f"{a:.3f}" for a in row["per_seed"]))
    return "\n".join(lines)
