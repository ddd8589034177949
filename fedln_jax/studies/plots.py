"""Matplotlib figures from run histories (headless: the Agg backend)."""
from __future__ import annotations

import numpy as np

from fedln_jax.training.workdir import save_figure


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy_curves(curves: dict[str, list[list[dict]]], path: str, title: str = "") -> None:
    """One line per label (e.g. normalizer): mean test accuracy over seeds vs round, min-max band.

    curves: label -> list over seeds of metric rows (each with 'round' and 'test_accuracy').
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, runs in curves.items():
        rounds = [row["round"] for row in runs[0]]
        acc_SR = np.array([[row["test_accuracy"] for row in rows] for rows in runs])
        ax.plot(rounds, acc_SR.mean(0), label=f"{label} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(rounds, acc_SR.min(0), acc_SR.max(0), alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def _bars(ax, groups: dict[str, list], ylabel: str, title: str) -> None:
    """Grouped bars: one group per class, one bar per label."""
    width = 0.8 / max(len(groups), 1)
    for i, (label, values) in enumerate(groups.items()):
        vals = [np.nan if v is None else v for v in values]
        ax.bar(np.arange(len(vals)) + (i - (len(groups) - 1) / 2) * width, vals, width,
               label=label)
    ax.set_xlabel("class")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.set_xticks(range(len(next(iter(groups.values())))))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)


def plot_norms(result: dict, path: str) -> None:
    """Per-class feature norms and head-row norms, global model vs after the local probe."""
    plt = pyplot()
    probe = result["local_overfit"]
    after = f"after {probe['steps']} local steps on client {probe['client']}"
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    _bars(a, {"global": result["feature_norm_per_class"],
              after: probe["feature_norm_per_class_after"]},
          "mean ||phi(x)||", f"test feature norm per class ({result['norm_label']})")
    _bars(b, {"global": result["head_norm_per_class"], after: probe["head_norm_per_class_after"]},
          "||w_c||", f"head row norm per class ({result['norm_label']})")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_spectra(spectra: dict[str, list], path: str, title: str = "") -> None:
    """Normalized singular values of the centred test features, one line per label (log y)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, s in spectra.items():
        s = np.asarray(s, float)
        ax.plot(np.arange(1, s.size + 1), np.maximum(s, 1e-8), label=label)
    ax.set_yscale("log")
    ax.set_xlabel("index")
    ax.set_ylabel("singular value / largest")
    ax.set_title(title or "singular values of the centred test features", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_local_overfit(result: dict, path: str) -> None:
    """Per-class recall of the global model and of each local-overfit probe (one panel)."""
    plot_local_overfit_grid({f"local overfit, {result['norm_label']}": result}, path)


def plot_final_vs_x(table: list[dict], path: str, xlabel: str = "", xscale: str = "linear",
                    title: str = "") -> None:
    """Mean of the last 3 evaluations (over seeds; min-max over seeds as error bars) per series:
    a line over x when x is numeric, grouped bars when x is a category (or absent)."""
    plt = pyplot()
    series = list(dict.fromkeys(t["series"] for t in table))
    xs = list(dict.fromkeys(t["x"] for t in table))
    cell = {(t["series"], t["x"]): t for t in table}
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    width = 0.8 / len(series)
    for i, s in enumerate(series):
        pts = [(j, x, cell[(s, x)]) for j, x in enumerate(xs) if (s, x) in cell]
        y = [c["last3_mean"] for _, _, c in pts]
        err = [[c["last3_mean"] - min(c["per_seed_last3"]) for _, _, c in pts],
               [max(c["per_seed_last3"]) - c["last3_mean"] for _, _, c in pts]]
        err = np.maximum(err, 0) if any(c["n"] > 1 for _, _, c in pts) else None
        if numeric:
            ax.errorbar([x for _, x, _ in pts], y, yerr=err, marker="o", capsize=3, label=s)
        else:
            ax.bar([j + (i - (len(series) - 1) / 2) * width for j, _, _ in pts], y, width,
                   yerr=err, capsize=2, label=s)
    if numeric:
        ax.set_xscale(xscale)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
    else:
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels(["" if x is None else str(x) for x in xs], rotation=20)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (mean of last 3 evals)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_local_overfit_grid(results: dict[str, dict], path: str) -> None:
    """One panel per series: per-class recall of the global model and after each probe."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, (label, result) in zip(axes[0], results.items()):
        probes = result["local_overfit_by_steps"]
        groups = _recall_groups(probes, "global ({:.2f})", "{} step ({:.2f})")
        _bars(ax, groups, "recall", f"{label}: client {probes[0]['client']} "
              f"(classes {probes[0]['client_classes']})")
        ax.set_ylim(0, 1.05)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def _recall_groups(probes: list[dict], before_label: str, after_label: str) -> dict[str, list]:
    """Bar groups of a local-overfit probe: the global model's per-class recall, then the
    recall after each number of local steps, labelled with the global accuracy."""
    groups = {before_label.format(probes[0]["global_acc_before"]): probes[0]["per_class_recall_before"]}
    for p in probes:
        groups[after_label.format(p["steps"], p["global_acc_after"])] = p["per_class_recall_after"]
    return groups
