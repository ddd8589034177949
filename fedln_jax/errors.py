"""User-facing errors: the CLI prints them as one `error:` line and exits with status 2."""


class FedlnError(Exception):
    """Invalid input (config, data, partition, workdir). The message is one line for the user."""
