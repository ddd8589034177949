"""One compiled program that trains R >= 1 runs together (docs/scale.md).

Runs whose configs differ only in VALUE_KEYS (and whose arrays have equal shapes) share one
program: their states, hyperparameters and data are stacked on a leading runs axis and the
block of rounds is vmapped over it. A program of one run has no runs axis, so a single run is
exactly round.py's round and its checkpoints hold a plain ServerState. Per-run views
(`take`) are plain ServerStates either way: each run checkpoints into its own workdir.
"""
from __future__ import annotations

import json
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fedln_jax.config import Config, value_keys
from fedln_jax.engine.evaluation import evaluation_fn
from fedln_jax.engine.placement import replicate
from fedln_jax.engine.round import make_block_fn, make_round_fn
from fedln_jax.engine.state import RoundSpec
from fedln_jax.training.experiment import Experiment, hparams_of, initial_state
from fedln_jax.training.layout import Layout, decide_layout, report_auto
from fedln_jax.training.memory import Floor

# Config keys that change only values a round reads, never shapes or code (declared on the
# Config fields, `value=True`): runs differing only in them are stacked on a leading runs axis
# and share one compiled program.
# seed/dirichlet_beta change the data and partition: the index tables are padded to a common
# width, which leaves every run's numbers unchanged (random draws are prefix-stable in length).
# Algorithm hyperparameters (prox_mu, fedlc_tau, ...) and the local SGD's momentum and
# weight_decay are read from `hparams` as arrays too (momentum's trace: see program_spec).
# Every other key is structure and splits programs: e.g. conv_features/dense_features change the
# parameter shapes, so runs of different widths never share one.
VALUE_KEYS = value_keys()


def program_key(config: Config) -> str:
    """Runs with equal program keys can be vectorized together."""
    fields = {k: v for k, v in config.to_dict().items() if k not in VALUE_KEYS}
    return json.dumps(fields, sort_keys=True)


def plan_programs(experiments: list[Experiment], resume_rounds: list[int],
                  max_runs: int | None = None) -> list[list[int]]:
    """The programs that train the experiments, each as the indices of its members: equal
    program key, array shapes and resume round (members of a program advance in lockstep);
    order kept. More than max_runs such experiments are cut into consecutive programs of at
    most max_runs members (memory grows with R)."""
    alike: dict[tuple, list[int]] = {}
    for i, (exp, start) in enumerate(zip(experiments, resume_rounds)):
        shapes = (exp.data.x.shape, exp.data.idx_C.shape[0], exp.x_test.shape, exp.num_classes)
        alike.setdefault((program_key(exp.config), shapes, start), []).append(i)
    return [part for members in alike.values() for part in cut(members, max_runs)]


def cut(members: list, max_runs: int | None) -> list[list]:
    """Consecutive parts of at most max_runs runs (all of them when None)."""
    size = max_runs or max(len(members), 1)
    return [members[k:k + size] for k in range(0, len(members), size)]


class Program(NamedTuple):
    """The jitted functions of a program's members (its runs) and their placed inputs.

    run_block(state, hparams, data, n, loss_sum) -> (state, loss_sum, bad_round) and
    evaluate(state, *tests) -> evaluation counts; with runs > 1 every value but n carries a
    leading runs axis (bad_round and loss_sum are then [R]), laid out over the mesh's 'runs'
    axis.
    """
    runs: int
    run_block: Callable
    evaluate: Callable
    fresh: Any          # the round-0 state
    hparams: Any
    data: Any
    tests: tuple
    mesh: Any           # axes ('runs', 'clients')
    layout: Layout      # devices, mesh and the compiled chunk width, decided once
    spec: RoundSpec     # what the round is compiled for (spec.chunk_size == layout.chunk)

    def take(self, tree: Any, r: int) -> Any:
        """Run r's part of a value of this program (the value itself when there is one run)."""
        return tree if self.runs == 1 else jax.tree.map(lambda a: a[r], tree)

    def join(self, trees: list) -> Any:
        """The inverse of take: per-run values (e.g. restored states) in this program's layout
        (also when the arrays span several processes)."""
        if self.runs == 1:
            return trees[0]
        stacked = NamedSharding(self.mesh, P("runs"))
        return jax.jit(lambda *ts: stack_trees(list(ts)), out_shardings=stacked)(*trees)

    def scalars(self, values: list) -> jax.Array:
        """Per-run float32 scalars (e.g. loss sums) in this program's layout."""
        array = np.asarray(values, np.float32)
        if self.runs == 1:
            return replicate(jnp.asarray(array[0]), self.mesh)
        return place_runs(jnp.asarray(array), 0, self.mesh)


def place_runs(tree: Any, axes: Any, mesh: Mesh) -> Any:
    """Put the leaves stacked over runs (axis 0) along the mesh's 'runs' axis and the leaves
    shared by every run (axis None) on every device."""
    if jax.process_count() > 1:   # one device along 'runs' (layout.device_layout): all replicated
        return replicate(tree, mesh)
    def shardings(axis, subtree):   # axes is a prefix of tree (0 for a whole stacked tree)
        sharding = NamedSharding(mesh, P() if axis is None else P("runs"))
        return jax.tree.map(lambda _: sharding, subtree)

    return jax.device_put(tree, jax.tree.map(shardings, axes, tree, is_leaf=lambda a: a is None))


def build_program(members: list[Experiment], devices: list) -> Program:
    """Stack the members' inputs, lay them over the devices and compile their block of rounds
    and their evaluation."""
    first = members[0]
    layout = decide_layout(first.config, len(members), program_floor(members), devices)
    report_auto(layout)
    mesh, spec = layout.mesh, program_spec(members, layout.chunk)
    round_fn = make_round_fn(first.apply_fn, spec, first.algorithm, mesh)
    run_block, evaluate = make_block_fn(round_fn), evaluation_fn(first)
    if len(members) == 1:
        state, hparams, data = initial_state(first), hparams_of(first.config), first.data
        tests = (first.x_test, first.y_test)
        state, hparams, data, tests = replicate((state, hparams, data, tests), mesh)
    else:
        data, data_axes = stack_runs([exp.data for exp in members])
        tests, test_axes = stack_runs([(exp.x_test, exp.y_test) for exp in members])
        state = stack_trees([initial_state(exp) for exp in members])
        hparams = stack_trees([hparams_of(exp.config) for exp in members])
        # spmd_axis_name: the clients axis inside each run keeps its 'clients' sharding, and
        # the runs axis is laid along 'runs'.
        run_block = jax.vmap(run_block, in_axes=(0, 0, data_axes, None, 0), spmd_axis_name="runs")
        evaluate = jax.vmap(evaluate, in_axes=(0,) + tuple(test_axes), spmd_axis_name="runs")
        state, hparams = place_runs((state, hparams), 0, mesh)
        data, tests = place_runs(data, data_axes, mesh), place_runs(tests, test_axes, mesh)
    return Program(runs=len(members), run_block=jax.jit(run_block, donate_argnums=0),
                   evaluate=jax.jit(evaluate), fresh=state, hparams=hparams, data=data,
                   tests=tuple(tests), mesh=mesh, layout=layout, spec=spec)


def program_floor(members: list[Experiment]) -> Floor:
    """One run's floor for any member: each part at the members' largest."""
    floors = [exp.floor for exp in members]
    return Floor(*(max(column) for column in zip(*floors)))


def program_spec(members: list[Experiment], chunk: int) -> RoundSpec:
    """One RoundSpec for a program's members, whose specs must agree in shapes and code.

    max_epochs, momentum and weight_decay take the members' maximum: extra shuffles a client
    never reaches change nothing, and a momentum trace or a weight decay, built when any run
    needs one, serves every run (each reads its own value from its hparams; 0 is plain SGD).
    The chunk width is the layout's (layout.decide_layout).
    """
    specs = [exp.spec for exp in members]
    spec = specs[0]._replace(max_epochs=max(s.max_epochs for s in specs),
                             momentum=max(s.momentum for s in specs),
                             weight_decay=max(s.weight_decay for s in specs))
    for other in specs:
        if structure(other) != structure(spec):
            raise ValueError(f"runs of one program differ in shapes: {other} vs {spec}")
    return spec._replace(chunk_size=chunk)


def structure(spec: RoundSpec) -> RoundSpec:
    """The spec with the fields program_spec combines blanked (what runs of a program share)."""
    return spec._replace(max_epochs=0, momentum=0.0, weight_decay=0.0)


def stack_runs(trees: list) -> tuple[Any, Any]:
    """Stack per-run pytrees on a leading runs axis; returns (stacked, vmap in_axes).

    A leaf equal in every run (e.g. the training images when only lr differs) is kept once
    with in_axes None. 2-D index tables of different widths are zero-padded to the widest
    (the counts say which entries are real).
    """
    leaves_R = [jax.tree.leaves(t) for t in trees]
    treedef = jax.tree.structure(trees[0])
    stacked, axes = [], []
    for column in zip(*leaves_R):
        # build_experiments already made equal images and labels one array: no byte compare
        # (nor device-to-host copy) of a dataset per run.
        if all(a is column[0] for a in column[1:]) or _all_equal(column):
            stacked.append(column[0])
            axes.append(None)
            continue
        host = [np.asarray(a) for a in column]
        if host[0].ndim == 2 and len({h.shape[0] for h in host}) == 1:
            width = max(h.shape[1] for h in host)
            host = [np.pad(h, ((0, 0), (0, width - h.shape[1]))) for h in host]
        stacked.append(jnp.asarray(np.stack(host)))
        axes.append(0)
    return jax.tree.unflatten(treedef, stacked), jax.tree.unflatten(treedef, axes)


def _all_equal(arrays) -> bool:
    first = np.asarray(arrays[0])
    return all(np.shape(a) == first.shape and np.array_equal(np.asarray(a), first)
               for a in arrays[1:])


def stack_trees(trees: list) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
