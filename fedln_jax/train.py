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
from fedln_jax.algorithms import Algorithm, get_algorithm
from fedln_jax.config import Config, diff_keys
from fedln_jax.data import class_counts, client_test_weights, load_dataset, partition
from fedln_jax.data.sources import LoadOptions
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
                        gn_groups=config.gn_groups, tau=config.tau, conv_impl=config.conv_impl)
    num_devices = jax.device_count()
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


def run(config: Config, workdir: str, *, quiet: bool = False) -> dict:
    """Train one experiment and write config.json, clients.json, metrics.jsonl, summary.json.

    Returns the summary dict. Bad input raises FedlnError before the workdir is touched.
    """
    exp = build_experiment(config)   # every input error surfaces here, before any write
    check_workdir(workdir, config)
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "config.json"), config.to_dict())
    write_json(os.path.join(workdir, "clients.json"), {
        "class_counts": exp.counts_CK.tolist(),
        "examples_per_client": exp.counts_CK.sum(1).tolist()})
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    log(f"fedln-jax: {config.dataset}, {config.num_clients} clients ({config.partition}), "
        f"model {config.resolved_model}, norm {config.norm}, {jax.device_count()} "
        f"{jax.default_backend()} device(s)")
    log(format_class_counts(exp.counts_CK))

    mesh = engine.client_mesh()
    state, hparams, data = engine.replicate((initial_state(exp), hparams_of(config), exp.data), mesh)
    run_rounds = jax.jit(engine.make_multi_round_fn(
        engine.make_round_fn(exp.apply_fn, exp.spec, exp.algorithm, mesh)), donate_argnums=0)
    evaluate = make_evaluator(exp)

    metrics_path = os.path.join(workdir, "metrics.jsonl")
    open(metrics_path, "w").close()
    history = []
    start = time.time()
    bar = tqdm(total=config.rounds, unit="round", disable=quiet or None,
               desc=f"{config.norm}/seed{config.seed}", leave=False)
    done = 0
    for target in evaluation_rounds(config):
        state, train_loss = run_rounds(state, hparams, data, jnp.int32(target - done))
        bar.update(target - done)
        done = target
        row = evaluation_row(exp, evaluate, state, target, float(train_loss))
        row["elapsed_seconds"] = round(time.time() - start, 3)
        history.append(row)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['test_accuracy']:.3f}")
    bar.close()
    summary = summarize(history, time.time() - start)
    write_json(os.path.join(workdir, "summary.json"), summary)
    log(f"done: {summary['rounds_completed']} rounds, final test accuracy "
        f"{summary['final_test_accuracy']:.4f} ({summary['wall_seconds']:.1f} s)")
    return summary


def make_evaluator(exp: Experiment):
    """evaluate(state) -> {correct_K or correct_CK, total_K, loss_sum}, jitted.

    The global model on the test set; for an algorithm with personalized evaluation (FedBN)
    whose clients hold local layers, each client's own model instead (correct_CK).
    """
    global_eval = jax.jit(engine.make_eval_fn(exp.apply_fn, exp.num_classes, exp.spec.pixel_scale))
    per_client = jax.jit(engine.make_personalized_eval_fn(
        exp.apply_fn, exp.algorithm, exp.num_classes, exp.spec.pixel_scale))

    def evaluate(state):
        if exp.algorithm.personalized_eval and jax.tree.leaves(state.client_states):
            out = per_client(state.params, state.model_state, state.client_states, exp.x_test,
                             exp.y_test)
            return {"correct_K": out["correct_CK"], "total_K": out["total_K"],
                    "loss_sum": out["loss_sum_C"].mean()}
        return global_eval(state.params, state.model_state, exp.x_test, exp.y_test)

    return evaluate


def evaluation_row(exp: Experiment, evaluate, state: engine.ServerState, round_: int,
                   train_loss: float) -> dict:
    """evaluate: from make_evaluator."""
    result = jax.device_get(evaluate(state))
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
