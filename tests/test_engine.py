"""The vectorized round against the reference loop, chunking, batches, and FedAvg == SGD."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedln_jax.config import Config
from fedln_jax.engine.client import client_batch_indices, epochs_needed
from fedln_jax.engine.evaluation import client_accuracy, make_eval_fn
from fedln_jax.engine.placement import client_mesh, default_chunk_size, replicate
from fedln_jax.engine.reference import make_loop_round
from fedln_jax.engine.round import all_finite, make_block_fn, make_multi_round_fn, make_round_fn
from fedln_jax.engine.state import RoundSpec, ServerState
from fedln_jax.training.experiment import build_experiment, hparams_of, initial_state

from conftest import max_diff, tiny_round_config


def tiny_config(**kw):
    return tiny_round_config(**{"rounds": 2, "eval_every": 1, "classes_per_client": 3, **kw})


def run_both(config, rounds=2, mesh=None):
    """Both engines step from the same state each round (so float32 rounding differences of one
    round are compared, not their chaotic growth over many rounds)."""
    exp = build_experiment(config)
    vec = jax.jit(make_round_fn(exp.apply_fn, exp.spec, exp.algorithm, mesh))
    ref = make_loop_round(exp.apply_fn, exp.spec, exp.algorithm)
    hp = hparams_of(config)
    state = initial_state(exp)
    for _ in range(rounds):
        a, ma = vec(state, hp, exp.data)
        b, mb = ref(state, hp, exp.data)
        assert max_diff((a.params, a.model_state), (b.params, b.model_state)) < 1e-5
        state = a
    return a, b, ma, mb


@pytest.mark.parametrize("norm", ["none", "bn", "gn", "ln", "fn"])
def test_vmapped_round_equals_reference_loop(norm):
    a, b, ma, mb = run_both(tiny_config(norm=norm, client_chunk_size=2))
    assert max_diff((a.params, a.model_state), (b.params, b.model_state)) < 1e-5
    assert abs(float(ma["train_loss"]) - float(mb["train_loss"])) < 1e-5
    assert int(a.round) == int(b.round) == 2
    if norm == "bn":
        assert a.model_state and max_diff(a.model_state, initial_state(
            build_experiment(tiny_config(norm="bn"))).model_state) > 0


def test_chunked_equals_unchunked():
    runs = [run_both(tiny_config(norm="ln", client_chunk_size=c, clients_per_round=None), rounds=1)[0]
            for c in (1, 3, 4)]
    for other in runs[1:]:
        assert max_diff(runs[0].params, other.params) < 1e-5


def test_round_is_compiled_once():
    config = tiny_config()
    exp = build_experiment(config)
    round_fn = make_round_fn(exp.apply_fn, exp.spec, exp.algorithm)
    run_rounds = jax.jit(chex.assert_max_traces(make_multi_round_fn(round_fn), n=1))
    state, hp = replicate((initial_state(exp), hparams_of(config)), client_mesh())
    for n in (1, 3, 2):
        state, loss = run_rounds(state, hp, exp.data, jnp.int32(n))
    assert int(state.round) == 6 and np.isfinite(float(loss))


def test_multi_round_equals_single_rounds():
    config = tiny_config()
    exp = build_experiment(config)
    round_fn = make_round_fn(exp.apply_fn, exp.spec, exp.algorithm)
    state, hp = initial_state(exp), hparams_of(config)
    fused, _ = jax.jit(make_multi_round_fn(round_fn))(state, hp, exp.data, jnp.int32(3))
    single = state
    for _ in range(3):
        single, _ = jax.jit(round_fn)(single, hp, exp.data)
    assert max_diff(fused.params, single.params) == 0.0


def test_one_client_full_batch_one_step_is_centralized_sgd():
    config = Config(dataset="synthetic", num_clients=1, partition="iid", local_steps=1,
                    batch_size=400, lr=0.1, norm="ln").validate()
    exp = build_experiment(config)
    n = int(exp.data.counts_C[0])
    assert n == 400  # 40 train examples per class x 10 classes: the batch is the whole client
    state = initial_state(exp)
    new, _ = jax.jit(make_round_fn(exp.apply_fn, exp.spec, exp.algorithm))(
        state, hparams_of(config), exp.data)
    x = exp.data.x.astype(jnp.float32) * exp.spec.pixel_scale

    def loss(params):
        logits, _ = exp.apply_fn(params, state.model_state, x, True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, exp.data.y).mean()

    grads = jax.grad(loss)(state.params)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads)
    assert max_diff(new.params, expected) < 1e-5


def test_batches_are_full_shuffles_of_the_clients_own_examples():
    spec = RoundSpec(num_clients=1, cohort_size=1, local_steps=4, batch_size=4,
                            max_epochs=epochs_needed(10, 4, 4), pixel_scale=1.0,
                            chunk_size=1, momentum=0.0, weight_decay=0.0)
    idx_row = jnp.array(list(range(100, 110)) + [0, 0], jnp.int32)  # 10 examples, padded to 12
    key = jax.random.PRNGKey(3)
    ix = np.asarray(client_batch_indices(key, idx_row, jnp.int32(10), spec))
    assert ix.shape == (4, 4)
    assert set(ix.ravel()) <= set(range(100, 110))
    # 10 // 4 = 2 full batches per epoch: steps (0,1) are one shuffle, (2,3) the next.
    assert len(set(ix[:2].ravel())) == 8 and len(set(ix[2:].ravel())) == 8
    again = np.asarray(client_batch_indices(key, idx_row, jnp.int32(10), spec))
    np.testing.assert_array_equal(ix, again)
    other = np.asarray(client_batch_indices(jax.random.PRNGKey(4), idx_row, jnp.int32(10), spec))
    assert not np.array_equal(ix, other)


def test_client_smaller_than_batch_wraps_around_its_examples():
    spec = RoundSpec(num_clients=1, cohort_size=1, local_steps=2, batch_size=8,
                            max_epochs=epochs_needed(3, 2, 8), pixel_scale=1.0,
                            chunk_size=1, momentum=0.0, weight_decay=0.0)
    idx_row = jnp.array([7, 8, 9, 0, 0], jnp.int32)
    ix = np.asarray(client_batch_indices(jax.random.PRNGKey(0), idx_row, jnp.int32(3), spec))
    assert ix.shape == (2, 8) and set(ix.ravel()) == {7, 8, 9}


def test_client_accuracy_weights_recall_by_client_classes():
    correct = np.array([5.0, 0.0, 10.0])
    total = np.array([10.0, 10.0, 10.0])            # recall 0.5, 0.0, 1.0
    weights = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], np.float32)
    acc = client_accuracy(correct, total, weights)
    assert acc["test_accuracy"] == pytest.approx((0.5 + 0.5) / 2)
    assert acc["test_accuracy_pooled"] == pytest.approx(0.5)
    assert acc["per_class_recall"] == pytest.approx([0.5, 0.0, 1.0])


def test_eval_counts_match_plain_argmax():
    config = tiny_config()
    exp = build_experiment(config)
    state = initial_state(exp)
    evaluate = make_eval_fn(exp.apply_fn, exp.num_classes, exp.spec.pixel_scale, batch_size=7)
    result = jax.jit(evaluate)(state.params, state.model_state, exp.x_test, exp.y_test)
    logits, _ = exp.apply_fn(state.params, state.model_state,
                             exp.x_test.astype(jnp.float32) * exp.spec.pixel_scale, False)
    hits = np.asarray(logits.argmax(-1) == exp.y_test)
    y = np.asarray(exp.y_test)
    np.testing.assert_allclose(result["correct_K"], [hits[y == k].sum() for k in range(10)])
    np.testing.assert_allclose(result["total_K"], np.bincount(y, minlength=10))


@pytest.mark.parametrize("layers", [
    "mean,l2,scale0.5,l2s",              # mean-shift, L2, constant scale, scaled L2
    "lscale,gn2_affine,ln_affine,bn",    # learnable scale, affine GN/LN, BN at the feature
    "bn_affine,bn,mean,bn_affine",       # BN with scale/bias, and without (the reference's)
])
def test_every_primitive_trains_a_round(layers):
    """Each per-layer primitive: a vmapped round equals the reference loop, finite, and its
    learnable variables (if any) move."""
    config = tiny_config(norm_layers=layers, client_chunk_size=2)
    a, _, ma, _ = run_both(config, rounds=1)
    assert np.isfinite(float(ma["train_loss"]))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((a.params, a.model_state)))
    start = initial_state(build_experiment(config)).params
    for name in ("norm0", "norm1", "norm2", "norm3"):
        if name in a.params:
            assert max_diff(a.params[name], start[name]) > 0, name


@pytest.mark.parametrize("norm", ["ln", "fn"])
def test_bfloat16_round_runs_and_stays_close_to_float32(norm):
    """dtype=bfloat16 computes in bf16 through the same round; params stay float32.

    (Not bn here: train-mode BN over 8 examples divides bf16 rounding by a tiny batch std.)"""
    rounds = {}
    for dtype in ("float32", "bfloat16"):
        config = tiny_config(norm=norm, dtype=dtype)
        exp = build_experiment(config)
        state = initial_state(exp)
        new, metrics = jax.jit(make_round_fn(exp.apply_fn, exp.spec, exp.algorithm))(
            state, hparams_of(config), exp.data)
        rounds[dtype] = (state, new, float(metrics["train_loss"]))
    (s32, n32, l32), (s16, n16, l16) = rounds["float32"], rounds["bfloat16"]
    assert max_diff(s32.params, s16.params) == 0.0          # same init
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves((n16.params, n16.model_state)))
    assert np.isfinite(l16) and abs(l16 - l32) < 0.02 * abs(l32)
    # the update (new - old) agrees in direction and size: bf16 keeps ~3 significant digits
    d32 = jnp.concatenate([(a - b).ravel() for a, b in zip(jax.tree.leaves(n32.params), jax.tree.leaves(s32.params))])
    d16 = jnp.concatenate([(a - b).ravel() for a, b in zip(jax.tree.leaves(n16.params), jax.tree.leaves(s16.params))])
    cosine = float(d32 @ d16 / (jnp.linalg.norm(d32) * jnp.linalg.norm(d16)))
    assert cosine > 0.98 and abs(float(jnp.linalg.norm(d16) / jnp.linalg.norm(d32)) - 1) < 0.05


def test_default_chunk_size_per_backend():
    expected = 1 if jax.default_backend() == "cpu" else 25
    assert default_chunk_size(100, 4) == expected
    assert default_chunk_size(100, 8, on_cpu=False) == 13 and default_chunk_size(100, 8, on_cpu=True) == 1


def test_local_momentum_and_weight_decay_round_equals_reference_loop():
    config = tiny_config(norm="ln", momentum=0.9, weight_decay=1e-3, client_chunk_size=2,
                         local_steps=4, lr=0.1)
    a, b, ma, mb = run_both(config)
    assert abs(float(ma["train_loss"]) - float(mb["train_loss"])) < 1e-5
    plain, *_ = run_both(tiny_config(norm="ln", client_chunk_size=2, local_steps=4, lr=0.1))
    assert max_diff(a.params, plain.params) > 1e-4       # momentum and decay were applied


def one_round(exp, spec, hparams):
    round_fn = jax.jit(make_round_fn(exp.apply_fn, spec, exp.algorithm))
    return round_fn(initial_state(exp), hparams, exp.data)[0].params


def test_zero_momentum_and_decay_through_the_trace_and_decay_steps_are_bit_identical():
    """A program holding runs with momentum / weight_decay 0 and > 0 builds the trace and the
    decay step for all; a run with 0 must then be plain SGD, to the bit."""
    config = tiny_config(norm="ln", local_steps=4, lr=0.1)
    exp = build_experiment(config)
    hp = hparams_of(config)
    assert exp.spec.momentum == exp.spec.weight_decay == 0.0
    assert float(hp["momentum"]) == float(hp["weight_decay"]) == 0.0
    plain = one_round(exp, exp.spec, hp)
    traced = one_round(exp, exp.spec._replace(momentum=0.9), hp)        # trace of decay 0
    decayed = one_round(exp, exp.spec._replace(weight_decay=0.1), hp)   # decay step of 0
    assert max_diff(plain, traced) == 0.0 and max_diff(plain, decayed) == 0.0


def test_local_sgd_values_come_from_hparams_else_the_spec():
    exp = build_experiment(tiny_config(norm="ln", local_steps=4, lr=0.1))
    hand_built = {"lr": jnp.float32(0.1), "server_lr": jnp.float32(1.0)}
    spec = exp.spec._replace(momentum=0.5, weight_decay=1e-2)
    from_spec = one_round(exp, spec, hand_built)
    # The spec's values > 0 only ask for the trace and the decay step; hparams' values win.
    from_hparams = one_round(exp, spec._replace(momentum=0.9, weight_decay=1.0), {
        **hand_built, "momentum": jnp.float32(0.5), "weight_decay": jnp.float32(1e-2)})
    assert max_diff(from_spec, from_hparams) < 1e-6
    assert max_diff(from_spec, one_round(exp, exp.spec, hand_built)) > 1e-4


def test_block_stops_at_the_first_round_with_a_non_finite_client_state():
    """FedBN's local layers or SCAFFOLD's variates can blow up while the averaged model stays
    finite: the divergence stop reads the round's report on its cohort's client states too
    (and the loss, params, model state)."""
    def fake_round(state, hparams, data):
        blown = state.round + 1 >= data   # from this round on, a client state is NaN
        client = jnp.where(blown, jnp.nan, 0.0) * jnp.ones(3)
        return state._replace(round=state.round + 1, client_states={"c": client}), \
            {"train_loss": jnp.float32(1.0), "client_states_finite": all_finite(client)}

    state = ServerState(params={"w": jnp.ones(2)}, model_state={}, opt_state=(),
                               client_states={"c": jnp.zeros(3)}, round=jnp.int32(0),
                               key=jnp.zeros(2, jnp.uint32))
    run_block = jax.jit(make_block_fn(fake_round))
    out, loss_sum, bad = run_block(state, {}, jnp.int32(3), jnp.int32(10), jnp.float32(0))
    assert int(bad) == 3 and int(out.round) == 3 and float(loss_sum) == 3.0
    out, loss_sum, bad = run_block(state, {}, jnp.int32(99), jnp.int32(10), jnp.float32(0))
    assert int(bad) == -1 and int(out.round) == 10
    stops_not = jax.jit(make_block_fn(fake_round, stop_at_nonfinite=False))
    assert int(stops_not(state, {}, jnp.int32(3), jnp.int32(10), jnp.float32(0))[0].round) == 10


def test_round_reports_whether_its_cohorts_client_states_are_finite():
    exp = build_experiment(tiny_config(algorithm="scaffold"))
    round_fn = jax.jit(make_round_fn(exp.apply_fn, exp.spec, exp.algorithm))
    state = initial_state(exp)
    _, metrics = round_fn(state, hparams_of(exp.config), exp.data)
    assert bool(metrics["client_states_finite"])
    poisoned = jax.tree.map(lambda c: c.at[:].set(jnp.nan), state.client_states)
    _, metrics = round_fn(state._replace(client_states=poisoned), hparams_of(exp.config), exp.data)
    assert not bool(metrics["client_states_finite"])
