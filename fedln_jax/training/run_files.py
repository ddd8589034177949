"""One run's workdir while its program trains (metrics rows, checkpoints, summary), and which
process writes the JSON files."""
from __future__ import annotations

import json
import time

import jax
from etils import epath

from fedln_jax.runtime.tensorboard_events import RunBoard
from fedln_jax.training import checkpoint
from fedln_jax.training.experiment import Experiment
from fedln_jax.training.summary import summarize
from fedln_jax.training.workdir import read_metrics, write_json, write_text
from fedln_jax.version import __version__


def is_writer() -> bool:
    """Process 0 writes the JSON files (orbax coordinates the processes' checkpoint writes)."""
    return jax.process_index() == 0


class RunFiles:
    """One run's workdir as its program trains: metrics rows, checkpoints, summary.

    The host-side progress the metrics depend on (the running train-loss sum) rides in each
    checkpoint's JSON, so a resumed run reports the same train_loss as an uninterrupted one.
    """

    def __init__(self, exp: Experiment, workdir: str, manager, restored, session_start: float,
                 program_info: dict):
        self.exp, self.workdir, self.manager = exp, workdir, manager
        self.program_info = program_info   # runs_vectorized, device_layout: in every summary
        self.summary: dict | None = None   # set by finish
        self.root = epath.Path(workdir)
        self.start_round = restored.round if restored else 0
        self.progress = restored.meta["progress"] if restored else {}
        self.last_saved = self.start_round or None
        self.save_seconds: list[float] = []
        self.elapsed_before = float(self.progress.get("elapsed_seconds", 0.0))
        self.session_start = session_start
        self.history = [row for row in read_metrics(workdir) if row["round"] <= self.start_round]
        self.board = None   # TensorBoard events (config key tensorboard)
        if is_writer() and exp.config.tensorboard:
            self.board = RunBoard(workdir, self.start_round)
        if is_writer():
            self.root.mkdir(parents=True, exist_ok=True)
            write_json(self.root / "config.json", exp.config.to_dict())
            write_json(self.root / "clients.json", {
                "class_counts": exp.counts_CK.tolist(),
                "examples_per_client": exp.counts_CK.sum(1).tolist()})
            self._write_metrics()

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.session_start

    def add_row(self, row: dict) -> None:
        row["elapsed_seconds"] = round(self.elapsed(), 3)
        self.history.append(row)
        self._write_metrics()
        if self.board is not None:
            self.board.add_row(row)

    def _write_metrics(self) -> None:
        if is_writer():
            write_text(self.root / "metrics.jsonl",
                       "".join(json.dumps(r) + "\n" for r in self.history))

    def save(self, state, round_: int, loss_sum: float, rounds_in_sum: int) -> None:
        meta = {"fedln_jax_version": __version__, "environment": self.program_info["environment"],
                "config": self.exp.config.to_dict(),
                "progress": {"train_loss_sum": loss_sum, "rounds_in_sum": rounds_in_sum,
                             "elapsed_seconds": round(self.elapsed(), 3)}}
        seconds = checkpoint.save(self.manager, state, meta)
        if seconds is not None:
            self.save_seconds.append(seconds)
        self.last_saved = round_

    def finish(self, status: str, rounds_completed: int, **extra) -> None:
        self.summary = summarize(self.history, self.elapsed(), status=status,
                                 rounds_completed=rounds_completed,
                                 resumed_from_round=self.start_round,
                                 save_seconds=self.save_seconds,
                                 last_checkpoint_round=self.last_saved,
                                 **self.program_info, **extra)
        if is_writer():
            write_json(self.root / "summary.json", self.summary)
        if self.board is not None:
            self.board.close()
