"""What a trained model shows (docs/method.md#analyses): feature norms per class, head norms per
class, the spectrum of the features, per-class recall and the paper's accuracy from it.

Pure functions on arrays, and `model_report`, which measures one model on an experiment's test
set. Used by the training loop (the analysis in summary.json) and by `fedln-jax analyze`.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedln_jax.engine.evaluation import test_batches

# ----------------------------------------------------------------------------- pure functions


def feature_norm_per_class(phi_ND: np.ndarray, y_N: np.ndarray, num_classes: int) -> list:
    """Mean ||phi(x)||_2 over the examples of each class; None for a class with no example."""
    norms_N = np.linalg.norm(np.asarray(phi_ND, np.float64), axis=-1)
    y_N = np.asarray(y_N)
    return [float(norms_N[y_N == k].mean()) if np.any(y_N == k) else None
            for k in range(num_classes)]


def head_norm_per_class(head_kernel_DK: np.ndarray) -> list:
    """||w_c||_2 for each class c: the norm of column c of the head kernel [d, C]."""
    return np.linalg.norm(np.asarray(head_kernel_DK, np.float64), axis=0).tolist()


def singular_values(phi_ND: np.ndarray) -> list:
    """Singular values of the centred feature matrix (N x d), divided by the largest,
    descending. A fast decay means the features span few directions (feature collapse)."""
    phi = np.asarray(phi_ND, np.float64)
    s = np.linalg.svd(phi - phi.mean(0, keepdims=True), compute_uv=False)
    return (s / s[0]).tolist() if s.size and s[0] > 0 else np.zeros_like(s).tolist()


def per_class_recall(logits_NK: np.ndarray, y_N: np.ndarray, num_classes: int) -> list:
    """Share of each class's examples predicted as that class; None for an absent class."""
    pred_N = np.asarray(logits_NK).argmax(-1)
    y_N = np.asarray(y_N)
    return [float(np.mean(pred_N[y_N == k] == k)) if np.any(y_N == k) else None
            for k in range(num_classes)]


def global_accuracy(recall_K: Sequence, test_weights_CK: np.ndarray) -> float:
    """The run's `test_accuracy` (docs/method.md#protocol): each client's class weights times the
    per-class recall, unweighted mean over clients."""
    recall = np.array([0.0 if r is None else r for r in recall_K])
    return float((test_weights_CK @ recall).mean())


# ----------------------------------------------------------------------------- model level


def make_feature_fn(model, pixel_scale: float, batch_size: int = 500):
    """features(params, model_state, x_uint8) -> (logits [N, C], phi [N, d]), eval mode,
    batched with lax.map; jitted."""
    def features(params, model_state, x):
        one = lambda x_B: model.apply({"params": params, **model_state},
                                      x_B.astype(jnp.float32) * pixel_scale, train=False,
                                      return_features=True)
        logits, phi = jax.lax.map(one, test_batches(x, batch_size))
        flat = lambda a_TB: a_TB.reshape((-1,) + a_TB.shape[2:])[:x.shape[0]]
        return flat(logits), flat(phi)
    return jax.jit(features)


def head_kernel(params) -> np.ndarray:
    return np.asarray(params["head"]["kernel"])


def model_report(exp, features_fn, params, model_state) -> dict:
    """Feature norms, head norms, singular values and per-class recall of one model."""
    logits, phi = jax.device_get(features_fn(params, model_state, exp.x_test))
    y = np.asarray(exp.y_test)
    recall = per_class_recall(logits, y, exp.num_classes)
    return {"global_acc": global_accuracy(recall, exp.test_weights_CK),
            "per_class_recall": recall,
            "feature_norm_per_class": feature_norm_per_class(phi, y, exp.num_classes),
            "head_norm_per_class": head_norm_per_class(head_kernel(params)),
            "singular_values": singular_values(phi)}
