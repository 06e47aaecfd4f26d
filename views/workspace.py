"""Which workspace a browser session is in, and which of its choices are kept in the store.

Streamlit-free glue between ``st.session_state`` / ``st.query_params`` and
:mod:`tl_dashboard.workspaces`: ``app.py`` calls :func:`attach` and
:func:`tl_dashboard.workspaces.sync_state` around every page run, so the pages keep reading and
writing their usual session keys while the store keeps them per workspace.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from tl_dashboard import workspaces
from tl_dashboard.runs import RunStore
from tl_dashboard.ui_state import DEFAULTS

__all__ = ["ADMIN_KEY", "PERSISTED", "WS_KEY", "admin_password", "attach", "me"]

PERSISTED = tuple(DEFAULTS)  # every canonical choice: data, model, freeze plan, BN mode, hyperparameters, label
WS_KEY = "ws_id"  # the session's workspace id (also in the URL as ?ws=)
ADMIN_KEY = "_admin_password"  # the teacher's password once checked; session only, never in the URL or store


def attach(store: RunStore, state: MutableMapping[str, Any], query_ws: str | None) -> tuple[str, str | None]:
    """The workspace of this session: the URL's when this store knows it, else the session's, else a new one.

    Returns:
        ``(workspace id, note)``; ``note`` is a sentence to show once when a new workspace was made
        for a link this store does not know (None otherwise).
    """
    current = state.get(WS_KEY)
    note = None
    if query_ws and workspaces.get_workspace(store, query_ws) is not None:
        ws = query_ws
    elif current and workspaces.get_workspace(store, current) is not None:
        ws = current
    else:
        ws, _ = workspaces.open_workspace(store, None)
        if query_ws:
            note = (
                "That workspace link is not known on this server (mistyped, or its store was reset): "
                "this is a new workspace. Bookmark this address to come back to it."
            )
    state[WS_KEY] = ws
    return ws, note


def admin_password(state: MutableMapping[str, Any]) -> str | None:
    """The admin password this session entered and that was accepted (None: not the teacher)."""
    pw = state.get(ADMIN_KEY)
    return pw if pw and workspaces.is_admin(pw) else None


def me(state: MutableMapping[str, Any]) -> tuple[str | None, str | None]:
    """``(workspace id, admin password or None)``: what every ownership-checked core call needs."""
    return state.get(WS_KEY), admin_password(state)
