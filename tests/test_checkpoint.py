"""Checkpoint, resume and crash safety: a run stopped anywhere and resumed equals the
uninterrupted run bit for bit (final parameters and metrics rows, timing fields aside)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedln_jax.algorithms import get_algorithm
from fedln_jax.cli import main
from fedln_jax.config import Config
from fedln_jax.engine.placement import client_mesh, replicate
from fedln_jax.engine.state import DeviceData, ServerState, derive_server_context
from fedln_jax.errors import FedlnError, Interrupted
from fedln_jax.training import checkpoint, experiment, program, train
from fedln_jax.training.workdir import compare_configs

TINY = dict(dataset="synthetic", num_clients=4, classes_per_client=3, local_steps=2,
            batch_size=8, rounds=8, eval_every=2, checkpoint_every=2)
TIMING = ("elapsed_seconds",)
# Orbax leaves an asyncio loop warning behind when it fails to read a torn file.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def tiny(**kw) -> Config:
    return Config(**{**TINY, **kw}).validate()


def cli_args(config: Config) -> list[str]:
    return [f"{k}={'none' if v is None else v}" for k, v in config.to_dict().items()
            if v != getattr(Config(), k)]


def rows(workdir) -> list[dict]:
    text = open(os.path.join(workdir, "metrics.jsonl")).read()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in text.splitlines()]


def summary(workdir) -> dict:
    return json.loads(open(os.path.join(workdir, "summary.json")).read())


def steps(workdir) -> list[int]:
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def final_state(workdir, config: Config):
    """The newest checkpoint's ServerState, restored against the config's target."""
    exp = experiment.build_experiment(config)
    target = replicate(experiment.initial_state(exp), client_mesh())
    restored = checkpoint.restore_latest(checkpoint.open_manager(workdir, 3), target,
                                         lambda meta: None)
    return restored.state


def assert_same_run(workdir, reference, config: Config):
    assert rows(workdir) == rows(reference)
    assert [r["round"] for r in rows(workdir)] == train.evaluation_rounds(config)
    chex.assert_trees_all_equal(final_state(workdir, config), final_state(reference, config))
    assert summary(workdir)["status"] == "completed"
    assert summary(workdir)["rounds_completed"] == config.rounds
    assert summary(workdir)["final_test_accuracy"] == summary(reference)["final_test_accuracy"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of tiny() (checkpoints at 2, 4, 6, 8; the newest 3 kept)."""
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    train.run(tiny(), workdir, quiet=True)
    assert steps(workdir) == [4, 6, 8]
    return workdir


# ----------------------------------------------------------------------------- pure helpers


def test_checkpoint_rounds_every_k_and_the_last():
    assert train.checkpoint_rounds(tiny(rounds=7, checkpoint_every=3)) == [3, 6, 7]
    assert train.checkpoint_rounds(tiny(rounds=6, checkpoint_every=3)) == [3, 6]
    assert train.checkpoint_rounds(tiny(rounds=5, checkpoint_every=0)) == [5]


def test_compare_configs_allows_same_or_raised_rounds_only():
    old = tiny().to_dict()
    compare_configs(old, tiny(), "w")
    compare_configs(old, tiny(rounds=20), "w")
    with pytest.raises(FedlnError, match=r"differs in: rounds; rounds: 8 -> 4\).*only be raised"):
        compare_configs(old, tiny(rounds=4), "w")
    with pytest.raises(FedlnError, match=r"differs in: lr, norm, rounds;"):
        compare_configs(old, tiny(rounds=20, lr=0.5, norm="fn"), "w")
    # How rounds are laid out or saved may change on resume (e.g. on another machine).
    compare_configs(old, tiny(rounds=20, client_chunk_size=2, num_devices=1,
                                    checkpoint_every=5, keep_checkpoints=1), "w")
    with pytest.raises(FedlnError, match=r"differs in: lr;"):
        compare_configs(old, tiny(client_chunk_size=2, lr=0.5), "w")


def test_tree_mismatch_names_the_leaf_shape_and_dtype():
    sds = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype)
    target = {"params": {"w": sds((3, 2)), "b": sds((2,))}, "round": sds((), jnp.int32)}
    assert checkpoint.tree_mismatch(target, target) == ""
    assert checkpoint.tree_mismatch({**target, "round": sds((), jnp.float32)}, target) == \
        "round is float32[], expected int32[]"
    assert checkpoint.tree_mismatch({**target, "params": {"w": sds((3, 3)), "b": sds((2,))}},
                                    target) == "params.w is float32[3, 3], expected float32[3, 2]"
    assert checkpoint.tree_mismatch({"params": {"w": sds((3, 2))}, "round": sds((), jnp.int32)},
                                    target) == "missing params.b; unexpected -"


def test_state_with_per_client_state_and_server_optimizer_round_trips_exactly(tmp_path):
    """Everything an algorithm may keep (SCAFFOLD-style per-client variates with a leading
    clients axis, an Adam/Yogi-style server state, BN statistics) comes back bit for bit, as
    the same pytree types, placed like the target."""
    import optax
    params = {"dense": {"kernel": jnp.arange(6.0).reshape(3, 2) / 7}}
    tx = optax.chain(optax.scale_by_adam(), optax.scale(-1.0))
    state = ServerState(
        params=params, model_state={"batch_stats": {"mean": jnp.full((2,), 0.25)}},
        opt_state=tx.init(params),
        client_states={"c_i": jax.random.normal(jax.random.PRNGKey(1), (5, 3, 2))},
        round=jnp.int32(3), key=jax.random.PRNGKey(7))
    state = replicate(state, client_mesh())
    manager = checkpoint.open_manager(str(tmp_path), 2)
    assert checkpoint.save(manager, state, {"progress": {}}) > 0
    assert checkpoint.save(manager, state, {"progress": {}}) is None     # round 3 already saved
    target = jax.tree.map(jnp.zeros_like, state)
    restored = checkpoint.restore_latest(checkpoint.open_manager(str(tmp_path), 2), target,
                                         lambda meta: None)
    assert restored.round == 3 and restored.meta == {
        "progress": {}, "format_version": 1, "round": 3,
        "state_sha256": checkpoint.state_checksum(state)}
    chex.assert_trees_all_equal(restored.state, state)
    chex.assert_trees_all_equal_structs(restored.state, state)
    assert type(restored.state.opt_state[0]) is type(state.opt_state[0])
    assert restored.state.client_states["c_i"].sharding == state.client_states["c_i"].sharding


@pytest.mark.parametrize("algorithm_name", ["fedavg", "scaffold"])
def test_a_checkpoint_from_before_the_server_context_restores_with_it_derived(tmp_path,
                                                                             algorithm_name):
    """Checkpoints written before ServerState had a server_context field store the other six
    fields only (orbax compares the structure, empty nodes included: FedAvg's () counts).
    They restore: FedAvg's context is (), SCAFFOLD's server variate is computed from the stored
    client variates (their example-weighted mean), placed like the target. Nothing is deleted.
    Without a way to derive SCAFFOLD's, the mismatch is an error, not a corrupt checkpoint."""
    algorithm = get_algorithm(algorithm_name)
    params = {"dense": {"kernel": jnp.arange(6.0).reshape(3, 2) / 7}}
    variates_C = ({"c": {"dense": {"kernel": jax.random.normal(jax.random.PRNGKey(1), (4, 3, 2))}}}
                  if algorithm_name == "scaffold" else ())
    context = {"c": {"dense": {"kernel": jnp.zeros((3, 2))}}} if variates_C else ()
    target = replicate(ServerState(params=params, model_state={}, opt_state=(),
                                   client_states=variates_C, round=jnp.int32(2),
                                   key=jax.random.PRNGKey(7), server_context=context),
                       client_mesh())
    old_format = checkpoint.without_server_context(target)
    assert "server_context" not in old_format._fields
    checkpoint.save(checkpoint.open_manager(str(tmp_path), 2), old_format, {})
    counts_C = jnp.array([1, 2, 3, 10], jnp.int32)
    data = DeviceData(x=jnp.zeros((1, 1)), y=jnp.zeros(1, jnp.int32),
                      idx_C=jnp.zeros((4, 1), jnp.int32), counts_C=counts_C)
    restored = checkpoint.restore_latest(
        checkpoint.open_manager(str(tmp_path), 2), target, lambda meta: None,
        derive_server_context=derive_server_context(algorithm, data))
    assert restored.round == 2 and type(restored.state) is ServerState
    chex.assert_trees_all_equal(restored.state.client_states, target.client_states)
    chex.assert_trees_all_equal(restored.state.params, target.params)
    if algorithm_name == "fedavg":
        assert restored.state.server_context == ()
        return
    expected = jnp.tensordot(counts_C / counts_C.sum(), variates_C["c"]["dense"]["kernel"], axes=1)
    got = restored.state.server_context["c"]["dense"]["kernel"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6)
    assert got.sharding == target.server_context["c"]["dense"]["kernel"].sharding
    with pytest.raises(FedlnError, match="does not fit this run's state"):
        checkpoint.restore_latest(checkpoint.open_manager(str(tmp_path), 2), target,
                                  lambda meta: None)
    assert checkpoint.open_manager(str(tmp_path), 2).all_steps() == [2]     # nothing deleted


def test_a_state_of_another_structure_is_refused_and_nothing_is_deleted(tmp_path):
    """A stored state whose structure differs only in an empty node (no leaf differs, so the
    leaf comparison cannot see it) is refused as not fitting, not taken for damage: the
    fallback for damage would delete every step."""
    state = ServerState({"w": jnp.ones(2)}, {}, (), (), jnp.int32(2), jax.random.PRNGKey(0))
    checkpoint.save(checkpoint.open_manager(str(tmp_path), 2), state, {})
    with pytest.raises(FedlnError, match="does not fit this run's state"):
        checkpoint.restore_latest(checkpoint.open_manager(str(tmp_path), 2),
                                  state._replace(opt_state={"a": ()}), lambda meta: None)
    assert checkpoint.open_manager(str(tmp_path), 2).all_steps() == [2]


# ----------------------------------------------------------------------------- in process


@pytest.mark.parametrize("algorithm, clients_per_round", [
    ("fedavg", None), ("fedavg", 2), ("scaffold", 2), ("fedyogi", None)])
def test_half_then_extended_equals_straight_bit_for_bit(tmp_path, reference, algorithm,
                                                       clients_per_round):
    """N rounds straight == N/2 rounds, stop, raise rounds to N and resume; with full and
    partial participation (the cohort is drawn from the round's key), SCAFFOLD's per-client
    control variates (only the sampled clients' change each round) and FedYogi's server
    optimizer state. The reference run checkpoints every 2 rounds, the split one only at its
    ends: how rounds are grouped into blocks never changes results."""
    config = tiny(clients_per_round=clients_per_round, checkpoint_every=0, algorithm=algorithm)
    straight, split = reference, str(tmp_path / "split")
    if (algorithm, clients_per_round) != ("fedavg", None):
        straight = str(tmp_path / "straight")
        train.run(config, straight, quiet=True)
    first = train.run(config.replace(rounds=4), split, quiet=True)
    assert first["rounds_completed"] == 4 and steps(split) == [4]
    second = train.run(config, split, quiet=True)
    assert second["resumed_from_round"] == 4 and steps(split) == [4, 8]
    assert_same_run(split, straight, config)
    assert json.loads(open(os.path.join(split, "config.json")).read())["rounds"] == 8
    if algorithm == "scaffold":   # the variates are really in the checkpoint, and non-zero
        variates = jax.tree.leaves(final_state(split, config).client_states)
        assert variates and any(bool(jnp.any(v != 0)) for v in variates)


def test_resume_with_another_chunk_width_and_checkpoint_interval(tmp_path, reference):
    """A run preempted on one machine resumes on another layout: the clients chunked 2 at a
    time instead of 1, checkpoints every 3 rounds instead of 2. Same numbers as the
    reference to float32 rounding (the weighted sum is grouped differently)."""
    workdir = str(tmp_path / "w")
    train.run(tiny(rounds=4), workdir, quiet=True)
    resumed = tiny(client_chunk_size=2, checkpoint_every=3)
    assert train.run(resumed, workdir, quiet=True)["resumed_from_round"] == 4
    assert steps(workdir) == [4, 6, 8]
    assert json.loads(open(os.path.join(workdir, "config.json")).read())["client_chunk_size"] == 2
    for a, b in zip(rows(workdir), rows(reference), strict=True):
        assert a["round"] == b["round"]
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
        assert abs(a["test_accuracy"] - b["test_accuracy"]) < 1e-5
    chex.assert_trees_all_close(final_state(workdir, resumed).params,
                                final_state(reference, tiny()).params, atol=1e-5)


def test_rerunning_a_finished_run_reports_it_and_writes_nothing(tmp_path, reference, snapshot):
    workdir = str(tmp_path / "w")
    shutil.copytree(reference, workdir)
    before = snapshot(workdir)
    again = train.run(tiny(), workdir, quiet=True)
    assert again == summary(reference)
    assert snapshot(workdir) == before          # not even a lock file: nothing to write
    assert_same_run(workdir, reference, tiny())


def _truncate_arrays(step_dir):
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for name in files:
            if os.path.basename(root) == "d":
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(7)


def _delete_manifest(step_dir):
    os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))


def _garble_meta(step_dir):
    with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
        f.write("{not json")


@pytest.mark.parametrize("damage", [_truncate_arrays, _delete_manifest, _garble_meta])
def test_restore_skips_a_damaged_newest_checkpoint(tmp_path, reference, damage):
    workdir = str(tmp_path / "w")
    shutil.copytree(reference, workdir)
    damage(os.path.join(workdir, "checkpoints", "8"))
    warnings = []
    exp = experiment.build_experiment(tiny())
    target = replicate(experiment.initial_state(exp), client_mesh())
    restored = checkpoint.restore_latest(checkpoint.open_manager(workdir, 3), target,
                                         lambda meta: None, warn=warnings.append)
    assert restored.round == 6 and int(restored.state.round) == 6
    assert restored.meta["progress"]["rounds_in_sum"] == 0
    assert len(warnings) == 1 and "checkpoint at round 8 is unreadable" in warnings[0]
    assert steps(workdir) == [4, 6]          # the damaged step is removed, to be saved again


def test_corrupt_newest_checkpoint_falls_back_and_the_run_ends_identical(tmp_path, reference,
                                                                        capsys):
    workdir = str(tmp_path / "w")
    shutil.copytree(reference, workdir)
    # Killed after its last save, before its summary (a finished run is reported, not re-read)
    os.remove(os.path.join(workdir, "summary.json"))
    _truncate_arrays(os.path.join(workdir, "checkpoints", "8"))
    capsys.readouterr()
    result = train.run(tiny(), workdir, quiet=True)
    assert "warning: checkpoint at round 8 is unreadable" in capsys.readouterr().err
    assert result["resumed_from_round"] == 6 and steps(workdir) == [4, 6, 8]
    assert_same_run(workdir, reference, tiny())


def test_a_leftover_partial_save_is_ignored_and_cleaned(tmp_path, reference):
    workdir = str(tmp_path / "w")
    shutil.copytree(reference, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))
    partial = os.path.join(workdir, "checkpoints", "8.orbax-checkpoint-tmp")
    os.makedirs(os.path.join(partial, "state.orbax-checkpoint-tmp"))
    result = train.run(tiny(), workdir, quiet=True)
    assert result["resumed_from_round"] == 6 and not os.path.exists(partial)
    assert_same_run(workdir, reference, tiny())


@pytest.mark.parametrize("overrides, fragment", [
    (["lr=0.5", "norm=fn"], "differs in: lr, norm;"),
    (["rounds=4"], "rounds may only be raised"),
    (["rounds=12", "seed=1"], "differs in: rounds, seed;"),
])
def test_config_mismatch_is_refused_and_the_workdir_untouched(tmp_path, reference, capsys,
                                                             overrides, fragment, snapshot):
    workdir = str(tmp_path / "w")
    shutil.copytree(reference, workdir)
    before = snapshot(workdir)
    capsys.readouterr()
    keys = {o.partition("=")[0] for o in overrides}   # a key given twice is refused
    base = [a for a in cli_args(tiny()) if a.partition("=")[0] not in keys]
    assert main(["run", "--workdir", workdir, "--quiet", *base, *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err
    assert snapshot(workdir) == before


def test_checkpoint_of_another_format_is_a_clear_error(tmp_path, reference):
    workdir = str(tmp_path / "w")
    shutil.copytree(reference, workdir)
    meta_path = os.path.join(workdir, "checkpoints", "8", "meta", "metadata")
    meta = json.loads(open(meta_path).read())
    with open(meta_path, "w") as f:
        json.dump({**meta, "format_version": 99}, f)
    os.remove(os.path.join(workdir, "summary.json"))   # unfinished: it must read checkpoint 8
    with pytest.raises(FedlnError, match="format version 99"):
        train.run(tiny(), workdir, quiet=True)


def test_checkpoint_that_does_not_fit_the_state_is_a_clear_error(tmp_path, reference,
                                                                 monkeypatch):
    """Same config but a state of another shape (as after a code change): refuse, never cast."""
    workdir = str(tmp_path / "w")
    shutil.copytree(reference, workdir)
    os.remove(os.path.join(workdir, "summary.json"))   # unfinished: it must read checkpoint 8
    original = experiment.initial_state

    def bf16_head(exp):
        state = original(exp)
        head = state.params["head"]["kernel"]
        params = {**state.params, "head": {"kernel": jnp.zeros(head.shape, jnp.bfloat16)}}
        return state._replace(params=params)

    monkeypatch.setattr(program, "initial_state", bf16_head)
    with pytest.raises(FedlnError, match=r"does not fit .*head.kernel is float32"):
        train.run(tiny(), workdir, quiet=True)


def test_divergence_stops_with_the_round_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    """lr=30 on the tiny config at the lecun init: round 1 is finite, round 2 overflows (the
    exact round depends on the init scale; at the torch init lr=30 takes longer)."""
    workdir = str(tmp_path / "w")
    config = tiny(lr=30.0, checkpoint_every=1, init="lecun")
    capsys.readouterr()
    assert main(["run", "--workdir", workdir, "--quiet", *cli_args(config)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: training diverged at round 2"), err
    assert "last good checkpoint is round 1" in err[0]
    assert steps(workdir) == [1]
    assert summary(workdir)["status"] == "diverged"
    assert summary(workdir)["diverged_at_round"] == 2
    assert summary(workdir)["rounds_completed"] == 1
    assert int(final_state(workdir, config).round) == 1
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(final_state(workdir, config)))


def test_sigint_mid_interval_saves_at_the_round_boundary_then_resumes(tmp_path, reference,
                                                                     monkeypatch):
    """SIGINT during round 1 (the first block is one round): a checkpoint at round 1, between
    evaluations, carrying the partial train-loss sum; the resumed run reports the same rows."""
    workdir = str(tmp_path / "w")
    config = tiny(checkpoint_every=0)
    handler_before = signal.getsignal(signal.SIGINT)

    def interrupt(event, round_):
        if event == "block" and round_ == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(checkpoint, "pause_for_test", interrupt)
    with pytest.raises(Interrupted) as stopped:
        train.run(config, workdir, quiet=True)
    assert stopped.value.signum == signal.SIGINT and stopped.value.round == 1
    assert "run the same command again to resume" in str(stopped.value)
    assert steps(workdir) == [1] and rows(workdir) == []
    meta = json.loads(open(os.path.join(workdir, "checkpoints", "1", "meta", "metadata")).read())
    assert meta["progress"]["rounds_in_sum"] == 1 and meta["progress"]["train_loss_sum"] > 0
    assert summary(workdir)["status"] == "interrupted"
    assert summary(workdir)["rounds_completed"] == 1
    assert signal.getsignal(signal.SIGINT) is handler_before   # handlers restored
    monkeypatch.undo()
    assert train.run(config, workdir, quiet=True)["resumed_from_round"] == 1
    assert_same_run(workdir, reference, config)


# ----------------------------------------------------------------------------- subprocesses


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent XLA compilation cache shared by this module's subprocesses: the first one
    compiles, the others load (about 20 s -> 6 s each on a busy 2-core machine)."""
    return str(tmp_path_factory.mktemp("xla_cache"))


def launch(workdir, config: Config, cache: str, pause: str = "", hook_dir=None):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop(checkpoint.PAUSE_ENV, None)
    if pause:
        env[checkpoint.PAUSE_ENV] = f"{pause}:{hook_dir}"
    return subprocess.Popen(
        [sys.executable, "-m", "fedln_jax.cli", "run", "--workdir", str(workdir), "--quiet",
         *cli_args(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_for(path, proc, timeout=240):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigkill_anywhere_then_rerun_gives_the_uninterrupted_run(tmp_path, reference,
                                                                 compile_cache):
    """Kill -9 (1) inside a save, (2) after a metrics row is written but before its round's
    checkpoint, (3) right after a save; each re-run resumes, the last one finishes."""
    workdir, hooks = tmp_path / "w", tmp_path / "hooks"
    hooks.mkdir()
    config = tiny()

    proc = launch(workdir, config, compile_cache, "save:4:120", hooks)
    wait_for(hooks / "paused_save_4", proc)
    proc.kill()
    proc.wait()
    assert steps(workdir) == [2]                        # the torn save at 4 is not a step
    assert [r["round"] for r in rows(workdir)] == [2, 4]

    proc = launch(workdir, config, compile_cache, "metrics:6:120", hooks)
    wait_for(hooks / "paused_metrics_6", proc)
    proc.kill()
    proc.wait()
    assert steps(workdir) == [2, 4]
    assert [r["round"] for r in rows(workdir)] == [2, 4, 6]   # row 6 has no checkpoint yet

    proc = launch(workdir, config, compile_cache, "saved:6:120", hooks)
    wait_for(hooks / "paused_saved_6", proc)
    proc.kill()
    proc.wait()
    assert steps(workdir) == [2, 4, 6]
    assert [r["round"] for r in rows(workdir)] == [2, 4, 6]

    proc = launch(workdir, config, compile_cache)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_same_run(workdir, reference, config)


def test_sigterm_saves_at_a_round_boundary_and_exits_nonzero_then_resumes(tmp_path, reference,
                                                                           compile_cache):
    workdir, hooks = tmp_path / "w", tmp_path / "hooks"
    hooks.mkdir()
    config = tiny(checkpoint_every=0)                   # only the signal makes a checkpoint
    proc = launch(workdir, config, compile_cache, "metrics:2:3", hooks)
    wait_for(hooks / "paused_metrics_2", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "received SIGTERM" in err
    assert "stopped by SIGTERM after round 2 of 8" in err and "resume" in err
    assert steps(workdir) == [2]
    assert summary(workdir)["status"] == "interrupted"
    assert summary(workdir)["rounds_completed"] == 2

    proc = launch(workdir, config, compile_cache)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert summary(workdir)["resumed_from_round"] == 2
    assert_same_run(workdir, reference, config)


# ----------------------------------------------------------------------------- faults


def _flip_a_byte_inside_an_array(step_dir):
    """Flip one byte in the middle of the largest array file: orbax's compressed chunks carry
    no checksum, so this restores as a wrong number unless the saved checksum catches it."""
    files = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, "state"))
             for name in names if os.path.basename(root) == "d"]
    largest = max(files, key=os.path.getsize)
    data = bytearray(open(largest, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(largest, "wb").write(bytes(data))


def test_a_flipped_byte_in_a_saved_array_is_detected_and_the_run_falls_back(tmp_path, reference,
                                                                           capsys):
    workdir = str(tmp_path / "w")
    shutil.copytree(reference, workdir)
    os.remove(os.path.join(workdir, "summary.json"))   # killed after its last save
    _flip_a_byte_inside_an_array(os.path.join(workdir, "checkpoints", "8"))
    capsys.readouterr()
    result = train.run(tiny(), workdir, quiet=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: checkpoint at round 8 is unreadable"), err
    assert result["resumed_from_round"] == 6
    assert_same_run(workdir, reference, tiny())


def test_a_damaged_checkpoint_is_one_warning_line_without_tracebacks(tmp_path, reference,
                                                                    compile_cache):
    """A real process: the tracebacks came from tensorstore threads after the failed read
    (unraisable exceptions, which pytest would capture in process)."""
    workdir = str(tmp_path / "w")
    shutil.copytree(reference, workdir)
    os.remove(os.path.join(workdir, "summary.json"))
    _truncate_arrays(os.path.join(workdir, "checkpoints", "8"))
    out, err = launch(workdir, tiny(), compile_cache).communicate(timeout=240)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("warning: checkpoint at round 8 is unreadable"), err
    assert out.startswith("final_test_accuracy")


def test_a_full_disk_during_a_save_is_one_line_and_the_previous_checkpoint_stays_usable(
        tmp_path, reference, capsys, monkeypatch):
    import errno
    import orbax.checkpoint as ocp
    workdir = str(tmp_path / "w")
    original = ocp.StandardCheckpointHandler.async_save

    async def full_disk_at_round_6(self, directory, *args, **kwargs):
        if "/6." in str(directory) or str(directory).rstrip("/").split("/")[-2].startswith("6"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await original(self, directory, *args, **kwargs)

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", full_disk_at_round_6)
    capsys.readouterr()
    assert main(["run", "--workdir", workdir, "--quiet", *cli_args(tiny())]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not save the checkpoint of round 6")
    assert "No space left on device" in err[0] and "round 4 is intact" in err[0], err
    assert 4 in steps(workdir) and 6 not in steps(workdir)
    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", original)
    # Space is back: the same command resumes from round 4 and ends as the uninterrupted run.
    assert train.run(tiny(), workdir, quiet=True)["resumed_from_round"] == 4
    assert_same_run(workdir, reference, tiny())


def test_analyze_reads_checkpoints_without_changing_a_byte(tmp_path, reference, snapshot):
    """Even with a damaged newest checkpoint (which a run would delete and save again) and a
    leftover partial save (which opening a run's manager clears): analysis only reads."""
    from fedln_jax.studies.analysis import load_run
    workdir = str(tmp_path / "w")
    shutil.copytree(reference, workdir)
    _truncate_arrays(os.path.join(workdir, "checkpoints", "8"))
    os.makedirs(os.path.join(workdir, "checkpoints", "10.orbax-checkpoint-tmp", "state"))
    before = snapshot(os.path.join(workdir, "checkpoints"))
    dirs_before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    _, state, source = load_run(workdir)
    assert source == "checkpoints/6" and int(state.round) == 6
    assert snapshot(os.path.join(workdir, "checkpoints")) == before
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == dirs_before


LOCK_HOLDER = """
import sys, time
from fedln_jax.training import lock
with lock.hold([sys.argv[1]]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_workdir_belongs_to_one_process_and_a_killed_holder_frees_it(tmp_path, capsys):
    """A second process is refused in one line naming the holder; once the holder is killed
    (SIGKILL: no clean-up runs) the kernel has dropped its lock and a run proceeds."""
    workdir = str(tmp_path / "w")
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, workdir],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert main(["run", "--workdir", workdir, "--quiet", *cli_args(tiny(rounds=2))]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: workdir"), err
        assert f"in use by pid {holder.pid} on host" in err[0]
        assert sorted(os.listdir(workdir)) == [".fedln.lock"]   # nothing else was written
    finally:
        holder.kill()
        holder.wait()
    assert main(["run", "--workdir", workdir, "--quiet", *cli_args(tiny(rounds=2))]) == 0
    # and it released its own lock on return: the same process can take it again
    from fedln_jax.training import lock
    with lock.hold([workdir]):
        pass


def test_divergence_at_a_finite_exploding_loss_is_reported_and_names_lr(tmp_path, capsys):
    """FN/LN at a huge lr stay finite at chance accuracy with a loss growing with lr."""
    config = tiny(norm="fn", lr=1e4, rounds=4, checkpoint_every=2)
    assert main(["run", "--workdir", str(tmp_path / "w"), "--quiet", *cli_args(config)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged at round 2" in err[0] and "mean train loss" in err[0], err
    assert "lr=10000.0" in err[0] and "server_lr" not in err[0]
    assert summary(str(tmp_path / "w"))["status"] == "diverged"
    assert steps(str(tmp_path / "w")) == []                 # the exploded state is not saved


def test_a_divergence_caused_by_a_raised_server_lr_names_server_lr(tmp_path, capsys):
    config = tiny(server_lr=1e6, rounds=4)
    assert main(["run", "--workdir", str(tmp_path / "w"), "--quiet", *cli_args(config)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged" in err[0] and "server_lr=1000000.0 is above" in err[0], err


def test_a_vectorized_program_killed_between_its_runs_saves_resumes_bit_identical(
        tmp_path, snapshot):
    """Three seeds trained as one program; a kill between the runs' round-6 saves leaves one
    at round 6 and two at round 4. Resuming must not split them into a 1-run and a 2-run
    program (the train loss's float32 rounding depends on the program's width: here seed 1
    alone or in a pair gives another last digit than in the trio): all go back to round 4."""
    configs = [tiny(seed=s) for s in (0, 1, 2)]
    straight = [str(tmp_path / "straight" / f"s{s}") for s in (0, 1, 2)]
    train.run_group(configs, straight, quiet=True)
    killed = [str(tmp_path / "killed" / f"s{s}") for s in (0, 1, 2)]
    for src, dst in zip(straight, killed):
        shutil.copytree(src, dst)
    # what the kill leaves: run 0 saved round 6, runs 1 and 2 did not; no summaries yet
    shutil.rmtree(os.path.join(killed[0], "checkpoints", "8"))
    for workdir in killed[1:]:
        for name in ("6", "8"):
            shutil.rmtree(os.path.join(workdir, "checkpoints", name))
    for workdir in killed:
        os.remove(os.path.join(workdir, "summary.json"))
    summaries = train.run_group(configs, killed, quiet=True)
    assert [s["resumed_from_round"] for s in summaries] == [4, 4, 4]
    assert [s["runs_vectorized"] for s in summaries] == [3, 3, 3]
    for a, b, config in zip(killed, straight, configs):
        assert_same_run(a, b, config)                     # train_loss included, bit for bit
