"""One training loop serves a vectorized program of several runs as it serves one run: every
run checkpoints into its own workdir, a stopped sweep resumes mid-run and ends identical to the
uninterrupted sweep, a damaged checkpoint of one run makes the whole program fall back, and a
diverged run stops while the others of its program go on."""
import csv
import json
import os
import signal

import chex
import pytest

from fedln_jax.cli import main
from fedln_jax.config import Config
from fedln_jax.engine.placement import client_mesh, replicate
from fedln_jax.training import checkpoint, experiment
from fedln_jax.training.train import run

TINY = dict(dataset="synthetic", num_clients=4, classes_per_client=3, local_steps=2,
            batch_size=8, rounds=4, eval_every=1, checkpoint_every=1, lr=0.05)
ARGS = [f"{k}={v}" for k, v in TINY.items()]
GRID = ["seed=0,1"]
NAMES = ["seed=0", "seed=1"]
# Orbax leaves an asyncio loop warning behind when it fails to read a torn file.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def rows(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "elapsed_seconds"} for line in f]


def summary(run_dir) -> dict:
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def steps(run_dir) -> list[int]:
    return sorted(int(n) for n in os.listdir(os.path.join(run_dir, "checkpoints")) if n.isdigit())


def final_state(run_dir):
    with open(os.path.join(run_dir, "config.json")) as f:
        config = Config(**json.load(f)).validate()
    exp = experiment.build_experiment(config)
    target = replicate(experiment.initial_state(exp), client_mesh())
    return checkpoint.restore_latest(checkpoint.open_manager(run_dir, 3), target,
                                     lambda meta: None).state


def assert_same_sweep(workdir, reference):
    for name in NAMES:
        a, b = os.path.join(workdir, "runs", name), os.path.join(reference, "runs", name)
        assert rows(a) == rows(b)
        chex.assert_trees_all_equal(final_state(a), final_state(b))
        assert summary(a)["status"] == "completed"
    with open(os.path.join(workdir, "results.csv")) as f, \
            open(os.path.join(reference, "results.csv")) as g:
        assert f.read() == g.read()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted sweep: two runs vectorized, checkpoints at every round (3 kept)."""
    workdir = str(tmp_path_factory.mktemp("reference") / "sweep")
    assert main(["sweep", "--workdir", workdir, "--quiet", *ARGS, *GRID]) == 0
    for name in NAMES:
        run_dir = os.path.join(workdir, "runs", name)
        assert summary(run_dir)["runs_vectorized"] == 2
        assert steps(run_dir) == [2, 3, 4]
    return workdir


def interrupt_at(monkeypatch, round_):
    def hook(event, at):
        if event == "block" and at == round_:
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(checkpoint, "pause_for_test", hook)


def test_every_run_of_a_vectorized_sweep_is_a_normal_resumable_workdir(reference, tmp_path):
    """A run of the sweep equals the same run alone, checkpoints included, and `fedln-jax run`
    on its workdir finds it finished (same config) rather than starting over."""
    alone = str(tmp_path / "alone")
    run(Config(**TINY, seed=1).validate(), alone, quiet=True)
    swept = os.path.join(reference, "runs", "seed=1")
    for a, b in zip(rows(swept), rows(alone), strict=True):
        assert a["round"] == b["round"]
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
        assert abs(a["test_accuracy"] - b["test_accuracy"]) < 1e-5
    chex.assert_trees_all_close(final_state(swept), final_state(alone), atol=1e-5)
    summary_bytes = open(os.path.join(swept, "summary.json"), "rb").read()
    again = run(Config(**TINY, seed=1).validate(), swept, quiet=True)
    # A finished run is reported, not retrained or rewritten (docs/checkpoints.md).
    assert again["status"] == "completed" and again["rounds_completed"] == 4
    assert open(os.path.join(swept, "summary.json"), "rb").read() == summary_bytes


def test_interrupted_sweep_resumes_mid_run_and_equals_the_uninterrupted_one(
        reference, tmp_path, monkeypatch, capsys):
    workdir = str(tmp_path / "sweep")
    interrupt_at(monkeypatch, 2)
    assert main(["sweep", "--workdir", workdir, "--quiet", *ARGS, *GRID]) == 128 + signal.SIGINT
    assert "stopped by SIGINT after round 2 of 4" in capsys.readouterr().err
    for name in NAMES:
        run_dir = os.path.join(workdir, "runs", name)
        assert steps(run_dir) == [1, 2]
        assert summary(run_dir)["status"] == "interrupted"
        assert [r["round"] for r in rows(run_dir)] == [1, 2]
    monkeypatch.undo()
    assert main(["sweep", "--workdir", workdir, *ARGS, *GRID]) == 0
    err = capsys.readouterr().err
    assert "resuming from the checkpoint at round 2 of 4" in err and "2 runs vectorized" in err
    assert all(summary(os.path.join(workdir, "runs", n))["resumed_from_round"] == 2 for n in NAMES)
    assert_same_sweep(workdir, reference)


def test_a_damaged_checkpoint_of_one_run_makes_its_program_fall_back(reference, tmp_path,
                                                                     monkeypatch, capsys):
    workdir = str(tmp_path / "sweep")
    interrupt_at(monkeypatch, 3)
    assert main(["sweep", "--workdir", workdir, "--quiet", *ARGS, *GRID]) == 128 + signal.SIGINT
    monkeypatch.undo()
    damaged = os.path.join(workdir, "runs", "seed=1", "checkpoints", "3")
    with open(os.path.join(damaged, "meta", "metadata"), "w") as f:
        f.write("{not json")
    capsys.readouterr()
    assert main(["sweep", "--workdir", workdir, "--quiet", *ARGS, *GRID]) == 0
    err = capsys.readouterr().err
    assert "checkpoint at round 3 is unreadable" in err
    assert "checkpoints after round 2 are dropped" in err
    assert all(summary(os.path.join(workdir, "runs", n))["resumed_from_round"] == 2 for n in NAMES)
    assert_same_sweep(workdir, reference)


def test_a_diverged_run_stops_and_the_others_of_its_program_go_on(tmp_path, capsys):
    """lr=30 explodes in round 1 (a mean train loss ~6e5, past the divergence bound of
    docs/checkpoints.md, before any checkpoint); lr=0.05 in the same program is unaffected,
    and the sweep reports the divergence instead of failing."""
    # At the lecun init (at the torch init's smaller weights lr=30 takes a round longer).
    workdir = str(tmp_path / "sweep")
    args = [a for a in ARGS if not a.startswith("lr=")] + ["init=lecun"]
    assert main(["sweep", "--workdir", workdir, *args, "lr=0.05,30"]) == 0
    captured = capsys.readouterr()
    assert "2 runs (1 diverged)" in captured.out
    assert "training diverged at round 1" in captured.err
    good, bad = (os.path.join(workdir, "runs", n) for n in ("lr=0.05", "lr=30.0"))
    assert summary(bad)["status"] == "diverged" and summary(bad)["diverged_at_round"] == 1
    assert summary(bad)["last_checkpoint_round"] is None and steps(bad) == []
    assert summary(good)["status"] == "completed" and summary(good)["runs_vectorized"] == 2
    alone = str(tmp_path / "alone")
    run(Config(**TINY, init="lecun").validate(), alone, quiet=True)
    assert abs(rows(good)[-1]["test_loss"] - rows(alone)[-1]["test_loss"]) < 1e-5
    with open(os.path.join(workdir, "results.csv")) as f:
        statuses = {r["run"]: r["status"] for r in csv.DictReader(f)}
    assert statuses == {"lr=0.05": "completed", "lr=30.0": "diverged"}
    with open(os.path.join(workdir, "results.md")) as f:
        assert "| 30.0 | diverged | 0 (1 diverged) |" in f.read()
    assert main(["sweep", "--workdir", workdir, *args, "lr=0.05,30"]) == 0   # nothing to redo
    assert "2 already complete, 0 to run" in capsys.readouterr().err


def test_analyze_reads_a_run_of_a_vectorized_sweep(reference, capsys):
    run_dir = os.path.join(reference, "runs", "seed=0")
    assert main(["analyze", "--workdir", run_dir, "--no-figures", "--steps", "1"]) == 0
    assert "global accuracy" in capsys.readouterr().out


def test_runs_with_equal_data_share_one_device_array():
    """An lr sweep holds the dataset once on the device, not once per run; runs whose data
    differ (synthetic data depends on the seed) keep their own."""
    from fedln_jax.training.experiment import build_experiments
    lr_sweep = build_experiments([Config(**TINY).validate(), Config(**{**TINY, "lr": 0.1}).validate()])
    assert lr_sweep[1].data.x is lr_sweep[0].data.x and lr_sweep[1].x_test is lr_sweep[0].x_test
    assert lr_sweep[1].data.y is lr_sweep[0].data.y and lr_sweep[1].y_test is lr_sweep[0].y_test
    seeds = build_experiments([Config(**TINY).validate(), Config(**{**TINY, "seed": 1}).validate()])
    assert seeds[1].data.x is not seeds[0].data.x
    assert not (seeds[1].data.x == seeds[0].data.x).all()
