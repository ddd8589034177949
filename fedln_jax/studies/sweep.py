"""`fedln-jax sweep`: a grid of runs, vectorized where only values differ.

Runs that differ only in value keys (the Config fields declared `value=True`: seed, lr,
server_lr, dirichlet_beta, momentum, weight_decay, algorithm hyperparameters) are stacked on a leading runs axis and executed as
one compiled program (train.run_group); the other keys (norm, model, algorithm, num_clients,
dataset, ...) make separate programs. Each run gets a normal workdir under DIR/runs/<name>/;
DIR/results.csv, DIR/results.md (results.sweep_table: mean +- std over seeds, diverged
seeds counted) and DIR/sweep.png summarize them. A rerun skips the runs whose summary.json
says completed (or diverged).
"""
from __future__ import annotations

import csv
import io
import itertools
import os
import re
import sys
from typing import Any

from fedln_jax.config import INT32_MAX, Config, build_config, parse_value
from fedln_jax.errors import FedlnError
from fedln_jax.studies import results
from fedln_jax.studies.plots import pyplot
from fedln_jax.training import lock
from fedln_jax.training.experiment import build_experiment
from fedln_jax.training.program import cut, program_key
from fedln_jax.training.run_files import is_writer
from fedln_jax.training.train import run_group
from fedln_jax.training.workdir import (check_runs, finished_summary, missing_keys, read_json,
                                        save_figure, write_json, write_text)


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """['norm=ln,fn', 'seed=0,1'] -> {'norm': ['ln', 'fn'], 'seed': [0, 1]}, typed per key."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FedlnError(f"grid item {item!r} is not of the form KEY=V1,V2,...")
        if key in grid:
            raise FedlnError(f"grid key {key!r} is given twice")
        parts = [p.strip() for p in text.split(",")]
        if not text.strip() or any(p == "" for p in parts):
            raise FedlnError(f"grid key {key!r} has an empty value list or an empty value: {text!r}")
        values = [parse_value(key, p) for p in parts]
        if len(set(map(repr, values))) != len(values):
            raise FedlnError(f"grid key {key!r} repeats a value: {text!r}")
        grid[key] = values
    return grid


def expand(base: Config, grid: dict[str, list[Any]]) -> list[tuple[str, Config]]:
    """Every combination of the grid applied to base, validated, with its run name."""
    keys = list(grid)
    runs = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        changes = dict(zip(keys, combo))
        runs.append((run_name(changes), base.replace(**changes).validate()))
    return runs


def run_name(changes: dict[str, Any]) -> str:
    """'norm=fn_lr=0.1_seed=0': the swept values, safe as one path component."""
    if not changes:
        return "run"
    text = "_".join(f"{k}={v}" for k, v in changes.items())
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", text)


SUMMARY_KEYS = {"final_test_accuracy": (int, float, type(None)),
                "mean_last3_test_accuracy": (int, float, type(None)), "rounds_completed": int,
                "status": str}


def is_complete(workdir: str, config: Config) -> bool:
    # A diverged run is finished too: it would diverge again, at the same round.
    return finished_summary(workdir, config, ("completed", "diverged")) is not None


def plan(runs: list[tuple[str, Config]]) -> list[list[int]]:
    """Indices of the runs grouped into programs (one per program key, grid order kept)."""
    groups: dict[str, list[int]] = {}
    for i, (_, config) in enumerate(runs):
        groups.setdefault(program_key(config), []).append(i)
    return list(groups.values())


def run_sweep(workdir: str, config_file: str | None, items: list[str], *,
              quiet: bool = False, max_runs_per_program: int | None = None,
              dry_run: bool = False) -> list[dict]:
    """Run (or resume) the grid; write results.csv, results.md and sweep.png. Returns rows.

    dry_run: build every run's experiment (data, partition, model: what can fail), print the
    programs the sweep would run, and stop without writing anything.
    """
    if max_runs_per_program is not None and max_runs_per_program < 1:
        raise FedlnError(f"--max-runs-per-program must be >= 1, got {max_runs_per_program}")
    if max_runs_per_program is not None and max_runs_per_program > INT32_MAX:
        raise FedlnError(f"--max-runs-per-program={max_runs_per_program} is too large: at most "
                         f"{INT32_MAX}")
    grid = parse_grid(items)
    # A key given one value is a plain override of the base, not a swept axis.
    fixed = {k: v[0] for k, v in grid.items() if len(v) == 1}
    grid = {k: v for k, v in grid.items() if len(v) > 1}
    base = build_config(config_file, []).replace(**fixed)
    runs = expand(base, grid)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise FedlnError(f"workdir {workdir!r} exists and is not a directory")
    dirs = [os.path.join(workdir, "runs", name) for name, _ in runs]
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    todo = [i for i, (_, config) in enumerate(runs) if not is_complete(dirs[i], config)]
    groups = plan([runs[i] for i in todo])
    plan_line = (f"sweep: {len(runs)} runs, {len(runs) - len(todo)} already complete, "
                 f"{len(todo)} to run as {len(groups)} program(s)")
    if dry_run:
        text = describe_plan(runs, todo, groups, max_runs_per_program)   # checks every run
        log(plan_line)
        print(text)
        return []
    lock.check_own(workdir, ("sweep.json",), "a sweep")
    # Every run is checked (an impossible partition, a foreign run directory) before the
    # sweep writes anything, or says its plan (a refusal is its one line); the experiments
    # built here are the ones trained.
    experiments = dict(zip(todo, check_runs([runs[i][1] for i in todo], [dirs[i] for i in todo])))
    # One sweep per workdir at a time (its process 0 holds the lock): a second is refused in
    # one line before its plan line or its sweep.json.
    with lock.hold([workdir] if is_writer() else []):
        log(plan_line)
        if is_writer():
            write_json(os.path.join(workdir, "sweep.json"), {
                "grid": grid, "fixed": fixed, "base_config": base.to_dict(),
                "runs": [name for name, _ in runs]})
        for g, members in enumerate(groups):
            picked = [todo[i] for i in members]
            log(f"sweep: program {g + 1}/{len(groups)}: {len(picked)} run(s) vectorized: "
                + ", ".join(runs[i][0] for i in picked))
            run_group([runs[i][1] for i in picked], [dirs[i] for i in picked], quiet=quiet,
                      max_runs_per_program=max_runs_per_program,
                      experiments=[experiments[i] for i in picked])
        if not is_writer():   # the other processes of a multi-process sweep only compute
            return []
        rows = collect(runs, dirs, list(grid))
        write_results(workdir, rows, list(grid))
    return rows


def describe_plan(runs, todo: list[int], groups: list[list[int]],
                  max_runs: int | None) -> str:
    """The programs of a sweep, one line each, after checking that every run can be built."""
    for i in todo:
        build_experiment(runs[i][1])   # impossible partitions, missing data, bad norm specs
    parts = [part for members in groups
             for part in cut([runs[todo[i]][0] for i in members], max_runs)]
    lines = [f"program {k}: {len(part)} run(s): {', '.join(part)}"
             for k, part in enumerate(parts, 1)]
    return "\n".join(lines + [f"dry run: every run builds; {len(todo)} to run, nothing written"])


def collect(runs, dirs, keys: list[str]) -> list[dict]:
    rows = []
    for (name, config), run_dir in zip(runs, dirs):
        summary = read_json(os.path.join(run_dir, "summary.json"),
                            f"remove {run_dir} and rerun the sweep to train it again",
                            check=lambda obj: missing_keys(obj, SUMMARY_KEYS))
        row = {"run": name, **{k: getattr(config, k) for k in keys if k != "seed"},
               "seed": config.seed, "norm_of_run": config.norm_label,
               "final_test_accuracy": summary["final_test_accuracy"],
               "mean_last3_test_accuracy": summary["mean_last3_test_accuracy"],
               "rounds_completed": summary["rounds_completed"],
               "status": summary["status"]}
        rows.append(row)
    return rows


def write_results(workdir: str, rows: list[dict], keys: list[str]) -> None:
    swept = [k for k in keys if k != "seed"]
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["run", *swept, "seed", "final_test_accuracy",
                     "mean_last3_test_accuracy", "rounds_completed", "status"])
    for row in rows:
        writer.writerow([row["run"], *(row[k] for k in swept), row["seed"],
                         row["final_test_accuracy"], row["mean_last3_test_accuracy"],
                         row["rounds_completed"], row["status"]])
    # Each file replaced whole (workdir.write_text): a kill never leaves half a table.
    write_text(os.path.join(workdir, "results.csv"), table.getvalue())
    write_text(os.path.join(workdir, "results.md"),
               results.sweep_table(cells(rows, swept), swept) + "\n")
    plot_sweep(rows, swept, os.path.join(workdir, "sweep.png"))


def cells(rows: list[dict], swept: list[str]) -> list[tuple[tuple, dict]]:
    """(values of the non-seed swept keys, results.seed_stats of their seeds), in grid order."""
    return results.aggregate((tuple(row[k] for k in swept), row) for row in rows)


def plot_sweep(rows: list[dict], swept: list[str], path: str) -> None:
    """Mean final accuracy (error bars: std over seeds) vs the first swept key other than norm;
    one line per normalizer (and per value of any further swept key)."""
    plt = pyplot()
    x_key = next((k for k in swept if k != "norm"), None)
    line_keys = [k for k in swept if k not in (x_key,)]

    def line_and_x(row):
        if x_key is None:   # only norm (and seeds) swept: the normalizers are the x axis
            return "mean over seeds", row["norm_of_run"]
        label = ", ".join(f"{k}={row[k]}" for k in line_keys) or row["norm_of_run"]
        return label, row[x_key]
    lines: dict[str, dict] = {}
    for (label, x), cell in results.aggregate((line_and_x(r), r) for r in rows):
        if cell["n"]:   # a point with every seed diverged is left out
            lines.setdefault(label, {})[x] = cell
    fig, ax = plt.subplots(figsize=(6, 4))
    categorical = x_key is None or any(isinstance(v, str) for line in lines.values() for v in line)
    for label, points in lines.items():
        xs = list(points)
        pos = [str(x) for x in xs] if categorical else xs
        ax.errorbar(pos, [points[x]["final_mean"] for x in xs],
                    yerr=[points[x]["final_std"] for x in xs],
                    marker="o", capsize=3, label=label)
    if not categorical and x_key in ("lr", "server_lr", "dirichlet_beta") and \
            all(x > 0 for line in lines.values() for x in line):
        ax.set_xscale("log")
    ax.set_xlabel(x_key or "norm")
    ax.set_ylabel("final test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
