"""A resumed run is bit-identical to an uninterrupted one over a whole one-class FN run (whose
dynamics amplify any float32 difference), resumed between evaluations and checkpoints and run
in blocks of other lengths. What is and is not bit-identical across layouts: docs/scale.md,
"What is bit-identical"."""
import hashlib
import os
import signal

import jax
import numpy as np
import pytest

from fedln_jax.config import Config
from fedln_jax.errors import Interrupted
from fedln_jax.studies import analysis
from fedln_jax.training import checkpoint, train
from fedln_jax.training.workdir import read_metrics

# One class per client, FN, 5 of 10 clients a round.
ONE_CLASS_FN = dict(dataset="digits", partition="n_class", classes_per_client=1, num_clients=10,
                    clients_per_round=5, local_steps=3, batch_size=16, lr=0.05, norm="fn",
                    rounds=30, eval_every=5, client_chunk_size=1)


def config(**overrides) -> Config:
    return Config(**{**ONE_CLASS_FN, **overrides}).validate()


def fingerprint(workdir: str) -> dict:
    """The metrics rows (without wall times) and a hash of the final parameters' bytes."""
    rows = [{k: v for k, v in row.items() if k != "elapsed_seconds"}
            for row in read_metrics(workdir)]
    _, state, _ = analysis.load_run(workdir)
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(state.params):
        digest.update(np.asarray(leaf).tobytes())
    return {"rows": rows, "params_sha256": digest.hexdigest(), "round": int(state.round)}


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("one") / "run")
    train.run(config(), workdir, quiet=True)
    return fingerprint(workdir)


def test_the_run_is_long_and_moves(one_device):
    rows = one_device["rows"]
    assert [r["round"] for r in rows] == [5, 10, 15, 20, 25, 30] and one_device["round"] == 30
    assert len({r["test_accuracy"] for r in rows}) > 1   # the model changes over the run


def test_any_resume_point_gives_the_same_bits(one_device, tmp_path, monkeypatch):
    """SIGINT after round 13, between evaluations and checkpoints: the run saves there and
    the same command resumes from it (in blocks of other lengths than the uninterrupted
    run's)."""
    workdir = str(tmp_path / "resumed")

    def interrupt_at_13(event, round_):
        if event == "block" and round_ == 13:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(checkpoint, "pause_for_test", interrupt_at_13)
    monkeypatch.setattr(train, "BLOCK_SECONDS", 0.0)   # blocks of one round: one ends at 13
    with pytest.raises(Interrupted):
        train.run(config(), workdir, quiet=True)
    monkeypatch.undo()
    assert train.run(config(), workdir, quiet=True)["resumed_from_round"] == 13
    assert fingerprint(workdir) == one_device
