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


def check_keys(table: object, valid, where: str) -> None:
    """Strict config tables: raise :class:`UserError` naming the unknown keys and listing the
    valid ones (a typo never passes silently), or when ``table`` is not a table at all."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a table, got {type(table).__name__}")
    valid = list(valid)
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(valid)}")
