"""TensorBoard event files of a run (config key `tensorboard=true`), written by tensorboardX.

tensorboardX writes the event format without TensorFlow; it is the optional extra
`pip install 'fedln_jax[tensorboard]'`. Each run writes into <workdir>/tensorboard/, so
`tensorboard --logdir DIR` over a sweep's or a figure's workdir shows every run in one view.
Every evaluation row of metrics.jsonl becomes scalars at step = round:
  train/loss, test/accuracy, test/accuracy_pooled, test/loss, recall/class_<k>, and, with
  analysis_every, analysis/feature_norm/class_<k>, analysis/head_norm/class_<k> and
  analysis/singular_value/<i> (the first SINGULAR_VALUES, normalized by the largest).
"""
from __future__ import annotations

import os

from fedln_jax.errors import FedlnError

SUBDIR = "tensorboard"
SINGULAR_VALUES = 16
SCALARS = {"train_loss": "train/loss", "test_accuracy": "test/accuracy",
           "test_accuracy_pooled": "test/accuracy_pooled", "test_loss": "test/loss"}
PER_CLASS = {"per_class_recall": "recall/class_{}",
             "feature_norm_per_class": "analysis/feature_norm/class_{}",
             "head_norm_per_class": "analysis/head_norm/class_{}"}
INSTALL_HINT = "pip install 'fedln_jax[tensorboard]'"


def check_installed() -> None:
    """FedlnError naming the extra when tensorboardX cannot be imported."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise FedlnError(f"tensorboard=true needs the tensorboard extra (tensorboardX), "
                         f"which is not installed: {INSTALL_HINT}") from None


def scalars_of_row(row: dict) -> dict[str, float]:
    """tag -> value of one metrics row (None entries, e.g. the recall of an absent class, and
    non-finite values are left out)."""
    out = {tag: row[key] for key, tag in SCALARS.items() if key in row}
    for key, pattern in PER_CLASS.items():
        for k, value in enumerate(row.get(key) or ()):
            out[pattern.format(k)] = value
    for i, value in enumerate((row.get("singular_values") or ())[:SINGULAR_VALUES]):
        out[f"analysis/singular_value/{i}"] = value
    return {tag: float(v) for tag, v in out.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
            and abs(v) != float("inf")}


class RunBoard:
    """The event writer of one run. A resumed run purges the steps after its checkpoint, as
    metrics.jsonl drops the rows after it, so TensorBoard shows each round once."""

    def __init__(self, workdir: str, start_round: int = 0):
        check_installed()
        from tensorboardX import SummaryWriter
        self.writer = SummaryWriter(os.path.join(workdir, SUBDIR), flush_secs=30,
                                    purge_step=start_round + 1 if start_round else None)

    def add_row(self, row: dict) -> None:
        for tag, value in scalars_of_row(row).items():
            self.writer.add_scalar(tag, value, global_step=row["round"])
        self.writer.flush()   # a preempted run keeps every evaluation it reported

    def close(self) -> None:
        self.writer.close()
