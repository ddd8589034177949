"""TensorBoard event files (config key tensorboard): the scalars of a metrics row, the event
records read back, the resume purge, and the error without the extra installed."""
import struct
import sys

import pytest

from fedln_jax.cli import main
from fedln_jax.config import Config
from fedln_jax.errors import FedlnError
from fedln_jax.runtime.tensorboard_events import SUBDIR, RunBoard, scalars_of_row

ROW = {"round": 5, "train_loss": 0.5, "test_accuracy": 0.75, "test_accuracy_pooled": 0.7,
       "test_loss": 0.9, "per_class_recall": [1.0, None, 0.25], "elapsed_seconds": 3.0,
       "feature_norm_per_class": [2.0, 3.0], "head_norm_per_class": [0.5, float("nan")],
       "singular_values": [1.0, 0.5, 0.1]}


def read_events(logdir) -> list:
    """Every Event record of the event files below `logdir`, parsed from the TFRecord framing
    (u64 length, u32 crc, payload, u32 crc) with tensorboardX's own Event proto."""
    from tensorboardX.proto.event_pb2 import Event
    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            events.append(Event.FromString(data[at + 12:at + 12 + length]))
            at += 12 + length + 4
    return events


def scalars(events) -> dict:
    """(tag, step) -> value of the scalar summaries."""
    return {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value}


def test_a_row_becomes_scalars_per_metric_class_and_singular_value():
    out = scalars_of_row(ROW)
    assert out == {"train/loss": 0.5, "test/accuracy": 0.75, "test/accuracy_pooled": 0.7,
                   "test/loss": 0.9, "recall/class_0": 1.0, "recall/class_2": 0.25,
                   "analysis/feature_norm/class_0": 2.0, "analysis/feature_norm/class_1": 3.0,
                   "analysis/head_norm/class_0": 0.5, "analysis/singular_value/0": 1.0,
                   "analysis/singular_value/1": 0.5, "analysis/singular_value/2": 0.1}


def test_events_read_back_and_a_resume_purges_the_rounds_after_its_checkpoint(tmp_path):
    board = RunBoard(str(tmp_path))
    board.add_row(ROW)
    board.add_row(dict(ROW, round=10, test_accuracy=0.8))
    board.close()
    got = scalars(read_events(tmp_path / SUBDIR))
    assert got[("test/accuracy", 5)] == 0.75 and got[("test/accuracy", 10)] == pytest.approx(0.8)
    assert got[("recall/class_2", 5)] == 0.25 and ("recall/class_1", 5) not in got
    resumed = RunBoard(str(tmp_path), start_round=5)   # the checkpoint was at round 5
    resumed.add_row(dict(ROW, round=10, test_accuracy=0.6))
    resumed.close()
    events = read_events(tmp_path / SUBDIR)
    # TensorBoard drops earlier events at steps >= a SessionLog START's step
    starts = [e.step for e in events if e.HasField("session_log") and e.session_log.status == 1]
    assert starts == [6]


def test_without_the_extra_one_error_line_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)   # import tensorboardX fails
    with pytest.raises(FedlnError, match=r"pip install 'fedln_jax\[tensorboard\]'"):
        Config(tensorboard=True).validate()
    Config(tensorboard=False).validate()
    assert main(["run", "--workdir", str(tmp_path / "w"), "--quiet", "tensorboard=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "fedln_jax[tensorboard]" in err[0]
    assert not (tmp_path / "w").exists()
