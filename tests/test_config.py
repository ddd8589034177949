import pytest

from fedln_jax.config import Config, build_config, load_config_file, parse_overrides
from fedln_jax.errors import FedlnError


def test_overrides_are_typed_by_field():
    out = parse_overrides(["lr=0.1", "rounds=5", "norm=fn", "clients_per_round=all",
                           "num_clients=20"])
    assert out == {"lr": 0.1, "rounds": 5, "norm": "fn", "clients_per_round": None,
                   "num_clients": 20}
    assert isinstance(out["lr"], float) and isinstance(out["rounds"], int)


@pytest.mark.parametrize("items, fragment", [
    (["bogus=1"], "unknown config key 'bogus'"),
    (["rounds=ten"], "rounds must be of type int"),
    (["lr"], "KEY=VALUE"),
])
def test_bad_overrides(items, fragment):
    with pytest.raises(FedlnError, match=fragment):
        parse_overrides(items)


@pytest.mark.parametrize("changes, fragment", [
    ({"dataset": "mnist"}, "dataset='mnist' is not one of"),
    ({"model": "vgg"}, "model='vgg'"),
    ({"norm": "xn"}, "norm='xn'"),
    ({"partition": "shards"}, "partition='shards'"),
    ({"num_clients": 0}, "num_clients must be >= 1"),
    ({"clients_per_round": 11}, "clients_per_round must be in 1..num_clients=10"),
    ({"clients_per_round": 0}, "clients_per_round must be in 1..num_clients=10"),
    ({"classes_per_client": 0}, "classes_per_client must be >= 1"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"lr": -1.0}, "lr must be > 0"),
    ({"local_steps": 0}, "local_steps must be >= 1"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"rounds": 0}, "rounds must be >= 1"),
    ({"dirichlet_beta": 0.0}, "dirichlet_beta must be > 0"),
    ({"rounds": 2.5}, "rounds must be of type int"),
])
def test_validate_names_the_problem(changes, fragment):
    with pytest.raises(FedlnError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        Config().replace(**changes).validate()


def test_config_file_then_overrides(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text("from fedln_jax import Config\n"
                    "def get_config():\n    return Config(norm='ln', rounds=7)\n")
    config = build_config(str(path), ["rounds=9"])
    assert (config.norm, config.rounds) == ("ln", 9)
    dict_file = tmp_path / "d.py"
    dict_file.write_text("def get_config():\n    return {'lr': 0.5}\n")
    assert load_config_file(str(dict_file)).lr == 0.5


def test_config_file_errors(tmp_path):
    with pytest.raises(FedlnError, match="does not exist"):
        load_config_file(str(tmp_path / "nope.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(FedlnError, match="no get_config"):
        load_config_file(str(bad))


def test_default_model_per_dataset():
    assert Config(dataset="digits").resolved_model == "small_cnn"
    assert Config(dataset="cifar10").resolved_model == "cnn"
    assert Config(dataset="cifar10", model="mlp").resolved_model == "mlp"


def test_every_experiment_config_loads_and_validates():
    import glob
    import os
    root = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs")
    files = sorted(glob.glob(os.path.join(root, "*.py")))
    assert files
    for path in files:
        load_config_file(path).validate()


def test_validate_refuses_bad_normalizers_before_the_model_is_built(monkeypatch):
    """norm_layers (and a gn preset whose groups do not divide a width) is checked by
    validate, naming the key and what it allows; nothing is built to find out."""
    import fedln_jax.models as models

    monkeypatch.setattr(models, "build_model", lambda *a, **k: pytest.fail("built a model"))
    with pytest.raises(FedlnError, match=r"norm_layers='mean,ln' does not fit model small_cnn.*"
                                         r"takes 4 comma-separated normalizers, each one of none"):
        Config(norm_layers="mean,ln").validate()
    with pytest.raises(FedlnError, match="norm_layers='ln,ln,ln' does not fit model mlp"):
        Config(model="mlp", norm_layers="ln,ln,ln").validate()
    with pytest.raises(FedlnError, match="gn_groups=5 does not fit model small_cnn"):
        Config(norm="gn", gn_groups=5).validate()
    assert Config(norm_layers=" Mean, mean,mean ,LN").validate().norm_layers


def test_the_norm_label_says_what_normalizes_the_run():
    assert Config(norm="fn").norm_label == "fn"
    assert Config(norm="ln", norm_layers=" Mean, mean,mean ,LN").norm_label == "mean,mean,mean,ln"
    assert Config(norm="ln", norm_layers="  ").norm_label == "ln"


def _past_the_bounds(key):
    """Values just outside a key's numeric bounds (a bound naming another key is left out)."""
    from fedln_jax.config_keys import key_type, spec
    s, base = spec(key), key_type(key)[0]
    step = 1 if base is int else 0.5
    out = [s.above, s.below]
    if isinstance(s.at_least, (int, float)):
        out.append(s.at_least - step)
    if isinstance(s.at_most, (int, float)):
        out.append(s.at_most + step)
    return [base(v) for v in out if v is not None]


def test_validate_checks_every_key_by_its_declaration():
    """A value of the wrong type for any key, and a value just past any declared bound, is
    refused naming the key."""
    from fedln_jax.config_keys import config_keys
    checked = 0
    for key in config_keys():
        with pytest.raises(FedlnError, match=f"{key} must be of type"):
            Config().replace(**{key: object()}).validate()
        for value in _past_the_bounds(key):
            with pytest.raises(FedlnError, match=key):
                Config().replace(**{key: value}).validate()
            checked += 1
    assert checked >= 40


def test_value_and_resumable_keys_are_declared_on_the_fields():
    from fedln_jax.algorithms import OWNED_HPARAMS
    from fedln_jax.config import resumable_keys, value_keys

    assert set(value_keys()) == {"seed", "lr", "server_lr", "dirichlet_beta", "momentum",
                                 "weight_decay", *OWNED_HPARAMS}
    assert set(OWNED_HPARAMS) == {"prox_mu", "server_momentum", "server_beta1", "server_beta2",
                                  "server_tau", "fedlc_tau", "fedrs_alpha", "feddecorr_coef"}
    assert set(resumable_keys()) == {"checkpoint_every", "keep_checkpoints",
                                     "client_chunk_size", "num_devices", "tensorboard"}


def test_a_config_json_from_before_a_key_gets_its_declared_legacy_value():
    """`init` came later and its default (torch) is not the behaviour before it (lecun)."""
    from fedln_jax.config import from_dict, with_defaults
    old = Config(norm="ln").to_dict()
    del old["init"], old["tensorboard"]
    filled = with_defaults(old)
    assert filled["init"] == "lecun" and filled["tensorboard"] is False
    assert from_dict(filled).validate() == Config(norm="ln", init="lecun")


def test_a_config_json_from_before_the_baseline_defaults_changed():
    """prox_mu 1.0 -> 0.01 and feddecorr_coef 0.1 -> 0.5 (docs/algorithms.md): a run whose
    algorithm does not read them still resumes, is still found finished and still loads; a
    fedprox run recorded with the old default is a different run unless asked for again."""
    from fedln_jax.algorithms import without_inert_hparams
    from fedln_jax.config import from_dict
    from fedln_jax.training.workdir import compare_configs
    old = {**Config(norm="fn").to_dict(), "prox_mu": 1.0, "feddecorr_coef": 0.1}
    compare_configs(old, Config(norm="fn"), "workdir")                        # no error
    assert from_dict(without_inert_hparams(old)).validate() == Config(norm="fn")
    prox = {**Config(algorithm="fedprox").to_dict(), "prox_mu": 1.0, "feddecorr_coef": 0.1}
    with pytest.raises(FedlnError, match=r"prox_mu: 1\.0 -> 0\.01"):
        compare_configs(prox, Config(algorithm="fedprox"), "workdir")
    compare_configs(prox, Config(algorithm="fedprox", prox_mu=1.0), "workdir")  # no error
