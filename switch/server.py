"""The switch's TCP listener: accept terminal connections, bound them, shut them down gently.

Theory of operation. `start` binds a listening socket (`listen_host`/`listen_port`, TLS 1.2+
when `tls_cert_file` is set). Each accepted socket is checked against `connections_max` and
`connections_per_ip_max`; beyond a bound it is closed at once and counted, otherwise it gets
a `Connection` (switch/connection.py) and one task running it. `serve_forever` waits until
`shutdown` has finished. `shutdown` closes the listening socket (new connections are refused
by the kernel; one accepted in the meantime is closed at once), tells every connection to
stop reading, gives running requests `shutdown_grace_s` to finish and be answered, then
aborts the connections left and cancels their requests. The transport knows nothing of
ISO 8583 beyond the length prefix: the `Handler` gets frame bodies and returns answers.

Why `asyncio.start_server` (streams) rather than a `Protocol` with pause_reading: a
connection is then a straight-line coroutine (read, decode, dispatch, wait for a slot), so
the deadlines are plain `asyncio.timeout` scopes and backpressure is "don't call read()";
the StreamReader pauses the transport when its buffer passes twice its `limit`, which we
set to one maximal frame. The cost, a task per connection, is what the design wants anyway.
Runs unchanged on uvloop, whose loop implements the same transports.

Limitation: with TLS the handshake completes before a connection is seen here, so the
connection bounds apply after it; handshakes are bounded in time by `frame_timeout_s`.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import itertools
import logging
import signal
import ssl

from protocol.framing import PREFIX_BYTES
from switch.config import Settings
from switch.connection import Connection, Handler, Peer
from switch.metrics import CONNECTIONS_OPEN, CONNECTIONS_REJECTED

__all__ = ["Handler", "Peer", "Server", "install_signal_handlers", "tls_context"]

log = logging.getLogger(__name__)


class Server:
    """Accepts and bounds connections; see the module docstring."""

    def __init__(self, settings: Settings, handler: Handler) -> None:
        self._settings = settings
        self._handler = handler
        self.port = 0  # the bound port, known after `start` (listen_port may be 0)
        self._listener: asyncio.Server | None = None
        self._connections: dict[Connection, asyncio.Task[None]] = {}
        self._per_host: collections.Counter[str] = collections.Counter()
        self._ids = itertools.count(1)
        self._closing = False
        self._stopped = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None

    @property
    def connections(self) -> frozenset[Connection]:
        """The live connections, including those finishing requests after their socket closed."""
        return frozenset(self._connections)

    def task_of(self, connection: Connection) -> asyncio.Task[None]:
        return self._connections[connection]

    async def start(self) -> None:
        settings = self._settings
        tls = tls_context(settings)
        self._listener = await asyncio.start_server(
            self._accept,
            settings.listen_host,
            settings.listen_port,
            limit=settings.frame_bytes_max + PREFIX_BYTES,
            ssl=tls,
            # A handshake is a frame of sorts: a peer gets as long to finish it.
            ssl_handshake_timeout=settings.frame_timeout_s if tls else None,
            ssl_shutdown_timeout=settings.write_timeout_s if tls else None,
        )
        # With a name resolving to several addresses and port 0 each socket gets its own
        # port; the first one is reported.
        self.port = self._listener.sockets[0].getsockname()[1]
        log.info("listening", extra={"host": settings.listen_host, "port": self.port,
                                     "tls": tls is not None})

    async def serve_forever(self) -> None:
        """Return once `shutdown` has finished (from a signal handler or another task)."""
        await self._stopped.wait()

    async def shutdown(self) -> None:
        """Graceful stop; idempotent, and every caller returns when it has finished."""
        if self._closing:
            await self._stopped.wait()
            return
        self._closing = True
        log.info("shutting_down", extra={"connections": len(self._connections)})
        if self._listener is not None:
            self._listener.close()
        for conn in self._connections:
            conn.stop_reading()
        await self._finish_connections()
        if self._listener is not None:
            await self._listener.wait_closed()
        self._stopped.set()
        log.info("shut_down")

    def request_shutdown(self) -> None:
        """Start `shutdown` from synchronous code such as a signal handler."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(self.shutdown())

    async def _finish_connections(self) -> None:
        tasks = set(self._connections.values())
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self._settings.shutdown_grace_s)
        if not late:
            return
        log.warning("connections_aborted", extra={
            "connections": len(late), "grace_s": self._settings.shutdown_grace_s})
        for conn, task in list(self._connections.items()):
            if task in late:
                conn.abort()
        await asyncio.wait(late)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        if peername is None:  # reset before we got to it
            writer.transport.abort()
            return
        host = _source_address(peername[0])
        refusal = self._refusal(host)
        if refusal is not None:
            CONNECTIONS_REJECTED.labels(refusal).inc()
            log.debug("connection_refused", extra={"peer": f"{host}:{peername[1]}",
                                                   "reason": refusal})
            writer.transport.abort()
            return
        peer = Peer(host, peername[1], next(self._ids))
        conn = Connection(reader, writer, peer, self._settings, self._handler)
        task = asyncio.create_task(conn.run(), name=f"switch-connection-{peer.connection_id}")
        self._connections[conn] = task
        self._per_host[host] += 1
        CONNECTIONS_OPEN.inc()
        # Registered before anyone else can await the task, so this runs first: once an
        # awaiter of the task resumes, the connection is already forgotten.
        task.add_done_callback(lambda done: self._forget(conn, done))
        log.debug("connection_accepted", extra={"peer": str(peer)})

    def _refusal(self, host: str) -> str | None:
        if self._closing:
            return "shutdown"
        if len(self._connections) >= self._settings.connections_max:
            return "total"
        if self._per_host[host] >= self._settings.connections_per_ip_max:
            return "per_ip"
        return None

    def _forget(self, conn: Connection, task: asyncio.Task[None]) -> None:
        del self._connections[conn]
        self._per_host[conn.peer.host] -= 1
        if self._per_host[conn.peer.host] <= 0:
            del self._per_host[conn.peer.host]
        CONNECTIONS_OPEN.dec()
        if not task.cancelled() and task.exception() is not None:
            log.error("connection_failed", extra={"peer": str(conn.peer)},
                      exc_info=task.exception())


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server-side TLS context (TLS 1.2 or later), or None when TLS is off."""
    if settings.tls_cert_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Without a key file the key is expected in the certificate file (PEM bundle).
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


def install_signal_handlers(server: Server) -> None:
    """SIGTERM and SIGINT start a graceful shutdown (call from inside the running loop)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_shutdown)


def _source_address(host: str) -> str:
    """The address the per-IP bound counts: an IPv4-mapped IPv6 address counts as IPv4."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return host
