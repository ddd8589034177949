"""`fedln-jax figure --config FILE --workdir DIR`: run the runs a figure needs, draw the figure.

A figure config (experiments/configs/*.py) defines
  get_config() -> Config             the base config (also what `fedln-jax run --config` runs)
  get_runs()   -> list of dicts      {"name", "series", "x", "overrides"}: one run per entry
                                     and seed; `x` is a number (line plot over x) or a string
                                     (grouped bars); `series` is the legend entry
  FIGURE = {...}                     optional: kind ("final" | "curves"), seeds, xlabel,
                                     xscale ("log"), title, analyze ({"client", "steps"})

Each run goes to DIR/runs/<name>_seed<s>/ through `train.run` (a run whose summary.json says
completed with the same config is reused, so a figure can be redrawn or extended cheaply).
Outputs: DIR/results.json (every run's summary and the mean/std table), DIR/table.md,
DIR/figure.png; with `analyze`, every run is also analyzed (`fedln-jax analyze`) and
DIR/singular_values.png, DIR/local_overfit.md and DIR/norms.md compare the series.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from fedln_jax.config import (call_config_function, config_of_module, load_config_module,
                              parse_overrides)
from fedln_jax.errors import DivergedError, FedlnError


def load_figure(path: str):
    """(base Config, runs, FIGURE dict) of a figure config file."""
    module = load_config_module(path)   # executed once, for its config and its runs
    base = config_of_module(module, path)
    if not hasattr(module, "get_runs"):
        raise FedlnError(f"{path} defines no get_runs(); it is a single-run config: use "
                         f"`fedln-jax run --config {path}`")
    runs = call_config_function(module, "get_runs", path)
    if not isinstance(runs, (list, tuple)) or not runs:
        raise FedlnError(f"get_runs() in {path!r} must return a non-empty list of dicts, got "
                         f"{type(runs).__name__}")
    for k, r in enumerate(runs):
        if not isinstance(r, dict) or not isinstance(r.get("name"), str) or not r["name"] \
                or "series" not in r or not isinstance(r.get("overrides", {}), dict):
            raise FedlnError(f"get_runs() in {path!r}: entry {k} must be a dict with a non-empty "
                             f"'name' string, a 'series' (and 'overrides' a dict), got {r!r:.80}")
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise FedlnError(f"{path}: run names must be unique")
    return base, runs, dict(getattr(module, "FIGURE", {}))


def run_figure(path: str, workdir: str, overrides=(), quiet: bool = False) -> dict:
    from fedln_jax import experiment, train
    base, runs, figure = load_figure(path)
    extra = parse_overrides(list(overrides))
    from fedln_jax import lock
    lock.check_own(workdir, ("runs", "results.json"), "a figure's runs")
    seeds = tuple(figure.get("seeds", (0,)))
    configs = []  # validate every run before training any
    for r in runs:
        for seed in seeds:
            cfg = base.replace(**r.get("overrides", {})).replace(seed=seed, **extra).validate()
            configs.append((r, seed, cfg, os.path.join(workdir, "runs", f"{r['name']}_seed{seed}")))
    for _, _, cfg, _ in configs:
        experiment.build_experiment(cfg)  # impossible partitions and bad norm specs fail here
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    start = time.time()
    summaries = [train.finished_summary(run_dir, cfg) for _, _, cfg, run_dir in configs]
    todo = [i for i, s in enumerate(summaries) if s is None]
    # Runs differing only in values (the seeds, an lr axis) train as one vectorized program.
    for i, summary in zip(todo, train.run_group([configs[i][2] for i in todo],
                                                [configs[i][3] for i in todo], quiet=True)):
        if summary["status"] == "diverged":
            raise DivergedError(f"{configs[i][3]}: " + train.diverged_message(configs[i][2], summary),
                                summary["diverged_at_round"])
        summaries[i] = summary
    rows = []
    for (r, seed, cfg, run_dir), summary in zip(configs, summaries):
        log(f"  {r['name']:<24} seed {seed}: final {summary['final_test_accuracy']:.3f} "
            f"last3 {summary['mean_last3_test_accuracy']:.3f}")
        rows.append({"name": r["name"], "series": r["series"], "x": r.get("x"), "seed": seed,
                     "workdir": run_dir, "final": summary["final_test_accuracy"],
                     "last3": summary["mean_last3_test_accuracy"],
                     "best": summary["best_test_accuracy"]})
    table = aggregate(rows)
    result = {"config_file": os.path.abspath(path), "seeds": list(seeds), "overrides": extra,
              "runs": rows, "table": table, "wall_seconds": round(time.time() - start, 1)}
    if "analyze" in figure:
        result["analysis"] = analyze_all(rows, figure["analyze"], workdir, figure)
    os.makedirs(workdir, exist_ok=True)
    train.write_json(os.path.join(workdir, "results.json"), result)
    md = format_table(table, figure)
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(md + "\n")
    draw(rows, table, figure, os.path.join(workdir, "figure.png"))
    print(md)
    print(f"wrote {workdir}/results.json, table.md, figure.png ({result['wall_seconds']} s)")
    return result


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds of final and last-3 accuracy, per (series, x), in run order."""
    keys = list(dict.fromkeys((r["series"], r["x"]) for r in rows))
    out = []
    for series, x in keys:
        sel = [r for r in rows if (r["series"], r["x"]) == (series, x)]
        out.append({"series": series, "x": x, "n": len(sel),
                    "final_mean": float(np.mean([r["final"] for r in sel])),
                    "final_std": float(np.std([r["final"] for r in sel])),
                    "last3_mean": float(np.mean([r["last3"] for r in sel])),
                    "per_seed": [r["final"] for r in sel],
                    "per_seed_last3": [r["last3"] for r in sel]})
    return out


def format_table(table: list[dict], figure: dict) -> str:
    """Markdown: one row per series, one column per x (mean of the last 3 evals, and final)."""
    xs = list(dict.fromkeys(t["x"] for t in table))
    series = list(dict.fromkeys(t["series"] for t in table))
    xlabel = figure.get("xlabel", "x")
    cell = {(t["series"], t["x"]): t for t in table}
    head = "| series | " + " | ".join(f"{xlabel}={x}" if x is not None else "accuracy"
                                       for x in xs) + " |"
    lines = ["mean over seeds of the last 3 evaluations (final evaluation in brackets)", "",
             head, "|" + "---|" * (len(xs) + 1)]
    for s in series:
        vals = [cell.get((s, x)) for x in xs]
        lines.append(f"| {s} | " + " | ".join(
            "-" if v is None else f"{v['last3_mean']:.3f} ({v['final_mean']:.3f})" for v in vals) + " |")
    return "\n".join(lines)


def _history(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def draw(rows, table, figure: dict, path: str) -> None:
    from fedln_jax import plots
    title = figure.get("title", "")
    if figure.get("kind") == "curves":
        curves = {}
        for r in rows:
            curves.setdefault(r["series"], []).append(_history(r["workdir"]))
        plots.plot_accuracy_curves(curves, path, title=title)
        return
    plots.plot_final_vs_x(table, path, xlabel=figure.get("xlabel", ""),
                          xscale=figure.get("xscale", "linear"), title=title)


def analyze_all(rows, options: dict, workdir: str, figure: dict) -> dict:
    """Analyze every run (seed 0 of each series) and compare the series."""
    from fedln_jax import plots
    from fedln_jax.analysis import analyze_run
    client, steps = options.get("client", 0), options.get("steps", (5,))
    seed0 = min(r["seed"] for r in rows)
    results = {r["series"]: analyze_run(r["workdir"], client, steps)
               for r in rows if r["seed"] == seed0}
    plots.plot_spectra({s: a["singular_values"] for s, a in results.items()},
                       os.path.join(workdir, "singular_values.png"),
                       title=figure.get("title", ""))
    plots.plot_local_overfit_grid(results, os.path.join(workdir, "local_overfit.png"))
    fmt = lambda xs: " ".join("-" if x is None else f"{x:.2f}" for x in xs)
    lines = ["| series | steps | global acc before | global acc after | per-class recall after |",
             "|---|---|---|---|---|"]
    for s, a in results.items():
        for p in a["local_overfit_by_steps"]:
            lines.append(f"| {s} | {p['steps']} | {p['global_acc_before']:.3f} | "
                         f"{p['global_acc_after']:.3f} | {fmt(p['per_class_recall_after'])} |")
    norms = ["| series | model | feature norm per class | head norm per class |", "|---|---|---|---|"]
    for s, a in results.items():
        p = a["local_overfit"]
        norms.append(f"| {s} | global | {fmt(a['feature_norm_per_class'])} | "
                     f"{fmt(a['head_norm_per_class'])} |")
        norms.append(f"| {s} | after {p['steps']} local steps | "
                     f"{fmt(p['feature_norm_per_class_after'])} | {fmt(p['head_norm_per_class_after'])} |")
    for name, text in (("local_overfit.md", lines), ("norms.md", norms)):
        with open(os.path.join(workdir, name), "w") as f:
            f.write("\n".join(text) + "\n")
    print("\n".join(lines))
    print("\n".join(norms))
    spectra_at = lambda s, k: s[k] if k < len(s) else None
    return {s: {"global_acc": a["global_acc"], "local_overfit_by_steps": a["local_overfit_by_steps"],
                "singular_values": a["singular_values"],
                "sv_index_below_0.1": next((i for i, v in enumerate(a["singular_values"]) if v < 0.1),
                                           None),
                "sv_at_10": spectra_at(a["singular_values"], 10)}
            for s, a in results.items()}
