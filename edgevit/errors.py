"""The one exception type for problems a user can cause and fix."""


class EdgevitError(Exception):
    """A user-facing error: the message says what went wrong and what to do.

    The CLI prints it without a traceback and exits non-zero; bugs still raise normally.
    """
