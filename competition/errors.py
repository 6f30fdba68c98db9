"""Exceptions meant for the user.

The CLI prints a :class:`UserError` as one line (``error: ...``) and exits with status 2,
without a traceback. Messages name the file and the problem.
"""


class UserError(Exception):
    """A problem with the user's input, data or set-up that they can fix."""


class DataError(UserError):
    """An unreadable, corrupt or inconsistent data file; the message names it."""


class RLEError(UserError, ValueError):
    """An invalid run-length encoding."""
