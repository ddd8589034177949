"""The memory plan (docs/scale.md#memory-plan): XLA's sizes of the compiled round, the floor,
and a refusal in one line when the device is too small (its capacity faked)."""
import pytest

from fedln_jax.config import Config
from fedln_jax.errors import FedlnError
from fedln_jax.training import memory, plan

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
    from fedln_jax.training import experiment, layout
    monkeypatch.setattr(layout, "device_capacity", lambda device: (1000, "a faked device"))
    with pytest.raises(FedlnError, match="needs at least .* but has 1000 B"):
        experiment.build_experiment(Config(**TINY).validate())


def test_out_of_memory_is_recognized_by_xla_status_or_memory_error():
    assert memory.is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Out of memory"))
    assert memory.is_out_of_memory(MemoryError())
    assert not memory.is_out_of_memory(RuntimeError("INVALID_ARGUMENT: shapes"))


def test_auto_chunk_on_an_accelerator_picks_the_widest_that_fits(monkeypatch, capsys):
    """A faked accelerator whose default chunk (the whole cohort of 4) does not fit half its
    free memory: auto narrows the chunk and says so; the user's config keeps auto."""
    from fedln_jax.training import experiment, layout, program
    config = Config(**TINY, clients_per_round=4).validate()
    monkeypatch.setattr(layout, "on_cpu", lambda: False)
    floor = experiment.build_experiment(config).floor
    budget = floor.data + floor.state + 2 * floor.per_client + floor.per_client // 2
    monkeypatch.setattr(layout, "device_capacity",
                        lambda device: (int(budget / memory.AUTO_CHUNK_MARGIN) + 1, "faked"))
    exp = experiment.build_experiment(config)
    assert exp.spec.chunk_size == 2 and exp.config.client_chunk_size is None
    built = program.build_program([exp], layout.mesh_devices(config))
    assert built.layout.chunk == built.spec.chunk_size == 2 and built.layout.narrowed_from == 4
    assert "client_chunk_size=auto chose 2 (the default 4" in capsys.readouterr().err


def test_auto_chunk_keeps_the_default_on_the_cpu_and_an_explicit_width(monkeypatch):
    from fedln_jax.training import experiment, layout
    monkeypatch.setattr(layout, "device_capacity", lambda device: (10 ** 7, "faked"))
    assert experiment.build_experiment(Config(**TINY).validate()).spec.chunk_size == 1
    monkeypatch.setattr(layout, "on_cpu", lambda: False)
    explicit = Config(**TINY, client_chunk_size=3).validate()
    assert experiment.build_experiment(explicit).spec.chunk_size == 3


def test_a_dataset_that_is_not_here_is_planned_from_its_declared_shapes(monkeypatch, tmp_path,
                                                                         capsys):
    """README's `fedln-jax config --plan model=cnn dataset=cifar10` on a fresh clone: the plan
    needs only the shapes, so it stands zero images of the declared shape in for the data,
    says so, and downloads nothing. The example counts are cut to keep the test quick."""
    from fedln_jax.cli import main
    monkeypatch.setitem(plan.DECLARED_SIZES, "cifar10", (200, 50))
    empty = tmp_path / "tfds"
    empty.mkdir()
    assert main(["config", "--plan", "model=cnn", "dataset=cifar10", f"data_dir={empty}",
                 "num_clients=10", "conv_features=8/16", "local_steps=2", "batch_size=8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "note: planned from the declared shapes of cifar10 (200 train + 50 test images of "
        f"32x32x3, 10 classes): dataset 'cifar10' is not in {empty} (a plan downloads nothing)")
    assert any(line.startswith("  fits               yes") for line in lines)
    assert list(empty.iterdir()) == []
    result = plan.memory_plan(Config(**{**TINY, "dataset": "cifar10", "model": "cnn",
                                        "data_dir": str(empty)}).validate())
    assert result["floor"]["data"] >= 250 * 32 * 32 * 3


def test_a_dataset_without_declared_sizes_still_needs_its_data(tmp_path):
    with pytest.raises(FedlnError, match="tinyimagenet"):
        plan.memory_plan(Config(**{**TINY, "dataset": "tinyimagenet", "model": "cnn",
                                   "data_dir": str(tmp_path)}).validate())


def test_the_plan_counts_every_array_that_stays_resident():
    """Measured on the CPU: the device buffers alive once the program is built (what stays
    resident while it trains) are exactly the compiled block's arguments plus what the plan
    adds for the round (the test set), to within 1 KiB (the block's scalar arguments; 260 B
    on jax 0.12.1);
    and the need covers them. Leaving the test set out of the plan fails this."""
    import gc

    import jax

    from fedln_jax.training import experiment, layout, program
    config = Config(**{**TINY, "num_clients": 6}, test_fraction=0.4).validate()
    built = program.build_program([experiment.build_experiment(config)],
                                  layout.mesh_devices(config))
    gc.collect()
    buffers = {a.unsafe_buffer_pointer(): a.nbytes for a in jax.live_arrays() if not a.is_deleted()}
    measured = sum(buffers.values())
    result = plan.plan_of_program(built)
    counted = result["compiled_round"]["argument"] + result["resident_besides"]["round"]
    assert abs(measured - counted) <= 1024, (measured, counted, result)
    assert measured <= result["need_bytes"]
