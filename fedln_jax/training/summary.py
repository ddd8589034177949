"""A run's summary.json: its headline numbers from the rows of metrics.jsonl."""
from __future__ import annotations

import numpy as np

LAST_K = 3                 # a run's headline number: the mean of its last LAST_K evaluations


def summarize(history: list[dict], wall_seconds: float, *, status: str = "completed",
              rounds_completed: int | None = None, save_seconds=(), **extra) -> dict:
    """The whole run (every session of it): accuracies from metrics.jsonl's rows, the status
    (completed | interrupted | diverged), and checkpoint timings of this session."""
    accuracies = [row["test_accuracy"] for row in history]
    summary = {"final_test_accuracy": accuracies[-1] if accuracies else None,
               "mean_last3_test_accuracy": float(np.mean(accuracies[-LAST_K:])) if accuracies else None,
               "best_test_accuracy": max(accuracies) if accuracies else None,
               "final_train_loss": history[-1]["train_loss"] if history else None,
               "rounds_completed": (history[-1]["round"] if rounds_completed is None and history
                                    else rounds_completed),
               "wall_seconds": round(wall_seconds, 3),
               "status": status,
               "checkpoints_saved": len(save_seconds),
               "seconds_per_checkpoint": (round(float(np.mean(save_seconds)), 4)
                                          if save_seconds else None)}
    summary.update(extra)
    return summary
