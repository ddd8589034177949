"""Matplotlib figures from run histories (headless: the Agg backend)."""
from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy_curves(curves: dict[str, list[list[dict]]], path: str, title: str = "") -> None:
    """One line per label (e.g. normalizer): mean test accuracy over seeds vs round, min-max band.

    curves: label -> list over seeds of metric rows (each with 'round' and 'test_accuracy').
    """
    plt = _pyplot()
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
