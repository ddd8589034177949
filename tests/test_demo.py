"""`fedln-jax demo` (the README's main command), shortened: every (norm, seed) run, each its
own program (docs/scale.md#what-is-bit-identical), the table, results.json and the plot;
and the algorithm comparison, a figure config run by the same path."""
import json
import os

from fedln_jax.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_runs_the_headline_comparison(tmp_path, capsys):
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir), "--rounds", "2", "--seeds", "2",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "final test accuracy after 2 rounds, seeds [0, 1]" in out
    report = json.loads((workdir / "results.json").read_text())
    assert set(report["table"]) == {"none", "ln", "fn"}
    for norm, row in report["table"].items():
        assert len(row["per_seed"]) == 2 and 0 <= row["final_mean"] <= 1
        for seed in (0, 1):
            summary = json.loads((workdir / "runs" / f"{norm}_seed{seed}" / "summary.json").read_text())
            assert summary["runs_vectorized"] == 1 and summary["status"] == "completed"
            assert summary["final_test_accuracy"] == row["per_seed"][seed]
        assert f"{norm:<5}  {row['final_mean']:.3f} +- {row['final_std']:.3f}" in out
    assert os.path.getsize(workdir / "accuracy.png") > 0


def test_demo_bad_arguments_one_error_line(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path / "d"), "--rounds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert not (tmp_path / "d").exists()


def test_algorithm_comparison_table_runs_each_cell_alone(tmp_path):
    # The comparison is a figure config; a few of its cells, through `fedln-jax figure`'s path.
    import dataclasses

    from fedln_jax.config import load_config_module
    from fedln_jax.studies.figures import figure_of_module, run_figure
    path = os.path.join(ROOT, "experiments", "configs", "algorithms_digits.py")
    module = load_config_module(path)
    figure = dataclasses.replace(figure_of_module(module, path), runs=module.get_runs(
        algorithms=("fedavg", "fedprox"), norms=("ln",), classes=(1,)))
    run_figure(figure, str(tmp_path / "cmp"), ["rounds=1", "eval_every=1"], seeds=(0, 1),
               quiet=True)
    text = (tmp_path / "cmp" / "table.md").read_text()
    runs = sorted(os.listdir(tmp_path / "cmp" / "runs"))
    assert runs == ["fedavg_bn_1class_seed0", "fedavg_bn_1class_seed1", "fedavg_ln_1class_seed0",
                    "fedavg_ln_1class_seed1", "fedprox_ln_1class_seed0", "fedprox_ln_1class_seed1"]
    summary = json.loads((tmp_path / "cmp" / "runs" / runs[0] / "summary.json").read_text())
    assert summary["runs_vectorized"] == 1
    table = {f"{c['series']}/{c['x'].replace(' ', '/').replace('-class', '')}": c["last3_mean"]
             for c in json.loads((tmp_path / "cmp" / "results.json").read_text())["table"]}
    assert set(table) == {"fedavg/bn/1", "fedavg/ln/1", "fedprox/ln/1"}
    assert f"| fedprox | {table['fedprox/ln/1']:.3f} |" in text


def test_the_cli_default_rounds_is_the_demos_horizon():
    """`fedln-jax demo` without --rounds runs the demo config's own horizon."""
    from fedln_jax import cli
    from fedln_jax.studies.demo import DEMO_ROUNDS, get_config
    assert cli.build_parser().parse_args(["demo"]).rounds == DEMO_ROUNDS == get_config().rounds
