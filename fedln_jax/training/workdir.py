"""A run's workdir on disk: atomic writes, the one reader of metrics.jsonl, and the checks
that a workdir (or a checkpoint in it) belongs to the run asked for, a finished run, or a run
to resume. The files themselves are listed in docs/checkpoints.md."""
from __future__ import annotations

import json
import os
import sys
from typing import Any

from etils import epath

from fedln_jax.algorithms import without_inert_hparams
from fedln_jax.config import Config, diff_keys, resumable_keys, with_defaults
from fedln_jax.errors import FedlnError
from fedln_jax.runtime.environment import device_summary
from fedln_jax.training import checkpoint, lock
from fedln_jax.training.experiment import Experiment, build_experiments
from fedln_jax.training.program import plan_programs
from fedln_jax.version import __version__

# Keys a resumed run may change (declared `resumable=True` in config_keys.py): they decide
# how the rounds are laid out (chunking, devices) or saved, so a run preempted on one machine
# can resume on another. A layout change alters the numbers only by float32 rounding (tested to
# 1e-5); the bits stay equal only on the same layout (docs/scale.md, "What is bit-identical").
RESUMABLE_CHANGES = resumable_keys()


def compare_configs(previous: dict, config: Config, what: str) -> None:
    """Allow the same config, the same with `rounds` raised (extending the run), or with
    RESUMABLE_CHANGES; refuse anything else with a FedlnError naming each differing key."""
    current = config.to_dict()
    # a config.json from before a key was added, or before a default of a hyperparameter
    # its algorithm does not read changed
    previous = with_defaults(without_inert_hparams(previous))
    differing = [k for k in diff_keys(previous, current) if k not in RESUMABLE_CHANGES]
    if differing == ["rounds"] and isinstance(previous.get("rounds"), int) \
            and config.rounds > previous["rounds"]:
        return
    if differing:
        changes = "; ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in differing)
        hint = (" (rounds may only be raised, to extend the run)"
                if differing == ["rounds"] else "")
        raise FedlnError(f"{what} holds a run with a different config (differs in: "
                         f"{', '.join(differing)}; {changes}){hint}; use a new workdir")


def check_workdir(workdir: str, config: Config) -> dict | None:
    """Refuse a workdir that belongs to a different run, before anything is written.

    Returns the previous config dict (same config: resume; only `rounds` raised: extend), or
    None for a new workdir.
    """
    root = epath.Path(workdir)
    if root.exists() and not root.is_dir():
        raise FedlnError(f"workdir {workdir!r} exists and is not a directory")
    path = root / "config.json"
    if not path.exists():
        if checkpoint.checkpoint_dir(workdir).exists():
            raise FedlnError(f"workdir {workdir!r} has checkpoints but no config.json; "
                             f"use a new workdir")
        lock.check_own(workdir, ("config.json",), "a run")
        return None
    previous = read_json(path, "use a new workdir")
    compare_configs(previous, config, f"workdir {workdir!r}")
    check_metrics_cover(workdir, previous)
    return previous


def check_metrics_cover(workdir: str, previous: dict) -> None:
    """Refuse a run whose metrics.jsonl lost rows its newest checkpoint has passed (a deleted
    or truncated file): resuming would rewrite summary.json without them."""
    step = checkpoint.newest_step(workdir)
    every = previous.get("eval_every")
    if not step or not isinstance(every, int) or every < 1:
        return
    expected = set(range(every, step + 1, every))
    if previous.get("rounds") == step:
        expected.add(step)
    missing = sorted(expected - {row["round"] for row in read_metrics(workdir)})
    if missing:
        rounds = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise FedlnError(f"{epath.Path(workdir) / 'metrics.jsonl'} lacks the rows of round(s) "
                         f"{rounds}, which its checkpoint at round {step} has passed (the file "
                         f"was deleted or truncated); restore it or use a new workdir")


def write_json(path, obj: Any) -> None:
    """Write atomically: a crash never leaves a half-written file."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path, text: str) -> None:
    """Write to a temporary file and rename it over `path` (local or gs://, via etils.epath)."""
    path = epath.Path(path)
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_json(path, fix: str, check=None) -> Any:
    """The one checked reader of the JSON state the commands keep (a results ledger, a figure's
    results.json, a run's config.json or summary.json): a file that cannot be read, is not
    JSON (truncated, emptied) or fails `check` (a function returning what is wrong, or None)
    is one FedlnError naming the file and what to do (`fix`), never a traceback."""
    path = epath.Path(path)
    try:
        obj = json.loads(path.read_text())
    except OSError as exc:
        raise FedlnError(f"{path} cannot be read ({exc.strerror or exc}); {fix}") from None
    except ValueError as exc:   # JSONDecodeError, or bytes that are not UTF-8
        what = "is empty" if not path.read_bytes().strip() else f"is not valid JSON ({exc})"
        raise FedlnError(f"{path} {what}: it was truncated or overwritten; {fix}") from None
    problem = ("is not a JSON object" if not isinstance(obj, dict) and check is None
               else check(obj) if check is not None else None)
    if problem:
        raise FedlnError(f"{path} {problem}; {fix}")
    return obj


def missing_keys(obj: Any, keys: dict[str, type | tuple]) -> str | None:
    """For read_json's check: what is wrong with `obj` as a dict with these keys and types."""
    if not isinstance(obj, dict):
        return "is not a JSON object"
    for key, kind in keys.items():
        if key not in obj:
            return f"lacks {key!r}"
        if not isinstance(obj[key], kind):
            return f"has {key!r} of the wrong type ({type(obj[key]).__name__})"
    return None


def temp_path(path) -> str:
    """The temporary file beside `path` that an atomic write renames over it (same directory,
    same suffix, so that matplotlib infers the same format)."""
    head, name = os.path.split(str(path))
    stem, suffix = os.path.splitext(name)
    return os.path.join(head, f".{stem}.tmp{suffix}")


def save_figure(fig, path, **kwargs) -> None:
    """fig.savefig, atomically: a kill never leaves a half-written image."""
    tmp = temp_path(path)
    fig.savefig(tmp, **kwargs)
    os.replace(tmp, path)


def copy_file(src, dst) -> None:
    """shutil.copyfile, atomically."""
    import shutil
    tmp = temp_path(dst)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def read_metrics(workdir: str) -> list[dict]:
    """Rows of metrics.jsonl; a torn last line (a crash mid-write) is dropped."""
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("round"), int):
            rows.append(row)
    return rows


def finished_summary(workdir: str, config: Config, statuses=("completed",)) -> dict | None:
    """The summary of a run of exactly this config that ended with one of `statuses` (and did
    all its rounds, if completed), or None: a sweep or figure skips such a run."""
    try:
        previous = json.loads((epath.Path(workdir) / "config.json").read_text())
        summary = json.loads((epath.Path(workdir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if with_defaults(without_inert_hparams(previous)) != config.to_dict() \
            or summary.get("status") not in statuses:
        return None
    if summary["status"] == "completed" and summary.get("rounds_completed") != config.rounds:
        return None
    return summary


def check_checkpoint_meta(meta: dict, config: Config, workdir: str) -> None:
    """Refuse a checkpoint of a different run (as compare_configs); warn when another version
    of fedln_jax wrote it."""
    if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("progress"), dict):
        raise FedlnError(f"a checkpoint in {workdir!r} lacks its config; use a new workdir")
    compare_configs(meta["config"], config, f"the checkpoint at round {meta.get('round')}")
    if meta.get("fedln_jax_version") != __version__:
        print(f"warning: the checkpoint was written by fedln_jax {meta.get('fedln_jax_version')}, "
              f"this is {__version__}; results may differ from an uninterrupted run",
              file=sys.stderr)
    note = compiler_change_note(meta.get("environment"), device_summary())
    if note:
        print(note, file=sys.stderr)


def compiler_change_note(saved: dict | None, now: dict) -> str | None:
    """One line when the checkpoint was written under another jax/jaxlib or backend: the resumed
    run is the same program compiled by another XLA, so its numbers are not bit-identical to an
    uninterrupted run (docs/checkpoints.md#across-jax-versions). None when nothing changed."""
    if not isinstance(saved, dict):   # checkpoints from before versions were recorded
        return None
    changed = [f"{key} {saved.get(key)} -> {now[key]}" for key in ("jax", "jaxlib", "backend")
               if saved.get(key) != now[key]]
    if not changed:
        return None
    return (f"note: resuming a checkpoint written under another compiler ({', '.join(changed)}): "
            f"the same program, not bit-identical to an uninterrupted run")


def check_runs(configs: list[Config], workdirs: list[str]) -> list[Experiment]:
    """Every check of the runs' input and workdirs, before anything is written; returns the
    built experiments (data, partition, model: where impossible settings fail)."""
    if len(configs) != len(workdirs) or len(set(map(os.path.abspath, workdirs))) != len(workdirs):
        raise FedlnError("run_group needs one distinct workdir per config")
    for workdir in workdirs:
        lock.check_path(workdir)
    experiments = build_experiments(configs)   # input errors surface here
    for config, workdir in zip(configs, workdirs):
        check_workdir(workdir, config)
    return experiments


def resume_plan(experiments: list[Experiment], workdirs: list[str],
                max_runs: int | None) -> list[tuple[list[int], int | None]]:
    """The programs to run and the round each resumes from (None: a new program).

    Runs that began together (their workdirs hold config.json) are grouped as they were
    first, whatever rounds their checkpoints reached, and resume from the oldest of those
    rounds: a program killed between its runs' saves resumes as the same program, so its
    train_loss (whose float32 rounding depends on how many runs are vectorized) is
    bit-identical to an uninterrupted run's. New runs form programs of their own."""
    begun = [int((epath.Path(w) / "config.json").exists()) for w in workdirs]
    plan = []
    for member_ids in plan_programs(experiments, begun, max_runs):
        bound = (min(checkpoint.newest_step(workdirs[i]) for i in member_ids)
                 if begun[member_ids[0]] else None)
        plan.append((member_ids, bound))
    return plan
