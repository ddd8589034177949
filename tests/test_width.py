"""Model width as config keys (conv_features, dense_features): shapes, FLOPs, validation,
program grouping, and old config.json files without the keys."""
import json

import jax
import jax.numpy as jnp
import pytest

from fedln_jax.config import Config, with_defaults
from fedln_jax.errors import FedlnError
from fedln_jax.models import build_model, feature_dim, forward_macs, model_widths
from fedln_jax.training.program import program_key
from fedln_jax.training.workdir import compare_configs


def _param_shapes(model, shape):
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    return jax.tree.map(lambda a: a.shape, variables["params"])


def test_widths_set_the_parameter_shapes_of_the_cnn_and_the_mlp():
    cnn = build_model("small_cnn", "ln", 10, conv_features="8/12", dense_features="20/6")
    shapes = _param_shapes(cnn, (1, 8, 8, 1))
    assert shapes["conv0"]["kernel"] == (3, 3, 1, 8)
    assert shapes["conv1"]["kernel"] == (3, 3, 8, 12)
    assert shapes["dense0"]["kernel"] == (2 * 2 * 12, 20)
    assert shapes["dense1"]["kernel"] == (20, 6) and shapes["head"]["kernel"] == (6, 10)
    mlp = build_model("mlp", "fn", 10, dense_features=(30, 7))
    assert _param_shapes(mlp, (1, 8, 8, 1))["head"]["kernel"] == (7, 10)
    assert feature_dim("mlp", "30/7") == 7 and feature_dim("small_cnn") == 64
    # "" and the model's own widths build the same model
    assert _param_shapes(build_model("small_cnn", "none", 10, conv_features="16/32"),
                         (1, 8, 8, 1)) == _param_shapes(build_model("small_cnn", "none", 10),
                                                        (1, 8, 8, 1))


def test_flops_follow_the_widths():
    # 8x8x1, 3x3 SAME: conv 1->8 on 8x8, pool 4x4, conv 8->12 on 4x4, pool 2x2 (48),
    # dense 48->20->6, head 6->10.
    by_hand = 8 * 8 * 8 * 9 + 4 * 4 * 12 * 9 * 8 + 48 * 20 + 20 * 6 + 6 * 10
    assert forward_macs("small_cnn", (8, 8, 1), 10, "8/12", "20/6") == by_hand
    assert forward_macs("mlp", (8, 8, 1), 10, dense_features="30,7") == 64 * 30 + 30 * 7 + 7 * 10


@pytest.mark.parametrize("changes, fragment", [
    (dict(conv_features="0/32"), "every width must be >= 1, got 0"),
    (dict(conv_features="-8/32"), "every width must be >= 1, got -8"),
    (dict(dense_features="12.5/8"), "every width must be a positive integer, got '12.5'"),
    (dict(dense_features="a/8"), "every width must be a positive integer"),
    (dict(conv_features="16"), "has 1 entries; this model has 2"),
    (dict(model="mlp", dense_features="8/8/8"), "has 3 entries"),
    (dict(model="mlp", conv_features="8/8"), "conv_features applies to model cnn, small_cnn only"),
    (dict(model="resnet18_tiny", dense_features="8/8"), "dense_features applies to model"),
])
def test_bad_widths_are_refused_by_validate(changes, fragment):
    with pytest.raises(FedlnError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        Config(**changes).validate()


def test_model_widths_are_the_norm_positions_widths():
    assert model_widths("small_cnn") == (16, 32, 128, 64)
    assert model_widths("cnn", "32/64", "") == (32, 64, 384, 192)
    assert model_widths("small_cnn", "8,16") == (8, 16, 128, 64)   # comma works outside a sweep grid


def test_runs_of_different_widths_are_separate_programs():
    narrow, wide = Config(conv_features="8/16"), Config(conv_features="32/64")
    assert program_key(narrow) != program_key(wide)
    assert program_key(narrow) == program_key(narrow.replace(seed=3))


def test_a_config_json_from_before_the_width_keys_still_resumes():
    old = Config(norm="fn").to_dict()
    del old["conv_features"], old["dense_features"]
    compare_configs(json.loads(json.dumps(old)), Config(norm="fn"), "workdir")   # no error
    assert with_defaults(old) == Config(norm="fn").to_dict()
    with pytest.raises(FedlnError, match="conv_features"):
        compare_configs(old, Config(norm="fn", conv_features="8/16"), "workdir")

