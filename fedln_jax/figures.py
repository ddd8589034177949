"""`fedln-jax figure --config FILE --workdir DIR`: run the runs a figure needs, then its table
and its figure. Also the path of `fedln-jax demo` (fedln_jax/demo.py is a figure config) and of
the algorithm comparison (experiments/configs/algorithms_digits.py).

A figure config (experiments/configs/*.py) defines
  get_config() -> Config             the base config (also what `fedln-jax run --config` runs)
  get_runs()   -> list of dicts      {"name", "series", "x", "overrides"}: one run per entry
                                     and seed; `x` is a number (line plot over x) or a string
                                     (grouped bars); `series` is the legend entry
  FIGURE = {...}                     optional:
    kind ("final" | "curves"), seeds, xlabel, xscale ("log"), title   what is drawn
    figure_file (default "figure.png")
    table ("grid": one row per series, one column per x, the default; "seeds": one row per
      series with every seed, x unused), caption (a format string: {rounds}, {seeds}),
      row_label, column (a format string: {xlabel}, {x}), cell ("last3 (final)" | "last3")
    diverged ("raise", the default: a diverged run stops the figure, exit 3; "report": it is
      counted in its cell's table entry and not averaged)
    analyze ({"client", "steps"})

Each run goes to DIR/runs/<name>_seed<s>/ (a run whose summary.json says completed with the
same config is reused, so a figure can be redrawn or extended cheaply); the runs that differ
only in values (the seeds, an lr axis) train as one vectorized program. Outputs:
DIR/results.json (every run's numbers and the table's cells, see fedln_jax/results.py),
the printed table in DIR/table.md (table.txt for the "seeds" table), and the figure; with
`analyze`, every run is also analyzed (`fedln-jax analyze`) and DIR/singular_values.png,
DIR/local_overfit.md and DIR/norms.md compare the series.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time

from fedln_jax import lock, plots, results, train
from fedln_jax.analysis import analyze_run
from fedln_jax.config import (Config, call_config_function, config_of_module, load_config_module,
                              parse_overrides)
from fedln_jax.errors import DivergedError, FedlnError
from fedln_jax.workdir import finished_summary, read_metrics, write_json


@dataclasses.dataclass(frozen=True)
class Figure:
    source: str            # the config file (or module) it came from
    base: Config
    runs: list[dict]
    options: dict          # its FIGURE dict


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    spec: dict             # its get_runs() entry
    seed: int
    config: Config
    workdir: str


def figure_of_module(module, source: str) -> Figure:
    base = config_of_module(module, source)
    if not hasattr(module, "get_runs"):
        raise FedlnError(f"{source} defines no get_runs(); it is a single-run config: use "
                         f"`fedln-jax run --config {source}`")
    runs = call_config_function(module, "get_runs", source)
    if not isinstance(runs, (list, tuple)) or not runs:
        raise FedlnError(f"get_runs() in {source!r} must return a non-empty list of dicts, got "
                         f"{type(runs).__name__}")
    for k, r in enumerate(runs):
        if not isinstance(r, dict) or not isinstance(r.get("name"), str) or not r["name"] \
                or "series" not in r or not isinstance(r.get("overrides", {}), dict):
            raise FedlnError(f"get_runs() in {source!r}: entry {k} must be a dict with a non-empty "
                             f"'name' string, a 'series' (and 'overrides' a dict), got {r!r:.80}")
    names = [r["name"] for r in runs]
    if not names or len(set(names)) != len(names):
        raise FedlnError(f"{source}: get_runs() must return runs with unique names")
    options = dict(getattr(module, "FIGURE", {}))
    for key, allowed in (("table", CAPTIONS), ("cell", results.CELL_TEXT),
                         ("diverged", ("raise", "report"))):
        if key in options and options[key] not in allowed:
            raise FedlnError(f"{source}: FIGURE {key} must be one of {sorted(allowed)}, "
                             f"got {options[key]!r}")
    return Figure(source, base, runs, options)


def load_figure(path: str) -> Figure:
    return figure_of_module(load_config_module(path), path)   # executed once


def figure_overrides(overrides) -> dict:
    """The KEY=VALUE overrides of every run of a figure. Its seeds are its own (FIGURE's
    "seeds"): a seed override would give every run of a seed axis the same seed."""
    extra = parse_overrides(list(overrides))
    if "seed" in extra:
        raise FedlnError("seed does not apply to a figure: its runs take the seeds its FIGURE "
                         "lists (\"seeds\")")
    return extra


def figure_seeds(figure: Figure, seeds=None) -> tuple:
    """The seeds a figure runs: `seeds` when given, else FIGURE's (default (0,))."""
    seeds = tuple(figure.options.get("seeds", (0,)) if seeds is None else seeds)
    if not seeds:
        raise FedlnError(f"{figure.source}: a figure needs at least one seed")
    return seeds


def plan_runs(figure: Figure, extra: dict, seeds, workdir: str,
              runs_dir: str | None = None) -> list[PlannedRun]:
    """Every (run, seed) with its validated config and workdir, before any is trained.
    With runs_dir, a run's workdir is named by its config (shared_run_dir), so figures that
    share runs_dir share every run whose config is the same."""
    planned = []
    for r in figure.runs:
        for seed in seeds:
            config = (figure.base.replace(**r.get("overrides", {})).replace(seed=seed, **extra)
                      .validate())
            planned.append(PlannedRun(r, seed, config, shared_run_dir(runs_dir, config)
                                      if runs_dir else
                                      os.path.join(workdir, "runs", f"{r['name']}_seed{seed}")))
    return planned


def shared_run_dir(runs_dir: str, config: Config) -> str:
    """runs_dir/<dataset>_<norm>_seed<s>_<hash of the whole config>: one directory per config."""
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return os.path.join(runs_dir, f"{config.dataset}_{config.norm}_seed{config.seed}_{digest}")


def train_runs(configs: list[Config], workdirs: list[str], *, keep_diverged: bool = False,
               quiet: bool = True) -> list[dict]:
    """The summaries of these runs: a run that finished with the same config is reused, the
    others are trained (or resumed from their checkpoints). A diverged run raises
    DivergedError unless keep_diverged (then it counts as finished, as it would diverge again)."""
    statuses = ("completed", "diverged") if keep_diverged else ("completed",)
    summaries = [finished_summary(w, c, statuses) for c, w in zip(configs, workdirs)]
    first = {w: i for i, w in reversed(list(enumerate(workdirs)))}
    # A shared run (the same workdir twice: the same config in a shared runs_dir) trains once.
    todo = [i for i, s in enumerate(summaries) if s is None and first[workdirs[i]] == i]
    # Each run is its own program (a runs axis of 1): stacked with others, XLA may order its
    # sums differently, so a run's bits would depend on which figure trained it first and with
    # what (docs/scale.md#layout). Measured on the demo's fn seeds (40 rounds, 2 cores): 23.5 s
    # alone vs 29.9 s as one 3-run program, so nothing is lost on the CPU.
    trained = train.run_group([configs[i] for i in todo], [workdirs[i] for i in todo], quiet=quiet,
                              max_runs_per_program=1)
    for i, summary in zip(todo, trained):
        if summary["status"] == "diverged" and not keep_diverged:
            raise DivergedError(f"{workdirs[i]}: " + train.diverged_message(configs[i], summary),
                                summary["diverged_at_round"])
        summaries[i] = summary
    return [summaries[first[w]] for w in workdirs]


def run_figure(figure: Figure | str, workdir: str, overrides=(), *, seeds=None,
               quiet: bool = False, runs_dir: str | None = None) -> dict:
    """Run (or reuse) every run of the figure for each seed (FIGURE's seeds unless given),
    write results.json, the table and the figure, print the table; returns results.json.
    runs_dir: train the runs there, shared with other figures (plan_runs), not in workdir."""
    if isinstance(figure, str):
        figure = load_figure(figure)
    options = figure.options
    extra = figure_overrides(overrides)
    lock.check_own(workdir, ("runs", "results.json"), "a figure's runs")
    seeds = figure_seeds(figure, seeds)
    planned = plan_runs(figure, extra, seeds, workdir, runs_dir)
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    start = time.time()
    summaries = train_runs([p.config for p in planned], [p.workdir for p in planned],
                           keep_diverged=options.get("diverged") == "report")
    rows = [run_row(p, summary, log) for p, summary in zip(planned, summaries)]
    cells = [{"series": series, "x": x, **stats} for (series, x), stats in
             results.aggregate(((r["series"], r["x"]), s) for r, s in zip(rows, summaries))]
    rounds = planned[0].config.rounds
    layout = options.get("table", "grid")
    text = table_text(cells, options, rounds, seeds)
    result = {"config_file": os.path.abspath(figure.source), "seeds": list(seeds),
              "overrides": extra, "rounds": rounds, "protocol": planned[0].config.to_dict(),
              "runs": rows, "table": {c["series"]: c for c in cells} if layout == "seeds" else cells,
              "wall_seconds": round(time.time() - start, 1)}
    os.makedirs(workdir, exist_ok=True)   # with runs_dir, no run has created it
    if "analyze" in options:
        result["analysis"] = analyze_all(rows, options["analyze"], workdir, options)
    write_json(os.path.join(workdir, "results.json"), result)
    table_file = "table.txt" if layout == "seeds" else "table.md"
    with open(os.path.join(workdir, table_file), "w") as f:
        f.write(text + "\n")
    figure_file = options.get("figure_file", "figure.png")
    draw(rows, cells, options, os.path.join(workdir, figure_file))
    print(text)
    print(f"wrote {workdir}/results.json, {table_file}, {figure_file} ({result['wall_seconds']} s)")
    return result


def run_row(p: PlannedRun, summary: dict, log) -> dict:
    """A run's entry in results.json ("runs"), logged as it is read."""
    log(f"  {p.spec['name']:<24} seed {p.seed}: " + (
        "diverged" if summary["status"] == "diverged" else
        f"final {summary['final_test_accuracy']:.3f} "
        f"last3 {summary['mean_last3_test_accuracy']:.3f}"))
    return {"name": p.spec["name"], "series": p.spec["series"], "x": p.spec.get("x"),
            "seed": p.seed, "workdir": p.workdir, "status": summary["status"],
            "final": summary["final_test_accuracy"],
            "last3": summary["mean_last3_test_accuracy"], "best": summary["best_test_accuracy"]}


CAPTIONS = {"grid": "mean over seeds of the last 3 evaluations (final evaluation in brackets)",
            "seeds": "final test accuracy after {rounds} rounds, seeds {seeds}"}


def table_text(cells: list[dict], options: dict, rounds: int, seeds) -> str:
    """The figure's table, laid out as its FIGURE options say."""
    layout = options.get("table", "grid")
    caption = options.get("caption", CAPTIONS[layout]).format(rounds=rounds, seeds=list(seeds))
    row_label = options.get("row_label", "series")
    if layout == "seeds":
        return results.seeds_table(cells, caption, row_label=row_label)
    column = options.get("column", "{xlabel}={x}")
    xlabel = options.get("xlabel", "x")
    return results.grid_table(cells, caption, row_label=row_label,
                              column=lambda x: column.format(xlabel=xlabel, x=x),
                              cell=options.get("cell", "last3 (final)"))


def draw(rows, cells, options: dict, path: str) -> None:
    title = options.get("title", "")
    if options.get("kind") == "curves":
        curves = {}
        for r in rows:
            if r["status"] != "diverged":
                curves.setdefault(r["series"], []).append(read_metrics(r["workdir"]))
        plots.plot_accuracy_curves(curves, path, title=title)
        return
    plots.plot_final_vs_x([c for c in cells if c["n"]], path, xlabel=options.get("xlabel", ""),
                          xscale=options.get("xscale", "linear"), title=title)


def analyze_all(rows, options: dict, workdir: str, figure: dict) -> dict:
    """Analyze every completed run of the first seed (one per series) and compare the series."""
    client, steps = options.get("client", 0), options.get("steps", (5,))
    seed0 = min(r["seed"] for r in rows)
    analyses = {r["series"]: analyze_run(r["workdir"], client, steps)
                for r in rows if r["seed"] == seed0 and r["status"] != "diverged"}
    plots.plot_spectra({s: a["singular_values"] for s, a in analyses.items()},
                       os.path.join(workdir, "singular_values.png"),
                       title=figure.get("title", ""))
    plots.plot_local_overfit_grid(analyses, os.path.join(workdir, "local_overfit.png"))
    for name, text in (("local_overfit.md", results.local_overfit_table(analyses)),
                       ("norms.md", results.norms_table(analyses))):
        with open(os.path.join(workdir, name), "w") as f:
            f.write(text + "\n")
        print(text)
    spectra_at = lambda s, k: s[k] if k < len(s) else None
    return {s: {"global_acc": a["global_acc"], "local_overfit_by_steps": a["local_overfit_by_steps"],
                "singular_values": a["singular_values"],
                "sv_index_below_0.1": next((i for i, v in enumerate(a["singular_values"]) if v < 0.1),
                                           None),
                "sv_at_10": spectra_at(a["singular_values"], 10)}
            for s, a in analyses.items()}
