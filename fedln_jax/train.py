"""run(config, workdir): build everything from a Config, train in fused blocks of rounds,
evaluate, checkpoint, resume, and write the workdir files of DESIGN section 6."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from tqdm.auto import tqdm

from fedln_jax import checkpoint, engine
from fedln_jax.algorithms import OWNED_HPARAMS, Algorithm, get_algorithm
from fedln_jax.config import Config, diff_keys
from fedln_jax.data import class_counts, client_test_weights, load_dataset, partition
from fedln_jax.data.sources import LoadOptions
from fedln_jax.errors import DivergedError, FedlnError, Interrupted
from fedln_jax.models import build_model


class Experiment(NamedTuple):
    """Everything a run needs, built from a Config before anything is written to disk."""
    config: Config
    model: Any
    apply_fn: Any
    spec: engine.RoundSpec
    data: engine.DeviceData
    x_test: jax.Array
    y_test: jax.Array
    num_classes: int
    counts_CK: np.ndarray           # training examples per client and class
    test_weights_CK: np.ndarray
    algorithm: Algorithm

    @property
    def server_tx(self) -> Algorithm:
        """The engine's third argument (kept for callers written before algorithms existed)."""
        return self.algorithm


def build_experiment(config: Config) -> Experiment:
    """Data, partition, model and round spec. Raises FedlnError on impossible requests."""
    config.validate()
    dataset = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed,
                           test_fraction=config.test_fraction,
                           options=LoadOptions(download=config.download,
                                               image_size=config.image_size,
                                               pacs_domain=config.pacs_domain))
    clients = partition(dataset.y_train, config.num_clients, scheme=config.partition,
                        num_classes=dataset.num_classes,
                        classes_per_client=config.classes_per_client,
                        dirichlet_beta=config.dirichlet_beta, seed=config.seed,
                        min_examples=config.min_client_examples)
    counts_CK = class_counts(dataset.y_train, clients, dataset.num_classes)
    model = build_model(config.resolved_model, config.norm, dataset.num_classes,
                        norm_layers=config.norm_layers, norm_position=config.norm_position,
                        gn_groups=config.gn_groups, tau=config.tau, conv_impl=config.conv_impl,
                        dtype=config.dtype)
    num_devices = len(mesh_devices(config))
    chunk = config.client_chunk_size or engine.default_chunk_size(config.cohort_size, num_devices)
    spec = engine.RoundSpec(
        num_clients=config.num_clients, cohort_size=config.cohort_size,
        local_steps=config.local_steps, batch_size=config.batch_size,
        max_epochs=engine.epochs_needed(int(counts_CK.sum(1).min()), config.local_steps,
                                        config.batch_size),
        pixel_scale=dataset.pixel_scale, chunk_size=chunk,
        momentum=config.momentum, weight_decay=config.weight_decay,
        augment=config.resolved_augment)
    return Experiment(
        config=config, model=model, apply_fn=engine.make_apply_fn(model), spec=spec,
        data=engine.make_data(dataset.x_train, dataset.y_train, clients, dataset.num_classes),
        x_test=jnp.asarray(dataset.x_test), y_test=jnp.asarray(dataset.y_test),
        num_classes=dataset.num_classes, counts_CK=counts_CK,
        test_weights_CK=client_test_weights(counts_CK),
        algorithm=get_algorithm(config.algorithm))


def mesh_devices(config: Config) -> list:
    """The devices the clients axis is laid out over (all, or the first num_devices)."""
    available = jax.devices()
    if config.num_devices is None:
        return available
    if config.num_devices > len(available):
        raise FedlnError(f"num_devices={config.num_devices} cannot host the mesh: only "
                         f"{len(available)} {jax.default_backend()} device(s) are available")
    if jax.process_count() > 1 and config.num_devices != len(available):
        raise FedlnError(f"num_devices={config.num_devices}: a multi-process run lays clients "
                         f"out over all {len(available)} devices; leave num_devices unset")
    return available[:config.num_devices]


def hparams_of(config: Config) -> dict[str, jax.Array]:
    """The values a round reads as arrays (so runs differing only in them can be vmapped)."""
    hparams = {"lr": jnp.float32(config.lr), "server_lr": jnp.float32(config.resolved_server_lr)}
    for key in get_algorithm(config.algorithm).hparam_keys:
        hparams[key] = jnp.float32(getattr(config, key))
    return hparams


def initial_state(exp: Experiment) -> engine.ServerState:
    sample_x = jnp.zeros((1,) + exp.data.x.shape[1:], jnp.float32)
    return engine.init_state(exp.model, sample_x, exp.config.seed, exp.algorithm,
                             hparams=hparams_of(exp.config), num_clients=exp.config.num_clients)


def evaluation_rounds(config: Config) -> list[int]:
    """Rounds after which the model is evaluated: every eval_every rounds, and the last."""
    rounds = list(range(config.eval_every, config.rounds + 1, config.eval_every))
    return rounds if rounds and rounds[-1] == config.rounds else rounds + [config.rounds]


def checkpoint_rounds(config: Config) -> list[int]:
    """Rounds after which the run state is saved: every checkpoint_every rounds, and the last."""
    every = config.checkpoint_every
    rounds = list(range(every, config.rounds + 1, every)) if every else []
    return rounds if rounds and rounds[-1] == config.rounds else rounds + [config.rounds]


def compare_configs(previous: dict, config: Config, what: str) -> None:
    """Allow the same config, or the same with `rounds` raised (extending the run); refuse
    anything else with a FedlnError naming each differing key."""
    current = config.to_dict()
    differing = diff_keys(previous, current)
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
        return None
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        raise FedlnError(f"{path} is unreadable; use a new workdir") from None
    if not isinstance(previous, dict):
        raise FedlnError(f"{path} is not a JSON object; use a new workdir")
    compare_configs(previous, config, f"workdir {workdir!r}")
    return previous


def write_json(path, obj: Any) -> None:
    """Write atomically: a crash never leaves a half-written file."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path, text: str) -> None:
    """Write to a temporary file and rename it over `path` (local or gs://, via etils.epath)."""
    path = epath.Path(path)
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


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


def format_class_counts(counts_CK: np.ndarray) -> str:
    lines = ["client  n     examples per class"]
    for c, row in enumerate(counts_CK):
        lines.append(f"{c:>6}  {int(row.sum()):<5} {' '.join(f'{int(v):>4}' for v in row)}")
    return "\n".join(lines)


# Config keys that change only values a round reads, never shapes or code: runs differing only in
# them are stacked on a leading runs axis and share one compiled program (DESIGN 2.6).
# seed/dirichlet_beta change the data and partition: the index tables are padded to a common
# width, which leaves every run's numbers unchanged (random draws are prefix-stable in length).
# Algorithm hyperparameters (prox_mu, fedlc_tau, ...) are read from `hparams` as arrays too.
VALUE_KEYS = ("seed", "lr", "server_lr", "dirichlet_beta") + tuple(OWNED_HPARAMS)


def program_key(config: Config) -> str:
    """Runs with equal program keys can be vectorized together."""
    fields = {k: v for k, v in config.to_dict().items() if k not in VALUE_KEYS}
    return json.dumps(fields, sort_keys=True)


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


class _Manager:
    """Opens the CheckpointManager on first use (so a refused run creates nothing) and closes
    it on the way out."""

    def __init__(self, workdir: str, keep: int):
        self.workdir, self.keep, self.manager = workdir, keep, None

    def get(self):
        if self.manager is None:
            self.manager = checkpoint.open_manager(self.workdir, self.keep)
        return self.manager

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.manager is not None:
            self.manager.close()
        return False


def run(config: Config, workdir: str, *, quiet: bool = False) -> dict:
    """Train one experiment and write config.json, clients.json, metrics.jsonl, summary.json
    and checkpoints/; resume from the newest valid checkpoint if the workdir has one.

    Returns the summary dict. Bad input raises FedlnError before the workdir is touched;
    divergence raises DivergedError, SIGTERM/SIGINT raise Interrupted (after a checkpoint).
    """
    exp = build_experiment(config)   # every input error surfaces here, before any write
    check_workdir(workdir, config)
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    mesh = engine.client_mesh(mesh_devices(config))
    fresh, hparams, data = engine.replicate((initial_state(exp), hparams_of(config), exp.data), mesh)

    with _StopSignal() as stop, _Manager(workdir, config.keep_checkpoints) as managed:
        restored = None
        if checkpoint.checkpoint_dir(workdir).exists():
            restored = checkpoint.restore_latest(
                managed.get(), fresh, lambda meta: _check_checkpoint_meta(meta, config, workdir))
        root = epath.Path(workdir)
        root.mkdir(parents=True, exist_ok=True)
        manager = managed.get()
        write_json(root / "config.json", config.to_dict())
        write_json(root / "clients.json", {
            "class_counts": exp.counts_CK.tolist(),
            "examples_per_client": exp.counts_CK.sum(1).tolist()})
        if restored is None:
            state, start_round, progress = fresh, 0, {}
        else:
            state, start_round, progress = restored.state, restored.round, restored.meta["progress"]
        history = [row for row in read_metrics(workdir) if row["round"] <= start_round]
        write_text(root / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        log(f"fedln-jax: {config.dataset}, {config.num_clients} clients ({config.partition}), "
            f"model {config.resolved_model}, norm {config.norm}, {jax.device_count()} "
            f"{jax.default_backend()} device(s)")
        if start_round:
            log(f"resuming from the checkpoint at round {start_round} of {config.rounds}")
        else:
            log(format_class_counts(exp.counts_CK))
        return _train(exp, state, hparams, data, mesh, manager, stop, workdir, start_round,
                      progress, history, log, quiet)


def _check_checkpoint_meta(meta: dict, config: Config, workdir: str) -> None:
    from fedln_jax import __version__
    if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("progress"), dict):
        raise FedlnError(f"a checkpoint in {workdir!r} lacks its config; use a new workdir")
    compare_configs(meta["config"], config, f"the checkpoint at round {meta.get('round')}")
    if meta.get("fedln_jax_version") != __version__:
        print(f"warning: the checkpoint was written by fedln_jax {meta.get('fedln_jax_version')}, "
              f"this is {__version__}; results may differ from an uninterrupted run",
              file=sys.stderr)


def _train(exp: Experiment, state, hparams, data, mesh, manager, stop: _StopSignal, workdir: str,
           start_round: int, progress: dict, history: list[dict], log, quiet: bool) -> dict:
    from fedln_jax import __version__
    config = exp.config
    root = epath.Path(workdir)
    run_block = jax.jit(engine.make_block_fn(
        engine.make_round_fn(exp.apply_fn, exp.spec, exp.algorithm, mesh)), donate_argnums=0)
    evaluate = jax.jit(evaluation_fn(exp))
    eval_set, save_set = set(evaluation_rounds(config)), set(checkpoint_rounds(config))
    boundaries = sorted(eval_set | save_set)

    # Host-side progress that the metrics depend on rides in the checkpoint's JSON, so a
    # resumed run reports the same train_loss as an uninterrupted one.
    loss_sum = engine.replicate(jnp.float32(progress.get("train_loss_sum", 0.0)), mesh)
    rounds_in_sum = int(progress.get("rounds_in_sum", 0))
    elapsed_before = float(progress.get("elapsed_seconds", 0.0))
    session_start = time.time()
    elapsed = lambda: elapsed_before + time.time() - session_start
    save_seconds = []
    last_saved = start_round if start_round else None
    metrics_text = "".join(json.dumps(r) + "\n" for r in history)
    if config.analysis_every:
        from fedln_jax.analysis import make_feature_fn
        features_fn = make_feature_fn(exp.model, exp.spec.pixel_scale)

    def save(round_: int) -> None:
        nonlocal last_saved
        meta = {"fedln_jax_version": __version__, "config": config.to_dict(),
                "progress": {"train_loss_sum": float(loss_sum), "rounds_in_sum": rounds_in_sum,
                             "elapsed_seconds": round(elapsed(), 3)}}
        seconds = checkpoint.save(manager, state, meta)
        if seconds is not None:
            save_seconds.append(seconds)
        last_saved = round_

    def finish(status: str, rounds_completed: int, **extra) -> dict:
        summary = summarize(history, elapsed(), status=status, rounds_completed=rounds_completed,
                            resumed_from_round=start_round, save_seconds=save_seconds, **extra)
        write_json(root / "summary.json", summary)
        return summary

    bar = tqdm(total=config.rounds, initial=start_round, unit="round", disable=quiet or None,
               desc=f"{config.norm}/seed{config.seed}", leave=False)
    done, seconds_per_round = start_round, None
    while done < config.rounds:
        target = next(b for b in boundaries if b > done)
        # Until a compiled round has been timed, run single rounds (the first one compiles).
        cap = max(1, int(BLOCK_SECONDS / seconds_per_round)) if seconds_per_round else 1
        n = min(target - done, cap)
        t0 = time.perf_counter()
        state, loss_sum, bad_round = run_block(state, hparams, data, jnp.int32(n), loss_sum)
        bad_round = int(bad_round)
        if done > start_round:
            seconds_per_round = (time.perf_counter() - t0) / n
        if bad_round >= 0:
            bar.close()
            finish("diverged", bad_round - 1, diverged_at_round=bad_round)
            kept = (f"the last good checkpoint is round {last_saved}" if last_saved
                    else "no checkpoint was saved before it")
            raise DivergedError(f"training diverged at round {bad_round}: non-finite loss or "
                                f"parameters (lr={config.lr}); {kept}", bad_round)
        done += n
        rounds_in_sum += n
        bar.update(n)
        checkpoint.pause_for_test("block", done)
        if done in eval_set:
            train_loss = float(np.float32(jax.device_get(loss_sum)) / np.float32(rounds_in_sum))
            row = evaluation_row(exp, jax.device_get(evaluate(state, exp.x_test, exp.y_test)),
                                 done, train_loss)
            if config.analysis_every and (done % config.analysis_every == 0 or done == config.rounds):
                row.update(training_analysis(exp, features_fn, state))
            row["elapsed_seconds"] = round(elapsed(), 3)
            history.append(row)
            metrics_text += json.dumps(row) + "\n"
            write_text(root / "metrics.jsonl", metrics_text)
            checkpoint.pause_for_test("metrics", done)
            loss_sum = engine.replicate(jnp.float32(0.0), mesh)
            rounds_in_sum = 0
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['test_accuracy']:.3f}")
        if done in save_set or stop.signum is not None:
            save(done)
        if stop.signum is not None and done < config.rounds:
            bar.close()
            name = signal.Signals(stop.signum).name
            finish("interrupted", done, interrupted_by=name)
            raise Interrupted(f"fedln-jax: stopped by {name} after round {done} of "
                              f"{config.rounds}; checkpoint saved in {root / 'checkpoints'}; "
                              f"run the same command again to resume", stop.signum, done)
    bar.close()
    summary = finish("completed", done)
    if save_seconds:
        log(f"checkpoints: {len(save_seconds)} saved, {np.mean(save_seconds):.3f} s each")
    log(f"done: {summary['rounds_completed']} rounds, final test accuracy "
        f"{summary['final_test_accuracy']:.4f} ({summary['wall_seconds']:.1f} s)")
    return summary


def run_group(configs: list[Config], workdirs: list[str], *, quiet: bool = False) -> list[dict]:
    """Train several experiments, each into its own workdir; returns their summaries in order.

    Runs that differ only in VALUE_KEYS (and whose arrays have equal shapes) are executed as one
    vmapped program over a leading runs axis; the others as separate programs. Every input
    error surfaces before any workdir is written. A run alone in its group goes through `run`
    (checkpoints, resume, divergence and signal handling); a vectorized group of several runs
    is trained by `train_runs` without checkpoints, so an interrupted group restarts from
    round 0 (a sweep skips the runs already completed).
    """
    if len(configs) != len(workdirs) or len(set(map(os.path.abspath, workdirs))) != len(workdirs):
        raise FedlnError("run_group needs one distinct workdir per config")
    experiments = [build_experiment(c) for c in configs]
    for config, workdir in zip(configs, workdirs):
        check_workdir(workdir, config)
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    summaries: list[dict | None] = [None] * len(configs)
    for members in vectorizable_groups(experiments):
        group = [experiments[i] for i in members]
        if len(group) == 1:
            summaries[members[0]] = run(group[0].config, workdirs[members[0]], quiet=quiet)
            continue
        outs = _run_one_program(group, [workdirs[i] for i in members], log, quiet)
        for i, summary in zip(members, outs):
            summaries[i] = summary
    return summaries


def vectorizable_groups(experiments: list[Experiment]) -> list[list[int]]:
    """Indices of the experiments, grouped by program key and array shapes (order kept)."""
    groups: dict[tuple, list[int]] = {}
    for i, exp in enumerate(experiments):
        shapes = (exp.data.x.shape, exp.data.idx_C.shape[0], exp.x_test.shape, exp.num_classes)
        groups.setdefault((program_key(exp.config), shapes), []).append(i)
    return list(groups.values())


def is_writer() -> bool:
    """In a multi-process run every process computes the same numbers; process 0 writes them."""
    return jax.process_index() == 0


def _run_one_program(group: list[Experiment], workdirs: list[str], log, quiet: bool) -> list[dict]:
    config = group[0].config
    if is_writer():
        for exp, workdir in zip(group, workdirs):
            os.makedirs(workdir, exist_ok=True)
            write_json(os.path.join(workdir, "config.json"), exp.config.to_dict())
            write_json(os.path.join(workdir, "clients.json"), {
                "class_counts": exp.counts_CK.tolist(),
                "examples_per_client": exp.counts_CK.sum(1).tolist()})
            open(os.path.join(workdir, "metrics.jsonl"), "w").close()
    devices = mesh_devices(config)
    log(f"fedln-jax: {config.dataset}, {config.num_clients} clients ({config.partition}), "
        f"model {config.resolved_model}, norm {config.norm}, {len(devices)} "
        f"{jax.default_backend()} device(s), {jax.process_count()} process(es)"
        + (f", {len(group)} runs vectorized" if len(group) > 1 else ""))
    if len(group) == 1:
        log(format_class_counts(group[0].counts_CK))

    histories: list[list[dict]] = [[] for _ in group]
    start = time.time()
    desc = config.norm + (f"/seed{config.seed}" if len(group) == 1 else f" x{len(group)} runs")
    bar = tqdm(total=config.rounds, unit="round", disable=quiet or not is_writer() or None,
               desc=desc, leave=False)

    def on_eval(round_: int, rows: list[dict], rounds_run: int) -> None:
        bar.update(rounds_run)
        for history, workdir, row in zip(histories, workdirs, rows):
            row["elapsed_seconds"] = round(time.time() - start, 3)
            history.append(row)
            if is_writer():
                with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
                    f.write(json.dumps(row) + "\n")
        bar.set_postfix(loss=f"{rows[0]['train_loss']:.3f}", acc=f"{rows[0]['test_accuracy']:.3f}")

    train_runs(group, engine.client_mesh(devices), on_eval)
    bar.close()
    summaries = []
    for exp, workdir, history in zip(group, workdirs, histories):
        summary = summarize(history, time.time() - start)
        summary["runs_vectorized"] = len(group)
        if is_writer():
            write_json(os.path.join(workdir, "summary.json"), summary)
        log(f"done: {exp.config.norm}/seed{exp.config.seed} {summary['rounds_completed']} rounds, "
            f"final test accuracy {summary['final_test_accuracy']:.4f} "
            f"({summary['wall_seconds']:.1f} s)")
        summaries.append(summary)
    return summaries


def train_runs(group: list[Experiment], mesh, on_eval=None) -> engine.ServerState:
    """The training loop of a group of runs as one program over a leading runs axis (no I/O).

    on_eval(round, rows, rounds_run) is called after every evaluation with one metrics row per
    run. Returns the final ServerState, stacked over runs (leading axis len(group)).
    """
    spec = group_spec(group)
    data, data_axes = stack_runs([exp.data for exp in group])
    tests, test_axes = stack_runs([(exp.x_test, exp.y_test) for exp in group])
    state = stack_trees([initial_state(exp) for exp in group])
    hparams = stack_trees([hparams_of(exp.config) for exp in group])
    state, hparams, data, tests = engine.replicate((state, hparams, data, tests), mesh)
    first = group[0]
    round_fn = engine.make_round_fn(first.apply_fn, spec, first.algorithm, mesh)
    run_rounds = jax.jit(jax.vmap(engine.make_multi_round_fn(round_fn),
                                  in_axes=(0, 0, data_axes, None)), donate_argnums=0)
    evaluate = jax.jit(jax.vmap(evaluation_fn(first), in_axes=(0,) + tuple(test_axes)))
    done = 0
    for target in evaluation_rounds(first.config):
        state, loss_R = run_rounds(state, hparams, data, jnp.int32(target - done))
        result_R = jax.device_get(evaluate(state, *tests))
        loss_R = np.asarray(jax.device_get(loss_R))
        rows = [evaluation_row(exp, jax.tree.map(lambda a: a[r], result_R), target,
                               float(loss_R[r])) for r, exp in enumerate(group)]
        if on_eval is not None:
            on_eval(target, rows, target - done)
        done = target
    return state


def evaluation_fn(exp: Experiment):
    """evaluate(state, x, y) -> {correct_K (or correct_CK), total_K, loss_sum}, pure.

    The global model on the test set; for an algorithm with personalized evaluation (FedBN)
    whose clients hold local layers, each client's own model (correct_CK).
    """
    global_eval = engine.make_eval_fn(exp.apply_fn, exp.num_classes, exp.spec.pixel_scale)
    per_client = engine.make_personalized_eval_fn(exp.apply_fn, exp.algorithm, exp.num_classes,
                                                  exp.spec.pixel_scale)

    def evaluate(state, x, y):
        if exp.algorithm.personalized_eval and jax.tree.leaves(state.client_states):
            out = per_client(state.params, state.model_state, state.client_states, x, y)
            return {"correct_K": out["correct_CK"], "total_K": out["total_K"],
                    "loss_sum": out["loss_sum_C"].mean()}
        return global_eval(state.params, state.model_state, x, y)

    return evaluate


def training_analysis(exp: Experiment, features_fn, state: engine.ServerState) -> dict:
    """The analyses logged into a metrics row when `analysis_every` is set."""
    from fedln_jax import analysis
    report = analysis.model_report(exp, features_fn, state.params, state.model_state)
    return {k: report[k] for k in ("feature_norm_per_class", "head_norm_per_class",
                                   "singular_values")}


def group_spec(group: list[Experiment]) -> engine.RoundSpec:
    """One RoundSpec for the group: equal but for max_epochs, which takes the group's maximum
    (extra shuffles a client never reaches change nothing)."""
    spec = group[0].spec._replace(max_epochs=max(exp.spec.max_epochs for exp in group))
    for exp in group:
        if exp.spec._replace(max_epochs=spec.max_epochs) != spec:
            raise ValueError(f"runs of one program differ in shapes: {exp.spec} vs {spec}")
    return spec


def stack_runs(trees: list) -> tuple[Any, Any]:
    """Stack per-run pytrees on a leading runs axis; returns (stacked, vmap in_axes).

    A leaf equal in every run (e.g. the training images when only lr differs) is kept once
    with in_axes None. 2-D index tables of different widths are zero-padded to the widest
    (the counts say which entries are real).
    """
    leaves_R = [jax.tree.leaves(t) for t in trees]
    treedef = jax.tree.structure(trees[0])
    stacked, axes = [], []
    for column in zip(*leaves_R):
        host = [np.asarray(a) for a in column]
        if all(h.shape == host[0].shape and np.array_equal(h, host[0]) for h in host[1:]):
            stacked.append(column[0])
            axes.append(None)
            continue
        if host[0].ndim == 2 and len({h.shape[0] for h in host}) == 1:
            width = max(h.shape[1] for h in host)
            host = [np.pad(h, ((0, 0), (0, width - h.shape[1]))) for h in host]
        stacked.append(jnp.asarray(np.stack(host)))
        axes.append(0)
    return jax.tree.unflatten(treedef, stacked), jax.tree.unflatten(treedef, axes)


def stack_trees(trees: list) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, index: int) -> Any:
    """Run `index` of a pytree stacked over runs."""
    return jax.tree.map(lambda a: a[index], tree)


def evaluation_row(exp: Experiment, result: dict, round_: int, train_loss: float) -> dict:
    """A metrics.jsonl row from the evaluation counts of one run."""
    accuracy = engine.client_accuracy(result["correct_K"], result["total_K"], exp.test_weights_CK)
    return {"round": round_, "train_loss": train_loss,
            "test_loss": float(result["loss_sum"] / max(result["total_K"].sum(), 1)), **accuracy}


def summarize(history: list[dict], wall_seconds: float, *, status: str = "completed",
              rounds_completed: int | None = None, save_seconds=(), **extra) -> dict:
    """The whole run (every session of it): accuracies from metrics.jsonl's rows, the status
    (completed | interrupted | diverged), and checkpoint timings of this session."""
    accuracies = [row["test_accuracy"] for row in history]
    summary = {"final_test_accuracy": accuracies[-1] if accuracies else None,
               "mean_last3_test_accuracy": float(np.mean(accuracies[-3:])) if accuracies else None,
               "best_test_accuracy": max(accuracies) if accuracies else None,
               "final_train_loss": history[-1]["train_loss"] if history else None,
               "rounds_completed": (history[-1]["round"] if rounds_completed is None and history
                                    else rounds_completed),
               "wall_seconds": round(wall_seconds, 3),
               "status": status,
               "checkpoints_saved": len(save_seconds),
               "seconds_per_checkpoint": (round(float(np.mean(save_seconds)), 4)
                                          if save_seconds else None)}
    summary.update(extra)
    return summary
