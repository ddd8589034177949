"""The algorithm comparison: algorithms x normalizers x label skew on the digits, as a Markdown
table (docs/algorithms.md; run via experiments/configs/algorithms_digits.py)."""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from fedln_jax.algorithms import ALGORITHM_NAMES
from fedln_jax.config import Config
from fedln_jax.train import run_group
from fedln_jax.workdir import finished_summary, write_json

COMPARE_NORMS = ("none", "ln", "fn")
COMPARE_CLASSES = (1, 2)
# FedBN only differs from FedAvg when the model has BN layers: both also run with norm=bn.
BN_ALGORITHMS = ("fedavg", "fedbn")


def compare_config(algorithm: str, norm: str, classes_per_client: int, seed: int,
                   rounds: int) -> Config:
    """The paper's protocol (docs/method.md#protocol) on digits (10 clients, 10 local steps of batch 32, lr 0.01) with
    each algorithm's default hyperparameters."""
    return Config(dataset="digits", partition="n_class", classes_per_client=classes_per_client,
                  num_clients=10, local_steps=10, batch_size=32, lr=0.01, rounds=rounds,
                  eval_every=max(rounds // 6, 1), norm=norm, algorithm=algorithm,
                  seed=seed).validate()


def cells(algorithms, norms, classes):
    for algorithm in algorithms:
        algo_norms = list(norms) + (["bn"] if algorithm in BN_ALGORITHMS else [])
        for n in classes:
            for norm in algo_norms:
                yield algorithm, norm, n


def run_comparison(workdir: str, *, algorithms=ALGORITHM_NAMES, norms=COMPARE_NORMS,
                   classes=COMPARE_CLASSES, seeds=(0,), rounds: int = 30,
                   quiet: bool = False) -> str:
    """Run every cell (skipping cells whose run already finished), write results.json and
    table.md to `workdir`, print the table, and return it.

    A cell's number is the mean over seeds of the mean of its last 3 evaluations (the final
    accuracy under one-class skew oscillates from round to round).
    """
    start = time.time()
    runs = [(f"{algorithm}/{norm}/{n}", seed, compare_config(algorithm, norm, n, seed, rounds),
             os.path.join(workdir, "runs", f"{algorithm}_{norm}_{n}class_seed{seed}"))
            for algorithm, norm, n in cells(algorithms, norms, classes) for seed in seeds]
    summaries = [finished_summary(run_dir, config) for _, _, config, run_dir in runs]
    todo = [i for i, s in enumerate(summaries) if s is None]
    # The seeds of a cell differ only in values: run_group trains them as one program.
    for i, summary in zip(todo, run_group([runs[i][2] for i in todo], [runs[i][3] for i in todo],
                                          quiet=True)):
        summaries[i] = summary
    results = {}
    for (key, seed, _, _), summary in zip(runs, summaries):
        if summary["status"] == "completed":   # a diverged seed is reported, not averaged
            results.setdefault(key, []).append(summary)
        if not quiet:
            print(f"  {key.replace('/', ' '):<16} class seed {seed}: {summary['status']}, last-3 "
                  f"{summary['mean_last3_test_accuracy'] or float('nan'):.3f}",
                  file=sys.stderr, flush=True)
    table = {key: float(np.mean([s["mean_last3_test_accuracy"] for s in sums]))
             for key, sums in results.items()}
    text = format_table(table, algorithms, norms, classes, seeds, rounds)
    write_json(os.path.join(workdir, "results.json"),
               {"table": table, "seeds": list(seeds), "rounds": rounds,
                "per_run": results, "wall_seconds": round(time.time() - start, 1)})
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return text


def format_table(table: dict, algorithms, norms, classes, seeds, rounds: int) -> str:
    columns = [(norm, n) for n in classes for norm in list(norms) + ["bn"]]
    header = "| algorithm | " + " | ".join(f"{norm} {n}-class" for norm, n in columns) + " |"
    lines = [f"Test accuracy on digits, 10 clients, n classes per client, {rounds} rounds "
             f"(mean of the last 3 evaluations; seeds {list(seeds)}).", "",
             header, "|" + "---|" * (len(columns) + 1)]
    for algorithm in algorithms:
        row = [f"{table[f'{algorithm}/{norm}/{n}']:.3f}" if f"{algorithm}/{norm}/{n}" in table
               else "-" for norm, n in columns]
        lines.append(f"| {algorithm} | " + " | ".join(row) + " |")
    return "\n".join(lines)
