"""End to end through the command line, and bad input: one `error:` line, exit 2, workdir untouched."""
import json
import shutil
import subprocess
import sys

import pytest

from fedln_jax.cli import main

TINY = ["dataset=synthetic", "num_clients=4", "classes_per_client=3", "local_steps=2",
        "batch_size=8", "rounds=4", "eval_every=2"]


def merged(base, overrides):
    """base KEY=VALUE items with the overridden keys replaced (a key given twice is refused)."""
    keys = {item.partition("=")[0] for item in overrides}
    return [item for item in base if item.partition("=")[0] not in keys] + list(overrides)


def test_run_end_to_end_writes_every_workdir_file(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "fedln_jax.cli", "run", "--workdir", str(workdir),
                           "--quiet", "norm=fn", "conv_features=8/12", "tensorboard=true",
                           *TINY],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((workdir / "config.json").read_text())
    assert config["norm"] == "fn" and config["rounds"] == 4 and config["dataset"] == "synthetic"
    assert config["conv_features"] == "8/12" and config["dense_features"] == ""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [2, 4]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 and r["train_loss"] > 0 for r in rows)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["rounds_completed"] == 4
    assert summary["final_test_accuracy"] == rows[-1]["test_accuracy"]
    clients = json.loads((workdir / "clients.json").read_text())
    assert len(clients["class_counts"]) == 4 and sum(clients["examples_per_client"]) == 400
    from test_tensorboard import read_events, scalars   # the events hold the metrics rows
    events = scalars(read_events(workdir / "tensorboard"))
    for r in rows:
        assert events[("test/accuracy", r["round"])] == pytest.approx(r["test_accuracy"])
        assert events[("train/loss", r["round"])] == pytest.approx(r["train_loss"])
        assert events[("recall/class_0", r["round"])] == pytest.approx(r["per_class_recall"][0])


BAD = [
    (["bogus=1"], "unknown config key 'bogus'"),
    (["rounds=abc"], "rounds must be of type int"),
    (["dataset=mnist"], "dataset='mnist'"),
    (["model=vgg"], "model='vgg'"),
    (["norm=xn"], "norm='xn'"),
    (["partition=shards"], "partition='shards'"),
    (["num_clients=0"], "num_clients must be >= 1"),
    (["clients_per_round=11"], "clients_per_round must be in 1..num_clients"),
    (["classes_per_client=0"], "classes_per_client must be >= 1"),
    (["classes_per_client=11"], "classes_per_client"),
    (["num_clients=200", "classes_per_client=10"], "client"),
    (["lr=0"], "lr must be > 0"),
    (["local_steps=0"], "local_steps must be >= 1"),
    (["batch_size=0"], "batch_size must be >= 1"),
    (["rounds=0"], "rounds must be >= 1"),
    (["dirichlet_beta=0"], "dirichlet_beta must be > 0"),
    (["partition=dirichlet", "num_clients=100", "min_client_examples=5"], "dirichlet"),
    (["algorithm=fedsgd"], "algorithm='fedsgd'"),
    (["algorithm=scaffold", "prox_mu=0.1"], "prox_mu is a hyperparameter of fedprox"),
    (["algorithm=fedprox", "prox_mu=-1"], "prox_mu must be >= 0"),
    (["algorithm=feddecorr", "feddecorr_coef=-0.1"], "feddecorr_coef must be >= 0"),
    (["algorithm=fedlc", "fedlc_tau=-1"], "fedlc_tau must be >= 0"),
    (["algorithm=fedrs", "fedrs_alpha=0"], "fedrs_alpha must be in (0, 1]"),
    (["algorithm=fedrs", "fedrs_alpha=1.5"], "fedrs_alpha must be in (0, 1]"),
    (["algorithm=fedyogi", "server_tau=0"], "server_tau must be > 0"),
    (["conv_features=0/32"], "every width must be >= 1"),
    (["dense_features=-4/8"], "every width must be >= 1"),
    (["conv_features=16.5/32"], "every width must be a positive integer"),
    (["conv_features=16/32/64"], "has 3 entries"),
    (["model=mlp", "conv_features=16/32"], "conv_features applies to model cnn, small_cnn only"),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", "--workdir", str(workdir), "--quiet", *TINY]) == 0
    return workdir


@pytest.mark.parametrize("overrides, fragment", BAD)
def test_bad_input_one_error_line_exit_2_workdir_untouched(tmp_path, capsys, finished_run,
                                                          overrides, fragment, snapshot):
    workdir = tmp_path / "existing"
    shutil.copytree(finished_run, workdir)
    before = snapshot(workdir)
    capsys.readouterr()
    assert main(["run", "--workdir", str(workdir), "--quiet", *merged(TINY, overrides)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err
    assert snapshot(workdir) == before


def test_a_different_config_on_an_existing_workdir_is_refused(tmp_path, capsys, finished_run, snapshot):
    workdir = tmp_path / "w"
    shutil.copytree(finished_run, workdir)
    before = snapshot(workdir)
    assert main(["run", "--workdir", str(workdir), "--quiet", *TINY, "lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "lr" in err
    assert snapshot(workdir) == before


def test_bad_input_from_the_console_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedln_jax.cli", "run", "--workdir",
                           str(tmp_path / "x"), "norm=bogus"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_a_relative_workdir_runs_and_resumes(tmp_path, monkeypatch, capsys):
    # orbax needs absolute checkpoint paths; users type relative ones.
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--workdir", "rel/run", "--quiet", *TINY]) == 0
    assert (tmp_path / "rel" / "run" / "checkpoints").is_dir()
    assert main(["run", "--workdir", "rel/run", "--quiet", *TINY[:-2], "rounds=6", "eval_every=2"]) == 0
    summary = json.loads((tmp_path / "rel" / "run" / "summary.json").read_text())
    assert summary["rounds_completed"] == 6 and summary["resumed_from_round"] == 4


def test_a_run_whose_norm_layers_override_the_preset_is_labelled_by_them(tmp_path, capsys):
    """The log names the normalizers that ran, not the preset (norm=ln) they replace."""
    argv = ["run", "--workdir", str(tmp_path / "r"), *merged(TINY, ["rounds=1", "eval_every=1"]),
            "norm=ln", "norm_layers=Mean,mean, mean,ln"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "norm mean,mean,mean,ln," in err and "done: mean,mean,mean,ln/seed0 1 rounds" in err
    assert "norm ln" not in err and "done: ln/" not in err
