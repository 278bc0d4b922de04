"""Persistence backends for the durable :class:`~asyncflow.Engine`, behind one ABC.

``open_backend(url)`` picks one from a URL:

- ``None`` or ``"memory://"``: :class:`MemoryBackend` (nothing survives the process);
- ``"sqlite:///relative/path.db"`` or ``"sqlite:////absolute/path.db"`` (the
  SQLAlchemy convention), or a plain path ending in ``.db``/``.sqlite``/``.sqlite3``:
  :class:`SQLiteBackend`;
- ``"postgresql://user:password@host:port/database"`` (or ``postgres://``), with
  ``?schema=``: ``asyncflow.backends.postgres.PostgresBackend`` (extra ``asyncflow[postgres]``).

A :class:`Backend` instance is used as it is.
"""

from __future__ import annotations

from .._core.errors import BackendError
from .._core.records import CheckpointKind as CheckpointKind
from .._core.records import StepRows as StepRows
from .base import Backend as Backend
from .base import Checkpoint as Checkpoint
from .base import RunInfo as RunInfo
from .base import RunPage as RunPage
from .base import SavedRun as SavedRun
from .base import StoreEntry as StoreEntry
from .base import WorkflowVersion as WorkflowVersion
from .base import run_id_taken as run_id_taken
from .base import shape_key as shape_key
from .memory import MemoryBackend as MemoryBackend
from .sqlite import SQLiteBackend as SQLiteBackend

__all__ = [
    "Backend",
    "Checkpoint",
    "CheckpointKind",
    "MemoryBackend",
    "RunInfo",
    "RunPage",
    "SQLiteBackend",
    "SavedRun",
    "StepRows",
    "StoreEntry",
    "WorkflowVersion",
    "open_backend",
    "run_id_taken",
    "shape_key",
]

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def open_backend(url: str | Backend | None) -> Backend:
    """The backend a URL names (not yet opened).

    Raises:
        BackendError: the URL names no backend this asyncflow has.
    """
    if isinstance(url, Backend):
        return url
    if url is None or url == "memory://":
        return MemoryBackend()
    if not isinstance(url, str):
        raise TypeError(f"an engine URL must be a string or a Backend, got {url!r}")
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if not path:
            raise BackendError(f"SQLite URL {url!r} names no file (write sqlite:///path/to/runs.db)")
        return SQLiteBackend(path)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresBackend  # (the driver only when it is used)

        return PostgresBackend(url)
    if "://" not in url and url.endswith(_SQLITE_SUFFIXES):
        return SQLiteBackend(url)
    raise BackendError(
        f"unknown engine URL {url!r}: use 'memory://', 'sqlite:///relative.db', 'sqlite:////absolute.db' "
        f"or 'postgresql://user@host/database'"
    )
