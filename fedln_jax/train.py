"""run(config, workdir): build everything from a Config, train in fused blocks of rounds,
evaluate, and write the workdir files of DESIGN section 6."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from fedln_jax import engine
from fedln_jax.algorithms import OWNED_HPARAMS, Algorithm, get_algorithm
from fedln_jax.config import Config, diff_keys
from fedln_jax.data import class_counts, client_test_weights, load_dataset, partition
from fedln_jax.errors import FedlnError
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
                           test_fraction=config.test_fraction)
    clients = partition(dataset.y_train, config.num_clients, scheme=config.partition,
                        num_classes=dataset.num_classes,
                        classes_per_client=config.classes_per_client,
                        dirichlet_beta=config.dirichlet_beta, seed=config.seed,
                        min_examples=config.min_client_examples)
    counts_CK = class_counts(dataset.y_train, clients, dataset.num_classes)
    model = build_model(config.resolved_model, config.norm, dataset.num_classes,
                        norm_layers=config.norm_layers, norm_position=config.norm_position,
                        gn_groups=config.gn_groups, tau=config.tau, conv_impl=config.conv_impl)
    num_devices = len(mesh_devices(config))
    chunk = config.client_chunk_size or engine.default_chunk_size(config.cohort_size, num_devices)
    spec = engine.RoundSpec(
        num_clients=config.num_clients, cohort_size=config.cohort_size,
        local_steps=config.local_steps, batch_size=config.batch_size,
        max_epochs=engine.epochs_needed(int(counts_CK.sum(1).min()), config.local_steps,
                                        config.batch_size),
        pixel_scale=dataset.pixel_scale, chunk_size=chunk,
        momentum=config.momentum, weight_decay=config.weight_decay)
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


def check_workdir(workdir: str, config: Config) -> None:
    """Refuse a workdir that belongs to a different run, before anything is written."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise FedlnError(f"workdir {workdir!r} exists and is not a directory")
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                previous = json.load(f)
        except (OSError, ValueError):
            raise FedlnError(f"{path} is unreadable; use a new workdir") from None
        differing = diff_keys(previous, config.to_dict())
        if differing:
            raise FedlnError(f"workdir {workdir!r} holds a run with a different config "
                             f"(differs in: {', '.join(differing)}); use a new workdir")


def write_json(path: str, obj: Any) -> None:
    """Write atomically: a crash never leaves a half-written file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


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


def run(config: Config, workdir: str, *, quiet: bool = False) -> dict:
    """Train one experiment and write config.json, clients.json, metrics.jsonl, summary.json.

    Returns the summary dict. Bad input raises FedlnError before the workdir is touched.
    """
    return run_group([config], [workdir], quiet=quiet)[0]


def run_group(configs: list[Config], workdirs: list[str], *, quiet: bool = False) -> list[dict]:
    """Train several experiments, each into its own workdir; returns their summaries in order.

    Runs that differ only in VALUE_KEYS (and whose arrays have equal shapes) are executed as one
    vmapped program over a leading runs axis; the others as separate programs. Every input
    error surfaces before any workdir is written.
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


def summarize(history: list[dict], wall_seconds: float) -> dict:
    accuracies = [row["test_accuracy"] for row in history]
    return {"final_test_accuracy": accuracies[-1],
            "mean_last3_test_accuracy": float(np.mean(accuracies[-3:])),
            "best_test_accuracy": max(accuracies),
            "final_train_loss": history[-1]["train_loss"],
            "rounds_completed": history[-1]["round"],
            "wall_seconds": round(wall_seconds, 3),
            "status": "completed"}
