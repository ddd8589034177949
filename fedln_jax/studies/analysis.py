"""The paper's analyses (docs/method.md#analyses) on a trained global model.

The measurements themselves are in `engine/measures.py`; here: the local-overfit probe
(`local_overfit`) and `analyze_run(workdir)` behind `fedln-jax analyze`, which writes
DIR/analysis/analysis.json and PNG figures.

The local-overfit probe trains with the round's own `make_train_client` (the batches client k
would draw in the next round, its own state, local training), so the probe is
exactly the local training of a round, only stopped after S steps and not averaged.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedln_jax.algorithms import without_inert_hparams
from fedln_jax.config import INT32_MAX, from_dict
from fedln_jax.engine.client import epochs_needed, make_train_client
from fedln_jax.engine.measures import make_feature_fn, model_report
from fedln_jax.engine.placement import client_mesh, replicate
from fedln_jax.engine.round import client_keys, round_key
from fedln_jax.engine.state import ServerState, derive_server_context
from fedln_jax.errors import FedlnError
from fedln_jax.studies import plots
from fedln_jax.training import checkpoint, experiment
from fedln_jax.training.experiment import hparams_of
from fedln_jax.training.memory import (Floor, check_fits, client_round_bytes, device_capacity,
                                       tree_bytes)
from fedln_jax.training.workdir import check_checkpoint_meta, write_json

def check_client(exp, client: int) -> int:
    if isinstance(client, bool) or not isinstance(client, (int, np.integer)) \
            or not 0 <= client < exp.spec.num_clients:
        raise FedlnError(f"client {client!r} is out of range: this run has "
                         f"{exp.spec.num_clients} clients (0..{exp.spec.num_clients - 1})")
    return int(client)


def local_train(exp, state: ServerState, client: int, steps: int):
    """S local steps of `client` from the global model, exactly as in the next round.

    The run's own client training (`make_train_client` with the run's algorithm, its
    client state and server context), on the batches of the next round: the round key of
    state.round and the client's key; max_epochs is kept at least the run's, so the probe with
    S steps sees a prefix of the batches of the probe with more steps.
    Returns (params, model_state, mean loss).
    """
    client = check_client(exp, client)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise FedlnError(f"steps must be a positive integer, got {steps!r}")
    spec = exp.spec._replace(local_steps=int(steps), max_epochs=max(
        exp.spec.max_epochs, epochs_needed(int(jnp.min(exp.data.counts_C)), int(steps),
                                                  exp.spec.batch_size)))
    key = client_keys(round_key(state), jnp.array([client], jnp.int32))[0]
    train_client = make_train_client(exp.apply_fn, spec, exp.algorithm)

    @jax.jit
    def probe(state, data, hparams):
        params, model_state, _, _, loss = train_client(state, hparams, data, key,
                                                       jnp.int32(client))
        return params, model_state, loss

    return probe(state, exp.data, hparams_of(exp.config))


def local_overfit(exp, state, client: int, steps: int, features_fn=None,
                  before: dict | None = None) -> dict:
    """The paper's analysis 2 (docs/method.md#analyses): global model -> S local steps on one client; what the local model does
    to the whole test set. Keys: client, steps, client_classes, global_acc_before,
    global_acc_after, per_class_recall_before/after, feature_norm_per_class_after,
    head_norm_per_class_after, local_loss."""
    features_fn = features_fn or make_feature_fn(exp.model, exp.spec.pixel_scale)
    before = before or model_report(exp, features_fn, state.params, state.model_state)
    params, model_state, loss = local_train(exp, state, client, steps)
    after = model_report(exp, features_fn, params, model_state)
    return {"client": int(client), "steps": int(steps),
            "client_classes": [int(k) for k in np.flatnonzero(exp.counts_CK[client])],
            "lr": exp.config.lr,
            "global_acc_before": before["global_acc"],
            "global_acc_after": after["global_acc"],
            "per_class_recall_before": before["per_class_recall"],
            "per_class_recall_after": after["per_class_recall"],
            "feature_norm_per_class_after": after["feature_norm_per_class"],
            "head_norm_per_class_after": after["head_norm_per_class"],
            "local_loss": float(loss)}


# ----------------------------------------------------------------------------- a run on disk


def check_probe_steps(exp, steps: Sequence[int]) -> None:
    """The probe's step counts fit int32 indices and the device: FedlnError before any
    checkpoint is opened (the probe draws [S, B] batches of one client at once)."""
    batch = exp.config.batch_size
    if max(steps) * batch > INT32_MAX:
        raise FedlnError(f"--steps {max(steps)} x batch_size {batch} = {max(steps) * batch} "
                         f"examples is too large: at most {INT32_MAX} (int32 indices)")
    max_n = exp.data.idx_C.shape[1]
    epochs = epochs_needed(int(np.min(np.asarray(exp.data.counts_C))), max(steps), batch)
    per_client = client_round_bytes(exp.data.x.shape[1:], max(steps), batch, epochs, max_n, 0)
    params = tree_bytes(jax.eval_shape(lambda: experiment.initial_state(exp).params))
    check_fits(Floor(data=exp.data.x.nbytes, state=params, per_client=per_client + 2 * params,
                     chunk=1), *device_capacity())


def load_run(workdir: str, check=None):
    """(experiment, state of the latest checkpoint, source) of the run in `workdir`; FedlnError
    if there is no run or no checkpoint (a finished run always checkpoints its last round).
    check(exp), when given, runs before the checkpoints are opened (an error then prints one
    line, not orbax's log)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir) or not os.path.isfile(path):
        raise FedlnError(f"{workdir!r} holds no run (no config.json); run `fedln-jax run "
                         f"--workdir {workdir}` first")
    try:
        with open(path) as f:
            config = from_dict(without_inert_hparams(json.load(f))).validate()
    except (OSError, ValueError, TypeError):
        raise FedlnError(f"{path} is unreadable or not a fedln-jax config") from None
    exp = experiment.build_experiment(config)
    if check is not None:
        check(exp)
    # Read-only: the run may be in progress (or be someone else's); reading never deletes,
    # renames or clears anything in checkpoints/.
    manager = (checkpoint.open_manager(workdir, config.keep_checkpoints, read_only=True)
               if checkpoint.checkpoint_dir(workdir).exists() else None)
    if manager is None or not manager.all_steps():
        raise FedlnError(f"{workdir!r} holds no checkpoint of the model (the run did not reach "
                         f"its first checkpoint)")
    template = replicate(experiment.initial_state(exp), client_mesh())
    try:
        restored = checkpoint.restore_latest(
            manager, template, lambda meta: check_checkpoint_meta(meta, config, workdir),
            delete=False, derive_server_context=derive_server_context(exp.algorithm, exp.data))
    finally:
        manager.close()
    if restored is None:
        raise FedlnError(f"{workdir!r} holds no readable checkpoint of the model")
    return exp, restored.state, f"checkpoints/{restored.round}"


def analyze_run(workdir: str, client: int = 0, steps: Sequence[int] = (5,),
                figures: bool = True) -> dict:
    """Write DIR/analysis/analysis.json (and PNGs) for the run in `workdir`; return the dict.

    `local_overfit` is the probe with max(steps) steps; `local_overfit_by_steps` holds one
    probe per entry of `steps` (all from the same global model and the same batches).
    """
    steps = sorted(set(int(s) for s in steps))

    def check(exp):
        check_client(exp, client)
        check_probe_steps(exp, steps)
    exp, state, source = load_run(workdir, check)
    client = check_client(exp, client)
    features_fn = make_feature_fn(exp.model, exp.spec.pixel_scale)
    report = model_report(exp, features_fn, state.params, state.model_state)
    probes = [local_overfit(exp, state, client, s, features_fn, report) for s in steps]
    result = {"workdir": os.path.abspath(workdir), "source": source,
              "round": int(state.round), "norm_label": exp.config.norm_label,
              "norm": exp.config.norm,
              "norm_layers": exp.config.norm_layers, "model": exp.config.resolved_model,
              "global_acc": report["global_acc"],
              "per_class_recall": report["per_class_recall"],
              "feature_norm_per_class": report["feature_norm_per_class"],
              "head_norm_per_class": report["head_norm_per_class"],
              "singular_values": report["singular_values"],
              "local_overfit": probes[-1], "local_overfit_by_steps": probes}
    out = os.path.join(workdir, "analysis")
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "analysis.json"), result)
    if figures:
        plots.plot_norms(result, os.path.join(out, "norms.png"))
        plots.plot_spectra({result["norm_label"]: result["singular_values"]},
                           os.path.join(out, "singular_values.png"))
        plots.plot_local_overfit(result, os.path.join(out, "local_overfit.png"))
    return result
