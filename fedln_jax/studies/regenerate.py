"""`fedln-jax results --workdir DIR [--out docs/results.md] [--only NAME] [KEY=VALUE ...]`:
every figure of docs/results.md, then the page itself (fedln_jax/studies/results_page.py says what
is on it, fedln_jax/results_template.md holds its fixed text).

Each section's figure goes to DIR/figures/<name>/ with its runs in DIR/runs/, named by their
config and shared by every figure that needs the same run (figures.shared_run_dir): a finished
run is reused, an unfinished one resumes from its checkpoint, so running the command again
after a kill goes on where it stopped. DIR/regenerate.json keeps the wall time of every
invocation; the page's header states their sum, the command, the machine and the versions.
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from importlib import metadata, resources

from fedln_jax.config import Config, load_config_file
from fedln_jax.data.sources import DATASETS, load_dataset
from fedln_jax.errors import FedlnError
from fedln_jax.models.cnn import resolve_arch
from fedln_jax.studies import figures
from fedln_jax.studies.paper_page import PAGES
from fedln_jax.studies.results_page import Section, fixed_text
from fedln_jax.training import lock
from fedln_jax.training.experiment import build_experiment
from fedln_jax.training.workdir import (copy_file, missing_keys, read_json, read_metrics,
                                        write_json, write_text)

MARKERS = ("figures", "runs", "regenerate.json")
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")


def configs_dir() -> str:
    """experiments/configs of the checkout this package runs from, else of the current directory."""
    checkout = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir)
    here = os.path.normpath(os.path.join(checkout, "experiments", "configs"))
    return here if os.path.isdir(here) else os.path.join(os.getcwd(), "experiments", "configs")


def load_sections(sections, config_root: str) -> dict[str, figures.Figure]:
    """Every section's figure, loaded before anything runs (a bad config stops here). A
    section with its own `runs` takes a single-run config (a paper table's) as their base."""
    loaded = {}
    for s in sections:
        path = os.path.join(config_root, s.config)
        if not os.path.isfile(path):
            raise FedlnError(f"section {s.name!r}: no figure config {path} (run from a checkout "
                             f"of the repository, which holds experiments/configs)")
        loaded[s.name] = (figures.check_figure(figures.Figure(
            path, load_config_file(path), list(s.runs), dict(s.options)))
            if s.runs else figures.load_figure(path))
    return loaded


def check_datasets(loaded, extra: dict) -> None:
    """Load each dataset the figures use once, so that a missing one (mnist5k without its
    extra) stops the command before anything is written, not midway."""
    bases = [f.base.replace(**{k: v for k, v in extra.items() if k in ("dataset", "data_dir")})
             for f in loaded]
    for dataset, data_dir in dict.fromkeys((b.dataset, b.data_dir) for b in bases):
        load_dataset(dataset, data_dir=data_dir)


def regenerate(workdir: str, out: str = "", *, page: str = "main",
               sections: tuple[Section, ...] | None = None, only: str | None = None,
               overrides=(), config_root: str = "", command: str = "") -> float:
    """Run (or reuse) every section's figure of `page` (results_page.PAGES: "main", the
    page of docs/results.md, or "paper", the paper's configs; `sections` instead of the
    page's, with its template; only `only`'s figure when given), then write the page to `out`
    (default DIR/results.md) and its images to <out's directory>/figures/. Returns the wall
    time of this invocation in seconds."""
    start = time.time()
    if page not in PAGES:
        raise FedlnError(f"--page {page!r}: not a page; pages: {', '.join(PAGES)}")
    template = PAGES[page].template
    sections = PAGES[page].sections if sections is None else sections
    names = [s.name for s in sections]
    if only is not None and only not in names:
        raise FedlnError(f"--only {only!r}: not a section of the page; sections: {', '.join(names)}")
    check_workdir_kind(workdir)
    if out:
        check_out(out, workdir)
    # Everything below is checked before anything is written.
    extra = figures.figure_overrides(overrides)
    loaded = load_sections(sections, config_root or configs_dir())
    todo = [s for s in sections if only is None or s.name == only]
    planned = {}
    for s in todo:   # every run's config validated: rounds=0, say, stops here
        planned.update((p.workdir, p.config) for p in figures.plan_runs(
            loaded[s.name], extra, figures.figure_seeds(loaded[s.name]), workdir,
            os.path.join(workdir, "runs")))
    check_datasets(loaded.values(), extra)
    for config in planned.values():   # and against its data: model=cnn on 8x8 digits, say
        build_experiment(config)      # (the whole main page: 120 runs, about 8 s on 2 cores)
    lock.check_own(workdir, MARKERS, "a results regeneration")
    out = out or os.path.join(workdir, "results.md")
    ledger_path = os.path.join(workdir, "regenerate.json")
    read_ledger(ledger_path)   # checked before anything is written, read again under the lock
    for s in sections:   # every figure's results.json the page will read
        read_result(figure_dir(workdir, s))
    # One invocation per workdir at a time: a second is refused here, in one line, before its
    # progress line or its entry in the ledger (re-read under the lock).
    with lock.hold([workdir]):
        ledger = read_ledger(ledger_path)
        now = datetime.datetime.now(datetime.timezone.utc)
        entry = {"started": now.isoformat(timespec="seconds"), "command": command,
                 "seconds": 0.0, "figures": [], "load_before": round(os.getloadavg()[0], 1)}
        ledger["invocations"].append(entry)
        try:
            for i, s in enumerate(todo):
                log(f"[{i + 1}/{len(todo)}] {s.name} ({s.config}); "
                    f"{time.time() - start:.0f} s so far")
                figures.run_figure(loaded[s.name], figure_dir(workdir, s), list(overrides),
                                   quiet=True, runs_dir=os.path.join(workdir, "runs"))
                entry["figures"].append(s.name)
                entry["seconds"] = round(time.time() - start, 1)
                write_json(ledger_path, ledger)
                # The page after every figure: a regeneration stopped midway leaves a page that
                # shows what is done and marks the rest "not regenerated yet".
                write_page(sections, loaded, workdir, out, extra, ledger, template)
        finally:   # a kill (SIGTERM, Ctrl-C) still counts the time it spent
            entry["load_after"] = round(os.getloadavg()[0], 1)
            entry["seconds"] = round(time.time() - start, 1)
            write_json(ledger_path, ledger)
        write_page(sections, loaded, workdir, out, extra, ledger, template)
        total = sum(e["seconds"] for e in ledger["invocations"])
        log(f"wrote {out}; this invocation {entry['seconds']:.0f} s, all invocations of this "
            f"workdir {total:.0f} s ({total / 60:.1f} min)")
    return entry["seconds"]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def figure_dir(workdir: str, section: Section) -> str:
    return os.path.join(workdir, "figures", section.name)


# ---------------------------------------------------------------------------------------------
# The page


def write_page(sections, loaded, workdir: str, out: str, extra: dict, ledger: dict,
               template_file: str = PAGES["main"].template) -> None:
    image_dir = os.path.join(os.path.dirname(os.path.abspath(out)), "figures")
    os.makedirs(image_dir, exist_ok=True)
    template = resources.files("fedln_jax.studies").joinpath(template_file).read_text()
    for marker, text in fixed_text().items():   # numbers of the fixed text, from the code
        template = template.replace(marker, text)
    body, group = [], None
    for s in sections:
        if s.group != group:
            body.append(f"## {s.group}\n")
            group = s.group
        body.append(render_section(s, loaded[s.name], figure_dir(workdir, s), image_dir, extra))
    demo_dir = figure_dir(workdir, next((s for s in sections if s.name == "demo"), sections[0]))
    demo_table = read_text(os.path.join(demo_dir, "table.txt"))
    page = (template.replace("<!-- HEADER -->", header(ledger, extra))
            .replace("<!-- SECTIONS -->", "\n".join(body).rstrip())
            .replace("<!-- DEMO_TABLE -->",
                     f"```\n{demo_table.rstrip()}\n```" if demo_table else "(not regenerated)"))
    write_text(out, page)


# ---------------------------------------------------------------------------------------------
# What is checked before anything trains: the workdir, --out, and the state files read back


def check_workdir_kind(workdir: str) -> None:
    """Refuse the workdir of a sweep or of a figure: the page would replace their results.md,
    results.json or tables."""
    for marker, other in (("sweep.json", "a sweep"), ("results.json", "a figure")):
        if os.path.exists(os.path.join(workdir, marker)):
            raise FedlnError(f"workdir {workdir!r} holds {other} ({marker}), whose files the page "
                             f"would replace; use a new workdir")
    for name in ("runs", "figures"):
        if os.path.lexists(os.path.join(workdir, name)) \
                and not os.path.isdir(os.path.join(workdir, name)):
            raise FedlnError(f"workdir {workdir!r}: its {name} is not a directory; move it away "
                             f"or use a new workdir")


def check_out(out: str, workdir: str) -> None:
    """--out must name a file that is none of the workdir's own: not the workdir, nothing under
    its runs/ or figures/ (a figure's results.json), not its ledger; and the page's images
    must have a directory beside it (<out's directory>/figures)."""
    lock.check_file_path(out, "--out", create_dirs=True)
    if os.path.exists(out) and not os.path.isfile(out):   # the page is renamed over it
        raise FedlnError(f"--out {out!r} is not a regular file (a device or a pipe, say), which "
                         f"the page would replace; name a file")
    target, root = os.path.realpath(out), os.path.realpath(workdir)
    inside = [os.path.join(root, d) for d in ("runs", "figures")]
    if target == root or any(target == d or target.startswith(d + os.sep) for d in inside) \
            or os.path.dirname(target) == root and os.path.basename(target) in (
                *MARKERS, lock.LOCK_NAME):
        raise FedlnError(f"--out {out!r} is one of the workdir's own files or directories (its "
                         f"runs/, figures/, regenerate.json); name a file such as "
                         f"{os.path.join(workdir, 'results.md')!r} or one outside the workdir")
    folder = os.path.dirname(target)
    for marker, other in (("config.json", "a run"), ("sweep.json", "a sweep"),
                          ("results.json", "a figure"), ("summary.json", "a run")):
        if folder != root and os.path.exists(os.path.join(folder, marker)):
            raise FedlnError(f"--out {out!r} is in the workdir of {other} ({marker} beside "
                             f"it), whose files the page and its figures/ would replace")
    images = os.path.join(folder, "figures")
    if os.path.lexists(images) and not os.path.isdir(images):
        raise FedlnError(f"--out {out!r}: the page's images go to {images}, which is a file")


LEDGER_FIX = ("remove it (it holds only the wall times of earlier invocations) and rerun; "
              "the runs and figures are reused")
INVOCATION_KEYS = {"started": str, "command": str, "seconds": (int, float), "figures": list,
                   "load_before": (int, float)}
RESULT_KEYS = {"runs": list, "seeds": list, "rounds": int, "wall_seconds": (int, float),
               "table": (list, dict), "overrides": dict}
RUN_ROW_KEYS = {"name": str, "series": str, "x": (str, int, float, type(None)), "seed": int,
                "workdir": str, "status": str}


def read_ledger(path: str) -> dict:
    """DIR/regenerate.json, checked (a new ledger when there is none)."""
    if not os.path.exists(path):
        return {"invocations": []}

    def check(obj):
        problem = missing_keys(obj, {"invocations": list})
        for k, entry in enumerate([] if problem else obj["invocations"]):
            problem = problem or (missing_keys(entry, INVOCATION_KEYS) and
                                  f"invocation {k} {missing_keys(entry, INVOCATION_KEYS)}")
        return problem
    return read_json(path, LEDGER_FIX, check)


def read_result(fdir: str) -> dict | None:
    """A figure's results.json, checked; None when the figure has not run."""
    path = os.path.join(fdir, "results.json")
    if not os.path.exists(path):
        return None

    def check(obj):
        problem = missing_keys(obj, RESULT_KEYS)
        for k, row in enumerate([] if problem else obj["runs"]):
            problem = problem or (missing_keys(row, RUN_ROW_KEYS) and
                                  f"run {k} {missing_keys(row, RUN_ROW_KEYS)}")
        return problem
    return read_json(path, f"remove it and rerun: the figure is redrawn from its runs, "
                           f"which are reused", check)


def read_text(path: str) -> str:
    return open(path).read() if os.path.exists(path) else ""


def render_section(s: Section, figure: figures.Figure, fdir: str, image_dir: str,
                   extra: dict) -> str:
    lines = [f"### {s.heading}", "", s.about, ""]
    result = read_result(fdir)
    if result is None:
        return "\n".join(lines + ["(not regenerated yet: run the command at the top of the page)", ""])
    result = with_curves(result)
    configs = [p.config for p in figures.plan_runs(figure, extra, result["seeds"], fdir)]
    lines += [describe(configs, result), "", f"Alone: {alone(s)} ({len(result['runs'])} runs).", ""]
    for table in ("table.md", "table.txt"):
        text = read_text(os.path.join(fdir, table)).rstrip()
        if text:
            lines += [text if table.endswith(".md") else f"```\n{text}\n```", ""]
    image = s.image or f"{s.name}.png"
    shown = [(options_image(figure), image)] + [(e, f"{s.name}_{e}") for e in s.extras
                                                 if e.endswith(".png")]
    for e in s.extras:
        if e.endswith(".md"):
            lines += [read_text(os.path.join(fdir, e)).rstrip(), ""]
    lines += [notes_text(s.notes(result)) if s.notes else "", ""]
    for src, dst in shown:
        if os.path.exists(os.path.join(fdir, src)):
            copy_file(os.path.join(fdir, src), os.path.join(image_dir, dst))
            lines += [f"![{s.heading}](figures/{dst})", ""]
    return "\n".join(lines)


def notes_text(notes: list[str]) -> str:
    """A section's sentences as Markdown: sentences in a paragraph, '- ' items as a list."""
    blocks, paragraph = [], []
    for line in notes:
        if line.startswith("- "):
            if paragraph:
                blocks.append(" ".join(paragraph))
                paragraph = []
            if not blocks or not blocks[-1].startswith("- "):
                blocks.append(line)
            else:
                blocks[-1] += "\n" + line
        else:
            paragraph.append(line)
    if paragraph:
        blocks.append(" ".join(paragraph))
    return "\n\n".join(blocks)


def alone(s: Section) -> str:
    """The command that makes this section's figure by itself."""
    if s.runs:   # a single-run config with the section's runs: the page's command, --only
        return f"`fedln-jax results --page paper --only {s.name} --workdir runs/paper_results`"
    return f"`fedln-jax figure --config experiments/configs/{s.config} --workdir runs/{s.name}`"


def with_curves(result: dict) -> dict:
    """results.json with what its runs' workdirs hold: every completed run's accuracy curve
    (metrics.jsonl) as "curves": [{series, x, seed, rounds, accuracy}], and every run's
    config.json as "configs": [{series, x, seed, config}]; a run whose files are gone has none."""
    curves, configs = [], []
    for r in result["runs"]:
        key = {"series": r["series"], "x": r["x"], "seed": r["seed"]}
        rows = read_metrics(r["workdir"]) if r["status"] != "diverged" else []
        if rows:
            curves.append({**key, "rounds": [row["round"] for row in rows],
                           "accuracy": [row["test_accuracy"] for row in rows]})
        config_path = os.path.join(r["workdir"], "config.json")
        if os.path.exists(config_path):
            configs.append({**key, "config": read_json(
                config_path, f"remove {r['workdir']} and rerun: the run is trained again")})
    return {**result, "curves": curves, "configs": configs}


def options_image(figure: figures.Figure) -> str:
    return figure.options.get("figure_file", "figure.png")


def describe(configs: list[Config], result: dict) -> str:
    """Model and protocol of a figure's runs; a key that differs between runs is 'varied'."""
    def one(key):
        values = list(dict.fromkeys(str(getattr(c, key)) for c in configs))
        return values[0] if len(values) == 1 else "varied: " + ", ".join(values)
    models = list(dict.fromkeys(model_text(c) for c in configs))
    c = configs[0]
    return (f"Model: {'; '.join(models)}. Protocol: {c.dataset}, {c.num_clients} clients, "
            f"partition {one('partition')} (classes per client {one('classes_per_client')}), "
            f"{one('local_steps')} local steps of batch {one('batch_size')}, lr {one('lr')}, "
            f"{result['rounds']} rounds, evaluation every {one('eval_every')}, seeds "
            f"{', '.join(map(str, result['seeds']))}; {result['wall_seconds']:.0f} s in its "
            f"last figure invocation (0 when every run was reused).")


def model_text(config: Config) -> str:
    name = DATASETS[config.dataset].default_model if config.model == "auto" else config.model
    kw = resolve_arch(name, config.conv_features, config.dense_features)["kw"]
    widths = (f"conv {'/'.join(map(str, kw['conv_features']))}, dense "
              f"{'/'.join(map(str, kw['dense_features']))}" if "conv_features" in kw
              else f"hidden {'/'.join(map(str, kw['hidden']))}")
    return f"`{name}` ({widths})"


def cpu_model() -> str:
    """'AMD EPYC (family 25, model 17), 2 CPUs' from /proc/cpuinfo, or platform's answer."""
    try:
        info = {}
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
        return (f"{info['model name']} (family {info['cpu family']}, model {info['model']}), "
                f"{os.cpu_count()} CPUs")
    except (OSError, KeyError):
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return f"Python {platform.python_version()}, " + ", ".join(found)


def header(ledger: dict, extra: dict) -> str:
    runs = ledger["invocations"]
    last = runs[-1]
    total = sum(e["seconds"] for e in runs)
    state = (f"the last: {last['seconds']:.0f} s for {len(last['figures'])} figure(s), load "
             f"average {last['load_before']} before and {last['load_after']} after"
             if "load_after" in last else
             f"the last still running: {last['seconds']:.0f} s and {len(last['figures'])} "
             f"figure(s) so far, load average {last['load_before']} at its start")
    return "\n".join([
        f"Regenerated on {last['started'][:10]} by `{last['command'] or 'fedln-jax results'}` "
        f"on {cpu_model()}; {versions()}.",
        f"Wall time: {total:.0f} s ({total / 60:.1f} min) over {len(runs)} invocation(s) "
        f"({state}; on a machine shared with other work)."
        + (f" Overrides: {extra}." if extra else "")])
