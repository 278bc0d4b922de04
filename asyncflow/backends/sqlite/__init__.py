"""The SQLite backend: the embedded durable default.

A package of three parts: :mod:`.schema` (creating, checking and upgrading
the file's tables), :mod:`.writer` (the thread that owns the connection, and
group commit) and :mod:`.backend` (:class:`SQLiteBackend`, the methods).

The database runs in WAL mode with ``synchronous=NORMAL``: a committed
checkpoint survives the process being killed (``kill -9``); an operating
system crash or power loss may lose the last few commits, never corrupt the
file. Several processes may share one file; runs are divided among them by
leases.
"""

from __future__ import annotations

from .backend import SQLiteBackend as SQLiteBackend

__all__ = ["SQLiteBackend"]
