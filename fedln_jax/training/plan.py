"""The memory plan of a run (docs/scale.md#memory-plan): the floor counted from shapes
(memory.Floor, what a run is refused on before anything is written) beside what XLA reports
for the compiled block of rounds and the compiled evaluation, and the device's capacity.
`fedln-jax config --plan` prints it without training."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fedln_jax.config import Config
from fedln_jax.data import load_dataset
from fedln_jax.data.dataset import Dataset
from fedln_jax.data.sources import DATASETS, LoadOptions
from fedln_jax.errors import FedlnError
from fedln_jax.training.experiment import Experiment, build_experiment
from fedln_jax.training.layout import mesh_devices
from fedln_jax.training.memory import analysis_of, describe, device_capacity, peak_of
from fedln_jax.training.program import Program, build_program

# Train and test examples of the official splits of the datasets a plan can stand in for when
# their files are not here (their image shape and classes: data.sources.DATASETS).
DECLARED_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000)}


def declared_dataset(name: str) -> Dataset | None:
    """Zero images and balanced labels of the declared shapes, sizes and classes of dataset
    `name`, or None when they are not all declared (folder datasets: read from the data)."""
    info, sizes = DATASETS.get(name), DECLARED_SIZES.get(name)
    if info is None or sizes is None or info.image_shape is None or info.num_classes is None:
        return None
    x = [np.zeros((n,) + info.image_shape, np.uint8) for n in sizes]
    y = [np.arange(n, dtype=np.int32) % info.num_classes for n in sizes]
    return Dataset(name=name, x_train=x[0], y_train=y[0], x_test=x[1], y_test=y[1],
                   num_classes=info.num_classes, pixel_scale=1.0 / 255.0)


def plan_data(config: Config) -> tuple[Dataset, str | None]:
    """The run's data as the plan sees it, never downloaded (the plan writes nothing): the
    dataset itself where it is here, else a stand-in of its declared shapes, with a note."""
    try:
        return load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed,
                            test_fraction=config.test_fraction,
                            options=LoadOptions(download=False, image_size=config.image_size,
                                                pacs_domain=config.pacs_domain)), None
    except FedlnError as exc:
        stand_in = declared_dataset(config.dataset)
        if stand_in is None:
            raise
        n_train, n_test = DECLARED_SIZES[config.dataset]
        h, w, c = stand_in.image_shape
        why = str(exc).split(";", 1)[0].replace(" and download=false", "")
        return stand_in, (f"planned from the declared shapes of {config.dataset} ({n_train} "
                          f"train + {n_test} test images of {h}x{w}x{c}, "
                          f"{stand_in.num_classes} classes): {why} (a plan downloads nothing)")


def memory_plan(config: Config) -> dict:
    """Build the run (data placed, state initialized, nothing written), compile one block of
    rounds and the evaluation, and report their sizes with the floor and the capacity. A
    dataset that is not here is planned from its declared shapes (plan_data)."""
    dataset, note = plan_data(config)
    return program_plan([build_experiment(config, dataset=dataset)], note)


def device_bytes(tree) -> int:
    """Bytes of a pytree of placed arrays on one device (a shard of each)."""
    return sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize
               for a in jax.tree.leaves(tree))


def program_plan(members: list[Experiment], note: str | None = None) -> dict:
    """The plan of the program that trains `members` (R >= 1 runs), laid out as training lays
    it out (layout.decide_layout). Its need counts every array that stays on the device
    while it trains: during a block of rounds, the block's own peak (state, hyperparameters
    and data are its arguments) plus the test set; during an evaluation, its peak plus the
    training data and hyperparameters it does not take."""
    return plan_of_program(build_program(members, mesh_devices(members[0].config)), note)


def plan_of_program(program: Program, note: str | None = None) -> dict:
    """program_plan of a built program."""
    block = program.run_block.lower(program.fresh, program.hparams, program.data,
                                    jnp.int32(1), program.scalars([0.0] * program.runs)).compile()
    evaluate = program.evaluate.lower(program.fresh, *program.tests).compile()
    round_sizes, eval_sizes = analysis_of(block), analysis_of(evaluate)
    resident = {"round": device_bytes(program.tests),
                "evaluation": device_bytes((program.data, program.hparams))}
    need = max(peak_of(round_sizes) + resident["round"],
               peak_of(eval_sizes) + resident["evaluation"])
    layout = program.layout
    capacity, what = device_capacity(layout.devices[0])
    floor = layout.floor
    return {"device": f"{layout.devices[0].platform} x{len(layout.devices)}",
            "runs": program.runs, "device_layout": [layout.along_runs, layout.along_clients],
            "client_chunk_size": layout.chunk,
            "floor_bytes": floor.total, "floor": floor._asdict(),
            "compiled_round": round_sizes, "compiled_evaluation": eval_sizes,
            "resident_besides": resident,
            "need_bytes": need, "capacity_bytes": capacity, "capacity": what,
            "fits": capacity is None or need <= capacity, "data": note or "the dataset itself"}


def format_plan(plan: dict) -> str:
    """A few lines for the terminal."""
    rs, ev = plan["compiled_round"], plan["compiled_evaluation"]
    lines = ([f"note: {plan['data']}"] if plan["data"] != "the dataset itself" else []) + [
             f"device {plan['device']}, client_chunk_size {plan['client_chunk_size']}"
             + (f", {plan['runs']} runs (devices: {plan['device_layout'][0]} along runs x "
                f"{plan['device_layout'][1]} along clients)" if plan["runs"] > 1 else ""),
             f"  floor (shapes)     {describe(plan['floor_bytes'])}",
             f"  compiled round     arguments {describe(rs['argument'] or 0)}, outputs "
             f"{describe(rs['output'] or 0)} (aliased {describe(rs['alias'] or 0)}), "
             f"temporaries {describe(rs['temp'] or 0)}",
             f"  compiled eval      arguments {describe(ev['argument'] or 0)}, temporaries "
             f"{describe(ev['temp'] or 0)}",
             f"  resident besides   test set {describe(plan['resident_besides']['round'])} "
             f"(during a round), training data {describe(plan['resident_besides']['evaluation'])}"
             f" and hyper-parameters (during an evaluation)",
             f"  need               {describe(plan['need_bytes'])}",
             f"  capacity           " + (describe(plan['capacity_bytes'])
                                        if plan["capacity_bytes"] is not None else "unknown")
             + f" ({plan['capacity']})",
             f"  fits               {'yes' if plan['fits'] else 'no'}"]
    return "\n".join(lines)


def check_plan(plan: dict) -> None:
    """FedlnError (one line: the need, the capacity, the knob) when the plan does not fit."""
    if plan["fits"]:
        return
    knob = ("lower client_chunk_size" if plan["client_chunk_size"] > 1 else
            "lower batch_size, num_clients or the width (conv_features, dense_features)")
    raise FedlnError(f"the compiled round needs {describe(plan['need_bytes'])} but the device "
                     f"has {describe(plan['capacity_bytes'])} ({plan['capacity']}); {knob}")
