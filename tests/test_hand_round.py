"""One FedAvg round computed entirely by hand in numpy, against the package's vectorized round
and its reference loop: an oracle that shares no client or server code with either.

The problem: the package's MLP with two hidden layers of 3 ReLU units each (no biases, no
norm), 2 inputs, 3 classes; 2 clients holding 3 and 6 examples, batch_size 6, 2 local steps, lr 0.5,
full participation. With batch_size 6 every step's batch is the whole client, in some order
(the 3-example client's batch holds each of its examples twice), so each local step is one
full-batch gradient step whatever the shuffles, and the round is fixed by the data alone.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedln_jax.algorithms import get_algorithm
from fedln_jax.engine.client import make_apply_fn
from fedln_jax.engine.reference import make_loop_round
from fedln_jax.engine.round import make_round_fn
from fedln_jax.engine.state import RoundSpec, init_state, make_data
from fedln_jax.models import build_model

X = np.array([[1, 0], [0, 2], [1, 1],                                  # client 0
              [2, 1], [0, 1], [3, 0], [1, 2], [2, 2], [0, 3]], np.uint8)  # client 1
Y = np.array([0, 1, 0,
              2, 1, 0, 2, 1, 2], np.int32)
CLIENTS = [np.arange(0, 3), np.arange(3, 9)]
KERNELS = {                                          # [inputs, outputs] each, as flax keeps them
    "dense0": np.array([[0.5, -0.3, 0.2],
                        [-0.1, 0.4, 0.3]], np.float32),
    "dense1": np.array([[0.6, 0.1, -0.2],
                        [-0.3, 0.5, 0.4],
                        [0.2, 0.3, 0.7]], np.float32),
    "head": np.array([[0.2, -0.1, 0.3],
                      [-0.4, 0.5, 0.1],
                      [0.3, 0.2, -0.2]], np.float32),
}
LAYERS = ("dense0", "dense1", "head")
LR, STEPS = 0.5, 2


def hand_sgd_step(ws, x, y):
    """Loss and one SGD step on the mean softmax cross-entropy of the batch, gradients written
    out: a_0 = x, a_k = relu(a_(k-1) W_k) for the hidden layers, logits = a_2 W_head;
    dlogits = (softmax - onehot) / B, backpropagated layer by layer by hand."""
    b = len(x)
    acts, pres = [x], []
    for w in ws[:-1]:
        pres.append(acts[-1] @ w)
        assert np.abs(pres[-1]).min() > 1e-2     # away from the ReLU's kink: a unique gradient
        acts.append(np.maximum(pres[-1], 0.0))
    logits = acts[-1] @ ws[-1]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(b), y]))
    delta = (p - np.eye(ws[-1].shape[1])[y]) / b      # d loss / d logits
    grads = [None] * len(ws)
    grads[-1] = acts[-1].T @ delta
    for k in range(len(ws) - 2, -1, -1):             # back through hidden layer k
        delta = (delta @ ws[k + 1].T) * (pres[k] > 0)
        grads[k] = acts[k].T @ delta
    return loss, [w - LR * g for w, g in zip(ws, grads)]


def hand_fedavg_round():
    """Each client: STEPS full-batch SGD steps from KERNELS; the server: the mean of the client
    models weighted by their example counts (3 and 6), and of their mean losses."""
    models, losses, weights = [], [], []
    for ix in CLIENTS:
        x, y = X[ix].astype(np.float64), Y[ix]
        ws = [KERNELS[name].astype(np.float64) for name in LAYERS]
        step_losses = []
        for _ in range(STEPS):
            loss, ws = hand_sgd_step(ws, x, y)
            step_losses.append(loss)
        models.append(ws)
        losses.append(np.mean(step_losses))
        weights.append(len(ix))
    w = np.array(weights, np.float64) / sum(weights)
    mean = {name: w[0] * models[0][k] + w[1] * models[1][k] for k, name in enumerate(LAYERS)}
    return mean, float(np.dot(w, losses)), models


def package_round():
    model = build_model("mlp", "none", 3, dense_features=(3, 3))
    algorithm = get_algorithm("fedavg")
    spec = RoundSpec(num_clients=2, cohort_size=2, local_steps=STEPS, batch_size=6,
                     max_epochs=STEPS, pixel_scale=1.0, chunk_size=2, momentum=0.0,
                     weight_decay=0.0)
    hparams = {"lr": jnp.float32(LR), "server_lr": jnp.float32(1.0)}
    data = make_data(X.reshape(9, 1, 2, 1), Y, CLIENTS, num_classes=3)
    state = init_state(model, jnp.zeros((1, 1, 2, 1)), 0, algorithm, hparams=hparams,
                       num_clients=2)
    assert jax.tree.map(jnp.shape, state.params) == {
        name: {"kernel": k.shape} for name, k in KERNELS.items()}
    assert state.model_state == {}
    state = state._replace(params={name: {"kernel": jnp.asarray(k)} for name, k in KERNELS.items()})
    apply_fn = make_apply_fn(model)
    vectorized = jax.jit(make_round_fn(apply_fn, spec, algorithm))(state, hparams, data)
    loop = make_loop_round(apply_fn, spec, algorithm)(state, hparams, data)
    return vectorized, loop


@pytest.fixture(scope="module")
def rounds():
    return hand_fedavg_round(), package_round()


def test_hand_round_moves_the_model(rounds):
    (mean, _, models), _ = rounds
    # the check below is not trivial: every layer moves, and the two clients disagree
    for k, name in enumerate(LAYERS):
        assert np.abs(mean[name] - KERNELS[name]).max() > 1e-2
        assert np.abs(models[0][k] - models[1][k]).max() > 1e-2


@pytest.mark.parametrize("engine", ["vectorized", "loop"])
def test_one_fedavg_round_equals_the_hand_computation(rounds, engine):
    (mean, loss, _), (vectorized, loop) = rounds
    state, metrics = vectorized if engine == "vectorized" else loop
    for name in LAYERS:
        np.testing.assert_allclose(np.asarray(state.params[name]["kernel"]), mean[name],
                                   atol=2e-6, err_msg=name)
    assert float(metrics["train_loss"]) == pytest.approx(loss, abs=2e-6)
    assert int(state.round) == 1
