"""Every experiments/configs/paper_*.py: loads, validates with each normalizer, holds the
section 4 protocol, and its docstring's run commands parse."""
import glob
import importlib.util
import os
import shlex

import pytest

from fedln_jax.cli import build_parser
from fedln_jax.config import build_config, load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "experiments", "configs", "paper_*.py")))
NORMS = ("none", "bn", "gn", "ln", "fn")


def module_doc(path):
    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.__doc__


def test_every_table_setting_has_a_config():
    names = {os.path.basename(p)[len("paper_"):-3] for p in CONFIGS}
    assert {"cifar10_one_class_cnn", "cifar10_two_class_cnn", "cifar10_dirichlet_cnn",
            "cifar100", "tinyimagenet", "pacs"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_validates_and_follows_the_protocol(path):
    base = load_config_file(path).validate()
    assert (base.local_steps, base.batch_size, base.lr, base.momentum, base.weight_decay) == (
        10, 32, 0.01, 0.0, 0.0)
    assert base.clients_per_round is None and base.algorithm == "fedavg"
    assert base.rounds == 10000 and base.eval_every == 100 and base.augment == "auto"
    assert base.resolved_augment != "none"
    for norm in NORMS:
        assert build_config(path, [f"norm={norm}"]).norm == norm


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_docstring_run_commands_parse_and_cover_every_norm(path):
    rel = os.path.relpath(path, ROOT)
    commands = [line.strip() for line in module_doc(path).splitlines()
                if line.strip().startswith("fedln-jax run")]
    norms = set()
    for command in commands:
        argv = shlex.split(command)[1:]
        args = build_parser().parse_args(argv)
        assert args.config == rel and args.workdir
        config = build_config(os.path.join(ROOT, args.config), args.overrides)
        norms.add(config.norm)
    assert norms == set(NORMS)


def test_cifar10_one_class_config_runs_a_round_on_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    path = os.path.join(ROOT, "experiments", "configs", "paper_cifar10_one_class_cnn.py")
    config = build_config(path, ["norm=fn", "model=mlp", "rounds=1", "eval_every=1",
                                 "local_steps=1", "batch_size=4", f"data_dir={tmp_path / 'tfds'}"])
    from fedln_jax.training.train import run
    with tfds.testing.mock_data(num_examples=100):
        summary = run(config, str(tmp_path / "run"), quiet=True)
    assert summary["rounds_completed"] == 1


@pytest.mark.parametrize("path", [p for p in CONFIGS if "cifar10_" in p], ids=os.path.basename)
def test_cifar10_table_rows_have_resnet18_commands_for_every_norm(path):
    norms = set()
    for line in module_doc(path).splitlines():
        if line.strip().startswith("fedln-jax run") and "model=resnet18" in line:
            args = build_parser().parse_args(shlex.split(line.strip())[1:])
            config = build_config(os.path.join(ROOT, args.config), args.overrides)
            assert config.resolved_model == "resnet18"
            norms.add(config.norm)
    assert norms == set(NORMS)
