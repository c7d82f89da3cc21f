"""The one exception type users see: a clear message, no traceback (the CLI prints it and exits 2)."""


class PeftkitError(Exception):
    """A problem the user can fix: the message names the key, file or value and what to do."""
