"""Evaluation: the global model (or each client's own model) on the test set, the paper's
accuracy protocol (docs/method.md: each client's accuracy on test data of its classes in its
proportions), and the metrics.jsonl row built from them."""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedln_jax.algorithms import Algorithm


def test_batches(x: jax.Array, batch_size: int, fill=0) -> jax.Array:
    """x [N, ...] padded with `fill` to whole batches and reshaped to [T, batch_size, ...]
    (T test batches), for a lax.map over batches; the caller drops or masks the padding."""
    n = x.shape[0]
    num_batches = math.ceil(n / batch_size)
    pad = num_batches * batch_size - n
    padded = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=fill)
    return padded.reshape((num_batches, batch_size) + x.shape[1:])


def make_eval_fn(apply_fn: Callable, num_classes: int, pixel_scale: float,
                 batch_size: int = 500) -> Callable:
    """evaluate(params, model_state, x, y) -> {correct_K, total_K, loss_sum}, batched with lax.map."""
    def evaluate(params, model_state, x, y):
        x_TB, y_TB = test_batches(x, batch_size), test_batches(y, batch_size, fill=-1)

        def one_batch(batch):
            x_B, y_B = batch
            logits, _ = apply_fn(params, model_state, x_B.astype(jnp.float32) * pixel_scale, False)
            valid = y_B >= 0
            onehot_BK = jax.nn.one_hot(y_B, num_classes) * valid[:, None]
            hit_B = (logits.argmax(-1) == y_B) & valid
            loss_B = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(y_B, 0))
            return onehot_BK.T @ hit_B.astype(jnp.float32), onehot_BK.sum(0), jnp.sum(loss_B * valid)

        correct, total, loss = jax.lax.map(one_batch, (x_TB, y_TB))
        return {"correct_K": correct.sum(0), "total_K": total.sum(0), "loss_sum": loss.sum()}

    return evaluate


def make_personalized_eval_fn(apply_fn: Callable, algorithm: Algorithm, num_classes: int,
                              pixel_scale: float, batch_size: int = 500) -> Callable:
    """evaluate_clients(params, model_state, client_states, x, y) -> {correct_CK, total_K, loss_sum_C}.

    Each client's own model (algorithm.client_start of the global model and its state, e.g.
    FedBN's local BN layers) on the whole test set, clients in sequence (lax.map); combine with
    `client_accuracy`, which weights each client's per-class recall by its own classes.
    """
    evaluate = make_eval_fn(apply_fn, num_classes, pixel_scale, batch_size)

    def evaluate_clients(params, model_state, client_states, x, y):
        def one_client(client_state):
            p, s = algorithm.client_start(params, model_state, client_state)
            return evaluate(p, s, x, y)

        out = jax.lax.map(one_client, client_states)
        return {"correct_CK": out["correct_K"], "total_K": out["total_K"][0],
                "loss_sum_C": out["loss_sum"]}

    return evaluate_clients


def client_accuracy(correct_K: np.ndarray, total_K: np.ndarray, test_weights_CK: np.ndarray) -> dict:
    """The paper's accuracy (section 4; docs/method.md): each client's accuracy on test data of
    its classes in its proportions, i.e. its class weights times the per-class recall; the
    unweighted mean over clients.

    correct_K is [K] for one global model, or [C, K] when each client has its own model
    (personalized evaluation: client c's weights times the recall of client c's model; the
    pooled accuracy and per-class recall are then means over the clients' models).
    """
    correct_K = np.asarray(correct_K, np.float64)
    recall = np.where(total_K > 0, correct_K / np.maximum(total_K, 1), 0.0)
    if recall.ndim == 2:
        per_client = np.sum(test_weights_CK * recall, axis=1)
        pooled = float(correct_K.sum(1).mean() / max(total_K.sum(), 1))
        recall_K = recall.mean(0)
    else:
        per_client = test_weights_CK @ recall
        pooled = float(correct_K.sum() / max(total_K.sum(), 1))
        recall_K = recall
    return {"test_accuracy": float(per_client.mean()), "test_accuracy_pooled": pooled,
            "per_class_recall": recall_K.tolist()}


def evaluation_fn(exp) -> Callable:
    """evaluate(state, x, y) -> {correct_K (or correct_CK), total_K, loss_sum}, pure, for an
    Experiment (experiment.py).

    The global model on the test set; for an algorithm with personalized evaluation (FedBN)
    whose clients hold local layers, each client's own model (correct_CK).
    """
    global_eval = make_eval_fn(exp.apply_fn, exp.num_classes, exp.spec.pixel_scale)
    per_client = make_personalized_eval_fn(exp.apply_fn, exp.algorithm, exp.num_classes,
                                           exp.spec.pixel_scale)

    def evaluate(state, x, y):
        if exp.algorithm.personalized_eval and jax.tree.leaves(state.client_states):
            out = per_client(state.params, state.model_state, state.client_states, x, y)
            return {"correct_K": out["correct_CK"], "total_K": out["total_K"],
                    "loss_sum": out["loss_sum_C"].mean()}
        return global_eval(state.params, state.model_state, x, y)

    return evaluate


def evaluation_row(exp, result: dict, round_: int, train_loss: float) -> dict:
    """A metrics.jsonl row from the evaluation counts of one run (an Experiment)."""
    accuracy = client_accuracy(result["correct_K"], result["total_K"], exp.test_weights_CK)
    return {"round": round_, "train_loss": train_loss,
            "test_loss": float(result["loss_sum"] / max(result["total_K"].sum(), 1)), **accuracy}
