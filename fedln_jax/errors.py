"""User-facing errors: the CLI prints them as one `error:` line and exits with status 2."""


class FedlnError(Exception):
    """Invalid input (config, data, partition, workdir). The message is one line for the user."""


class DivergedError(FedlnError):
    """Training produced NaN or Inf (CLI exit status 3). The last good checkpoint is kept."""

    def __init__(self, message: str, round_: int):
        super().__init__(message)
        self.round = round_


class StorageError(FedlnError):
    """The file system failed under a running run (disk full, I/O error) (CLI exit status 1).
    What was saved before stays usable; the message says what survived."""


class OutOfMemory(FedlnError):
    """The device (or host) ran out of memory while a run trained (CLI exit status 1): the
    last checkpoint is intact, and the message names the knob to change before resuming."""


class Interrupted(Exception):
    """SIGTERM or SIGINT stopped a run at a round boundary after saving a checkpoint
    (CLI exit status 128 + signal number, as a shell reports a signal)."""

    def __init__(self, message: str, signum: int, round_: int):
        super().__init__(message)
        self.signum = signum
        self.round = round_


def first_line(exc: BaseException, limit: int = 200, with_type: bool = True) -> str:
    """A caught exception as it is named inside one error line: 'Type: first line of its
    message', the line cut at `limit` characters (the type alone for an empty message)."""
    lines = str(exc).strip().splitlines()
    text = lines[0][:limit] if lines else ""
    if not with_type:
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
