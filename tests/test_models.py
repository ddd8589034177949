"""Fast conv/pool formulations, the three models under every preset, the paper's propositions (docs/method.md#propositions)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from fedln_jax.errors import FedlnError
from fedln_jax.models import (MODEL_NAMES, NORM_PRESETS, auto_conv_choice, build_model, conv2d,
                              feature_dim, max_pool2, num_norm_positions, resolve_conv_impl)
from fedln_jax.models.layers import extract_patches

TOL = dict(rtol=1e-5, atol=1e-5)
SHAPES = {"cnn": (4, 32, 32, 3), "small_cnn": (4, 8, 8, 1), "mlp": (4, 8, 8, 1)}  # shared shapes:
# eager ops compiled for one test are reused by the others
# The bias-free models; the ResNets (head with bias) have their own tests in test_resnet.py.
BIAS_FREE = tuple(SHAPES)
assert set(BIAS_FREE) | {"resnet18", "resnet18_tiny"} == set(MODEL_NAMES)


def _x(shape, seed=0):
    return jax.random.uniform(jax.random.key(seed), shape, jnp.float32)


def _close(a, b, **kw):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **(kw or TOL))


# Compile with XLA's backend optimizations off: on this CPU that cuts compile time of a
# model ~4x (e.g. cnn init 1.6 s -> 0.4 s), and eager op-by-op dispatch was slower still.
_O0 = {"xla_backend_optimization_level": 0}


def _jit(f, **kw):
    return jax.jit(f, compiler_options=_O0, **kw)


def _init(model, x, seed=1):
    return _jit(model.init, static_argnames="train")(jax.random.key(seed), x, train=False)


def _apply(model, variables, x, **kw):
    return _jit(model.apply, static_argnames=("train", "return_features", "mutable"))(
        variables, x, **kw)


# ---- layers ----

CONV_CASES = [  # (input NHWC, kernel HWIO, padding)
    ((2, 7, 6, 3), (3, 3, 3, 4), "VALID"),
    ((2, 7, 6, 3), (3, 3, 3, 4), "SAME"),
    ((1, 9, 8, 2), (5, 5, 2, 3), "VALID"),
    ((2, 6, 5, 2), (2, 4, 2, 3), "SAME"),  # even kernel: asymmetric SAME padding
]


def _conv_value_and_grads(padding):
    """Values and gradients (wrt input and kernel) of both impls, in one compiled function."""
    def one(impl):
        f = lambda x, k: jnp.sum(jnp.sin(conv2d(x, k, padding, impl)))
        return lambda x, k: (conv2d(x, k, padding, impl), jax.grad(f, argnums=(0, 1))(x, k))
    return lambda x, k: (one("patches")(x, k), one("lax")(x, k))


@pytest.mark.parametrize("xs,ks,padding", CONV_CASES)
def test_patches_conv_matches_lax(xs, ks, padding):
    x, k = _x(xs), jax.random.normal(jax.random.key(1), ks)
    mine, ref = _jit(_conv_value_and_grads(padding))(x, k)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref)):
        _close(a, b)


STRIDED_CASES = [  # (input NHWC, kernel HWIO, padding, stride): ResNet's downsampling convs
    ((2, 8, 8, 3), (3, 3, 3, 4), 1, 2),        # 3x3 stride 2, torch-style padding 1
    ((2, 7, 6, 3), (3, 3, 3, 4), 1, 2),        # odd sizes
    ((2, 8, 8, 3), (1, 1, 3, 5), 0, 2),        # 1x1 projection shortcut
    ((2, 7, 9, 2), (3, 3, 2, 3), "SAME", 2),   # XLA SAME with stride: asymmetric pads
    ((1, 9, 8, 2), (3, 2, 2, 3), "VALID", 3),
    ((2, 6, 6, 2), (3, 3, 2, 3), 1, 1),        # int padding, stride 1
]


@pytest.mark.parametrize("xs,ks,padding,stride", STRIDED_CASES)
def test_strided_patches_conv_matches_lax(xs, ks, padding, stride):
    x, k = _x(xs), jax.random.normal(jax.random.key(1), ks)

    def both(x, k):
        out = []
        for impl in ("patches", "lax"):
            f = lambda x, k: jnp.sum(jnp.sin(conv2d(x, k, padding, impl, stride)))
            out.append((conv2d(x, k, padding, impl, stride), jax.grad(f, argnums=(0, 1))(x, k)))
        return out

    mine, ref = _jit(both)(x, k)
    assert mine[0].shape == ref[0].shape
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref)):
        _close(a, b)


def test_strided_patches_methods_agree():
    x = _x((2, 7, 6, 3))
    f = _jit(lambda x: [[extract_patches(x, 3, 3, p, m, stride=2) for m in ("slices", "lax")]
                        for p in ("VALID", "SAME", 1)])
    for a, b in f(x):
        _close(a, b)


def test_patches_conv_matches_lax_vmapped_over_clients():
    clients = 3
    x = _x((clients, 2, 6, 6, 2))
    k = jax.random.normal(jax.random.key(1), (clients, 3, 3, 2, 4))

    def both(x, k):
        return [jax.vmap(_conv_value_and_grads(p))(x, k) for p in ("VALID", "SAME")]

    for mine, ref in _jit(both)(x, k):
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref)):
            _close(a, b)


def test_patches_methods_agree():
    x = _x((2, 6, 5, 3))
    f = _jit(lambda x: [[extract_patches(x, 3, 2, p, m) for m in ("slices", "lax")]
                        for p in ("VALID", "SAME")])
    for a, b in f(x):
        _close(a, b)


def _pool_value_and_grad(f):
    def loss(x):
        y = f(x)
        return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape))
    return lambda x: (f(x), jax.grad(loss)(x))


@pytest.mark.parametrize("shape", [(2, 6, 8, 3), (1, 5, 7, 2)])  # odd sizes: floor, like VALID
def test_reshape_pool_matches_max_pool(shape):
    x, xc = _x(shape), _x((3,) + shape)  # xc: with a leading clients axis, vmapped
    ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    impls = [lambda x: max_pool2(x, "reshape"), lambda x: max_pool2(x, "lax"), ref]

    def run(x, xc):
        return ([_pool_value_and_grad(f)(x) for f in impls],
                [jax.vmap(_pool_value_and_grad(f))(xc) for f in impls])

    plain, vmapped = _jit(run)(x, xc)
    for outs in (plain, vmapped):
        for got in outs[:2]:
            for a, b in zip(got, outs[2]):
                _close(a, b)


def test_auto_impl():
    # On the CPU, auto's pick depends on PyTorch (tests/test_conv_torch.py has the rule).
    conv, _ = auto_conv_choice()
    expected = (conv, "reshape") if jax.default_backend() == "cpu" else ("lax", "lax")
    assert resolve_conv_impl("auto") == expected
    assert resolve_conv_impl("patches") == ("patches", "reshape")
    with pytest.raises(FedlnError):
        resolve_conv_impl("cudnn")


# ---- models ----
# Each test compiles ONE function (init + every apply it needs): compiling is what costs here.

def _run(models, x, seed=1, train=False, **kw):
    """Init models[0], apply every model to the same variables; returns (variables, outputs)."""
    def f(x):
        v = models[0].init(jax.random.key(seed), x, train=False)
        return v, [m.apply(v, x, train=train, **kw) for m in models]
    return _jit(f)(x)


@pytest.mark.parametrize("name", BIAS_FREE)
@pytest.mark.parametrize("norm", NORM_PRESETS)
def test_model_preset_forward(name, norm):
    x = _x(SHAPES[name])
    model = build_model(name, norm, 5)

    def f(x):
        v = model.init(jax.random.key(1), x, train=False)
        logits = model.apply(v, x, train=False)
        if norm == "bn":
            return v, logits, model.apply(v, x, train=True, mutable=["batch_stats"])
        return v, logits, (model.apply(v, x, train=True), {})

    v, logits, (logits_t, new) = _jit(f)(x)
    assert v["params"]["head"]["kernel"].shape == (feature_dim(name), 5)
    assert logits.shape == (x.shape[0], 5) and np.all(np.isfinite(logits))
    assert logits_t.shape == logits.shape and np.all(np.isfinite(logits_t))
    if norm == "bn":
        assert len(v["batch_stats"]) == num_norm_positions(name)
        changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), v["batch_stats"], new["batch_stats"])
        assert all(jax.tree.leaves(changed))
        assert not np.allclose(logits_t, logits)  # batch stats, not running stats, in train mode
    else:
        assert "batch_stats" not in v
        _close(logits_t, logits)  # no train/eval difference without BN (and no dropout)


def test_no_biases_and_cnn_param_count():
    x = _x(SHAPES["cnn"])
    v = jax.eval_shape(build_model("cnn", "none", 10).init, jax.random.key(0), x)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(v["params"])]
    assert all(p.endswith("['kernel']") for p in paths), paths
    n = sum(p.size for p in jax.tree.leaves(v["params"]))
    # 5*5*3*64 + 5*5*64*64 + 1600*384 + 384*192 + 192*10
    assert n == 797_248


@pytest.mark.parametrize("name,norm", [("cnn", "ln"), ("small_cnn", "bn")])
def test_conv_impls_give_equal_logits(name, norm):
    x = _x(SHAPES[name])
    fast = build_model(name, norm, 4, conv_impl="patches")
    ref = build_model(name, norm, 4, conv_impl="lax")
    _, (a, b) = _run([fast, ref], x)
    _close(a, b, rtol=1e-5, atol=1e-5)  # logits are O(1); float reassociation only
    if norm == "bn":
        # batch statistics of 4 examples amplify float reassociation; compare on logit scale
        _, ((a, sa), (b, sb)) = _run([fast, ref], x, train=True, mutable=["batch_stats"])
        _close(a, b, rtol=1e-5, atol=2e-5)
        for p, q in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
            _close(p, q, rtol=1e-5, atol=1e-6)


def test_small_cnn_any_size_divisible_by_4():
    x = _x((2, 12, 16, 1))
    _, (logits,) = _run([build_model("small_cnn", "fn", 3)], x)
    assert logits.shape == (2, 3) and np.all(np.isfinite(logits))


def test_tau_divides_logits():
    x = _x(SHAPES["mlp"])
    _, (a, b) = _run([build_model("mlp", "none", 4), build_model("mlp", "none", 4, tau=2.0)], x)
    _close(b, a / 2.0)


def test_norm_position_before():
    x = _x(SHAPES["small_cnn"])
    after = build_model("small_cnn", "ln", 4)
    before = build_model("small_cnn", "ln", 4, norm_position="before")
    _, ((a, _), (b, phi)) = _run([after, before], x, return_features=True)
    assert np.all(np.isfinite(b)) and not np.allclose(a, b)
    assert np.all(phi >= 0)  # ReLU comes last


@pytest.mark.parametrize("name", BIAS_FREE)
def test_fn_feature_norm_and_no_extra_expressive_power(name):
    """||phi|| = sqrt(d) exactly; and with a bias-free head, argmax(W phi/||phi||) = argmax(W phi)."""
    x = _x(SHAPES[name], seed=3)
    vanilla, fn = build_model(name, "none", 10), build_model(name, "fn", 10)
    _, ((a, _), (b, phi)) = _run([vanilla, fn], x, return_features=True)
    d = feature_dim(name)
    assert phi.shape == (x.shape[0], d)
    _close(jnp.linalg.norm(phi, axis=-1), np.full(x.shape[0], math.sqrt(d)), rtol=1e-5, atol=0)
    np.testing.assert_array_equal(np.argmax(a, -1), np.argmax(b, -1))


@pytest.mark.parametrize("name", ["small_cnn", "mlp"])
def test_ln_feature_mean0_std1(name):
    x = _x(SHAPES[name])
    _, ((_, phi),) = _run([build_model(name, "ln", 4)], x, return_features=True)
    _close(phi.mean(-1), np.zeros(x.shape[0]), atol=1e-5, rtol=0)
    # eps=1e-5 inside the sqrt makes std slightly below 1
    _close(phi.std(-1), np.ones(x.shape[0]), atol=1e-3, rtol=0)


@pytest.mark.parametrize("layers,param_leaf", [
    ("lscale,lscale,lscale,lscale", "scale"),
    ("ln_affine,ln_affine,ln_affine,ln_affine", "bias"),
])
def test_learnable_normalizers_get_gradients(layers, param_leaf):
    x = _x(SHAPES["small_cnn"])
    y = jnp.array([0, 1, 2, 3])
    model = build_model("small_cnn", "none", 4, norm_layers=layers)

    def f(x):
        def loss(params):
            logits = model.apply({"params": params}, x, train=True)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), y])
        v = model.init(jax.random.key(1), x, train=False)
        return jax.grad(loss)(v["params"])

    g = _jit(f)(x)
    for j in range(4):
        gj = g[f"norm{j}"][param_leaf]
        assert np.all(np.isfinite(gj)) and np.any(gj != 0), (j, gj)


# ---- the paper's propositions (docs/method.md#propositions) ----

@pytest.mark.parametrize("name,position", [("cnn", "after"), ("small_cnn", "after"),
                                           ("small_cnn", "before")])
def test_reduced_fn(name, position):
    """Bias-free ReLU/max-pool net is positively homogeneous: per-layer L2 only rescales phi."""
    x = _x(SHAPES[name])
    full = build_model(name, "none", 6, norm_layers="l2,l2,l2,l2s", norm_position=position)
    reduced = build_model(name, "fn", 6, norm_position=position)
    _, (a, b) = _run([reduced, full], x)
    assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b))


@pytest.mark.parametrize("name", ["cnn", "small_cnn"])
def test_reduced_ln(name):
    """LN at every layer == mean-shift at hidden layers + LN at the feature, up to eps.

    LN(h) = mean_shift(h) / sqrt(var(h) + eps): the division is a positive per-example scale
    that the bias-free, positively homogeneous layers after it carry through and the final
    LN removes. Only eps breaks this: the final LN divides by sqrt(c^2 var + eps) instead of
    c sqrt(var + eps'), a relative change of order eps / var at each layer. With activations
    of order 1e-2..1 that is up to ~1e-3, hence the loose tolerance (relative to the logit scale).
    Under the torch init (weights ~1.7x smaller per layer) the variances reach the order of eps
    and the gap grows to ~5%: the algebra is checked at the lecun scale.
    """
    x = _x(SHAPES[name])
    full = build_model(name, "ln", 6, init="lecun")
    reduced = build_model(name, "none", 6, norm_layers="mean,mean,mean,ln", init="lecun")
    _, (a, b) = _run([full, reduced], x)
    assert np.max(np.abs(a - b)) <= 1e-3 * np.max(np.abs(a))


# ---- bad input ----

@pytest.mark.parametrize("args,kwargs", [
    (("resnet50", "none", 10), {}),
    (("cnn", "batchnorm", 10), {}),
    (("cnn", "gn", 10), {"gn_groups": 5}),              # 5 does not divide 64
    (("small_cnn", "none", 10), {"norm_layers": "gn3,none,none,none"}),  # 3 does not divide 16
    (("cnn", "none", 10), {"norm_layers": "ln,ln"}),    # wrong length
    (("mlp", "none", 10), {"norm_layers": "ln,ln,ln,ln"}),
    (("cnn", "none", 10), {"norm_layers": "ln,ln,ln,foo"}),
    (("cnn", "none", 10), {"norm_layers": "ln,ln,ln,scaleabc"}),
    (("cnn", "none", 10), {"norm_position": "middle"}),
    (("cnn", "none", 10), {"conv_impl": "cudnn"}),
    (("cnn", "none", 0), {}),
])
def test_bad_input_raises(args, kwargs):
    with pytest.raises(FedlnError) as e:
        build_model(*args, **kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs", [{"gn_groups": 0}, {"tau": 0.0}, {"tau": "hot"}])
def test_values_config_checks_are_programmer_errors_in_the_library(kwargs):
    # The user's gn_groups and tau are checked once, in Config.validate (tests/test_config.py)
    with pytest.raises(ValueError):
        build_model("cnn", "gn" if "gn_groups" in kwargs else "none", 10, **kwargs)


def _one_class_gd_trajectory(norm, steps=60, lr=0.05):
    """Full-batch GD on one-class data (every label 0), as a one-class client's local training.

    Returns per step: mean ||phi|| over the batch, ||w_c|| for every class, and the largest
    logit gap max_i,j |z_i - z_j| over the batch, with the params before each step.
    """
    x = _x((16, 8, 8, 1), seed=5)
    y = jnp.zeros((16,), jnp.int32)
    model = build_model("mlp", norm, 4)

    def f(x):
        params = model.init(jax.random.key(2), x)["params"]

        def loss(p):
            logits = model.apply({"params": p}, x)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(16), y])

        def step(p, _):
            logits, phi = model.apply({"params": p}, x, return_features=True)
            stats = (jnp.linalg.norm(phi, axis=-1).mean(),
                     jnp.linalg.norm(p["head"]["kernel"], axis=0),
                     jnp.max(logits.max(-1) - logits.min(-1)))
            p = jax.tree.map(lambda a, g: a - lr * g, p, jax.grad(loss)(p))
            return p, stats

        return jax.lax.scan(step, params, None, length=steps)[1]

    return jax.device_get(_jit(f)(x))


def test_divergent_norms_on_one_class_data():
    """Proposition (docs/method.md#propositions): on one-class data vanilla GD grows the class's feature norm and ||w_c||
    step after step; under FN ||phi|| stays sqrt(d) and only the head grows, and every logit
    gap stays below 2 sqrt(d) max_k ||w_k||."""
    d = feature_dim("mlp")
    phi_v, w_v, _ = _one_class_gd_trajectory("none")
    phi_f, w_f, gap_f = _one_class_gd_trajectory("fn")
    checkpoints = [0, 10, 20, 40, 59]
    assert np.all(np.diff(phi_v[checkpoints]) > 0), phi_v[checkpoints]      # feature norm grows
    assert np.all(np.diff(w_v[checkpoints, 0]) > 0), w_v[checkpoints, 0]    # ||w_0|| grows
    # measured: ||phi|| 2.38 -> 6.09, ||w_0|| 1.022 -> 1.208 (the loss flattens, so the growth
    # slows down, like the logarithmic norm growth of separable logistic regression)
    assert phi_v[-1] > 2 * phi_v[0] and w_v[-1, 0] > 1.1 * w_v[0, 0]
    _close(phi_f, np.full_like(phi_f, math.sqrt(d)), rtol=1e-5, atol=0)    # FN: fixed norm
    assert np.all(np.diff(w_f[checkpoints, 0]) > 0)                        # only the head grows
    # |z_i - z_j| = |(w_i - w_j) . phi| <= 2 max_k ||w_k|| ||phi|| = 2 sqrt(d) max_k ||w_k||
    assert np.all(gap_f <= 2 * math.sqrt(d) * w_f.max(-1) * (1 + 1e-6))


@pytest.mark.parametrize("name,norm", [("cnn", "fn"), ("small_cnn", "bn"), ("mlp", "ln")])
def test_bfloat16_compute_float32_params_and_logits(name, norm):
    x = _x(SHAPES[name])
    f32, bf16 = build_model(name, norm, 4), build_model(name, norm, 4, dtype="bfloat16")
    v, (a, b) = _run([f32, bf16], x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v))
    assert a.dtype == b.dtype == jnp.float32
    assert np.max(np.abs(a - b)) <= 0.05 * np.max(np.abs(a))
    with pytest.raises(FedlnError):
        build_model(name, norm, 4, dtype="float16")


# ---- initialization ----

@pytest.mark.parametrize("init,bound_factor,std_factor", [("torch", 1.0, 3 ** -0.5),
                                                          ("lecun", None, 1.0)])
def test_init_scales_every_kernel_by_its_fan_in(init, bound_factor, std_factor):
    """torch: U(+-1/sqrt(fan_in)) (PyTorch's kaiming_uniform with a = sqrt(5)), std
    1/sqrt(3 fan_in); lecun: a truncated normal of std 1/sqrt(fan_in). fan_in = kh*kw*cin."""
    model = build_model("cnn", "none", 10, init=init)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    for name, leaf in [("conv0", params["conv0"]["kernel"]), ("conv1", params["conv1"]["kernel"]),
                       ("dense0", params["dense0"]["kernel"]), ("head", params["head"]["kernel"])]:
        fan_in = int(np.prod(leaf.shape[:-1]))
        w = np.asarray(leaf)
        if bound_factor is not None:
            assert np.abs(w).max() <= bound_factor / np.sqrt(fan_in) + 1e-7, name
        assert np.std(w) == pytest.approx(std_factor / np.sqrt(fan_in), rel=0.1), name


def test_unknown_init_is_refused():
    with pytest.raises(FedlnError, match="unknown init"):
        build_model("cnn", "none", 10, init="xavier")


def test_a_run_from_before_the_init_key_keeps_lecun():
    from fedln_jax.config import Config, with_defaults
    old = {k: v for k, v in Config().to_dict().items() if k != "init"}
    assert with_defaults(old)["init"] == "lecun"
    assert Config().init == "torch"
