"""The one user-facing error type.

A ``UserError`` is a problem the user can fix (a bad flag, a missing file, an
unreachable server). The CLI prints its message on one line and exits with code 2,
without a traceback. Anything else is a bug and keeps its traceback.
"""

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input, stated as: what is wrong, where, and the fix."""

    def __init__(self, message: str):
        # One line only: multi-line messages break the failure file and log scrapers.
        super().__init__(" ".join(message.split()))
