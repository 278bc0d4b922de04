"""The PostgreSQL backend (extra ``asyncflow[postgres]``): several workers on several machines share runs.

``af.Engine("postgresql://user@host/db?schema=asyncflow")`` opens one; see
:class:`PostgresBackend`. The driver (asyncpg) is imported only here, so
``import asyncflow`` works without the extra.
"""

from __future__ import annotations

from ..._core.errors import BackendError

try:
    import asyncpg as _asyncpg  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a venv without the extra
    raise BackendError("PostgreSQL URLs need the asyncpg driver: pip install 'asyncflow[postgres]'") from exc

from .backend import PostgresBackend as PostgresBackend
from .schema import PG_SCHEMA_VERSION as PG_SCHEMA_VERSION

__all__ = ["PG_SCHEMA_VERSION", "PostgresBackend"]
