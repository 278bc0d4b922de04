"""Connecting to PostgreSQL: the URL, its settings, and errors that say what went wrong and where."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import attrs

from ..._core.errors import BackendError

# libpq's connection parameters that asyncpg understands, passed on as they are.
_DRIVER_PARAMS = frozenset(
    {
        "host",
        "port",
        "user",
        "password",
        "dbname",
        "database",
        "passfile",
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "connect_timeout",
        "application_name",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
        "service",
    }
)
# asyncflow's own settings in the URL.
_OWN_PARAMS = frozenset({"schema", "pooler", "pool_size", "lease_only"})
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_POOLERS = ("session", "transaction")


@attrs.frozen
class PostgresURL:
    """A ``postgresql://`` URL taken apart.

    Attributes:
        dsn: the URL asyncpg connects with (asyncflow's own settings removed).
        schema: where the tables live (``asyncflow`` by default).
        pooler: ``"transaction"`` behind a pooler in transaction mode (PgBouncer): session-bound
            locks and LISTEN then mean nothing, so liveness falls back to leases.
        pool_size: connections per engine.
        where: ``host:port/database`` for messages (never the password).
        host, port, database, user: for messages.
    """

    dsn: str
    schema: str
    pooler: str
    pool_size: int
    where: str
    host: str
    port: str
    database: str
    user: str


def parse_url(url: str) -> PostgresURL:
    """Take ``url`` apart; BackendError for a parameter or a value asyncflow does not know."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise BackendError(f"not a PostgreSQL URL: {_redact(url)!r} (write postgresql://user@host/database)")
    params = parse_qsl(parts.query, keep_blank_values=True)
    unknown = sorted({name for name, _ in params} - _DRIVER_PARAMS - _OWN_PARAMS)
    if unknown:
        raise BackendError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in "
            f"PostgreSQL URL {_redact(url)!r}; asyncflow knows schema=, pooler=, pool_size= and "
            f"libpq's connection parameters ({', '.join(sorted(_DRIVER_PARAMS))})"
        )
    own = {name: value for name, value in params if name in _OWN_PARAMS}
    schema = own.get("schema", "asyncflow")
    if not _SCHEMA_NAME.fullmatch(schema):
        raise BackendError(
            f"schema={schema!r} in PostgreSQL URL {_redact(url)!r} is not a plain SQL name "
            f"(letters, digits and _, not starting with a digit, at most 63 characters)"
        )
    pooler = own.get("pooler", "session")
    if pooler not in _POOLERS:
        raise BackendError(
            f"pooler={pooler!r} in PostgreSQL URL {_redact(url)!r}: write pooler=transaction behind "
            f"PgBouncer in transaction mode, or pooler=session (the default)"
        )
    size_text = own.get("pool_size", "10")
    try:
        pool_size = int(size_text)
    except ValueError:
        pool_size = 0
    if not 2 <= pool_size <= 1000:
        raise BackendError(
            f"pool_size={size_text!r} in PostgreSQL URL {_redact(url)!r} must be a whole number "
            f"from 2 to 1000"
        )
    rest = [(name, value) for name, value in params if name not in _OWN_PARAMS]
    dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment))
    query = dict(rest)
    host = parts.hostname or query.get("host") or "localhost (default socket)"
    try:
        port = str(parts.port or query.get("port") or 5432)
    except ValueError as exc:
        raise BackendError(f"bad port in PostgreSQL URL {_redact(url)!r}: {exc}") from None
    database = unquote(parts.path.lstrip("/")) or query.get("dbname") or query.get("database") or ""
    user = unquote(parts.username or "") or query.get("user") or ""
    where = f"{host}:{port}/{database}" if database else f"{host}:{port}"
    return PostgresURL(dsn, schema, pooler, pool_size, where, host, port, database, user)


def _redact(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact(url: str) -> str:
    """``url`` without its password (for messages and ``Backend.url``)."""
    return _redact(url)


def connect_error(exc: BaseException, url: PostgresURL) -> BackendError:
    """The error of a failed connection, naming what was wrong and where."""
    import asyncpg

    if isinstance(exc, asyncpg.InvalidPasswordError):
        return BackendError(
            f"PostgreSQL at {url.host}:{url.port} refused the password of user {url.user!r}: {exc}"
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return BackendError(f"PostgreSQL at {url.host}:{url.port} refused user {url.user!r}: {exc}")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return BackendError(
            f"database {url.database!r} does not exist on PostgreSQL at {url.host}:{url.port} ({exc}); "
            f"create it (createdb {url.database}) or name another one in the URL"
        )
    if isinstance(exc, (OSError, TimeoutError, asyncpg.CannotConnectNowError)):
        return BackendError(f"cannot reach PostgreSQL at {url.host}:{url.port}: {type(exc).__name__}: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        return BackendError(f"PostgreSQL at {url.host}:{url.port} refused the connection: {exc}")
    return BackendError(f"cannot connect to PostgreSQL at {url.host}:{url.port}: {type(exc).__name__}: {exc}")


def is_disconnect(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection went away (the server restarted, say): worth retrying.

    A server at its connection limit (``too many clients``) counts too: its
    connections free up as other clients close theirs.
    """
    import asyncpg

    return isinstance(
        exc,
        (
            OSError,
            ConnectionError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.CannotConnectNowError,
            asyncpg.exceptions.OperatorInterventionError,
            asyncpg.exceptions.TooManyConnectionsError,
            asyncpg.exceptions.IdleInTransactionSessionTimeoutError,  # (this engine was frozen)
        ),
    ) and not isinstance(exc, asyncpg.exceptions.QueryCanceledError)


#: how long (ms) the server lets one of asyncflow's sessions sit idle inside a transaction
IDLE_IN_TRANSACTION_MS = 5000


def connect_kwargs(url: PostgresURL) -> dict[str, Any]:
    """What every connection of an engine is opened with."""
    kwargs: dict[str, Any] = {
        "dsn": url.dsn,
        "server_settings": {"search_path": url.schema, "application_name": "asyncflow"},
    }
    if url.pooler == "transaction":
        kwargs["statement_cache_size"] = 0  # (prepared statements do not survive a pooler's switches)
    else:
        # asyncflow's transactions are a few statements sent back to back. One left idle is an engine
        # frozen in the middle of it (SIGSTOP, a VM paused), whose locks would hold up every other
        # engine writing that run's events: the server ends its session instead (its writes are
        # retried when it wakes). (Not set behind a pooler, which may refuse startup settings.)
        kwargs["server_settings"]["idle_in_transaction_session_timeout"] = str(IDLE_IN_TRANSACTION_MS)
    return kwargs
