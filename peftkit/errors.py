"""The one exception type users see: a clear message, no traceback (the CLI prints it and exits 2)."""


class PeftkitError(Exception):
    """A problem the user can fix: the message names the key, file or value and what to do."""


class RunStopped(Exception):
    """A run stopped on request (a signal) after saving a checkpoint; the CLI exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
