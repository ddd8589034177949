"""Algorithms: hand-checked pieces, reductions to FedAvg, SCAFFOLD's unbiasedness, and the
vmapped round against the reference loop with partial participation."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedln_jax.algorithms import (ALGORITHM_NAMES, REGISTRY, ClientContext, calibration_margins,
                                  decorrelation_penalty, get_algorithm, init_client_states,
                                  restriction_scales, scale_by_server_moments)
from fedln_jax.algorithms.fedbn import bn_layer_paths, local_layers
from fedln_jax.config import Config
from fedln_jax.engine.client import make_client_update
from fedln_jax.engine.evaluation import client_accuracy, make_eval_fn, make_personalized_eval_fn
from fedln_jax.engine.placement import client_mesh, replicate
from fedln_jax.engine.reference import make_loop_round
from fedln_jax.engine.round import (make_multi_round_fn, make_round_fn, round_key, sample_cohort,
                                    server_update)
from fedln_jax.engine.state import RoundSpec, ServerState, initial_server_context, make_data
from fedln_jax.errors import FedlnError
from fedln_jax.training.experiment import build_experiment, hparams_of, initial_state

from conftest import max_diff, tiny_round_config

NORMS = ["none", "bn", "gn", "ln", "fn"]


def tiny_config(**kw):
    return tiny_round_config(**{"model": "mlp", "classes_per_client": 2, "client_chunk_size": 2,
                                **kw})


# ----------------------------------------------------------------------------- hand-checked pieces
# A linear model with 2 inputs and 2 classes, W = 0: softmax is (1/2, 1/2), so for one example
# x = (1, 2) of class 0 the cross-entropy gradient is x (p - e_0)^T = [[-0.5, 0.5], [-1, 1]].

X_SB = jnp.array([[[1.0, 2.0]]])       # 1 step, batch of 1
Y_SB = jnp.array([[0]])
GRAD = np.array([[-0.5, 0.5], [-1.0, 1.0]])
SPEC1 = RoundSpec(num_clients=1, cohort_size=1, local_steps=1, batch_size=1, max_epochs=1,
                         pixel_scale=1.0, chunk_size=1, momentum=0.0, weight_decay=0.0)


def linear_apply(params, model_state, x, train, return_features=False):
    logits = x @ params["w"]
    return ((logits, x) if return_features else logits), model_state


def context(start_params, hparams, client_state=(), server=(), counts=(1.0, 1.0)):
    return ClientContext(start_params=start_params, client_state=client_state, server=server,
                         class_counts_K=jnp.array(counts), hparams=hparams, local_steps=1)


def one_local_step(name, ctx, params=None):
    update = make_client_update(linear_apply, SPEC1, get_algorithm(name))
    params = {"w": jnp.zeros((2, 2))} if params is None else params
    new, _, loss = update(params, {}, X_SB, Y_SB, ctx.hparams["lr"], ctx)
    return np.asarray(new["w"]), float(loss)


def test_fedavg_one_step_is_sgd_on_cross_entropy():
    w, loss = one_local_step("fedavg", context({"w": jnp.zeros((2, 2))}, {"lr": 0.1}))
    np.testing.assert_allclose(w, -0.1 * GRAD, atol=1e-7)
    assert loss == pytest.approx(math.log(2))


def test_fedprox_adds_mu_times_distance_to_the_start_model():
    w0 = {"w": jnp.eye(2)}
    w, _ = one_local_step("fedprox", context(w0, {"lr": 0.1, "prox_mu": 0.5}))
    # W = 0 - 0.1 * (GRAD + 0.5 * (0 - I)) = -0.1 * [[-1, 0.5], [-1, 0.5]]
    np.testing.assert_allclose(w, [[0.1, -0.05], [0.1, -0.05]], atol=1e-7)


def test_scaffold_corrects_the_gradient_and_updates_its_variate():
    alg = get_algorithm("scaffold")
    c = {"c": {"w": jnp.array([[0.2, 0.0], [0.0, 0.0]])}}
    ci = {"c": {"w": jnp.array([[0.0, 0.0], [0.0, 0.4]])}}
    ctx = context({"w": jnp.zeros((2, 2))}, {"lr": 0.1}, client_state=ci, server=c)
    w, _ = one_local_step("scaffold", ctx)
    # corrected gradient GRAD + c - c_i = [[-0.3, 0.5], [-1, 0.6]]
    np.testing.assert_allclose(w, [[0.03, -0.05], [0.1, -0.06]], atol=1e-7)
    new_ci = alg.update_client_state(ctx, {"w": jnp.asarray(w)}, {})
    # option II: c_i - c + (x - y) / (K lr) = [[0,0],[0,.4]] - [[.2,0],[0,0]] + [[-.3,.5],[-1,.6]]
    np.testing.assert_allclose(new_ci["c"]["w"], GRAD, atol=1e-6)
    # the server variate is the sample-count-weighted mean of all clients' variates
    states_C = {"c": {"w": jnp.array([[1.0], [4.0]])}}
    server = alg.server_context(states_C, jnp.array([1.0, 3.0]))
    np.testing.assert_allclose(server["c"]["w"], [3.25])


def fedlc_loss(logits, y, counts, tau=1.0):
    ctx = context({}, {"fedlc_tau": tau}, counts=counts)
    return REGISTRY["fedlc"].client_loss(jnp.asarray(logits), None, jnp.asarray(y), ctx)


def test_fedlc_removes_absent_classes_from_the_softmax_by_hand():
    # 4 classes, the client holds 16 of class 0 and 1 of class 2: margins 16^(-1/4) = 0.5 and 1
    counts = (16.0, 0.0, 1.0, 0.0)
    np.testing.assert_allclose(np.asarray(calibration_margins(jnp.array(counts), 1.0))[[0, 2]],
                               [0.5, 1.0])
    logits = np.array([[1.0, 5.0, 2.0, -3.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    y = np.array([0, 2])
    # example 1: z0 = 1 - 0.5, z2 = 2 - 1; example 2: z0 = -0.5, z2 = -1 (classes 1, 3 absent)
    by_hand = ((-0.5 + math.log(math.exp(0.5) + math.exp(1.0)))
               + (1.0 + math.log(math.exp(-0.5) + math.exp(-1.0)))) / 2
    assert float(fedlc_loss(logits, y, counts)) == pytest.approx(by_hand, rel=1e-6)
    # an absent class's logit does not enter the loss at all
    assert float(fedlc_loss(logits + np.array([0, 50.0, 0, -50.0]), y, counts)) == pytest.approx(
        by_hand, rel=1e-6)
    grads = np.asarray(jax.grad(lambda z: fedlc_loss(z, y, counts))(jnp.asarray(logits)))
    assert np.all(np.isfinite(grads))
    np.testing.assert_array_equal(grads[:, [1, 3]], 0.0)        # absent classes: exactly zero
    p = lambda a, b: math.exp(a) / (math.exp(a) + math.exp(b))   # softmax over the two present
    expected = np.array([[p(0.5, 1.0) - 1, p(1.0, 0.5)], [p(-0.5, -1.0), p(-1.0, -0.5) - 1]]) / 2
    np.testing.assert_allclose(grads[:, [0, 2]], expected, rtol=1e-5, atol=1e-7)


def test_fedlc_with_one_class_has_zero_loss_and_zero_gradient():
    counts, y = (0.0, 7.0, 0.0), np.array([1, 1])
    logits = np.array([[3.0, -2.0, 9.0], [0.1, 40.0, -5.0]], np.float32)
    assert float(fedlc_loss(logits, y, counts)) == 0.0
    grads = np.asarray(jax.grad(lambda z: fedlc_loss(z, y, counts))(jnp.asarray(logits)))
    np.testing.assert_array_equal(grads, 0.0)
    # so a one-class client's local SGD leaves the model where it started
    w0 = {"w": jnp.array([[0.3, -0.2], [0.1, 0.5]])}
    w, loss = one_local_step("fedlc", context(w0, {"lr": 0.1, "fedlc_tau": 1.0},
                                              counts=(1.0, 0.0)), params=w0)
    np.testing.assert_array_equal(w, w0["w"])
    assert loss == 0.0


def test_fedrs_scales_absent_logits_by_alpha():
    np.testing.assert_allclose(restriction_scales(jnp.array([5.0, 0.0, 0.0]), 0.5), [1, 0.5, 0.5])
    ctx = context({}, {"fedrs_alpha": 0.5}, counts=(5.0, 0.0, 0.0))
    loss = REGISTRY["fedrs"].client_loss(jnp.array([[1.0, 2.0, 4.0]]), None, jnp.array([0]), ctx)
    # restricted logits (1, 1, 2): -log(e / (2e + e^2)) = log(2 + e)
    assert float(loss) == pytest.approx(math.log(2 + math.e), rel=1e-6)


def decorr_by_hand(x):
    """The official FedDecorr loss written out with loops (eps 1e-8, unbiased variance,
    corr = x^T x not divided by N, mean over the off-diagonal entries, then / N)."""
    n, c = len(x), len(x[0])
    if n == 1:
        return 0.0
    cols = []
    for j in range(c):
        col = [x[i][j] for i in range(n)]
        mean = sum(col) / n
        var = sum((v - mean) ** 2 for v in col) / (n - 1)
        cols.append([(v - mean) / math.sqrt(1e-8 + var) for v in col])
    off = [sum(cols[a][i] * cols[b][i] for i in range(n)) ** 2
           for a in range(c) for b in range(c) if a != b]
    return sum(off) / len(off) / n


def test_feddecorr_penalty_by_hand():
    x = [[1.0, 2.0, 0.0],
         [2.0, 0.0, 1.0],
         [3.0, 1.0, 1.0],
         [6.0, 1.0, 2.0]]
    assert float(decorrelation_penalty(jnp.array(x))) == pytest.approx(decorr_by_hand(x), rel=1e-5)
    # two anti-correlated features, N = 2: columns -+1 and +-1, unbiased var 2, so
    # corr_01 = -2 / (2 + eps); mean over the two off-diagonal entries of its square, / N = 2
    anti = [[1.0, 2.0], [3.0, 0.0]]
    assert float(decorrelation_penalty(jnp.array(anti))) == pytest.approx(
        0.5 * (2 / (2 + 1e-8)) ** 2, rel=1e-6)
    assert decorr_by_hand(anti) == pytest.approx(0.5, rel=1e-6)
    ctx = context({}, {"feddecorr_coef": 0.5})
    loss = REGISTRY["feddecorr"].client_loss(jnp.zeros((2, 2)), jnp.array(anti), jnp.array([0, 1]),
                                             ctx)
    assert float(loss) == pytest.approx(math.log(2) + 0.5 * 0.5, rel=1e-6)


def test_feddecorr_penalty_is_zero_for_one_example_and_finite_for_constant_features():
    one = jnp.array([[1.0, -2.0, 3.0]])
    assert float(decorrelation_penalty(one)) == 0.0
    np.testing.assert_array_equal(jax.grad(decorrelation_penalty)(one), 0.0)
    x = jnp.array([[1.0, 5.0, 2.0], [2.0, 5.0, 0.0], [4.0, 5.0, 1.0]])    # column 1 constant
    value, grads = jax.value_and_grad(decorrelation_penalty)(x)
    assert float(value) == pytest.approx(decorr_by_hand(np.asarray(x).tolist()), rel=1e-5)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grads))
    assert np.isfinite(float(decorrelation_penalty(jnp.ones((4, 3)))))    # all constant
    assert float(jax.jit(decorrelation_penalty)(jnp.ones((4, 3)))) == 0.0


def server_steps(name, hparams, means):
    alg = get_algorithm(name)
    params = {"w": jnp.array([1.0, 2.0])}
    tx = alg.server_tx(hparams)
    state = ServerState(params, {}, tx.init(params), (), jnp.int32(0), jax.random.PRNGKey(0))
    out = []
    for mean in means:
        state = server_update(state, {"w": jnp.array(mean)}, {}, tx, hparams["server_lr"])
        out.append(np.asarray(state.params["w"]))
    return out


def test_fedavgm_server_momentum_by_hand():
    p1, p2 = server_steps("fedavgm", {"server_lr": 1.0, "server_momentum": 0.5},
                          [[0.0, 1.0], [0.0, 0.0]])
    # g1 = (1, 1): v = (1, 1), w = (0, 1); g2 = (0, 1): v = (0, 1) + 0.5 (1, 1), w = (-.5, -.5)
    np.testing.assert_allclose(p1, [0.0, 1.0])
    np.testing.assert_allclose(p2, [-0.5, -0.5])


SERVER_HP = {"server_lr": 0.01, "server_beta1": 0.9, "server_beta2": 0.99, "server_tau": 1e-3}


def test_fedadam_and_fedyogi_without_bias_correction_by_hand():
    g1, g2 = np.array([1.0, -2.0]), np.array([1.0, 0.0])
    for rule in ("adam", "yogi"):
        tx = scale_by_server_moments(0.9, 0.99, 1e-3, rule)
        state = tx.init(jnp.zeros(2))
        d1, state = tx.update(jnp.asarray(g1), state)
        d2, state = tx.update(jnp.asarray(g2), state)
        m1 = [0.1, -0.2]                      # 0.1 g1 (m starts at 0, no bias correction)
        if rule == "adam":
            v1 = [0.99e-6 + 0.01, 0.99e-6 + 0.04]
            v2 = [0.99 * v1[0] + 0.01, 0.99 * v1[1]]
        else:                                 # v0 = 1e-6 < g^2: v grows by 0.01 g^2
            v1 = [1e-6 + 0.01, 1e-6 + 0.04]
            v2 = [v1[0] + 0.01, v1[1]]        # g2^2 = 1 > v1[0]: grow; g2^2 = 0 < v1[1]: keep
        m2 = [0.9 * 0.1 + 0.1, 0.9 * -0.2]
        np.testing.assert_allclose(d1, [m / (math.sqrt(v) + 1e-3) for m, v in zip(m1, v1)], rtol=1e-5)
        np.testing.assert_allclose(d2, [m / (math.sqrt(v) + 1e-3) for m, v in zip(m2, v2)], rtol=1e-5)
    # through the engine: params - server_lr * direction
    (p1,) = server_steps("fedyogi", SERVER_HP, [[0.0, 4.0]])      # pseudo-gradient (1, -2)
    np.testing.assert_allclose(p1, [1 - 0.01 * 0.1 / (math.sqrt(0.010001) + 1e-3),
                                    2 + 0.01 * 0.2 / (math.sqrt(0.040001) + 1e-3)], rtol=1e-6)


def test_fedbn_overlays_and_extracts_the_local_bn_layers():
    alg = get_algorithm("fedbn")
    params = {"dense0": {"kernel": jnp.array([1.0])}, "norm0": {"scale": jnp.array([2.0]),
                                                               "bias": jnp.array([3.0])}}
    mstate = {"batch_stats": {"norm0": {"mean": jnp.array([0.0]), "var": jnp.array([1.0])}}}
    local = {"params": {"norm0": {"scale": jnp.array([5.0]), "bias": jnp.array([6.0])}},
             "batch_stats": {"norm0": {"mean": jnp.array([7.0]), "var": jnp.array([8.0])}}}
    p, s = alg.client_start(params, mstate, local)
    assert float(p["dense0"]["kernel"][0]) == 1.0                     # shared layer: global
    assert float(p["norm0"]["scale"][0]) == 5.0 and float(p["norm0"]["bias"][0]) == 6.0
    assert float(s["batch_stats"]["norm0"]["var"][0]) == 8.0
    chex.assert_trees_all_equal(local_layers(p, s), local)
    assert alg.init_client_state({"dense0": {}}, {}) == ()            # no BN: FedBN is FedAvg


def test_fedbn_overlay_by_path_on_a_nested_dict():
    """BN layers found by full path at any depth; only their own leaves are local."""
    alg = get_algorithm("fedbn")
    params = {"stem": {"kernel": 1.0},
              "block": {"conv": {"kernel": 2.0}, "bn": {"scale": 3.0, "bias": 4.0},
                        "inner": {"bn": {"scale": 5.0}, "conv": {"kernel": 6.0}}},
              "head": {"kernel": 7.0, "bias": 8.0}}
    mstate = {"batch_stats": {"block": {"bn": {"mean": 0.0, "var": 1.0},
                                        "inner": {"bn": {"mean": 0.5, "var": 2.0}}}},
              "other": {"x": 9.0}}
    assert bn_layer_paths(mstate) == (("block", "bn"), ("block", "inner", "bn"))
    local = local_layers(params, mstate)
    assert local == {"params": {"block": {"bn": {"scale": 3.0, "bias": 4.0},
                                          "inner": {"bn": {"scale": 5.0}}}},
                     "batch_stats": mstate["batch_stats"]}
    own = {"params": {"block": {"bn": {"scale": 30.0, "bias": 40.0},
                                "inner": {"bn": {"scale": 50.0}}}},
           "batch_stats": {"block": {"bn": {"mean": 10.0, "var": 11.0},
                                     "inner": {"bn": {"mean": 12.0, "var": 13.0}}}}}
    p, s = alg.client_start(params, mstate, own)
    assert p == {"stem": {"kernel": 1.0},
                 "block": {"conv": {"kernel": 2.0}, "bn": {"scale": 30.0, "bias": 40.0},
                           "inner": {"bn": {"scale": 50.0}, "conv": {"kernel": 6.0}}},
                 "head": {"kernel": 7.0, "bias": 8.0}}
    assert s == {"batch_stats": own["batch_stats"], "other": {"x": 9.0}}
    assert params["block"]["bn"]["scale"] == 3.0                      # the inputs are untouched
    # BN without affine (primitive bn): the statistics alone are local
    assert local_layers({"block": {"conv": {"kernel": 2.0}}}, mstate) == {
        "batch_stats": mstate["batch_stats"]}
    p, s = alg.client_start({"block": {"conv": {"kernel": 2.0}}}, mstate,
                            {"batch_stats": own["batch_stats"]})
    assert p == {"block": {"conv": {"kernel": 2.0}}} and s["batch_stats"] == own["batch_stats"]


def test_personalized_accuracy_uses_each_clients_own_recall():
    correct_CK = np.array([[8.0, 0.0], [2.0, 6.0]])    # client 0's model, client 1's model
    total_K = np.array([10.0, 10.0])
    weights_CK = np.array([[1.0, 0.0], [0.0, 1.0]])
    acc = client_accuracy(correct_CK, total_K, weights_CK)
    assert acc["test_accuracy"] == pytest.approx((0.8 + 0.6) / 2)


# ----------------------------------------------------------------------------- through the engine


def one_vmapped_round(config, state=None):
    exp = build_experiment(config)
    state = initial_state(exp) if state is None else state
    return jax.jit(make_round_fn(exp.apply_fn, exp.spec, exp.algorithm))(
        state, hparams_of(config), exp.data)[0]


@pytest.fixture(scope="module")
def fedavg_round():
    return one_vmapped_round(tiny_config())


@pytest.mark.parametrize("overrides", [
    dict(algorithm="fedprox", prox_mu=0.0),
    dict(algorithm="fedrs", fedrs_alpha=1.0),
    dict(algorithm="feddecorr", feddecorr_coef=0.0),
    dict(algorithm="fedavgm", server_momentum=0.0, server_lr=1.0),
    dict(algorithm="scaffold"),          # round 1: all variates are zero
])
def test_reductions_equal_fedavg_exactly(fedavg_round, overrides):
    reduced = one_vmapped_round(tiny_config(**overrides))
    assert max_diff(reduced.params, fedavg_round.params) == 0.0


def test_fedlc_without_margins_is_fedavg_only_where_every_client_holds_every_class():
    """tau = 0 leaves the softmax over the client's own classes: FedAvg exactly under an IID
    split (every class present), a restricted softmax under the n_class split."""
    iid = dict(partition="iid")
    assert np.all(np.asarray(build_experiment(tiny_config(**iid)).data.class_counts_CK) > 0)
    fedlc = one_vmapped_round(tiny_config(algorithm="fedlc", fedlc_tau=0.0, **iid))
    assert max_diff(fedlc.params, one_vmapped_round(tiny_config(**iid)).params) == 0.0


def test_fedlc_without_margins_differs_from_fedavg_under_label_skew(fedavg_round):
    fedlc = one_vmapped_round(tiny_config(algorithm="fedlc", fedlc_tau=0.0))
    assert max_diff(fedlc.params, fedavg_round.params) > 1e-4


def quadratic_problem(curvatures, optima, steps, lr):
    """Client i minimizes a_i/2 (w - b_i)^2 with full-batch GD; each client's examples all
    hold (a_i, b_i) as the two pixels, and the 'logits' are the per-example losses."""
    n = 4
    x = np.array([[[[a, b]]] for a, b in zip(curvatures, optima) for _ in range(n)], np.uint8)
    y = np.zeros(len(x), np.int32)
    clients = [np.arange(i * n, (i + 1) * n) for i in range(len(curvatures))]
    data = make_data(x, y, clients, num_classes=1)
    spec = RoundSpec(num_clients=len(curvatures), cohort_size=len(curvatures),
                            local_steps=steps, batch_size=n, max_epochs=steps, pixel_scale=1.0,
                            chunk_size=1, momentum=0.0, weight_decay=0.0)

    def apply_fn(params, model_state, x, train, return_features=False):
        a, b = x[..., 0, 0, 0], x[..., 0, 0, 1]
        return (0.5 * a * (params["w"] - b) ** 2)[:, None], model_state

    quadratic_loss = lambda losses_B1, features, y, ctx: losses_B1.mean()
    return data, spec, apply_fn, quadratic_loss


def test_scaffold_removes_fedavgs_client_drift_on_heterogeneous_quadratics():
    curvatures, optima, steps, lr = (1, 10), (0, 1), 10, 0.05
    data, spec, apply_fn, quadratic_loss = quadratic_problem(curvatures, optima, steps, lr)
    optimum = sum(a * b for a, b in zip(curvatures, optima)) / sum(curvatures)       # 10/11
    # FedAvg's fixed point: w = sum b_i (1 - r_i) / sum (1 - r_i), r_i = (1 - lr a_i)^K
    r = [(1 - lr * a) ** steps for a in curvatures]
    fedavg_fixed_point = sum(b * (1 - ri) for b, ri in zip(optima, r)) / sum(1 - ri for ri in r)
    hparams = {"lr": jnp.float32(lr), "server_lr": jnp.float32(1.0)}
    final = {}
    for name in ("fedavg", "scaffold"):
        alg = get_algorithm(name)._replace(client_loss=quadratic_loss)
        params = {"w": jnp.float32(0.0)}
        state = ServerState(params, {}, optax.identity().init(params),
                            init_client_states(alg, params, {}, 2), jnp.int32(0),
                            jax.random.PRNGKey(0), initial_server_context(alg, params, {}))
        chex.clear_trace_counter()
        run = jax.jit(chex.assert_max_traces(
            make_multi_round_fn(make_round_fn(apply_fn, spec, alg)), n=1))
        # placed as the round's outputs are, so the second call reuses the first compilation
        state, hp, dd = replicate((state, hparams, data), client_mesh())
        state, _ = run(state, hp, dd, jnp.int32(150))
        state, _ = run(state, hp, dd, jnp.int32(50))      # client states round-trip: no retrace
        final[name] = float(state.params["w"])
    assert final["fedavg"] == pytest.approx(fedavg_fixed_point, abs=1e-4)
    assert abs(final["fedavg"] - optimum) > 0.15                    # biased by client drift
    assert abs(final["scaffold"] - optimum) < 1e-4                  # unbiased
    assert abs(final["scaffold"] - optimum) < abs(final["fedavg"] - optimum) / 1000


NORM_OF = dict(zip(ALGORITHM_NAMES, NORMS * 2))
NORM_OF["fedbn"] = "bn"


@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_vmapped_round_equals_reference_loop_with_partial_participation(name):
    config = tiny_config(algorithm=name, norm=NORM_OF[name])
    exp = build_experiment(config)
    vec = jax.jit(make_round_fn(exp.apply_fn, exp.spec, exp.algorithm))
    ref = make_loop_round(exp.apply_fn, exp.spec, exp.algorithm)
    hp = hparams_of(config)
    state = initial_state(exp)
    for _ in range(2):     # the second round starts from non-trivial client/server states
        a, ma = vec(state, hp, exp.data)
        b, mb = ref(state, hp, exp.data)
        assert max_diff((a.params, a.model_state, a.client_states, a.opt_state, a.server_context),
                        (b.params, b.model_state, b.client_states, b.opt_state,
                         b.server_context)) < 1e-5
        assert abs(float(ma["train_loss"]) - float(mb["train_loss"])) < 1e-5
        if jax.tree.leaves(state.client_states):
            cohort = np.asarray(sample_cohort(round_key(state), exp.spec))
            idle = sorted(set(range(config.num_clients)) - set(cohort))
            assert len(idle) == 1
            moved = [max_diff(jax.tree.map(lambda s: s[c], a.client_states),
                              jax.tree.map(lambda s: s[c], state.client_states)) for c in range(4)]
            assert moved[idle[0]] == 0.0 and all(moved[c] > 0 for c in cohort)
        state = a


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_every_algorithm_runs_with_every_normalizer(name, norm):
    # eager (no compile per combination) keeps 50 cases cheap
    config = tiny_config(algorithm=name, norm=norm, num_clients=3, clients_per_round=2,
                         local_steps=1, batch_size=4)
    exp = build_experiment(config)
    with jax.disable_jit():
        state, metrics = make_round_fn(exp.apply_fn, exp.spec, exp.algorithm)(
            initial_state(exp), hparams_of(config), exp.data)
    assert np.isfinite(float(metrics["train_loss"]))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state))


def test_fedbn_evaluates_each_client_with_its_own_bn_layers():
    config = tiny_config(algorithm="fedbn", norm="bn", clients_per_round=None)
    exp = build_experiment(config)
    state = one_vmapped_round(config)
    evaluate = make_personalized_eval_fn(exp.apply_fn, exp.algorithm, exp.num_classes,
                                                exp.spec.pixel_scale)
    out = jax.jit(evaluate)(state.params, state.model_state, state.client_states, exp.x_test,
                            exp.y_test)
    assert out["correct_CK"].shape == (4, exp.num_classes)
    global_eval = make_eval_fn(exp.apply_fn, exp.num_classes, exp.spec.pixel_scale)
    for c in (0, 3):
        own = jax.tree.map(lambda s: s[c], state.client_states)
        params, mstate = exp.algorithm.client_start(state.params, state.model_state, own)
        expected = global_eval(params, mstate, exp.x_test, exp.y_test)
        np.testing.assert_array_equal(out["correct_CK"][c], expected["correct_K"])


def test_make_data_counts_examples_per_client_and_class():
    y = np.array([0, 1, 1, 2, 2, 2])
    data = make_data(np.zeros((6, 1, 1, 1), np.uint8), y, [np.array([0, 1]), np.array([2, 3, 4, 5])],
                            num_classes=4)
    np.testing.assert_array_equal(data.class_counts_CK, [[1, 1, 0, 0], [0, 1, 3, 0]])


# ----------------------------------------------------------------------------- config


def test_server_lr_defaults_per_algorithm():
    assert Config(algorithm="fedyogi").resolved_server_lr == 0.01
    assert Config(algorithm="scaffold").resolved_server_lr == 1.0
    assert Config(algorithm="fedyogi", server_lr=0.5).resolved_server_lr == 0.5
    hp = hparams_of(Config(algorithm="fedyogi").validate())
    assert set(hp) == {"lr", "server_lr", "momentum", "weight_decay", "server_beta1",
                       "server_beta2", "server_tau"}
    assert float(hp["server_beta2"]) == pytest.approx(0.99)


def test_baseline_defaults_are_the_papers():
    """docs/algorithms.md: the paper's baseline settings (Appendix D, pp. 21-22), as
    fedln_jax.studies.paper records them, are the defaults (server_lr: FedYogi's)."""
    from fedln_jax.algorithms.fedadam import V0
    from fedln_jax.studies.paper import PROTOCOL
    c = Config()
    assert (c.prox_mu, c.fedrs_alpha, c.fedlc_tau, c.feddecorr_coef) == (0.01, 0.5, 1.0, 0.5)
    assert (c.server_beta1, c.server_beta2, c.server_tau) == (0.9, 0.99, 1e-3)
    assert Config(algorithm="fedyogi").resolved_server_lr == 0.01
    baselines = {s.name: s.value for s in PROTOCOL if s.source == "Appendix D"}
    defaults = {**c.to_dict(), "server_lr": Config(algorithm="fedyogi").resolved_server_lr,
                "server_v0": V0, "scaffold_option": "II"}       # option II: scaffold.py
    assert {k: defaults[k] for k in baselines} == baselines
    hp = hparams_of(Config(algorithm="fedyogi").validate())
    state = get_algorithm("fedyogi").server_tx(hp).init({"w": jnp.zeros(2)})
    np.testing.assert_array_equal(state.v["w"], np.float32(1e-6))      # v0
    np.testing.assert_array_equal(state.m["w"], 0.0)


@pytest.mark.parametrize("overrides, fragment", [
    (dict(algorithm="scaffold", prox_mu=0.1), "prox_mu is a hyperparameter of fedprox"),
    (dict(algorithm="fedavg", server_momentum=0.5), "server_momentum"),
    (dict(algorithm="fedprox", fedrs_alpha=0.9), "fedrs_alpha"),
    (dict(algorithm="fedprox", prox_mu=-1.0), "prox_mu must be >= 0"),
    (dict(algorithm="fedrs", fedrs_alpha=0.0), "fedrs_alpha must be in (0, 1]"),
    (dict(algorithm="fedrs", fedrs_alpha=1.5), "fedrs_alpha must be in (0, 1]"),
    (dict(algorithm="fedyogi", server_beta2=1.0), "server_beta2 must be in [0, 1)"),
    (dict(algorithm="fedyogi", server_lr=0.0), "server_lr must be > 0"),
    (dict(algorithm="fedlc", fedlc_tau=-0.5), "fedlc_tau must be >= 0"),
    (dict(algorithm="feddecorr", feddecorr_coef=-0.1), "feddecorr_coef must be >= 0"),
    (dict(algorithm="fedsgd"), "algorithm='fedsgd'"),
])
def test_bad_algorithm_settings_are_rejected(overrides, fragment):
    with pytest.raises(FedlnError, match=None) as exc:
        Config(**overrides).validate()
    assert fragment in str(exc.value)


def test_scaffold_running_server_variate_is_the_weighted_mean_of_all_variates():
    """The round moves SCAFFOLD's server variate by the cohort's change alone (O(cohort), not
    O(num_clients)); after rounds of partial participation it is still the example-weighted
    mean of every client's variate, as computing it from all of them gives (float32 tolerance
    1e-6), and it is not trivially zero."""
    config = tiny_config(algorithm="scaffold", partition="dirichlet", dirichlet_beta=0.5)
    exp = build_experiment(config)
    assert exp.spec.cohort_size < exp.spec.num_clients
    round_fn = jax.jit(make_round_fn(exp.apply_fn, exp.spec, exp.algorithm))
    state, hp = initial_state(exp), hparams_of(config)
    weights_C = exp.data.counts_C.astype(jnp.float32)
    assert len(set(np.asarray(weights_C).tolist())) > 1      # unequal clients: weights matter
    for _ in range(3):
        state, _ = round_fn(state, hp, exp.data)
        from_all = exp.algorithm.server_context(state.client_states, weights_C)
        assert max_diff(state.server_context, from_all) < 1e-6
    assert max(float(jnp.abs(v).max()) for v in jax.tree.leaves(state.server_context)) > 1e-3
