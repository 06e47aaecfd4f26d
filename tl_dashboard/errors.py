"""One base class for expected, user-facing errors.

Anything raised as a :class:`UserError` is a mistake in the input or the environment that the
user can fix: its message is one line that names the bad value and the fix, and pages and the
CLI show it as such (no traceback). Every other exception is a bug or a failure inside a
library: it keeps its traceback in the run log.

Example:
    >>> from tl_dashboard.errors import UserError
    >>> try:
    ...     raise UserError("batch size 0 is not allowed: use 1 or more")
    ... except UserError as exc:
    ...     print(exc)
    batch size 0 is not allowed: use 1 or more
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An expected error with a one-line message naming the bad value and the fix."""
