"""Many runs, then a table: statistics over seeds, and the tables that print them.

A run enters as its summary (summary.json): `final_test_accuracy`,
`mean_last3_test_accuracy` (the mean of its last LAST_K = 3 evaluations, train.summarize:
under label skew a single evaluation oscillates from round to round) and `status`. Runs are grouped into cells (one
setting, several seeds); a diverged seed is counted in its cell, never averaged.

The tables: `grid_table` (figures: one row per series, one column per x), `seeds_table`
(the demo: one row per normalizer, every seed), `sweep_table` (a sweep: one row per swept
setting), `runs_table` (the notebook: one row per run), and a figure's analysis tables
(`local_overfit_table`, `norms_table`: one series' `analysis.analyze_run` result per row
group). docs/results.md shows them.

Whether a run's horizon is long enough for its headline number: `horizon_check` (the last-k
mean of its accuracy curves moves less than HORIZON_TOLERANCE over the last HORIZON_FRACTION
of the rounds).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Hashable, Iterable, Optional, Sequence

import numpy as np

from fedln_jax.training.summary import LAST_K

HORIZON_FRACTION = 0.2     # the horizon check looks back over this last share of the rounds
HORIZON_TOLERANCE = 0.02   # ... and passes when the last-k mean moved less than this there


def group(keyed: Iterable[tuple[Hashable, dict]]) -> dict[Hashable, list[dict]]:
    """key -> the summaries with that key, keys in order of first appearance."""
    groups: dict[Hashable, list[dict]] = {}
    for key, summary in keyed:
        groups.setdefault(key, []).append(summary)
    return groups


def seed_stats(summaries: list[dict]) -> dict:
    """One cell: mean and std over the completed seeds of the final accuracy, mean of their
    last-3 means, the per-seed values, and how many seeds diverged."""
    done = [s for s in summaries if s["status"] != "diverged"]
    final = [s["final_test_accuracy"] for s in done]
    last3 = [s["mean_last3_test_accuracy"] for s in done]
    mean = lambda xs: float(np.mean(xs)) if xs else None
    return {"n": len(done), "diverged": len(summaries) - len(done),
            "final_mean": mean(final), "final_std": float(np.std(final)) if final else None,
            "last3_mean": mean(last3), "per_seed": final, "per_seed_last3": last3}


def aggregate(keyed: Iterable[tuple[Hashable, dict]]) -> list[tuple[Hashable, dict]]:
    """(key, seed_stats) per distinct key of (key, summary) pairs, in order of first appearance."""
    return [(key, seed_stats(summaries)) for key, summaries in group(keyed).items()]


def seeds_text(cell: dict) -> str:
    """'3', or '2 (1 diverged)'."""
    return str(cell["n"]) + (f" ({cell['diverged']} diverged)" if cell["diverged"] else "")


CELL_TEXT: dict[str, Callable[[dict], str]] = {
    "last3 (final)": lambda c: f"{c['last3_mean']:.3f} ({c['final_mean']:.3f})",
    "last3": lambda c: f"{c['last3_mean']:.3f}",
}


def grid_table(cells: list[dict], caption: str, *, row_label: str = "series",
               column: Callable[[object], str] = str, cell: str = "last3 (final)") -> str:
    """Markdown: one row per series, one column per x (headed `column(x)`; "accuracy" when a
    figure has no x), "-" where a series has no run at that x."""
    xs = list(dict.fromkeys(c["x"] for c in cells))
    series = list(dict.fromkeys(c["series"] for c in cells))
    at = {(c["series"], c["x"]): c for c in cells}
    text = CELL_TEXT[cell]
    lines = [caption, "",
             f"| {row_label} | " + " | ".join("accuracy" if x is None else column(x) for x in xs)
             + " |",
             "|" + "---|" * (len(xs) + 1)]
    for s in series:
        row = [at.get((s, x)) for x in xs]
        lines.append(f"| {s} | " + " | ".join(
            "-" if c is None else "diverged" if c["n"] == 0 else text(c) for c in row) + " |")
    return "\n".join(lines)


def seeds_table(cells: list[dict], caption: str, *, row_label: str = "series") -> str:
    """Plain text: per series the final accuracy (mean +- std), the mean of the last 3
    evaluations, and every seed's final accuracy."""
    lines = [caption,
             f"{row_label:<5}  mean +- std      mean of last 3 evals   per seed",
             "-----  ---------------  ---------------------  --------"]
    for c in cells:
        if c["n"] == 0:
            lines.append(f"{c['series']:<5}  diverged ({c['diverged']} seeds)")
            continue
        lines.append(f"{c['series']:<5}  {c['final_mean']:.3f} +- {c['final_std']:.3f}    "
                     f"{c['last3_mean']:.3f}                  "
                     + " ".join(f"{a:.3f}" for a in c["per_seed"]))
    return "\n".join(lines)


def sweep_table(cells: list[tuple[tuple, dict]], swept: list[str]) -> str:
    """Markdown: one row per setting of the swept keys (seeds aside): final accuracy
    mean +- std over its completed seeds, and the number of seeds."""
    lines = ["| " + " | ".join(swept + ["final test accuracy (mean +- std)", "seeds"]) + " |",
             "|" + "---|" * (len(swept) + 2)]
    for values, c in cells:
        acc = f"{c['final_mean']:.4f} +- {c['final_std']:.4f}" if c["n"] else "diverged"
        lines.append("| " + " | ".join([*map(str, values), acc, seeds_text(c)]) + " |")
    return "\n".join(lines)


def runs_table(summaries: dict[str, dict]) -> str:
    """Plain text: one row per named run: final and best test accuracy, rounds done."""
    lines = ["norm   final   best    rounds"]
    for name, s in summaries.items():
        lines.append(f"{name:<5}  {s['final_test_accuracy']:.4f}  {s['best_test_accuracy']:.4f}  "
                     f"{s['rounds_completed']}")
    return "\n".join(lines)


def _values(xs) -> str:
    return " ".join("-" if x is None else f"{x:.2f}" for x in xs)


def local_overfit_table(analyses: dict[str, dict]) -> str:
    """Markdown: per series and probe length, global accuracy before and after the local
    steps and the per-class recall after (`analysis.analyze_run` results by series)."""
    lines = ["| series | steps | global acc before | global acc after | per-class recall after |",
             "|---|---|---|---|---|"]
    for s, a in analyses.items():
        for p in a["local_overfit_by_steps"]:
            lines.append(f"| {s} | {p['steps']} | {p['global_acc_before']:.3f} | "
                         f"{p['global_acc_after']:.3f} | {_values(p['per_class_recall_after'])} |")
    return "\n".join(lines)


def norms_table(analyses: dict[str, dict]) -> str:
    """Markdown: per series the per-class feature and head-row norms of the global model and
    after the local-overfit probe."""
    lines = ["| series | model | feature norm per class | head norm per class |", "|---|---|---|---|"]
    for s, a in analyses.items():
        p = a["local_overfit"]
        lines.append(f"| {s} | global | {_values(a['feature_norm_per_class'])} | "
                     f"{_values(a['head_norm_per_class'])} |")
        lines.append(f"| {s} | after {p['steps']} local steps | "
                     f"{_values(p['feature_norm_per_class_after'])} | "
                     f"{_values(p['head_norm_per_class_after'])} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The horizon: has the curve settled?

Curve = tuple[Sequence[int], Sequence[float]]   # (evaluated rounds, test accuracies)


def last_k_mean(curve: Curve, until: Optional[float] = None, k: int = LAST_K) -> Optional[float]:
    """The mean of the last k evaluations at or before round `until` (None: of the whole
    curve), as a run's summary computes it; None when there is none."""
    kept = [a for r, a in zip(*curve) if until is None or r <= until]
    return float(np.mean(kept[-k:])) if kept else None


@dataclasses.dataclass(frozen=True)
class Horizon:
    rounds: int           # the last evaluated round, T
    cut: float            # (1 - HORIZON_FRACTION) T
    before: float         # mean over the curves of their last-k means ending at `cut`
    end: float            # ... ending at T: the headline number

    @property
    def moved(self) -> float:
        return self.end - self.before

    @property
    def settled(self) -> bool:
        return abs(self.moved) < HORIZON_TOLERANCE


def horizon_check(curves: Sequence[Curve], k: int = LAST_K) -> Optional[Horizon]:
    """The criterion for a horizon long enough for a claim: the last-k mean (over seeds: one
    curve each) moves less than HORIZON_TOLERANCE over the last HORIZON_FRACTION of the rounds,
    i.e. between the last-k mean ending at (1 - HORIZON_FRACTION) T and the one ending at T.
    None when there is no curve, or one without an evaluation at or before the cut."""
    curves = [c for c in curves if len(c[0])]
    if not curves:
        return None
    rounds = max(max(c[0]) for c in curves)
    cut = (1 - HORIZON_FRACTION) * rounds
    before = [last_k_mean(c, cut, k) for c in curves]
    if None in before:
        return None
    end = [last_k_mean(c, None, k) for c in curves]
    return Horizon(rounds, cut, float(np.mean(before)), float(np.mean(end)))
