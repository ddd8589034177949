"""Run-state checkpoints in WORKDIR/checkpoints, with orbax's CheckpointManager.

A checkpoint is one orbax step directory named by the round, holding two items:
`state` (the whole engine/state.ServerState pytree: params, model_state, opt_state, client_states,
round, key) and `meta` (a small JSON: format version, fedln_jax version, the config, and the
host-side progress the metrics depend on). Orbax writes into a temporary directory and renames
it when complete (on GCS it writes a commit marker last), so a crash during a save leaves the
previous checkpoint usable and no partial step visible.

Restoring checks the stored tree against the target built from the current config (structure,
shapes and dtypes) before reading any array: a mismatch is a FedlnError, never a silent cast.
The meta item holds a sha256 of the saved arrays (`state_checksum`), verified after the
arrays are read: orbax's compressed chunks carry no checksum of their own, so a flipped byte
would otherwise restore as a wrong number. A step whose files cannot be read or whose arrays
do not match their checksum is reported in one warning line and the next older one is tried.
A manager opened with read_only=True (analysis) never deletes, renames or creates anything.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import logging
import os
import sys
import time
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from fedln_jax.errors import FedlnError, StorageError, first_line

FORMAT_VERSION = 1
# Test-only hook: FEDLN_TEST_PAUSE="EVENT:ROUND:SECONDS:DIR" makes the run touch
# DIR/paused_EVENT_ROUND and sleep SECONDS when it reaches EVENT at ROUND, so a subprocess test
# can kill or signal it at a known moment. Events: "block" (after a block of rounds), "save" (inside orbax's save, after the
# arrays are written and before the step is committed), "metrics" (after the metrics row of
# an evaluation round is written, before that round's checkpoint), "saved" (after a
# checkpoint is committed).
PAUSE_ENV = "FEDLN_TEST_PAUSE"


def pause_for_test(event: str, round_: int) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    want_event, want_round, seconds, directory = spec.split(":", 3)
    if want_event == event and int(want_round) == round_:
        (epath.Path(directory) / f"paused_{event}_{round_}").touch()
        time.sleep(float(seconds))


class Restored(NamedTuple):
    state: Any          # engine/state.ServerState, placed like the target
    meta: dict          # the JSON saved next to it
    round: int


class _MetaHandler(ocp.JsonCheckpointHandler):
    """The JSON item's handler, plus the test hook that holds a save half-done."""

    async def async_save(self, directory, *args, **kwargs):
        futures = await super().async_save(directory, *args, **kwargs)
        if os.environ.get(PAUSE_ENV):
            step = epath.Path(directory).parent.name.split(".")[0]   # "<round>.orbax-...-tmp"
            pause_for_test("save", int(step))
        return futures


def checkpoint_dir(workdir: str) -> epath.Path:
    # orbax refuses relative paths; a local workdir is made absolute, a gs:// one kept as is.
    if "://" not in str(workdir):
        workdir = os.path.abspath(workdir)
    return epath.Path(workdir) / "checkpoints"


def open_manager(workdir: str, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
    """A synchronous manager (saves of this run's small states take tens of milliseconds,
    measured in docs/checkpoints.md) that keeps the newest `keep` steps and clears leftover
    temporary directories of interrupted saves; read_only: creates, clears and deletes
    nothing (for reading a run that may be in progress)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, enable_async_checkpointing=False,
        cleanup_tmp_directories=not read_only, read_only=read_only)
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state_handler, meta_handler = ocp.StandardCheckpointHandler(), _MetaHandler()
    registry.add("state", ocp.args.StandardSave, state_handler)
    registry.add("state", ocp.args.StandardRestore, state_handler)
    registry.add("meta", ocp.args.JsonSave, meta_handler)
    registry.add("meta", ocp.args.JsonRestore, meta_handler)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                 handler_registry=registry)


def save(manager: ocp.CheckpointManager, state, meta: dict) -> Optional[float]:
    """Save `state` at step state.round with `meta`; return the seconds it took, or None if
    that round is already saved."""
    start = time.perf_counter()
    step = int(jax.device_get(state.round))
    if step in manager.all_steps():
        return None
    meta = {**meta, "format_version": FORMAT_VERSION, "round": step,
            "state_sha256": state_checksum(state)}
    try:
        with quiet_orbax_logs():
            manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       meta=ocp.args.JsonSave(meta)), force=True)
            manager.wait_until_finished()
    except (OSError, ValueError, RuntimeError) as exc:   # disk full, quota, I/O (via tensorstore)
        before = [s for s in manager.all_steps() if s < step]
        kept = (f"the checkpoint of round {max(before)} is intact" if before
                else "no earlier checkpoint was saved")
        raise StorageError(f"could not save the checkpoint of round {step} in "
                           f"{manager.directory} ({first_line(exc)}); {kept}: free space and "
                           f"run the same command again to resume") from None
    seconds = time.perf_counter() - start
    pause_for_test("saved", step)
    return seconds


def state_checksum(state) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes, in sorted path order (a canonical
    order: the same state gives the same digest in any process and after a restore)."""
    digest = hashlib.sha256()
    for path, leaf in sorted(((_path(p), leaf) for p, leaf in
                              jax.tree_util.tree_flatten_with_path(state)[0]), key=lambda t: t[0]):
        array = _host_array(leaf)
        digest.update(f"{path}:{array.dtype.str}:{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _host_array(leaf) -> np.ndarray:
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if not leaf.is_fully_addressable:   # sharded over processes: every process hashes all
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(jax.device_get(leaf))


@contextlib.contextmanager
def quiet_orbax_logs():
    """Orbax logs the failures it re-raises (tracebacks of tens to hundreds of lines) through
    absl; the caller reports them in one line, so silence those loggers meanwhile."""
    loggers = [logging.getLogger(name) for name in ("absl", "orbax", "jax._src.distributed")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _ignore_late_read_callbacks() -> None:
    """After a failed read orbax closes its asyncio loop while tensorstore still completes the
    other pending reads; each completion then raises 'Event loop is closed' in a tensorstore
    thread, which Python prints as an unraisable-exception traceback (tens to hundreds of
    lines, often after the run's last line). The read already failed and was reported in one
    warning line: drop exactly those, pass anything else on."""
    previous = sys.unraisablehook
    if getattr(previous, "_fedln_filter", False):
        return

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        previous(unraisable)

    hook._fedln_filter = True
    sys.unraisablehook = hook


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) of a pytree of arrays: the restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class CorruptCheckpoint(Exception):
    """A step whose files are missing or unreadable (fall back to an older one)."""


def newest_step(workdir: str) -> int:
    """The newest committed step in WORKDIR/checkpoints (0 if none), from the directory names
    alone (orbax commits a step by renaming its temporary directory to the bare number)."""
    directory = checkpoint_dir(workdir)
    if not directory.exists():
        return 0
    return max((int(p.name) for p in directory.iterdir() if p.name.isdecimal()), default=0)


def restore_latest(manager: ocp.CheckpointManager, target, check_meta,
                   warn=None, max_step: Optional[int] = None,
                   delete: bool = True, derive_server_context=None) -> Optional[Restored]:
    """Restore the newest readable step (at most max_step), or None if there is none.

    target: a pytree of arrays or ShapeDtypeStructs with the expected structure, shapes, dtypes
    and shardings. check_meta(meta) raises FedlnError if the checkpoint belongs to an
    incompatible config or format. A corrupt step is warned about and skipped; with delete,
    steps newer than the restored one are deleted, so the run can save them again (analysis
    passes delete=False: reading never removes anything). derive_server_context(state) ->
    server context: for a checkpoint written before ServerState.server_context existed, its
    value from the restored client states (placed like the target's).
    """
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    _ignore_late_read_callbacks()
    abstract = abstract_like(target)
    steps = sorted(manager.all_steps(), reverse=True)
    candidates = [s for s in steps if max_step is None or s <= max_step]
    if len(candidates) < len(steps):
        warn(f"{manager.directory.parent}: checkpoints after round {max_step} are dropped: the "
             f"other runs of its program resume from round {max_step}")
    for step in candidates:
        try:
            restored = _restore_step(manager, step, abstract, check_meta, derive_server_context)
        except CorruptCheckpoint as exc:
            warn(f"checkpoint at round {step} is unreadable ({exc}); trying an older one")
            continue
        if delete:
            for newer in (s for s in steps if s > step):
                manager.delete(newer)
        return restored
    if steps and delete:
        if candidates:   # else the warning above said why they go
            warn("no readable checkpoint; starting from round 0")
        for step in steps:
            manager.delete(step)
    return None


def _restore_step(manager, step: int, abstract, check_meta, derive_server_context) -> Restored:
    try:
        with quiet_orbax_logs():
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            stored = manager.item_metadata(step)["state"]
    except Exception as exc:  # orbax/tensorstore raise many types for missing or torn files
        raise CorruptCheckpoint(first_line(exc)) from None
    if not isinstance(meta, dict) or stored is None:
        raise CorruptCheckpoint("metadata missing")
    if meta.get("format_version") != FORMAT_VERSION:
        raise FedlnError(f"checkpoint at round {step} has format version "
                         f"{meta.get('format_version')!r}, this fedln_jax reads {FORMAT_VERSION}; "
                         f"use a new workdir")
    check_meta(meta)
    stored_tree = stored.tree if hasattr(stored, "tree") else stored
    legacy = predates_server_context(stored_tree, abstract)
    read_as = without_server_context(abstract) if legacy else abstract
    mismatch = tree_mismatch(stored_tree, read_as)
    if not mismatch and legacy and jax.tree.leaves(abstract.server_context) \
            and derive_server_context is None:
        mismatch = "missing server_context, and no way to derive it was given"
    if mismatch:
        raise does_not_fit(step, mismatch)
    try:
        with quiet_orbax_logs():
            state = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(read_as))).state
        round_ = int(jax.device_get(state.round))
    except Exception as exc:
        if "tree structures do not match" in str(exc):
            # A state of another shape (an empty node tree_mismatch cannot see), not damage:
            # falling back would delete every step of a run that another version can read.
            raise does_not_fit(step, first_line(exc)) from None
        raise CorruptCheckpoint(first_line(exc)) from None
    if legacy:
        state = type(abstract)(**state._asdict(), server_context=())
    if round_ != step or meta.get("round") != step:
        raise CorruptCheckpoint(f"step {step} holds round {round_}")
    # Checkpoints written before checksums existed have none; every save now stores one.
    if "state_sha256" in meta and state_checksum(state) != meta["state_sha256"]:
        raise CorruptCheckpoint("its arrays do not match the checksum saved with them")
    if legacy and derive_server_context is not None:
        state = state._replace(server_context=jax.tree.map(
            lambda value, want: jax.device_put(value, want.sharding),
            derive_server_context(state), abstract.server_context))
    return Restored(state=state, meta=meta, round=step)


def does_not_fit(step: int, why: str) -> FedlnError:
    return FedlnError(f"checkpoint at round {step} does not fit this run's state ({why}); "
                      f"use a new workdir")


def predates_server_context(stored_tree, abstract) -> bool:
    """A checkpoint written before ServerState.server_context existed: its stored state has
    every field of the target's but that one (the context is then derived, not read)."""
    return ("server_context" in getattr(abstract, "_fields", ())
            and isinstance(stored_tree, dict) and "server_context" not in stored_tree)


@functools.lru_cache(maxsize=None)
def _state_type_without(fields: tuple) -> type:
    return collections.namedtuple("ServerStateBeforeServerContext", fields)


def without_server_context(abstract):
    """The target as the older checkpoints stored it: the same fields, less server_context
    (orbax compares the tree's structure, empty nodes included)."""
    fields = tuple(f for f in abstract._fields if f != "server_context")
    return _state_type_without(fields)(**{f: getattr(abstract, f) for f in fields})


def tree_mismatch(stored_tree, abstract) -> str:
    """'' if the stored metadata tree has the target's leaves, shapes and dtypes; else what
    differs. Orbax itself would cast dtypes silently."""
    stored_leaves = {_path(p): leaf for p, leaf in
                     jax.tree_util.tree_flatten_with_path(stored_tree)[0]}
    target_leaves = {_path(p): leaf for p, leaf in
                     jax.tree_util.tree_flatten_with_path(abstract)[0]}
    missing = sorted(set(target_leaves) - set(stored_leaves))
    extra = sorted(set(stored_leaves) - set(target_leaves))
    if missing or extra:
        return (f"missing {', '.join(missing) or '-'}; unexpected {', '.join(extra) or '-'}")
    for name, want in target_leaves.items():
        got = stored_leaves[name]
        if tuple(got.shape) != tuple(want.shape) or np.dtype(got.dtype) != np.dtype(want.dtype):
            return (f"{name} is {np.dtype(got.dtype).name}{list(got.shape)}, expected "
                    f"{np.dtype(want.dtype).name}{list(want.shape)}")
    return ""


def _path(keypath) -> str:
    parts = []
    for k in keypath:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return ".".join(parts)


