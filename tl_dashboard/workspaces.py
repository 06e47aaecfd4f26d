"""Workspaces: one per person on a shared server, kept in the run store, owning runs and data sets.

A workspace is an unguessable id (``secrets.token_urlsafe``) with an optional display name and
every choice its person made (data set, model, freeze plan, BatchNorm mode, hyperparameters, run
label) as JSON. The dashboard carries the id in the URL (``?ws=...``), so a reload, a bookmark
or a second tab finds the same choices: **the URL is the key** (a capability link, like a
shared-document link). Whoever has it acts as that person; there is no password for the
single-person default.

Runs belong to the workspace that queued them. Stopping, cancelling and deleting are checked
here, in the core, not only by hiding buttons: another workspace's run raises
:class:`NotYourRun` unless the teacher's admin password (``TL_ADMIN_PASSWORD``, set by
``tl-dashboard app --admin-password``) is given. Runs without an owner (made before workspaces
existed, or by the CLI) are visible to everyone and stoppable only by the admin.

This module never imports streamlit.

Example:
    >>> store = RunStore("/tmp/tl-runs")                     # doctest: +SKIP
    >>> ws = create_workspace(store, "Ada")                  # doctest: +SKIP
    >>> run_id = submit(store, TrainConfig(data_dir="sample_data/emoji3"), ws)  # doctest: +SKIP
    >>> stop_run(store, run_id, "someone-else")              # doctest: +SKIP
    NotYourRun: Run ... belongs to another workspace; ...
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    from .engine import TrainConfig
    from .runs import RunStore

__all__ = [
    "ADMIN_ENV",
    "NotYourRun",
    "UnknownWorkspace",
    "UnknownRun",
    "admin_configured",
    "can_manage",
    "create_workspace",
    "delete_run",
    "get_workspace",
    "is_admin",
    "list_runs",
    "load_state",
    "names",
    "new_workspace_id",
    "open_workspace",
    "owns",
    "rename_workspace",
    "save_state",
    "stop_run",
    "submit",
    "submit_sweep",
    "sync_state",
    "valid_workspace_id",
]

ADMIN_ENV = "TL_ADMIN_PASSWORD"
_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_SNAPSHOT = "_ws_snapshot:"  # + workspace id: the choices as last read from / written to the store


class NotYourRun(UserError, PermissionError):
    """Stop, cancel or delete of a run that belongs to another workspace (or to nobody)."""


class UnknownRun(UserError, KeyError):
    """Stop, cancel or delete of a run that is not in the store (deleted meanwhile, or a wrong id)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown run"


class UnknownWorkspace(UserError, KeyError):
    """A workspace id that is not in this store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown workspace"


# -- workspaces ---------------------------------------------------------------------------------
def new_workspace_id() -> str:
    """A fresh id: 128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


def valid_workspace_id(ws_id: Any) -> bool:
    """True for something shaped like an id this module hands out (letters, digits, '-', '_')."""
    return isinstance(ws_id, str) and bool(_ID_RE.fullmatch(ws_id))


def create_workspace(store: RunStore, name: str = "") -> str:
    """Add a workspace with an optional display name; return its id."""
    ws_id = new_workspace_id()
    now = time.time()
    with store._tx() as con:
        con.execute(
            "INSERT INTO workspaces (id, name, created, updated, state) VALUES (?,?,?,?,?)", (ws_id, _clean_name(name), now, now, "{}")
        )
    return ws_id


def _clean_name(name: str) -> str:
    return " ".join(str(name or "").split())[:60]


def get_workspace(store: RunStore, ws_id: str) -> dict[str, Any] | None:
    """``{"id", "name", "created", "updated", "state"}`` or None when the id is unknown."""
    if not valid_workspace_id(ws_id):
        return None
    rows = store._query("SELECT * FROM workspaces WHERE id=?", (ws_id,))
    if not rows:
        return None
    ws = dict(rows[0])
    ws["state"] = json.loads(ws["state"] or "{}")
    return ws


def open_workspace(store: RunStore, ws_id: str | None) -> tuple[str, bool]:
    """The workspace for a visit: ``ws_id`` when it exists, else a new one.

    Returns:
        ``(id, created)``; ``created`` is True when a new workspace was made (a first visit, or a
        link to a workspace this store does not know).
    """
    if ws_id and get_workspace(store, ws_id) is not None:
        return ws_id, False
    return create_workspace(store), True


def rename_workspace(store: RunStore, ws_id: str, name: str) -> None:
    """Set the display name (blank clears it)."""
    with store._tx() as con:
        n = con.execute("UPDATE workspaces SET name=?, updated=? WHERE id=?", (_clean_name(name), time.time(), ws_id)).rowcount
    if not n:
        raise UnknownWorkspace(f"No workspace {ws_id!r} in this store; open the dashboard without ?ws= for a new one.")


def names(store: RunStore) -> dict[str, str]:
    """``{workspace id: display name}`` of the workspaces that have one."""
    return {r["id"]: r["name"] for r in store._query("SELECT id, name FROM workspaces WHERE name != ''")}


def load_state(store: RunStore, ws_id: str) -> dict[str, Any]:
    """The choices stored for a workspace (``{}`` for a new or unknown one)."""
    ws = get_workspace(store, ws_id)
    return dict(ws["state"]) if ws else {}


def save_state(store: RunStore, ws_id: str, changes: Mapping[str, Any]) -> None:
    """Merge ``changes`` into the workspace's stored choices (one short transaction).

    Only the keys given are written, so two tabs that change different choices do not undo
    each other.
    """
    if not changes:
        return
    with store._tx(immediate=True) as con:
        row = con.execute("SELECT state FROM workspaces WHERE id=?", (ws_id,)).fetchone()
        if row is None:
            raise UnknownWorkspace(f"No workspace {ws_id!r} in this store.")
        state = {**json.loads(row["state"] or "{}"), **json.loads(json.dumps(dict(changes), default=str))}
        con.execute("UPDATE workspaces SET state=?, updated=? WHERE id=?", (json.dumps(state), time.time(), ws_id))


def sync_state(store: RunStore, ws_id: str, state: MutableMapping[str, Any], keys: Iterable[str], *, phase: str) -> list[str]:
    """Keep a session's choices (``state``, e.g. ``st.session_state``) and the store in step.

    Call with ``phase="in"`` at the start of a script run: choices another tab (or an earlier
    session) stored are copied into ``state``. Call with ``phase="out"`` at its end: choices this
    session changed are stored. A snapshot in ``state`` tells the two apart.

    Returns:
        The keys copied (``in``) or stored (``out``).
    """
    keys, skey = list(keys), _SNAPSHOT + ws_id
    snap: dict[str, Any] = state.get(skey) if isinstance(state.get(skey), dict) else {}
    if phase == "in":
        stored = load_state(store, ws_id)
        moved = [k for k in keys if k in stored and (k not in snap or stored[k] != snap[k])]
        for k in moved:
            state[k] = stored[k]
        missing = {k: state[k] for k in keys if k in state and k not in stored}
        save_state(store, ws_id, missing)  # a new workspace (or a new key) stores the session's values once
        state[skey] = {**snap, **{k: stored[k] for k in keys if k in stored}, **missing}
        return moved
    if phase != "out":
        raise ValueError(f"phase={phase!r}; use 'in' or 'out'.")
    changed = {k: state[k] for k in keys if k in state and (k not in snap or snap[k] != state[k])}
    save_state(store, ws_id, changed)
    state[skey] = {**snap, **changed}
    return list(changed)


# -- the teacher --------------------------------------------------------------------------------
def admin_configured() -> bool:
    """True when this server has an admin password (env ``TL_ADMIN_PASSWORD``)."""
    return bool(os.environ.get(ADMIN_ENV))


def is_admin(password: str | None) -> bool:
    """Constant-time check of ``password`` against ``TL_ADMIN_PASSWORD`` (False when none is set)."""
    secret = os.environ.get(ADMIN_ENV) or ""
    if not secret or not password:
        return False
    return hmac.compare_digest(str(password).encode("utf-8"), secret.encode("utf-8"))


# -- ownership ----------------------------------------------------------------------------------
def owns(run: Mapping[str, Any], ws_id: str | None) -> bool:
    """True when ``run`` belongs to workspace ``ws_id`` (runs without an owner belong to nobody)."""
    return bool(ws_id) and run.get("workspace") == ws_id


def can_manage(run: Mapping[str, Any], ws_id: str | None, admin_password: str | None = None) -> bool:
    """May ``ws_id`` stop, cancel or delete ``run``? Its owner may; the admin may do it to any run."""
    return owns(run, ws_id) or is_admin(admin_password)


def _checked(store: RunStore, run_id: str, ws_id: str | None, admin_password: str | None, verb: str) -> dict:
    run = store.get_run(run_id)
    if run is None:
        raise UnknownRun(f"No run {run_id!r} in {store.root}: it was deleted meanwhile, or the id is wrong.")
    if not can_manage(run, ws_id, admin_password):
        whose = "another workspace" if run.get("workspace") else "nobody (it was made before workspaces or by the CLI)"
        raise NotYourRun(
            f"Run {run.get('label') or run_id} belongs to {whose}; only its owner or the teacher (admin password) can {verb} it."
        )
    return run


def stop_run(store: RunStore, run_id: str, ws_id: str | None, admin_password: str | None = None) -> str:
    """Stop (running) or cancel (queued) a run of this workspace; return its status after the request.

    Raises:
        NotYourRun: the run belongs to another workspace or to nobody, and ``admin_password`` is
            not the admin password.
        KeyError: no such run.
    """
    _checked(store, run_id, ws_id, admin_password, "stop")
    return store.request_stop(run_id)


def delete_run(store: RunStore, run_id: str, ws_id: str | None, admin_password: str | None = None) -> None:
    """Delete a finished run of this workspace with its files (same checks as :func:`stop_run`)."""
    _checked(store, run_id, ws_id, admin_password, "delete")
    store.delete_run(run_id)


def list_runs(store: RunStore, ws_id: str | None = None, *, mine: bool = False, **filters: Any) -> list[dict[str, Any]]:
    """Runs newest first (``RunStore.list_runs`` filters); ``mine=True``: only this workspace's."""
    runs = store.list_runs(**filters)
    return [r for r in runs if owns(r, ws_id)] if mine else runs


# -- queueing -----------------------------------------------------------------------------------
def submit(
    store: RunStore, config: TrainConfig, ws_id: str | None, *, label: str = "", admin_password: str | None = None, start: bool = True
) -> str:
    """Queue a run owned by ``ws_id`` (with its data set recorded) and make sure a worker takes it.

    Raises:
        QueueFull: the workspace is at the host's per-person limit of queued runs (not the admin).
    """
    from . import fairqueue, worker

    fairqueue.check_queue_limit(store, ws_id, 1, admin=is_admin(admin_password))
    return worker.submit_run(store, config, label=label, start=start, workspace=ws_id)


def submit_sweep(
    store: RunStore, base: TrainConfig, depths: list[str], ws_id: str | None, *, admin_password: str | None = None, **kwargs: Any
) -> tuple[str, list[str]]:
    """:func:`tl_dashboard.compare.queue_sweep` (same keyword arguments) for a workspace, within its queue limit."""
    from . import compare, fairqueue

    n = (len(set(map(str, depths))) + (1 if kwargs.get("from_scratch") else 0)) * max(1, int(kwargs.get("repeats") or 1))
    fairqueue.check_queue_limit(store, ws_id, n, admin=is_admin(admin_password))
    return compare.queue_sweep(store, base, depths, workspace=ws_id, **kwargs)
