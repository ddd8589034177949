"""`fedln-jax figure --config FILE --workdir DIR`: run the runs a figure needs, then its table
and its figure. Also the path of `fedln-jax demo` (fedln_jax/studies/demo.py is a figure config) and of
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
DIR/results.json (every run's numbers and the table's cells, see fedln_jax/studies/results.py),
the printed table in DIR/table.md (table.txt for the "seeds" table), and the figure; with
`analyze`, every run is also analyzed (`fedln-jax analyze`) and DIR/singular_values.png,
DIR/local_overfit.md and DIR/norms.md compare the series.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import time

from fedln_jax.config import (INT32_MAX, MAX_SEED, Config, call_config_function, config_keys,
                              config_of_module, load_config_module, parse_overrides)
from fedln_jax.errors import DivergedError, FedlnError
from fedln_jax.studies import analysis, plots, results
from fedln_jax.training import lock, train
from fedln_jax.training.workdir import (check_runs, finished_summary, read_metrics, write_json,
                                        write_text)


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
    options = getattr(module, "FIGURE", {})
    if not isinstance(options, dict):
        raise FedlnError(f"{source}: FIGURE must be a dict of options, got "
                         f"{type(options).__name__}")
    return check_figure(Figure(source, base, list(runs), dict(options)))


# ---------------------------------------------------------------------------------------------
# The schema of a figure: every run and option checked as a whole before anything trains.

RUN_KEYS = ("name", "series", "x", "overrides")
XSCALES = ("linear", "log", "symlog", "logit")   # those matplotlib takes without arguments
IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff",
                  ".webp")
# The files a figure writes beside its figure_file (which must not replace one of them).
OUTPUTS = ("results.json", "table.md", "table.txt", "singular_values.png", "local_overfit.png",
           "local_overfit.md", "norms.md", "runs", lock.LOCK_NAME)
TEXT_OPTIONS = ("xlabel", "title", "row_label", "caption", "column")


def check_figure(figure: Figure) -> Figure:
    """Refuse (FedlnError, one line) a figure whose runs or FIGURE options could fail or write
    outside its workdir once runs have trained; returns the figure."""
    def bad(text):
        raise FedlnError(f"{figure.source}: {text}")
    for k, r in enumerate(figure.runs):
        unknown = sorted(map(str, set(r) - set(RUN_KEYS)))
        if unknown:
            bad(f"get_runs() entry {k} has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"an entry holds {', '.join(RUN_KEYS)}")
        name = r["name"]
        if set(name) & set("/\\\0") or name in (".", "..") or name != name.strip():
            bad(f"run name {name!r} must be a plain file name (no path separator, '..', or "
                f"surrounding spaces): it names the run's directory under runs/")
        if not isinstance(r["series"], str):
            bad(f"run {name!r}: series must be a string (the legend entry), got {r['series']!r}")
        x = r.get("x")
        if not (x is None or isinstance(x, str) or (isinstance(x, (int, float))
                                                     and not isinstance(x, bool)
                                                     and math.isfinite(x))):
            bad(f"run {name!r}: x must be a finite number, a string or None, got {x!r:.60}")
        for key in r.get("overrides", {}):
            if not isinstance(key, str) or key not in config_keys():
                bad(f"run {name!r}: override {key!r} is not a config key")
            if key == "seed":
                bad(f"run {name!r}: a run's seed comes from FIGURE's seeds, not its overrides; "
                    f"list the seeds in FIGURE[\"seeds\"]")
    names = [r["name"] for r in figure.runs]
    if len(set(names)) != len(names):
        bad("get_runs() must return runs with unique names")
    cells = [(r["series"], r.get("x")) for r in figure.runs]
    twice = next((c for c in cells if cells.count(c) > 1), None)
    if twice:
        bad(f"two runs have series {twice[0]!r} and x {twice[1]!r}: their seeds would be "
            f"counted as one cell's; give them distinct x or series")
    check_options(figure, bad)
    return figure


def check_options(figure: Figure, bad) -> None:
    options = figure.options
    unknown = sorted(map(repr, set(options) - set(OPTIONS)))
    if unknown:
        bad(f"FIGURE has unknown option(s) {', '.join(unknown)}; options: {', '.join(OPTIONS)}")
    for key, allowed in (("kind", ("final", "curves")), ("table", tuple(CAPTIONS)),
                         ("cell", tuple(results.CELL_TEXT)), ("diverged", ("raise", "report")),
                         ("xscale", XSCALES)):
        if key in options and (not isinstance(options[key], str) or options[key] not in allowed):
            bad(f"FIGURE {key} must be one of {', '.join(map(repr, allowed))}, "
                f"got {options[key]!r:.60}")
    for key in TEXT_OPTIONS:
        if key in options and not isinstance(options[key], str):
            bad(f"FIGURE {key} must be a string, got {options[key]!r:.60}")
    if "seeds" in options:
        check_seeds(options["seeds"], figure.source)
    xs = [r.get("x") for r in figure.runs]
    numeric = all(isinstance(x, (int, float)) for x in xs)
    scale = options.get("xscale", "linear")
    if numeric and options.get("kind", "final") == "final" and (
            scale == "log" and min(xs) <= 0 or scale == "logit" and not 0 < min(xs) <= max(xs) < 1):
        bad(f"FIGURE xscale {scale!r} cannot show x values {sorted(set(xs))}")
    formats = [("caption", {"rounds": 1, "seeds": [0]})]
    if options.get("table", "grid") == "grid":
        formats += [("column", {"xlabel": options.get("xlabel", "x"), "x": x}) for x in xs]
    for key, fields in formats:
        if key in options:
            try:
                options[key].format(**fields)
            except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
                bad(f"FIGURE {key} {options[key]!r:.60} does not render with "
                    f"{', '.join(f'{{{f}}}' for f in fields)}"
                    + (f" (x={fields['x']!r})" if "x" in fields else "")
                    + f": {type(exc).__name__}: {exc}")
    if "figure_file" in options:
        name = options["figure_file"]
        if not isinstance(name, str) or not name.strip() or os.path.basename(name) != name \
                or "\\" in name or name in (".", "..") or name in OUTPUTS \
                or os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
            bad(f"FIGURE figure_file must be an image's file name in the figure's workdir (no "
                f"directory; not one of its other outputs; ending in "
                f"{', '.join(IMAGE_SUFFIXES)}), got {name!r:.80}")
    if "analyze" in options:
        check_analyze(options["analyze"], bad)


def check_analyze(analyze, bad) -> None:
    if not isinstance(analyze, dict) or set(analyze) - {"client", "steps"}:
        bad(f"FIGURE analyze must be a dict with the keys client and steps, got {analyze!r:.60}")
    client, steps = analyze.get("client", 0), analyze.get("steps", (5,))
    if isinstance(client, bool) or not isinstance(client, int) or not 0 <= client <= INT32_MAX:
        bad(f"FIGURE analyze client must be a client's index (an int >= 0), got {client!r:.60}")
    if not isinstance(steps, (list, tuple)) or not steps or any(
            isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= INT32_MAX
            for s in steps):
        bad(f"FIGURE analyze steps must be a non-empty list of positive ints, got {steps!r:.60}")


def check_seeds(seeds, source: str) -> tuple:
    """A figure's seeds: a non-empty list or tuple of distinct ints in the seed range."""
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise FedlnError(f"{source}: FIGURE seeds must be a non-empty list of ints, got "
                         f"{seeds!r:.60}")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise FedlnError(f"{source}: FIGURE seeds must be ints in 0..{MAX_SEED}, got "
                             f"{seed!r:.60}")
    if len(set(seeds)) != len(seeds):
        raise FedlnError(f"{source}: FIGURE seeds {list(seeds)} repeat a seed: it would count "
                         f"one run twice")
    return tuple(seeds)


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
    return check_seeds(figure.options.get("seeds", (0,)) if seeds is None else seeds,
                       figure.source)


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
    client = figure.options.get("analyze", {}).get("client", 0)
    if "analyze" in figure.options and client >= min(p.config.num_clients for p in planned):
        raise FedlnError(f"{figure.source}: FIGURE analyze client {client} is out of range: its "
                         f"runs have {min(p.config.num_clients for p in planned)} clients")
    return planned


def shared_run_dir(runs_dir: str, config: Config) -> str:
    """runs_dir/<dataset>_<norm>_seed<s>_<hash of the whole config>: one directory per config."""
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return os.path.join(runs_dir, f"{config.dataset}_{config.norm}_seed{config.seed}_{digest}")


def train_runs(configs: list[Config], workdirs: list[str], *, keep_diverged: bool = False,
               quiet: bool = True, checked=lambda: None) -> list[dict]:
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
    # Every run checked (data, partition, model, workdir) before `checked` and any training.
    experiments = check_runs([configs[i] for i in todo], [workdirs[i] for i in todo])
    checked()
    trained = train.run_group([configs[i] for i in todo], [workdirs[i] for i in todo], quiet=quiet,
                              max_runs_per_program=1, experiments=experiments)
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
    for marker, other in (("sweep.json", "a sweep"), ("regenerate.json", "a results page")):
        if os.path.exists(os.path.join(workdir, marker)):
            raise FedlnError(f"workdir {workdir!r} holds {other} ({marker}), whose files a figure "
                             f"would replace; use a new workdir")
    seeds = figure_seeds(figure, seeds)
    planned = plan_runs(figure, extra, seeds, workdir, runs_dir)
    with contextlib.ExitStack() as stack:   # the figure's workdir locked once checked
        return write_figure(figure, workdir, planned, extra, seeds, quiet, lambda: (
            stack.enter_context(lock.hold([workdir] if runs_dir is None else []))))


def write_figure(figure: Figure, workdir: str, planned: list[PlannedRun], extra: dict, seeds,
                 quiet: bool, checked) -> dict:
    options = figure.options
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    start = time.time()
    summaries = train_runs([p.config for p in planned], [p.workdir for p in planned],
                           keep_diverged=options.get("diverged") == "report", checked=checked)
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
    write_text(os.path.join(workdir, table_file), text + "\n")
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


OPTIONS = ("kind", "seeds", "xlabel", "xscale", "title", "figure_file", "table", "caption",
           "row_label", "column", "cell", "diverged", "analyze")
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
    analyses = {r["series"]: analysis.analyze_run(r["workdir"], client, steps)
                for r in rows if r["seed"] == seed0 and r["status"] != "diverged"}
    plots.plot_spectra({s: a["singular_values"] for s, a in analyses.items()},
                       os.path.join(workdir, "singular_values.png"),
                       title=figure.get("title", ""))
    plots.plot_local_overfit_grid(analyses, os.path.join(workdir, "local_overfit.png"))
    for name, text in (("local_overfit.md", results.local_overfit_table(analyses)),
                       ("norms.md", results.norms_table(analyses))):
        write_text(os.path.join(workdir, name), text + "\n")
        print(text)
    spectra_at = lambda s, k: s[k] if k < len(s) else None
    return {s: {"global_acc": a["global_acc"], "local_overfit_by_steps": a["local_overfit_by_steps"],
                "singular_values": a["singular_values"],
                "sv_index_below_0.1": next((i for i, v in enumerate(a["singular_values"]) if v < 0.1),
                                           None),
                "sv_at_10": spectra_at(a["singular_values"], 10)}
            for s, a in analyses.items()}
