"""fedln_jax/studies/results.py: statistics over seeds (diverged seeds counted, not averaged) and the
tables of figures, sweeps, the demo and the notebook; the demo and the algorithm comparison
are figure configs."""
import os

import numpy as np
import pytest

from fedln_jax.studies import results
from fedln_jax.studies.figures import load_figure, table_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def summary(final, last3, status="completed"):
    return {"final_test_accuracy": final, "mean_last3_test_accuracy": last3, "status": status}


def test_seed_stats_average_completed_seeds_and_count_diverged_ones():
    stats = results.seed_stats([summary(0.5, 0.4), summary(None, None, "diverged"),
                                summary(0.7, 0.6)])
    assert stats["n"] == 2 and stats["diverged"] == 1
    assert stats["final_mean"] == pytest.approx(0.6) and stats["final_std"] == pytest.approx(0.1)
    assert stats["last3_mean"] == pytest.approx(0.5)
    assert stats["per_seed"] == [0.5, 0.7] and stats["per_seed_last3"] == [0.4, 0.6]
    gone = results.seed_stats([summary(None, None, "diverged")])
    assert gone["n"] == 0 and gone["final_mean"] is None and gone["last3_mean"] is None


def test_aggregate_keeps_first_appearance_order():
    keyed = [("b", summary(0.1, 0.1)), ("a", summary(0.2, 0.2)), ("b", summary(0.3, 0.3))]
    cells = results.aggregate(keyed)
    assert [k for k, _ in cells] == ["b", "a"]
    assert cells[0][1]["per_seed"] == [0.1, 0.3]


def cell(series, x, *finals, diverged=0):
    return {"series": series, "x": x,
            **results.seed_stats([summary(f, f) for f in finals]
                                 + [summary(None, None, "diverged")] * diverged)}


def test_grid_table_marks_missing_and_diverged_cells():
    cells = [cell("fedavg", "ln 1-class", 0.5, 0.7), cell("fedavg", "bn 1-class", 0.2),
             cell("fedprox", "ln 1-class", diverged=2)]
    text = results.grid_table(cells, "caption", row_label="algorithm", cell="last3")
    assert text.splitlines() == ["caption", "", "| algorithm | ln 1-class | bn 1-class |",
                                 "|---|---|---|", "| fedavg | 0.600 | 0.200 |",
                                 "| fedprox | diverged | - |"]
    figure = results.grid_table([cell("fn", 0.1, 0.5)], "c", column=lambda x: f"lr={x}")
    assert figure.splitlines()[2:] == ["| series | lr=0.1 |", "|---|---|", "| fn | 0.500 (0.500) |"]


def test_seeds_table_is_the_demo_table():
    text = results.seeds_table([cell("ln", None, 0.9, 0.8)], "final test accuracy", row_label="norm")
    assert text.splitlines() == [
        "final test accuracy",
        "norm   mean +- std      mean of last 3 evals   per seed",
        "-----  ---------------  ---------------------  --------",
        "ln     0.850 +- 0.050    0.850                  0.900 0.800"]


def test_sweep_table_counts_diverged_seeds():
    cells = [((0.1,), results.seed_stats([summary(0.5, 0.5), summary(None, None, "diverged")])),
             ((1.0,), results.seed_stats([summary(None, None, "diverged")]))]
    assert results.sweep_table(cells, ["lr"]).splitlines() == [
        "| lr | final test accuracy (mean +- std) | seeds |", "|---|---|---|",
        "| 0.1 | 0.5000 +- 0.0000 | 1 (1 diverged) |", "| 1.0 | diverged | 0 (1 diverged) |"]


def test_demo_and_algorithm_comparison_are_figure_configs():
    from fedln_jax.studies import demo
    figure = load_figure(os.path.join(ROOT, "experiments", "configs", "demo.py"))
    assert figure.runs == demo.get_runs() and figure.options == demo.FIGURE
    assert figure.base == demo.get_config() and figure.base.norm == "fn"
    cells = [cell(n, None, 0.5) for n in demo.NORMS]
    assert table_text(cells, figure.options, 60, (0, 1, 2)).splitlines()[0] == (
        "final test accuracy after 60 rounds, seeds [0, 1, 2]")
    comparison = load_figure(os.path.join(ROOT, "experiments", "configs", "algorithms_digits.py"))
    xs = list(dict.fromkeys(r["x"] for r in comparison.runs))
    assert xs == [f"{norm} {n}-class" for n in (1, 2) for norm in ("none", "ln", "fn", "bn")]
    assert {r["series"] for r in comparison.runs if r["x"].startswith("bn")} == {"fedavg", "fedbn"}
    configs = [comparison.base.replace(**r["overrides"]).validate() for r in comparison.runs]
    assert len({c.to_dict().__repr__() for c in configs}) == len(configs)
    text = table_text([cell("fedavg", "ln 1-class", 0.5)], comparison.options, 30, (0,))
    assert text.splitlines()[0] == ("Test accuracy on digits, 10 clients, n classes per client, "
                                    "30 rounds (mean of the last 3 evaluations; seeds [0]).")
    assert np.isclose(float(text.splitlines()[-1].split("|")[2]), 0.5)


def test_analysis_tables_of_a_figure():
    probe = {"steps": 5, "global_acc_before": 0.8, "global_acc_after": 0.4,
             "per_class_recall_after": [1.0, None], "feature_norm_per_class_after": [8.0, 8.0],
             "head_norm_per_class_after": [1.5, 0.25]}
    analyses = {"fn": {"local_overfit_by_steps": [probe], "local_overfit": probe,
                       "feature_norm_per_class": [8.0, 8.0], "head_norm_per_class": [1.0, 0.5]}}
    assert results.local_overfit_table(analyses).splitlines()[2] == (
        "| fn | 5 | 0.800 | 0.400 | 1.00 - |")
    assert results.norms_table(analyses).splitlines()[2:] == [
        "| fn | global | 8.00 8.00 | 1.00 0.50 |",
        "| fn | after 5 local steps | 8.00 8.00 | 1.50 0.25 |"]


def test_last_k_mean_is_the_summarys_statistic():
    from fedln_jax.training.summary import summarize
    rounds, acc = [2, 4, 6, 8, 10], [0.1, 0.2, 0.3, 0.4, 0.9]
    history = [{"round": r, "test_accuracy": a, "train_loss": 1.0} for r, a in zip(rounds, acc)]
    assert results.last_k_mean((rounds, acc)) == pytest.approx(
        summarize(history, 0.0)["mean_last3_test_accuracy"])
    assert results.last_k_mean((rounds, acc), until=8) == pytest.approx((0.2 + 0.3 + 0.4) / 3)
    assert results.last_k_mean((rounds, acc), until=1) is None


def test_horizon_check_on_synthetic_curves():
    T = 100
    rounds = list(range(5, T + 1, 5))
    flat = [0.5 + (0.01 if r % 10 else -0.01) for r in rounds]   # oscillates, does not move
    rising = [0.3 + 0.4 * r / T for r in rounds]                  # still climbing at T
    settled = results.horizon_check([(rounds, flat), (rounds, flat)])
    assert settled.rounds == T and settled.cut == pytest.approx((1 - results.HORIZON_FRACTION) * T)
    assert abs(settled.moved) < results.HORIZON_TOLERANCE and settled.settled
    climbing = results.horizon_check([(rounds, rising)])
    # last-3 ending at 100 (90, 95, 100) vs ending at 80 (70, 75, 80): 0.4 * 20 / 100 = 0.08
    assert climbing.moved == pytest.approx(0.08) and not climbing.settled
    assert climbing.end == pytest.approx(results.last_k_mean((rounds, rising)))
    # Over seeds: the mean of the seeds' last-k means, as the table's cells.
    both = results.horizon_check([(rounds, flat), (rounds, rising)])
    assert both.end == pytest.approx((settled.end + climbing.end) / 2)
    assert results.horizon_check([]) is None
    assert results.horizon_check([([T], [0.5])]) is None     # nothing at or before the cut
