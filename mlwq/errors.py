"""One exception type for every user-facing error: the CLI prints its message on one line."""


class MLWQError(Exception):
    """A bad input or an impossible request, with a message that says what to do."""
