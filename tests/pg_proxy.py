"""A real TCP proxy on 127.0.0.1 in front of the test's PostgreSQL server, to stage outages.

An engine connects through it (:func:`through` gives its URL) and a test
decides what the network does, connection by connection, in a set order:
:meth:`Proxy.cut` closes every connection and refuses new ones (the server
is down), :meth:`Proxy.hold` accepts new ones but leaves them waiting for an
answer (a server starting up), :meth:`Proxy.freeze` stops relaying on the
open connections (a query in flight, answered late on :meth:`Proxy.thaw`
or never, on :meth:`Proxy.drop_waiting`), and :meth:`Proxy.restore` lets
new connections through again. So the order in
which an engine's concurrent calls see an outage begin and end is the test's
to choose, as a server restart under load would order it by chance.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketStream

#: what a relay ends on: either side closing or failing
_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
#: the server's ReadyForQuery message (before its status byte): the end of an answer
_READY_FOR_QUERY = b"Z\x00\x00\x00\x05"


class _Link:
    """One client connection relayed to the server, frozen or flowing."""

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.flowing = anyio.Event()
        self.flowing.set()
        #: bytes wait in it to be relayed (it is frozen)
        self.waiting = False
        #: it closes once the server's answer in flight has been relayed (the server is down)
        self.doomed = False

    def freeze(self) -> None:
        if self.flowing.is_set():
            self.flowing = anyio.Event()

    def thaw(self) -> None:
        self.flowing.set()

    async def pump(self, source: ByteStream, sink: ByteStream, *, answers: bool = False) -> None:
        try:
            async for chunk in source:
                if not self.flowing.is_set():
                    self.waiting = True
                    await self.flowing.wait()
                    self.waiting = False
                await sink.send(chunk)
                if answers and self.doomed and chunk[-6:-1] == _READY_FOR_QUERY:
                    break  # (the answer is complete)
        except _GONE:
            pass
        self.scope.cancel()


class Proxy:
    """The proxy (see the module); :attr:`port` on 127.0.0.1, open inside :func:`proxy`."""

    def __init__(self, upstream: str) -> None:
        self._upstream = upstream
        self.port = 0
        self._mode = "forward"
        self._links: set[_Link] = set()
        self._let_go = anyio.Event()
        #: connections accepted while held, and refused, so far
        self.held_count = 0
        self.refused_count = 0

    async def _connect_upstream(self) -> SocketStream:
        if self._upstream.startswith("/"):
            return await anyio.connect_unix(self._upstream)
        host, _, port = self._upstream.rpartition(":")
        return await anyio.connect_tcp(host, int(port))

    async def handle(self, client: SocketStream) -> None:
        """Serve one accepted connection as the current mode says."""
        if self._mode == "refuse":
            self.refused_count += 1
            await client.aclose()
            return
        if self._mode == "hold":
            self.held_count += 1
            await self._let_go.wait()
            await client.aclose()
            return
        link = _Link()
        self._links.add(link)
        try:
            with link.scope:
                server = await self._connect_upstream()
                async with server, client, anyio.create_task_group() as pumps:
                    pumps.start_soon(link.pump, client, server)
                    pumps.start_soon(functools.partial(link.pump, server, client, answers=True))
        finally:
            self._links.discard(link)
            await anyio.aclose_forcefully(client)

    def cut(self) -> None:
        """Close the relayed connections, and refuse new ones until :meth:`hold` or :meth:`restore`.

        A frozen connection with bytes waiting (a query in flight) is left
        open until its answer has come, on :meth:`thaw`: as an answer the
        server sent just before it went down.
        """
        self._mode = "refuse"
        for link in list(self._links):
            if link.waiting:
                link.doomed = True
            else:
                link.scope.cancel()

    def hold(self) -> None:
        """Accept new connections but answer nothing, until :meth:`drop_held`."""
        self._mode = "hold"

    def drop_held(self) -> None:
        """Close the connections that :meth:`hold` left waiting (their clients see them fail)."""
        self._let_go.set()
        self._let_go = anyio.Event()

    def freeze(self) -> None:
        """Stop relaying on the connections open now (what they send or receive waits for :meth:`thaw`)."""
        for link in self._links:
            link.freeze()

    def thaw(self) -> None:
        """Relay again on frozen connections."""
        for link in self._links:
            link.thaw()

    def drop_waiting(self) -> None:
        """Close the frozen connections that have bytes waiting (their queries fail now)."""
        for link in list(self._links):
            if link.waiting:
                link.scope.cancel()

    @property
    def answers_waiting(self) -> int:
        """How many frozen connections have bytes waiting to be relayed."""
        return sum(link.waiting for link in self._links)

    def restore(self) -> None:
        """Relay new connections to the server again."""
        self._mode = "forward"


def _upstream(server: str) -> str:
    """``host:port`` of the server URL ``server``, or the path of its Unix socket."""
    parts = urlsplit(server)
    query = dict(parse_qsl(parts.query))
    host = query.get("host") or parts.hostname or "127.0.0.1"
    port = query.get("port") or str(parts.port or 5432)
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}"
    return f"{host}:{port}"


def through(url: str, port: int) -> str:
    """``url`` (an engine's, on the test server) connecting to the proxy on ``port`` instead."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))


@asynccontextmanager
async def proxy(server: str) -> AsyncIterator[Proxy]:
    """A proxy on 127.0.0.1 to the server of the URL ``server``, closed with all its connections after."""
    async with anyio.create_task_group() as group:
        made = Proxy(_upstream(server))
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        made.port = listener.extra(SocketAttribute.local_port)
        group.start_soon(listener.serve, made.handle)
        try:
            yield made
        finally:
            made.drop_held()
            group.cancel_scope.cancel()
    await listener.aclose()
