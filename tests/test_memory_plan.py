"""The memory plan (docs/scale.md#memory-plan): XLA's sizes of the compiled round, the floor,
and a refusal in one line when the device is too small (its capacity faked)."""
import pytest

from fedln_jax import memory, plan
from fedln_jax.config import Config
from fedln_jax.errors import FedlnError

TINY = dict(dataset="synthetic", num_clients=4, classes_per_client=3, local_steps=2,
            batch_size=8, rounds=2, eval_every=1)


def test_the_plan_reports_the_compiled_round_and_fits_on_this_machine(capsys):
    result = plan.memory_plan(Config(**TINY).validate())
    for part in ("compiled_round", "compiled_evaluation"):
        assert result[part]["argument"] > 0 and result[part]["temp"] is not None
    assert 0 < result["floor_bytes"] and result["need_bytes"] >= plan.peak_of(result["compiled_round"])
    assert result["fits"] and "fits               yes" in plan.format_plan(result)


def test_a_device_too_small_for_the_plan_is_one_line_naming_the_knob(monkeypatch):
    monkeypatch.setattr(plan, "device_capacity", lambda device: (1000, "a faked device"))
    result = plan.memory_plan(Config(**TINY, client_chunk_size=2).validate())
    assert not result["fits"]
    with pytest.raises(FedlnError, match="needs .* but the device has 1000 B .*client_chunk_size"):
        plan.check_plan(result)


def test_the_floor_refuses_before_the_data_is_placed(monkeypatch):
    from fedln_jax import experiment
    monkeypatch.setattr(experiment, "device_capacity", lambda device: (1000, "a faked device"))
    with pytest.raises(FedlnError, match="needs at least .* but has 1000 B"):
        experiment.build_experiment(Config(**TINY).validate())


def test_out_of_memory_is_recognized_by_xla_status_or_memory_error():
    assert memory.is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Out of memory"))
    assert memory.is_out_of_memory(MemoryError())
    assert not memory.is_out_of_memory(RuntimeError("INVALID_ARGUMENT: shapes"))
