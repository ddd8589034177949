"""Analyses: hand-computed pure functions, the probe == the engine's local training == SGD by
hand, analyze and figure end to end, and bad input."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedln_jax.cli import main
from fedln_jax.config import Config
from fedln_jax.engine import evaluation, measures
from fedln_jax.engine.client import client_batch_indices, gather_client_batches
from fedln_jax.engine.reference import make_loop_round
from fedln_jax.engine.round import client_keys, round_key
from fedln_jax.studies import analysis
from fedln_jax.training import experiment, train

from conftest import weighted_mean


def test_feature_norm_per_class():
    phi = [[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]]
    assert measures.feature_norm_per_class(phi, [0, 1, 0], 3) == [7.5, 1.0, None]


def test_head_norm_per_class():
    kernel_DK = [[3.0, 0.0], [4.0, 1.0]]  # column c is w_c
    assert measures.head_norm_per_class(kernel_DK) == [5.0, 1.0]


def test_singular_values_centred_and_normalized():
    # Adding a constant row offset changes nothing (centred); columns are orthogonal with norms
    # sqrt(2) and sqrt(0.5).
    phi = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.5], [0.0, -0.5]]) + [10.0, -3.0]
    np.testing.assert_allclose(measures.singular_values(phi), [1.0, 0.5], rtol=1e-12)
    np.testing.assert_allclose(measures.singular_values(np.ones((3, 2))), [0.0, 0.0])


def test_per_class_recall_and_global_accuracy():
    logits = [[2.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 5.0]]
    recall = measures.per_class_recall(logits, [0, 0, 1, 2], 4)
    assert recall == [0.5, 0.0, 1.0, None]
    weights_CK = np.array([[1.0, 0, 0, 0], [0, 0.5, 0.5, 0]])
    assert measures.global_accuracy(recall, weights_CK) == pytest.approx((0.5 + 0.5) / 2)


TINY = dict(dataset="synthetic", num_clients=3, classes_per_client=2, local_steps=3,
            batch_size=8, rounds=2, eval_every=1, lr=0.05)


@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox"])
def test_local_train_is_the_engines_local_training(algorithm):
    """The probe with S = local_steps from state s, averaged over clients with the sample-count
    weights, is exactly the next round of the reference loop (for FedProx too: the probe is the
    run's own local training, proximal term included)."""
    exp = experiment.build_experiment(Config(**TINY, algorithm=algorithm).validate())
    state = experiment.initial_state(exp)
    hp = experiment.hparams_of(exp.config)
    ref, _ = make_loop_round(exp.apply_fn, exp.spec, exp.algorithm)(state, hp, exp.data)
    probes = [analysis.local_train(exp, state, c, exp.spec.local_steps)[0] for c in range(3)]
    mean = weighted_mean(jax.tree.map(lambda *a: jnp.stack(a), *probes),
                                exp.data.counts_C.astype(jnp.float32))
    diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), mean, ref.params)
    assert max(jax.tree.leaves(diff)) < 1e-6


def test_analysis_loads_the_latest_checkpoint(tmp_path):
    config = Config(**TINY, norm="bn", checkpoint_every=1).validate()
    train.run(config, str(tmp_path / "r"), quiet=True)
    exp, state, source = analysis.load_run(str(tmp_path / "r"))
    assert source == "checkpoints/2" and int(state.round) == 2
    assert state.model_state["batch_stats"]
    # the loaded model reproduces the logged final accuracy
    result = jax.device_get(jax.jit(evaluation.evaluation_fn(exp))(state, exp.x_test, exp.y_test))
    row = evaluation.evaluation_row(exp, result, 2, 0.0)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert row["test_accuracy"] == summary["final_test_accuracy"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("an") / "run")
    train.run(Config(**TINY, norm="fn").validate(), workdir, quiet=True)
    return workdir


def test_analyze_end_to_end(finished, capsys):
    assert main(["analyze", "--workdir", finished, "--client", "1", "--steps", "1,3"]) == 0
    out = capsys.readouterr().out
    assert "global accuracy" in out and "3 step(s)" in out
    result = json.loads(open(os.path.join(finished, "analysis", "analysis.json")).read())
    for name in ("norms.png", "singular_values.png", "local_overfit.png"):
        assert os.path.getsize(os.path.join(finished, "analysis", name)) > 1000
    k = 10
    assert len(result["per_class_recall"]) == k and len(result["head_norm_per_class"]) == k
    np.testing.assert_allclose(result["feature_norm_per_class"], math.sqrt(64), rtol=1e-5)  # fn
    sv = result["singular_values"]
    assert sv[0] == pytest.approx(1.0) and all(a >= b for a, b in zip(sv, sv[1:]))
    probe = result["local_overfit"]
    assert probe["client"] == 1 and probe["steps"] == 3 and probe["client_classes"] == [2, 3]
    assert [p["steps"] for p in result["local_overfit_by_steps"]] == [1, 3]
    summary = json.loads(open(os.path.join(finished, "summary.json")).read())
    assert probe["global_acc_before"] == pytest.approx(summary["final_test_accuracy"], abs=1e-6)
    assert 0 <= probe["global_acc_after"] <= 1 and len(probe["per_class_recall_after"]) == k
    assert len(probe["feature_norm_per_class_after"]) == k


@pytest.mark.parametrize("args, fragment", [
    (["--client", "3"], "out of range"),
    (["--client", "-1"], "out of range"),
    (["--steps", "0"], "--steps"),
    (["--steps", "two"], "--steps"),
])
def test_analyze_bad_input(finished, capsys, args, fragment):
    assert main(["analyze", "--workdir", finished, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err


def test_analyze_on_a_directory_without_a_run(tmp_path, capsys):
    for workdir in (tmp_path / "missing", tmp_path):
        assert main(["analyze", "--workdir", str(workdir)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds no run" in err[0]
    (tmp_path / "config.json").write_text(json.dumps(Config(**TINY).to_dict()))
    assert main(["analyze", "--workdir", str(tmp_path)]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_malformed_norm_layers_reach_the_cli_as_one_error_line(tmp_path, capsys):
    for spec, fragment in [("ln,ln", "has 2 entries"), ("ln,ln,ln,foo", "unknown normalizer"),
                           ("ln,ln,ln,scale1x", "scale<number>")]:
        assert main(["run", "--workdir", str(tmp_path / "x"), "--quiet", "dataset=synthetic",
                     f"norm_layers={spec}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err
        assert not (tmp_path / "x").exists()
    assert main(["run", "--workdir", str(tmp_path / "x"), "--quiet", "dataset=synthetic",
                 "model=resnet18_tiny", "norm_layers=ln,ln,ln,ln"]) == 2
    assert "exactly 2" in capsys.readouterr().err


def test_figure_runs_configs_and_reuses_finished_runs(tmp_path, capsys):
    path = tmp_path / "fig.py"
    path.write_text(
        "from fedln_jax import Config\n"
        "FIGURE = {'kind': 'final', 'seeds': (0, 1), 'xlabel': 'lr', 'xscale': 'log'}\n"
        f"def get_config():\n    return Config(**{TINY!r})\n"
        "def get_runs():\n"
        "    return [{'name': f'{n}_{lr}', 'series': n, 'x': lr,\n"
        "             'overrides': {'norm': n, 'lr': lr}} for n in ('fn',) for lr in (0.01, 0.1)]\n")
    workdir = tmp_path / "out"
    assert main(["figure", "--quiet", "--config", str(path), "--workdir", str(workdir), "rounds=1"]) == 0
    result = json.loads((workdir / "results.json").read_text())
    assert len(result["runs"]) == 4 and len(result["table"]) == 2
    row = result["table"][0]
    assert row["series"] == "fn" and row["x"] == 0.01 and row["n"] == 2
    assert row["final_mean"] == pytest.approx(np.mean(row["per_seed"]))
    assert (workdir / "figure.png").stat().st_size > 1000 and "lr=0.1" in (workdir / "table.md").read_text()
    mtime = (workdir / "runs" / "fn_0.1_seed1" / "summary.json").stat().st_mtime_ns
    assert main(["figure", "--quiet", "--config", str(path), "--workdir", str(workdir), "rounds=1"]) == 0
    assert (workdir / "runs" / "fn_0.1_seed1" / "summary.json").stat().st_mtime_ns == mtime
    capsys.readouterr()
    assert main(["figure", "--config", str(path), "--workdir", str(workdir), "norm_layers=x"]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_analysis_every_logs_norms_and_spectrum(tmp_path):
    config = Config(**{**TINY, "rounds": 3}, norm="fn", analysis_every=2).validate()
    train.run(config, str(tmp_path / "r"), quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert "singular_values" not in rows[0]  # round 1: not a multiple of 2
    for r in rows[1:]:  # round 2, and the last round
        np.testing.assert_allclose(r["feature_norm_per_class"], 8.0, rtol=1e-5)
        assert len(r["head_norm_per_class"]) == 10 and r["singular_values"][0] == pytest.approx(1)


# ----------------------------------------------------------------------------- the probe by hand
# An independent check of the local-overfit probe (the paper's Fig. 2, p. 7): plain SGD steps
# written here with jax.grad and optax.sgd on client 0's own examples, then the test set scored
# with model.apply. The batch is the whole client (batch_size = its 40 examples), so every step
# sees exactly those examples whatever their order, and the hand-written steps need nothing of
# the engine's batching.

ONE_CLASS = dict(dataset="synthetic", num_clients=10, classes_per_client=1, local_steps=10,
                 batch_size=40, rounds=1, eval_every=1, lr=0.05)


def _sgd_by_hand(exp, params, model_state, x, y, steps):
    def loss_fn(p, ms):
        variables = {"params": p, **ms}
        if ms:  # BN: train-mode statistics, as in local training
            logits, new = exp.model.apply(variables, x, train=True, mutable=list(ms))
            ms = dict(new)
        else:
            logits = exp.model.apply(variables, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), ms

    tx = optax.sgd(exp.config.lr)
    opt_state = tx.init(params)
    for _ in range(steps):
        (_, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, model_state)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return params, model_state


@pytest.mark.parametrize("norm, init", [("fn", "torch"), ("none", "torch"), ("fn", "lecun"),
                                        ("bn", "torch")])
def test_probe_equals_sgd_by_hand(norm, init):
    exp = experiment.build_experiment(Config(**ONE_CLASS, norm=norm, init=init).validate())
    state = experiment.initial_state(exp)
    count = int(exp.data.counts_C[0])
    assert count == exp.config.batch_size and exp.counts_CK[0].tolist() == [count] + [0] * 9
    rows = np.asarray(exp.data.idx_C[0])[:count]
    x = jnp.asarray(np.asarray(exp.data.x)[rows], jnp.float32) * exp.spec.pixel_scale
    y = jnp.asarray(np.asarray(exp.data.y)[rows])
    assert set(np.asarray(y).tolist()) == {0}  # client 0 holds class 0 only
    for steps in (1,) if norm == "bn" else (1, 5):  # bn: see below
        params, model_state = _sgd_by_hand(exp, state.params, state.model_state, x, y, steps)
        got_params, got_state, _ = analysis.local_train(exp, state, 0, steps)
        diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), params, got_params)
        if norm == "bn":
            # Under BN at this init a conv channel has a batch variance ~eps (a nearly dead
            # ReLU), so the conv kernels' gradient is ill-conditioned: even jit vs eager of the
            # same hand-written step differ by ~1e-2 there (and, after 5 steps, everywhere).
            # After one step the layers after the convs and the batch statistics must agree.
            diff = {k: v for k, v in diff.items() if not k.startswith("conv")}
        assert max(jax.tree.leaves(diff)) < 1e-5, (steps, diff)
        if model_state:
            sdiff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), model_state, got_state)
            assert max(jax.tree.leaves(sdiff)) < 1e-5
        # the probe scores the local model: the test set by hand, mean recall over the 10 classes
        # (one class per client, so the run's test_accuracy is the mean of the recalls)
        if norm == "bn":
            continue
        logits = exp.model.apply({"params": params, **model_state},
                                 jnp.asarray(exp.x_test, jnp.float32) * exp.spec.pixel_scale,
                                 train=False)
        pred, y_test = np.asarray(logits).argmax(-1), np.asarray(exp.y_test)
        recall = [float(np.mean(pred[y_test == k] == k)) for k in range(10)]
        probe = analysis.local_overfit(exp, state, 0, steps)
        np.testing.assert_allclose(probe["per_class_recall_after"], recall, atol=1e-9)
        assert probe["global_acc_after"] == pytest.approx(np.mean(recall), abs=1e-6)
        assert probe["client_classes"] == [0] and probe["steps"] == steps
        assert probe["lr"] == exp.config.lr


def test_probe_batches_are_the_clients_own_examples():
    """With batch 8 < 40 examples: each step's batch holds 8 distinct examples of client 0,
    all of class 0, and 5 steps walk through all 40 once (one epoch, drop-last)."""
    exp = experiment.build_experiment(Config(**{**ONE_CLASS, "batch_size": 8}).validate())
    state = experiment.initial_state(exp)
    spec = exp.spec._replace(local_steps=5)
    key = client_keys(round_key(state), jnp.array([0], jnp.int32))[0]
    ix_SB = np.asarray(client_batch_indices(key, exp.data.idx_C[0], exp.data.counts_C[0], spec))
    own = set(np.asarray(exp.data.idx_C[0])[:40].tolist())
    assert ix_SB.shape == (5, 8) and set(ix_SB.ravel().tolist()) == own
    _, y_SB = gather_client_batches(exp.data, spec, key, jnp.int32(0))
    assert set(np.asarray(y_SB).ravel().tolist()) == {0}


def test_fn_probe_step_on_the_body_shrinks_with_its_scale():
    """Why one probe step can wipe out an FN model that is early in training (docs/analyses.md,
    local overfitting): the FN network is the same function when every body layer is scaled by a
    (bias-free ReLU layers, the feature normalized before the head), but SGD's step on a body
    layer is then 1/a as large, 1/a^2 relative to the weights. A small body (a small pre-FN
    feature norm) takes a large relative step; the head's step does not depend on a."""
    exp = experiment.build_experiment(Config(**ONE_CLASS, norm="fn").validate())
    state = experiment.initial_state(exp)
    body = [k for k in state.params if k != "head"]
    a = 2.0
    scaled = state._replace(params={k: ({"kernel": v["kernel"] * a} if k in body else v)
                                    for k, v in state.params.items()})
    x = jnp.asarray(exp.x_test, jnp.float32) * exp.spec.pixel_scale
    logits = [exp.model.apply({"params": s.params}, x) for s in (state, scaled)]
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-4, atol=1e-5)
    step = [jax.tree.map(jnp.subtract, analysis.local_train(exp, s, 0, 1)[0], s.params)
            for s in (state, scaled)]
    for k in body:
        np.testing.assert_allclose(step[1][k]["kernel"] * a, step[0][k]["kernel"],
                                   rtol=2e-3, atol=1e-7)
    np.testing.assert_allclose(step[1]["head"]["kernel"], step[0]["head"]["kernel"],
                               rtol=1e-4, atol=1e-8)
