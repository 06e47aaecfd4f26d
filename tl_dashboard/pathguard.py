"""The shared-server guard for folders typed into the UI: a path must lie under an allowed root.

Moved out of :mod:`.importer` (which re-exports both names) so that module stays under the size rule.
This module never imports streamlit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .errors import UserError

__all__ = ["PathNotAllowed", "resolve_allowed_path"]


class PathNotAllowed(UserError, PermissionError):
    """A path outside every allowed root (env ``TL_ALLOWED_ROOTS``); str() names the path and the roots."""


def resolve_allowed_path(path: str | Path, roots: Sequence[Path] | None = None) -> Path:
    """Resolve ``path`` (``~``, symlinks, ``..``) and check it lies under an allowed root.

    Args:
        path: A folder or file a user typed or picked.
        roots: Allowed folders. ``None``: env ``TL_ALLOWED_ROOTS`` (``os.pathsep``-separated).
            No roots at all means every path is allowed (single-user laptop).

    Returns:
        The resolved absolute path.

    Raises:
        PathNotAllowed: The resolved path is outside every root.
    """
    resolved = Path(path).expanduser().resolve(strict=False)
    if roots is None:
        roots = [Path(r) for r in os.environ.get("TL_ALLOWED_ROOTS", "").split(os.pathsep) if r.strip()]
    allowed = [Path(r).expanduser().resolve(strict=False) for r in roots]
    if not allowed or any(resolved == r or resolved.is_relative_to(r) for r in allowed):
        return resolved
    raise PathNotAllowed(
        f"Path {str(path)!r} resolves to {resolved}, outside the allowed folders "
        f"({', '.join(map(str, allowed))}); pick a path under one of them or add it to TL_ALLOWED_ROOTS."
    )
