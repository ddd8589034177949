"""Who may write a workdir: checks of the path itself, and one process at a time.

`check_path` refuses, before anything is written, a workdir path that cannot work: empty, under
a regular file, under a directory this user cannot write, with a component or a total length
over the file system's limits, or with glob characters (orbax finds a checkpoint's array files
with a glob pattern built from the path, so `[1]` or `**` in it would make checkpoints that
cannot be read back). `hold` takes an exclusive `fcntl.flock` on WORKDIR/.fedln.lock for the
whole run: the kernel drops the lock when the process exits however it exits (SIGKILL
included), so a killed run never leaves a stale lock, and a second process on the same
workdir is refused with one line naming the holder.
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
from typing import Iterable, Iterator

from fedln_jax.errors import FedlnError

LOCK_NAME = ".fedln.lock"
GLOB_CHARACTERS = "*?[]"
TEMP_SUFFIX = 6   # what an atomic write adds to a file's name (workdir.temp_path)


def is_remote(path: str) -> bool:
    return "://" in str(path)


def check_path(workdir: str, what: str = "workdir") -> None:
    """Raise FedlnError if a run could not be written to `workdir` (nothing is created)."""
    if not isinstance(workdir, (str, os.PathLike)) or str(workdir).strip() == "":
        raise FedlnError(f"{what} is empty; name a directory")
    workdir = str(workdir)
    if is_remote(workdir):
        return
    absolute = os.path.abspath(workdir)
    glob = sorted(set(GLOB_CHARACTERS) & set(os.path.join(absolute, "checkpoints")))
    if glob:
        raise FedlnError(f"{what} {workdir!r} contains the glob character(s) {' '.join(glob)}; "
                         f"the checkpoint writer would treat them as patterns: choose a path "
                         f"without {' '.join(GLOB_CHARACTERS)}")
    existing = absolute
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    name_max, path_max = _limits(existing if os.path.isdir(existing) else os.path.dirname(existing))
    for part in absolute.split(os.sep):
        if len(os.fsencode(part)) > name_max:
            raise FedlnError(f"{what} {workdir!r} has a path component of {len(os.fsencode(part))} "
                             f"bytes; this file system allows {name_max}")
    # The deepest file a run writes, a checkpoint's array file, sits about 120 bytes below it.
    if len(os.fsencode(absolute)) + 120 > path_max:
        raise FedlnError(f"{what} {workdir!r} is {len(os.fsencode(absolute))} bytes long; with the "
                         f"checkpoint files below it that exceeds this system's {path_max}")
    if not os.path.isdir(existing):
        where = "is" if existing == absolute else f"is under {existing!r}, which is"
        raise FedlnError(f"{what} {workdir!r} {where} a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == absolute else f" (its existing parent {existing!r})"
        raise FedlnError(f"{what} {workdir!r}{where} is not writable")


def _limits(directory: str) -> tuple[int, int]:
    try:
        return os.pathconf(directory, "PC_NAME_MAX"), os.pathconf(directory, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


def check_file_path(path: str, flag: str, siblings: tuple[str, ...] = (),
                    create_dirs: bool = False) -> None:
    """`flag` must name a file in a writable directory (one that exists, or with create_dirs
    one that can be made below the nearest existing one), and it and its siblings (files
    written beside it) must be writable where they exist. Nothing is created."""
    folder = os.path.dirname(os.path.abspath(path))
    if not path.strip() or os.path.isdir(path):
        raise FedlnError(f"{flag} {path!r} must name a file, not a directory")
    existing = folder
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    name_max, path_max = _limits(existing if os.path.isdir(existing) else os.path.dirname(existing))
    # TEMP_SUFFIX: the file is written beside itself under a longer name, then renamed.
    longest = max(len(os.fsencode(p)) for p in os.path.abspath(path).split(os.sep))
    if longest + TEMP_SUFFIX > name_max or len(os.fsencode(os.path.abspath(path))) \
            + TEMP_SUFFIX > path_max:
        raise FedlnError(f"{flag} {path!r}: a name of {longest} bytes in it is too long for this "
                         f"file system (at most {name_max - TEMP_SUFFIX} bytes)"
                         if longest + TEMP_SUFFIX > name_max else
                         f"{flag} {path!r} is too long for this file system")
    if not create_dirs:
        existing = folder
    if not os.path.isdir(existing):
        raise FedlnError(f"{flag} {path!r}: the directory {folder} does not exist"
                         + (f" and cannot be made ({existing} is not a directory)"
                            if create_dirs else ""))
    for target in (path, *siblings):
        if os.path.isdir(target) or (os.path.exists(target) and not os.access(target, os.W_OK)) \
                or not os.access(existing, os.W_OK):
            raise FedlnError(f"{flag} {path!r}: {target} cannot be written")


def check_own(workdir: str, markers: tuple[str, ...], what: str) -> None:
    """Refuse an existing non-empty directory that holds none of `markers` (the files that
    say it is `what`): a run must not write into someone's other files."""
    if is_remote(workdir) or not os.path.isdir(workdir):
        return
    names = entries(workdir)
    if names and not any(m in names for m in markers):
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise FedlnError(f"workdir {workdir!r} is a non-empty directory ({shown}) that does not "
                         f"hold {what}; use a new or empty directory")


def entries(workdir: str) -> list[str]:
    """The names in an existing local directory, the lock file aside (it outlives a run that
    was refused or killed before writing anything)."""
    return sorted(n for n in os.listdir(workdir) if n != LOCK_NAME)


@contextlib.contextmanager
def hold(workdirs: Iterable[str]) -> Iterator[None]:
    """Lock every (local) workdir for the duration of the block, creating it if needed."""
    with contextlib.ExitStack() as stack:
        for workdir in workdirs:
            if not is_remote(workdir):
                stack.enter_context(_hold_one(workdir))
        yield


@contextlib.contextmanager
def _hold_one(workdir: str) -> Iterator[None]:
    import fcntl
    try:
        os.makedirs(workdir, exist_ok=True)
        fd = os.open(os.path.join(workdir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise FedlnError(f"cannot lock workdir {workdir!r}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FedlnError(f"cannot lock workdir {workdir!r}: {exc.strerror}") from None
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise FedlnError(f"workdir {workdir!r} is in use by {holder}; wait for it to end "
                             f"or use another workdir") from None
        # Who holds it, for the message of a second process (rewritten by every holder).
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)   # closing the descriptor releases the lock
