"""run(config, workdir) and run_group(configs, workdirs): the one training loop. It trains the
runs of a program (program.py: one run, or several vectorized) in fused blocks of rounds,
evaluates, checkpoints every run into its own workdir, resumes, stops a diverged run, saves on
SIGTERM/SIGINT, and writes the workdir files of docs/config.md."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from fedln_jax.config import Config
from fedln_jax.data.partition import format_class_counts
from fedln_jax.engine.evaluation import evaluation_row
from fedln_jax.engine.measures import make_feature_fn, model_report
from fedln_jax.engine.state import ServerState, derive_server_context
from fedln_jax.errors import DivergedError, FedlnError, Interrupted
from fedln_jax.models import resolve_conv_impl
from fedln_jax.runtime.environment import device_summary
from fedln_jax.training import checkpoint, lock
from fedln_jax.training.divergence import diverged_message, loss_exploded
from fedln_jax.training.experiment import Experiment
from fedln_jax.training.layout import mesh_devices
from fedln_jax.training.memory import out_of_memory_reported
from fedln_jax.training.program import Program, build_program
from fedln_jax.training.run_files import RunFiles, is_writer
from fedln_jax.training.workdir import (check_checkpoint_meta, check_runs, finished_summary,
                                        resume_plan)


def evaluation_rounds(config: Config) -> list[int]:
    """Rounds after which the model is evaluated: every eval_every rounds, and the last."""
    rounds = list(range(config.eval_every, config.rounds + 1, config.eval_every))
    return rounds if rounds and rounds[-1] == config.rounds else rounds + [config.rounds]


def checkpoint_rounds(config: Config) -> list[int]:
    """Rounds after which the run state is saved: every checkpoint_every rounds, and the last."""
    every = config.checkpoint_every
    rounds = list(range(every, config.rounds + 1, every)) if every else []
    return rounds if rounds and rounds[-1] == config.rounds else rounds + [config.rounds]


# Longest wall time of one fused block of rounds: a SIGTERM/SIGINT is acted on at the next block
# boundary, so this bounds the reaction time (plus one save). Block lengths never change the
# results: rounds are the same compiled program and the loss is summed sequentially.
BLOCK_SECONDS = 2.0


class _StopSignal:
    """Records SIGTERM/SIGINT instead of dying, so the loop can stop at a round boundary.
    After the first signal the previous handlers come back: a second Ctrl-C aborts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        self._restore()
        print(f"fedln-jax: received {signal.Signals(signum).name}; finishing the running "
              f"block of rounds and saving a checkpoint (send it again to abort at once)", file=sys.stderr)

    def _restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def __exit__(self, *exc):
        self._restore()
        return False


def run(config: Config, workdir: str, *, quiet: bool = False) -> dict:
    """Train one experiment and write config.json, clients.json, metrics.jsonl, summary.json
    and checkpoints/; resume from the newest valid checkpoint if the workdir has one.

    Returns the summary dict. Bad input raises FedlnError before the workdir is touched;
    divergence raises DivergedError, SIGTERM/SIGINT raise Interrupted (after a checkpoint).
    """
    summary = run_group([config], [workdir], quiet=quiet)[0]
    if summary["status"] == "diverged":
        raise DivergedError(diverged_message(config, summary), summary["diverged_at_round"])
    return summary


def run_group(configs: list[Config], workdirs: list[str], *, quiet: bool = False,
              max_runs_per_program: int | None = None,
              experiments: list[Experiment] | None = None) -> list[dict]:
    """Train several experiments, each into its own workdir; returns their summaries in order.

    Runs that differ only in VALUE_KEYS (with equal array shapes, resuming from the same
    round) are executed as one vmapped program over a leading runs axis; the others as
    separate programs. Every run checkpoints into its own workdir and resumes from it. Every
    input error surfaces before any workdir is written. A diverged run ends with status
    `diverged` while the others of its program go on; SIGTERM/SIGINT raise Interrupted after
    every unfinished run of the running program has saved a checkpoint.
    max_runs_per_program bounds how many runs one program stacks (memory grows with it).
    experiments: those of `check_runs(configs, workdirs)`, when the caller checked first.
    """
    if max_runs_per_program is not None and max_runs_per_program < 1:
        raise FedlnError(f"max runs per program must be >= 1, got {max_runs_per_program}")
    if experiments is None:
        experiments = check_runs(configs, workdirs)
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    # A finished run (its summary says so and its final checkpoint is there) is reported as
    # it is, never rewritten: its workdir may be read-only, or be read by another process.
    summaries: list[dict | None] = [
        finished_summary(w, c) if checkpoint.newest_step(w) == c.rounds else None
        for c, w in zip(configs, workdirs)]
    todo = [i for i, s in enumerate(summaries) if s is None]
    with lock.hold([workdirs[i] for i in todo] if is_writer() else []):
        for member_ids, bound in resume_plan([experiments[i] for i in todo],
                                             [workdirs[i] for i in todo], max_runs_per_program):
            member_ids = [todo[i] for i in member_ids]
            outs = train_program([experiments[i] for i in member_ids],
                                 [workdirs[i] for i in member_ids], log, quiet, bound)
            for i, summary in zip(member_ids, outs):
                summaries[i] = summary
    return summaries


def agree_across_processes(block_cap: int, stopping: bool) -> tuple[int, bool]:
    """The next block's length cap and whether to stop, the same in every process.

    Each process times its own rounds and receives its own signals (a preempted TPU slice
    signals its hosts at slightly different moments), but all must run the same number of
    rounds per block and save and stop at the same round, or their collectives would wait on
    each other forever: the smallest cap wins, and one process stopping stops them all.
    """
    if jax.process_count() == 1:
        return block_cap, stopping
    from jax.experimental import multihost_utils
    votes = np.asarray(multihost_utils.process_allgather(np.array([block_cap, stopping], np.int32)))
    return int(votes[:, 0].min()), bool(votes[:, 1].max())


def restore_runs(managers: list, program: Program, members: list[Experiment],
                 workdirs: list[str], bound: int | None = None) -> list:
    """Each run's newest readable checkpoint at most at round `bound` (None for a new run),
    all at one round (runs of a program advance in lockstep): if one run must fall back (a
    damaged newest step), the others follow it."""
    while True:
        restored = [checkpoint.restore_latest(
            m, program.take(program.fresh, r),
            lambda meta, c=exp.config, w=w: check_checkpoint_meta(meta, c, w), max_step=bound,
            derive_server_context=derive_server_context(exp.algorithm, exp.data))
            for r, (m, exp, w) in enumerate(zip(managers, members, workdirs))]
        rounds = [x.round if x else 0 for x in restored]
        if len(set(rounds)) == 1:
            return restored
        bound = min(rounds)


def train_program(members: list[Experiment], workdirs: list[str], log, quiet: bool,
                  resume_bound: int | None = None) -> list[dict]:
    """Train the runs of one program in fused blocks of rounds, evaluating, checkpointing and
    stopping at the rounds the config asks (and at SIGTERM/SIGINT); returns their summaries."""
    config, runs = members[0].config, len(members)
    devices = mesh_devices(config)
    program = build_program(members, devices)
    with _StopSignal() as stop, contextlib.ExitStack() as stack:
        managers = [checkpoint.open_manager(w, exp.config.keep_checkpoints)
                    for exp, w in zip(members, workdirs)]
        for manager in managers:
            stack.callback(manager.close)
        restored = restore_runs(managers, program, members, workdirs, resume_bound)
        start = time.time()
        info = {"runs_vectorized": runs, "device_layout": list(program.mesh.devices.shape),
                "client_chunk_size": program.layout.chunk,
                "conv_impl": resolve_conv_impl(config.conv_impl)[0],
                "environment": device_summary()}
        files = [RunFiles(exp, w, m, r, start, info)
                 for exp, w, m, r in zip(members, workdirs, managers, restored)]
        start_round = files[0].start_round
        log(f"fedln-jax: {config.dataset}, {config.num_clients} clients ({config.partition}), "
            f"model {config.resolved_model}, norm {config.norm_label}, {len(devices)} "
            f"{jax.default_backend()} device(s), {jax.process_count()} process(es)"
            + (f", {runs} runs vectorized" if runs > 1 else "")
            + (" (devices: {} along runs x {} along clients)".format(*program.mesh.devices.shape)
               if runs > 1 and len(devices) > 1 else ""))
        if start_round:
            log(f"resuming from the checkpoint at round {start_round} of {config.rounds}")
        elif runs == 1:
            log(format_class_counts(members[0].counts_CK))
        state = program.join([x.state for x in restored]) if restored[0] else program.fresh
        with out_of_memory_reported(program.layout.chunk, lambda: files[0].last_saved):
            _train_loop(program, files, state, stop, quiet)
        summaries = [f.summary for f in files]
    for f in files:
        s = f.summary
        if f.save_seconds and runs == 1:
            log(f"checkpoints: {len(f.save_seconds)} saved, {np.mean(f.save_seconds):.3f} s each")
        if s["status"] == "diverged":
            log(f"{f.workdir}: {diverged_message(f.exp.config, s)}")
        else:
            name = (f"{f.exp.config.norm_label}/seed{f.exp.config.seed}" if runs == 1
                    else os.path.basename(os.path.normpath(f.workdir)))
            log(f"done: {name} {s['rounds_completed']} rounds, "
                f"final test accuracy {s['final_test_accuracy']:.4f} ({s['wall_seconds']:.1f} s)")
    return summaries


@dataclasses.dataclass
class Progress:
    """Where a program's training loop stands."""
    done: int                      # rounds completed
    loss_sum: Any                  # per-run train-loss sums since the last evaluation (device)
    rounds_in_sum: int             # rounds those sums cover
    active: list[int]              # runs still training (a diverged run stops, the rest go on)
    cap: int = 1                   # the next block's longest length: 1 until a round is timed
    seconds_per_round: float | None = None


def _train_loop(program: Program, files: list[RunFiles], state, stop: _StopSignal,
                quiet: bool) -> None:
    """Sets `summary` on every RunFiles; raises Interrupted after a stop signal. Each pass
    runs one block of rounds up to the next evaluation or checkpoint round, then evaluates,
    then saves, then stops if a signal came."""
    config = files[0].exp.config
    eval_set, save_set = set(evaluation_rounds(config)), set(checkpoint_rounds(config))
    boundaries = sorted(eval_set | save_set)
    at = Progress(done=files[0].start_round, active=list(range(program.runs)),
                  loss_sum=program.scalars([f.progress.get("train_loss_sum", 0.0) for f in files]),
                  rounds_in_sum=int(files[0].progress.get("rounds_in_sum", 0)))
    features_fn = (make_feature_fn(files[0].exp.model, files[0].exp.spec.pixel_scale)
                   if config.analysis_every else None)
    bar = progress_bar(config, program.runs, at.done, quiet)
    while at.done < config.rounds and at.active:
        n = min(next(b for b in boundaries if b > at.done) - at.done, at.cap)
        state = run_one_block(program, files, state, at, n)
        if not at.active:
            break
        bar.update(n)
        checkpoint.pause_for_test("block", at.done)
        losses_R = np.atleast_1d(np.float32(jax.device_get(at.loss_sum)))
        if at.done in eval_set:
            evaluate_runs(program, files, state, at, losses_R, features_fn)
            if not at.active:
                break
            checkpoint.pause_for_test("metrics", at.done)
            losses_R = np.zeros(program.runs, np.float32)
            row = files[at.active[0]].history[-1]
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['test_accuracy']:.3f}")
        timed_cap = (max(1, int(BLOCK_SECONDS / at.seconds_per_round))
                     if at.seconds_per_round else 1)
        at.cap, stopping = agree_across_processes(timed_cap, stop.signum is not None)
        if at.done in save_set or stopping:
            for r in at.active:
                files[r].save(program.take(state, r), at.done, float(losses_R[r]),
                              at.rounds_in_sum)
        if stopping and at.done < config.rounds:
            bar.close()
            # SIGTERM where the signal reached another process, not this one
            raise stopped(files, at, stop.signum or signal.SIGTERM)
    bar.close()
    for r in at.active:
        files[r].finish("completed", at.done)


def progress_bar(config: Config, runs: int, start_round: int, quiet: bool):
    return tqdm(total=config.rounds, initial=start_round, unit="round",
                disable=quiet or not is_writer() or None, leave=False,
                desc=config.norm_label + (f"/seed{config.seed}" if runs == 1 else f" x{runs} runs"))


def run_one_block(program: Program, files: list[RunFiles], state, at: Progress, n: int):
    """n rounds in one compiled call; a run whose rounds went non-finite stops as diverged
    (the others of its program go on: its lanes keep computing on its frozen state, which
    nothing reads). Returns the new state; advances `at`."""
    t0 = time.perf_counter()
    state, at.loss_sum, bad_R = program.run_block(state, program.hparams, program.data,
                                                  jnp.int32(n), at.loss_sum)
    bad_R = np.atleast_1d(jax.device_get(bad_R))
    if at.done > files[0].start_round:   # the first block compiles: not a timing
        at.seconds_per_round = (time.perf_counter() - t0) / n
    for r in [r for r in at.active if bad_R[r] >= 0]:
        files[r].finish("diverged", int(bad_R[r]) - 1, diverged_at_round=int(bad_R[r]))
        at.active.remove(r)
    if at.active:
        at.done += n
        at.rounds_in_sum += n
    return state


def evaluate_runs(program: Program, files: list[RunFiles], state, at: Progress,
                  losses_R: np.ndarray, features_fn) -> None:
    """One metrics row per active run (a run whose loss exploded stops as diverged), then the
    loss sums start again."""
    config = files[0].exp.config
    results = jax.device_get(program.evaluate(state, *program.tests))
    for r in at.active:
        exp = files[r].exp
        row = evaluation_row(exp, program.take(results, r), at.done,
                             float(losses_R[r] / np.float32(at.rounds_in_sum)))
        if features_fn and (at.done % config.analysis_every == 0 or at.done == config.rounds):
            row.update(training_analysis(exp, features_fn, program.take(state, r)))
        files[r].add_row(row)
        exploded = loss_exploded(row["train_loss"], exp.num_classes, exp.config.tau)
        if exploded:
            files[r].finish("diverged", at.done, diverged_at_round=at.done,
                            diverged_because=exploded)
    at.active = [r for r in at.active if files[r].summary is None]
    at.loss_sum, at.rounds_in_sum = program.scalars([0.0] * program.runs), 0


def stopped(files: list[RunFiles], at: Progress, signum: int) -> Interrupted:
    """Every active run finished as interrupted (its checkpoint just saved); the one line."""
    name = signal.Signals(signum).name
    for r in at.active:
        files[r].finish("interrupted", at.done, interrupted_by=name)
    runs, rounds = len(files), files[0].exp.config.rounds
    where = (files[0].root / "checkpoints" if runs == 1
             else f"the checkpoints/ of its {runs} run workdirs")
    return Interrupted(f"fedln-jax: stopped by {name} after round {at.done} of {rounds}; "
                       f"checkpoint saved in {where}; run the same command again to resume",
                       signum, at.done)


def training_analysis(exp: Experiment, features_fn, state: ServerState) -> dict:
    """The analyses logged into a metrics row when `analysis_every` is set."""
    report = model_report(exp, features_fn, state.params, state.model_state)
    return {k: report[k] for k in ("feature_norm_per_class", "head_norm_per_class",
                                   "singular_values")}
