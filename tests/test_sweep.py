"""The sweep: grid parsing, grouping into programs, vectorized runs == the same runs alone,
the result files, resume, and bad grids (one `error:` line, exit 2, nothing written)."""
import csv
import json
import os

import pytest

from fedln_jax.cli import main
from fedln_jax.config import Config
from fedln_jax.studies.sweep import expand, parse_grid, plan
from fedln_jax.training.train import run

TINY = ["dataset=synthetic", "num_clients=4", "local_steps=2", "batch_size=8", "rounds=2",
        "eval_every=1", "partition=dirichlet"]
GRID = ["seed=0,1", "dirichlet_beta=0.3,5.0"]   # 4 runs, value-only: one program


def read_rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep") / "grid"
    assert main(["sweep", "--workdir", str(workdir), "--quiet", *TINY, *GRID]) == 0
    return workdir


def test_value_keys_share_a_program_and_shape_keys_do_not():
    base = Config(dataset="synthetic")
    runs = expand(base, parse_grid(["norm=ln,fn", "seed=0,1,2", "lr=0.1,0.2"]))
    assert len(runs) == 12 and runs[0][0] == "norm=ln_seed=0_lr=0.1"
    groups = plan(runs)
    assert [len(g) for g in groups] == [6, 6]
    assert {runs[i][1].norm for i in groups[0]} == {"ln"}
    assert len(plan(expand(base, parse_grid(["num_clients=5,10", "seed=0,1"])))) == 2


def test_grid_values_are_typed():
    assert parse_grid(["lr=0.1,1", "norm=fn", "clients_per_round=all,3"]) == {
        "lr": [0.1, 1.0], "norm": ["fn"], "clients_per_round": [None, 3]}


def test_sweep_writes_run_workdirs_and_results(swept):
    names = sorted(os.listdir(swept / "runs"))
    assert names == sorted(f"seed={s}_dirichlet_beta={b}" for s in (0, 1) for b in (0.3, 5.0))
    for name in names:
        run_dir = swept / "runs" / name
        assert {"config.json", "metrics.jsonl", "summary.json", "clients.json"} <= set(os.listdir(run_dir))
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["runs_vectorized"] == 4 and summary["rounds_completed"] == 2
    with open(swept / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == [f"seed={s}_dirichlet_beta={b}" for s in (0, 1) for b in (0.3, 5.0)]
    assert list(rows[0]) == ["run", "dirichlet_beta", "seed", "final_test_accuracy",
                             "mean_last3_test_accuracy", "rounds_completed", "status"]
    assert {r["status"] for r in rows} == {"completed"}
    for row in rows:
        summary = json.loads((swept / "runs" / row["run"] / "summary.json").read_text())
        assert float(row["final_test_accuracy"]) == summary["final_test_accuracy"]
        assert float(row["mean_last3_test_accuracy"]) == summary["mean_last3_test_accuracy"]
        assert int(row["rounds_completed"]) == 2
    table = (swept / "results.md").read_text().splitlines()
    assert table[0].startswith("| dirichlet_beta |") and len(table) == 4   # header, rule, 2 betas
    accs = [float(r["final_test_accuracy"]) for r in rows if r["dirichlet_beta"] == "0.3"]
    mean = sum(accs) / 2
    assert f"| 0.3 | {mean:.4f} +- {abs(accs[0] - accs[1]) / 2:.4f} | 2 |" == table[2]
    assert (swept / "sweep.png").stat().st_size > 0


def test_vectorized_run_equals_the_same_run_alone(swept, tmp_path):
    # seed 1 / beta 0.3 was padded to the group's widest client table and its max_epochs.
    alone = tmp_path / "alone"
    config = Config(dataset="synthetic", num_clients=4, local_steps=2, batch_size=8, rounds=2,
                    eval_every=1, partition="dirichlet", seed=1, dirichlet_beta=0.3)
    run(config.validate(), str(alone), quiet=True)
    vec_dir = swept / "runs" / "seed=1_dirichlet_beta=0.3"
    assert json.loads((vec_dir / "config.json").read_text()) == config.to_dict()
    assert (vec_dir / "clients.json").read_text() == (alone / "clients.json").read_text()
    widths = {max(json.loads((swept / "runs" / n / "clients.json").read_text())["examples_per_client"])
              for n in os.listdir(swept / "runs")}
    assert len(widths) > 1, "the group should mix client tables of different widths"
    for a, b in zip(read_rows(vec_dir), read_rows(alone)):
        assert a["round"] == b["round"]
        for key in ("train_loss", "test_loss", "test_accuracy", "test_accuracy_pooled"):
            assert abs(a[key] - b[key]) < 1e-5, (key, a, b)


def test_sweep_resumes_skipping_completed_runs(swept, capsys):
    summaries = {n: (swept / "runs" / n / "summary.json").read_text() for n in os.listdir(swept / "runs")}
    mtimes = {n: os.stat(swept / "runs" / n / "summary.json").st_mtime_ns for n in summaries}
    os.remove(swept / "runs" / "seed=0_dirichlet_beta=5.0" / "summary.json")   # an unfinished run
    capsys.readouterr()
    assert main(["sweep", "--workdir", str(swept), *TINY, *GRID]) == 0
    err = capsys.readouterr().err
    assert "3 already complete, 1 to run as 1 program(s)" in err
    for name, text in summaries.items():
        path = swept / "runs" / name / "summary.json"
        if name != "seed=0_dirichlet_beta=5.0":
            assert os.stat(path).st_mtime_ns == mtimes[name]
        rerun, before = json.loads(path.read_text()), json.loads(text)
        assert rerun["final_test_accuracy"] == pytest.approx(before["final_test_accuracy"], abs=1e-5)


@pytest.mark.parametrize("grid, fragment", [
    (["bogus=1,2"], "unknown config key 'bogus'"),
    (["lr="], "grid key 'lr' has an empty value list"),
    (["lr=0.1,,0.2"], "empty value"),
    (["seed=0,0"], "repeats a value"),
    (["lr=0.1", "lr=0.2"], "given twice"),
    (["seed"], "KEY=V1,V2"),
    (["lr=0.1,abc"], "lr must be of type float"),
    (["lr=0.1,-1"], "lr must be > 0"),
])
def test_bad_grid_one_error_line_exit_2_nothing_written(tmp_path, capsys, grid, fragment):
    workdir = tmp_path / "sweep"
    assert main(["sweep", "--workdir", str(workdir), *TINY, *grid]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err
    assert not workdir.exists()


def test_algorithm_hyperparameters_are_vectorized_and_equal_alone(tmp_path):
    from fedln_jax.training.train import run_group
    # lecun's larger weights move further in 2 rounds, so mu's effect (checked last) is 1e-3
    # on the loss; at the torch init it is 4e-5, too close to the 1e-5 tolerance to tell apart.
    base = Config(dataset="synthetic", num_clients=4, classes_per_client=3, local_steps=2,
                  batch_size=8, rounds=2, eval_every=2, algorithm="fedprox", lr=0.1, init="lecun")
    runs = expand(base, parse_grid(["prox_mu=0.0,2.0"]))
    assert [len(g) for g in plan(runs)] == [2]
    dirs = [str(tmp_path / name) for name, _ in runs]
    together = run_group([c for _, c in runs], dirs, quiet=True)
    alone = run(runs[1][1], str(tmp_path / "alone"), quiet=True)
    assert [s["runs_vectorized"] for s in together] == [2, 2] and alone["runs_vectorized"] == 1
    row, alone_row = read_rows(dirs[1])[-1], read_rows(tmp_path / "alone")[-1]
    assert abs(row["train_loss"] - alone_row["train_loss"]) < 1e-5
    assert abs(row["test_loss"] - alone_row["test_loss"]) < 1e-5
    assert abs(read_rows(dirs[0])[-1]["train_loss"] - alone_row["train_loss"]) > 1e-4   # mu matters


@pytest.mark.parametrize("grid", ["momentum=0.0,0.9", "weight_decay=0.0,0.001"])
def test_local_optimizer_values_are_vectorized_and_equal_alone(tmp_path, grid):
    # momentum: the program has a momentum trace; the momentum-0 run reads decay 0 (plain SGD)
    # and must match its run alone, which has no trace.
    from fedln_jax.training.train import run_group
    base = Config(dataset="synthetic", num_clients=4, classes_per_client=3, local_steps=3,
                  batch_size=8, rounds=2, eval_every=1, lr=0.1)
    runs = expand(base, parse_grid([grid]))
    assert [len(g) for g in plan(runs)] == [2]
    dirs = [str(tmp_path / name) for name, _ in runs]
    together = run_group([c for _, c in runs], dirs, quiet=True)
    assert [s["runs_vectorized"] for s in together] == [2, 2]
    for (name, config), vec_dir in zip(runs, dirs):
        assert run(config, str(tmp_path / f"alone_{name}"), quiet=True)["runs_vectorized"] == 1
        for a, b in zip(read_rows(vec_dir), read_rows(tmp_path / f"alone_{name}")):
            for key in ("train_loss", "test_loss", "test_accuracy"):
                assert abs(a[key] - b[key]) < 1e-5, (name, key, a, b)
    last = [read_rows(d)[-1]["train_loss"] for d in dirs]
    assert abs(last[0] - last[1]) > 1e-6, "the swept value should change the run"


def test_max_runs_per_program_cuts_a_group(tmp_path):
    workdir = tmp_path / "sweep"
    assert main(["sweep", "--workdir", str(workdir), "--quiet", "--max-runs-per-program", "2",
                 *TINY, "seed=0,1,2"]) == 0
    vectorized = [json.loads((workdir / "runs" / f"seed={s}" / "summary.json").read_text())
                  ["runs_vectorized"] for s in (0, 1, 2)]
    assert vectorized == [2, 2, 1]


def test_max_runs_per_program_below_one_is_refused(tmp_path, capsys):
    workdir = tmp_path / "sweep"
    assert main(["sweep", "--workdir", str(workdir), "--max-runs-per-program", "0",
                 *TINY, "seed=0,1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --max-runs-per-program must be >= 1, got 0"]
    assert not workdir.exists()


def test_dry_run_checks_every_run_prints_the_programs_and_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "sweep"
    assert main(["sweep", "--workdir", str(workdir), "--dry-run", "--max-runs-per-program", "3",
                 *TINY, "norm=ln,fn", "seed=0,1,2,3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "program 1: 3 run(s): norm=ln_seed=0, norm=ln_seed=1, norm=ln_seed=2",
        "program 2: 1 run(s): norm=ln_seed=3",
        "program 3: 3 run(s): norm=fn_seed=0, norm=fn_seed=1, norm=fn_seed=2",
        "program 4: 1 run(s): norm=fn_seed=3",
        "dry run: every run builds; 8 to run, nothing written"]
    assert not workdir.exists()
    # A run that cannot be built (more clients than examples) fails the dry run: one line, 2.
    assert main(["sweep", "--workdir", str(workdir), "--dry-run", *TINY,
                 "num_clients=4,100000", "partition=iid"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert not workdir.exists()


def test_sweep_prints_its_results_table(swept, capsys):
    assert main(["sweep", "--workdir", str(swept), "--quiet", *TINY, *GRID]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| dirichlet_beta | final test accuracy (mean +- std) | seeds |")
    assert out.rstrip().endswith(f"4 runs; wrote results.csv, results.md, sweep.png in {swept}")


def test_result_files_are_replaced_whole_never_written_in_place(swept, tmp_path, monkeypatch):
    """The CSV, the table and the plot go to a temporary file beside them, renamed over the
    old one (workdir.write_text, workdir.save_figure): a writer killed midway leaves the old
    file whole, and a finished one leaves no temporary file behind."""
    from fedln_jax.studies import sweep
    from fedln_jax.training.workdir import save_figure, write_text
    assert {"results.csv", "results.md", "sweep.png"} <= set(os.listdir(swept))
    assert not [n for n in os.listdir(swept) if ".tmp" in n]
    work = tmp_path / "copy"
    work.mkdir()
    rows = sweep.collect(*zip(*[(run, str(swept / "runs" / run[0])) for run in
                                expand(Config(), parse_grid(GRID))]), list(parse_grid(GRID)))
    for name in ("results.csv", "results.md", "sweep.png"):
        (work / name).write_bytes(b"old")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt   # as a kill midway through the first write
    monkeypatch.setattr("fedln_jax.training.workdir.os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        sweep.write_results(str(work), rows, list(parse_grid(GRID)))
    assert (work / "results.csv").read_bytes() == b"old"
    monkeypatch.undo()

    class Figure:
        def savefig(self, path, **kwargs):
            open(path, "wb").write(b"half")
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        save_figure(Figure(), str(work / "sweep.png"), dpi=120)
    assert (work / "sweep.png").read_bytes() == b"old"
    sweep.write_results(str(work), rows, list(parse_grid(GRID)))
    write_text(work / "results.md", "new\n")
    assert (work / "results.csv").read_bytes() == (swept / "results.csv").read_bytes()
    assert not [n for n in os.listdir(work) if ".tmp" in n]


def test_a_second_sweep_on_one_workdir_is_refused_before_its_plan_line(tmp_path, capsys):
    from fedln_jax.training import lock
    workdir = tmp_path / "grid"
    with lock.hold([str(workdir)]):   # as a first sweep still running
        capsys.readouterr()
        assert main(["sweep", "--workdir", str(workdir), *TINY, *GRID]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: workdir") and "is in use by pid" in err[0]
    assert sorted(os.listdir(workdir)) == [lock.LOCK_NAME]   # no sweep.json, no runs
