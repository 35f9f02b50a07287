"""One exception type for every user-facing error: the CLI prints its message on one line."""

import sys


class MLWQError(Exception):
    """A bad input or an impossible request, with a message that says what to do."""


def run_cli(prog: str, body, *, debug: bool, errors: tuple, interrupted: str, unwritable: str = "") -> int:
    """Run a command-line tool's body and turn its expected failures into one line on stderr (the
    traceback with --debug): bad input (`errors`), a failed write (disk full, unwritable path;
    `unwritable` names the file when the error does not), and Ctrl-C (`interrupted` says what was
    kept). Shared by `mlwq` and `mlwq-export`."""
    try:
        return body()
    except errors as e:
        if debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if debug:
            raise
        print(f"{prog}: error: cannot write {e.filename or unwritable}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {interrupted}", file=sys.stderr)
        return 130
