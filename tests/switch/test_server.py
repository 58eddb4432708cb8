"""The TCP transport over real sockets on 127.0.0.1 (port 0): framing, pipelining, every
limit and deadline at its bound, graceful shutdown, TLS, and one round trip under uvloop.

The test handler echoes; a frame given a gate waits for it, so tests decide when a request
finishes instead of sleeping. Every await on the server is bounded by WAIT, so a broken
server fails a test rather than hanging it. Deadlines are set to 0.2 s where tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import REGISTRY

from switch.config import Settings
from switch.server import Peer, Server, install_signal_handlers

WAIT = 2.0
SHORT = 0.2  # the deadline under test, where one is


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def closed_count(reason: str) -> float:
    return metric("loyalty_connections_closed_total", reason=reason)


def switch_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("switch-")]


def framed(body: bytes) -> bytes:
    return len(body).to_bytes(2, "big") + body


class EchoHandler:
    """Answers b"echo:" + frame. Gated frames wait; b"boom…" raises; b"empty" answers b"";
    b"silent" answers nothing; b"big" answers 2000 bytes."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.peers: list[Peer] = []
        self.finished: list[bytes] = []
        self.cancelled: list[bytes] = []
        self.arrived: asyncio.Queue[bytes] = asyncio.Queue()
        self.gates: dict[bytes, asyncio.Event] = {}

    def gate(self, frame: bytes) -> asyncio.Event:
        self.gates[frame] = asyncio.Event()
        return self.gates[frame]

    async def next_arrival(self) -> bytes:
        async with asyncio.timeout(WAIT):
            return await self.arrived.get()

    async def handle(self, frame: bytes, peer: Peer) -> bytes | None:
        self.calls.append(frame)
        self.peers.append(peer)
        self.arrived.put_nowait(frame)
        try:
            if frame in self.gates:
                await self.gates[frame].wait()
        except asyncio.CancelledError:
            self.cancelled.append(frame)
            raise
        self.finished.append(frame)
        if frame.startswith(b"boom"):
            raise ValueError(f"cannot handle {frame!r}")
        answers = {b"empty": b"", b"silent": None, b"big": b"x" * 2000}
        return answers.get(frame, b"echo:" + frame)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: Server, **kwargs: Any) -> Client:
        async with asyncio.timeout(WAIT):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port, **kwargs)
        return cls(reader, writer)

    @property
    def port(self) -> int:
        port: int = self.writer.get_extra_info("sockname")[1]
        return port

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, *bodies: bytes) -> None:
        await self.send_raw(b"".join(framed(b) for b in bodies))

    async def recv(self) -> bytes:
        async with asyncio.timeout(WAIT):
            prefix = await self.reader.readexactly(2)
            return await self.reader.readexactly(int.from_bytes(prefix, "big"))

    async def echo(self, body: bytes) -> None:
        await self.send(body)
        assert await self.recv() == b"echo:" + body

    async def closed_by_server(self) -> bytes:
        """Wait for the server to close (EOF or reset), failing after WAIT; return what
        arrived before."""
        received = bytearray()
        async with asyncio.timeout(WAIT):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await self.reader.read(65536):
                    received += chunk
        self.close()
        return bytes(received)

    def close(self) -> None:
        self.writer.transport.abort()


@contextlib.asynccontextmanager
async def serving(handler: EchoHandler, **overrides: Any) -> AsyncIterator[Server]:
    """A started server; on exit it is shut down and nothing of it may remain."""
    open_before = metric("loyalty_connections_open")
    settings = Settings(listen_host="127.0.0.1", listen_port=0, **overrides)
    server = Server(settings, handler)
    await server.start()
    assert server.port > 0
    try:
        yield server
    finally:
        async with asyncio.timeout(WAIT + settings.shutdown_grace_s):
            await server.shutdown()
    assert not server.connections and not switch_tasks()
    assert metric("loyalty_connections_open") == open_before
    assert metric("loyalty_requests_in_flight") == 0


def server_side(server: Server, client: Client) -> asyncio.Task[None]:
    """The server's task for `client` (the client must have had an answer already)."""
    (conn,) = [c for c in server.connections if c.peer.port == client.port]
    return server.task_of(conn)


async def test_frames_whole_and_byte_by_byte() -> None:
    handler = EchoHandler()
    async with serving(handler) as server:
        client = await Client.open(server)
        await client.echo(b"whole")
        client.writer.transport.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in framed(b"bytewise"):
            await client.send_raw(bytes([byte]))
            await asyncio.sleep(0)  # yield, so the server may see each byte on its own
        assert await client.recv() == b"echo:bytewise"
        assert handler.calls == [b"whole", b"bytewise"]
        peer = handler.peers[0]
        assert (peer.host, peer.port) == ("127.0.0.1", client.port)
        assert handler.peers[1] == peer
        client.close()


async def test_pipelined_frames_are_answered_as_they_finish() -> None:
    handler = EchoHandler()
    first, third = handler.gate(b"first"), handler.gate(b"third")
    async with serving(handler) as server:
        client = await Client.open(server)
        await client.send(b"first", b"silent", b"second", b"third")
        assert await client.recv() == b"echo:second"  # "silent" answered nothing
        third.set()
        assert await client.recv() == b"echo:third"
        first.set()
        assert await client.recv() == b"echo:first"
        assert sorted(handler.calls) == [b"first", b"second", b"silent", b"third"]
        client.close()


async def test_frame_of_frame_bytes_max_is_accepted() -> None:
    handler = EchoHandler()
    async with serving(handler, frame_bytes_max=64) as server:
        client = await Client.open(server)
        await client.echo(b"m" * 64)
        client.close()


@pytest.mark.parametrize("length", [0, 65], ids=["zero", "above-frame_bytes_max"])
async def test_bad_length_prefix_closes_before_any_body(length: int) -> None:
    handler = EchoHandler()
    rejected = metric("loyalty_frames_rejected_total", reason="length")
    async with serving(handler, frame_bytes_max=64) as server:
        client = await Client.open(server)
        await client.send_raw(length.to_bytes(2, "big"))  # the prefix alone: no body sent
        await client.closed_by_server()
    assert handler.calls == []
    assert metric("loyalty_frames_rejected_total", reason="length") == rejected + 1


async def test_partial_frame_then_disconnect_leaves_nothing() -> None:
    handler = EchoHandler()
    async with serving(handler) as server:
        client = await Client.open(server)
        await client.echo(b"hello")
        task = server_side(server, client)
        await client.send_raw(framed(b"never finished")[:5])
        client.close()
        async with asyncio.timeout(WAIT):
            await task
        assert not server.connections and not switch_tasks()
        assert handler.calls == [b"hello"]


async def test_disconnect_mid_request_lets_it_finish_and_drops_the_answer() -> None:
    """The client only shuts its sending side, so it could still read an answer: it gets
    none, the server closes at once, and the request still runs to its end."""
    handler = EchoHandler()
    gate = handler.gate(b"commit")
    async with serving(handler) as server:
        client = await Client.open(server)
        await client.echo(b"hello")
        task = server_side(server, client)
        await client.send(b"commit")
        assert await handler.next_arrival() == b"hello"
        assert await handler.next_arrival() == b"commit"
        client.writer.write_eof()
        assert await client.closed_by_server() == b""
        # The request goes on (it may be committing): the connection is not gone yet.
        assert not task.done() and metric("loyalty_requests_in_flight") == 1
        gate.set()
        async with asyncio.timeout(WAIT):
            await task
        assert handler.finished == [b"hello", b"commit"] and handler.cancelled == []
        assert not server.connections and not switch_tasks()


async def test_frame_deadline_is_absolute() -> None:
    """A frame trickled one byte per 50 ms is cut off after frame_timeout_s although
    bytes keep arriving; it would take 3.2 s to complete."""
    handler = EchoHandler()
    before = closed_count("frame_timeout")
    async with serving(handler, frame_timeout_s=SHORT, idle_timeout_s=10) as server:
        client = await Client.open(server)
        await client.echo(b"ok")

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in framed(b"s" * 64):
                    await client.send_raw(bytes([byte]))
                    await asyncio.sleep(0.05)

        sender = asyncio.create_task(trickle())
        started = time.monotonic()
        await client.closed_by_server()
        assert time.monotonic() - started >= SHORT * 0.9
        sender.cancel()
    assert closed_count("frame_timeout") == before + 1
    assert handler.calls == [b"ok"]


async def test_idle_timeout_only_when_nothing_is_in_flight() -> None:
    handler = EchoHandler()
    gate = handler.gate(b"slow")
    before = closed_count("idle_timeout")
    async with serving(handler, idle_timeout_s=SHORT) as server:
        silent = await Client.open(server)
        await silent.closed_by_server()
        client = await Client.open(server)
        await client.send(b"slow")
        await handler.next_arrival()
        # With a request in flight the connection stays open well past the idle time.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.reader.read(1), SHORT * 2.5)
        gate.set()
        assert await client.recv() == b"echo:slow"
        answered = time.monotonic()
        await client.closed_by_server()
        assert time.monotonic() - answered >= SHORT * 0.9  # counted from the last answer
    assert closed_count("idle_timeout") == before + 2


async def test_connections_max_closes_extra_connections() -> None:
    handler = EchoHandler()
    rejected = metric("loyalty_connections_rejected_total", reason="total")
    async with serving(handler, connections_max=2, connections_per_ip_max=10) as server:
        first, second = await Client.open(server), await Client.open(server)
        await first.echo(b"1")
        await second.echo(b"2")
        extra = await Client.open(server)
        await extra.closed_by_server()
        assert metric("loyalty_connections_rejected_total", reason="total") == rejected + 1
        await first.echo(b"1 again")
        await second.echo(b"2 again")
        # A freed place is taken again.
        task = server_side(server, first)
        first.close()
        async with asyncio.timeout(WAIT):
            await task
        third = await Client.open(server)
        await third.echo(b"3")
        for client in (second, third):
            client.close()


async def test_connections_per_ip_max_closes_extra_connections_from_that_address() -> None:
    handler = EchoHandler()
    rejected = metric("loyalty_connections_rejected_total", reason="per_ip")
    async with serving(handler, connections_max=10, connections_per_ip_max=2) as server:
        first, second = await Client.open(server), await Client.open(server)
        await first.echo(b"1")
        await second.echo(b"2")
        extra = await Client.open(server)
        await extra.closed_by_server()
        assert metric("loyalty_connections_rejected_total", reason="per_ip") == rejected + 1
        try:  # Linux routes all of 127/8 to loopback: another source address is not refused
            other = await Client.open(server, local_addr=("127.0.0.2", 0))
        except OSError:
            other = None
        if other is not None:
            await other.echo(b"other")
            other.close()
        await first.echo(b"1 again")
        await second.echo(b"2 again")
        first.close()
        second.close()


async def test_in_flight_bound_stops_taking_frames() -> None:
    handler = EchoHandler()
    gates = [handler.gate(name) for name in (b"a", b"b", b"c")]
    async with serving(handler, in_flight_per_connection_max=2) as server:
        client = await Client.open(server)
        await client.send(b"a", b"b", b"c")
        assert {await handler.next_arrival(), await handler.next_arrival()} == {b"a", b"b"}
        await asyncio.sleep(0.05)  # give a wrongly unbounded server time to take "c"
        assert handler.calls == [b"a", b"b"]
        assert metric("loyalty_requests_in_flight") == 2
        gates[0].set()
        assert await client.recv() == b"echo:a"
        assert await handler.next_arrival() == b"c"
        gates[1].set()
        gates[2].set()
        assert {await client.recv(), await client.recv()} == {b"echo:b", b"echo:c"}
        client.close()


async def test_waiting_for_a_slot_does_not_count_against_the_frame_deadline() -> None:
    """With one slot, "b" waits while "a" is held longer than frame_timeout_s; the frame
    "c" begun in the same write then still has its time to complete."""
    handler = EchoHandler()
    gate = handler.gate(b"a")
    async with serving(handler, in_flight_per_connection_max=1,
                       frame_timeout_s=SHORT) as server:
        client = await Client.open(server)
        c = framed(b"c")
        await client.send_raw(framed(b"a") + framed(b"b") + c[:1])
        assert await handler.next_arrival() == b"a"
        await asyncio.sleep(SHORT * 1.5)  # time passing is the point here
        gate.set()
        assert await client.recv() == b"echo:a"
        assert await client.recv() == b"echo:b"
        await client.send_raw(c[1:])
        assert await client.recv() == b"echo:c"
        client.close()


async def test_graceful_shutdown_answers_in_flight_and_refuses_new() -> None:
    handler = EchoHandler()
    gate = handler.gate(b"in flight")
    async with serving(handler) as server:
        client = await Client.open(server)
        await client.send(b"in flight")
        await handler.next_arrival()
        stopping = asyncio.create_task(server.shutdown())
        await asyncio.sleep(0)  # let shutdown run up to its first wait
        with pytest.raises(ConnectionRefusedError):
            await Client.open(server)
        await client.send(b"too late")
        gate.set()
        assert await client.recv() == b"echo:in flight"
        await client.closed_by_server()
        async with asyncio.timeout(WAIT):
            await stopping
        assert handler.calls == [b"in flight"]


async def test_shutdown_grace_cancels_what_remains() -> None:
    handler = EchoHandler()
    handler.gate(b"stuck")
    async with serving(handler, shutdown_grace_s=SHORT) as server:
        client = await Client.open(server)
        await client.send(b"stuck")
        await handler.next_arrival()
        started = time.monotonic()
        async with asyncio.timeout(WAIT):
            await server.shutdown()
        assert time.monotonic() - started >= SHORT * 0.9
        assert handler.cancelled == [b"stuck"]
        await client.closed_by_server()


@pytest.mark.parametrize("frame", [b"boom 4111111111111111", b"empty"])
async def test_handler_bug_closes_only_its_connection(
    frame: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    handler = EchoHandler()
    before = closed_count("handler_error")
    async with serving(handler) as server:
        other = await Client.open(server)
        await other.echo(b"before")
        victim = await Client.open(server)
        with caplog.at_level(logging.ERROR, logger="switch.connection"):
            await victim.send(frame)
            await victim.closed_by_server()
        await other.echo(b"after")
        other.close()
    assert closed_count("handler_error") == before + 1
    assert "handler" in caplog.text and "4111" not in caplog.text


async def test_write_deadline_cuts_off_a_peer_that_does_not_read() -> None:
    handler = EchoHandler()
    before = closed_count("write_timeout")
    async with serving(handler, write_timeout_s=SHORT) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        client = Client(*await asyncio.open_connection(sock=sock))
        await client.echo(b"hello")
        task = server_side(server, client)
        # 4 MB of answers are asked for, and nobody reads them.
        await client.send(*[b"big"] * 2000)
        async with asyncio.timeout(WAIT):
            await task
        assert closed_count("write_timeout") == before + 1
        await client.closed_by_server()
    # Unanswered requests held their slots, so the server stopped taking frames.
    assert len(handler.calls) < 2000


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
async def test_signal_starts_graceful_shutdown(signum: int) -> None:
    handler = EchoHandler()
    gate = handler.gate(b"in flight")
    loop = asyncio.get_running_loop()
    # Should the server not take the signal, it must not end the test run.
    previous = signal.signal(signum, lambda *_: None)
    try:
        async with serving(handler) as server:
            install_signal_handlers(server)
            client = await Client.open(server)
            await client.send(b"in flight")
            await handler.next_arrival()
            serving_task = asyncio.create_task(server.serve_forever())
            os.kill(os.getpid(), signum)
            gate.set()
            assert await client.recv() == b"echo:in flight"
            await client.closed_by_server()
            async with asyncio.timeout(WAIT):
                await serving_task
    finally:
        loop.remove_signal_handler(signum)
        signal.signal(signum, previous)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "switch test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_file, key_file


def _tls11_client(cert_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cert_file)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses TLS 1.1 at level 1
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


async def _tls11_possible(cert_file: Path, key_file: Path, client: ssl.SSLContext) -> bool:
    """Whether this OpenSSL can complete a TLS 1.1 handshake at all (against a lax server)."""
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    lax.set_ciphers("DEFAULT:@SECLEVEL=0")
    lax.minimum_version = ssl.TLSVersion.TLSv1_1
    lax.load_cert_chain(cert_file, key_file)
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=lax)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(WAIT):
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        writer.close()
        return True
    except (ssl.SSLError, ValueError, ConnectionError):
        return False
    finally:
        listener.close()
        await listener.wait_closed()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_round_trip_and_no_tls11(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    handler = EchoHandler()
    async with serving(handler, tls_cert_file=cert_file, tls_key_file=key_file) as server:
        context = ssl.create_default_context(cafile=cert_file)
        client = await Client.open(server, ssl=context)
        assert client.writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        await client.echo(b"over tls")
        client.writer.close()
        old = _tls11_client(cert_file)
        if not await _tls11_possible(cert_file, key_file, old):
            pytest.skip("this OpenSSL cannot make a TLS 1.1 handshake to test the refusal")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await Client.open(server, ssl=old)
    assert handler.calls == [b"over tls"]


def test_round_trip_under_uvloop() -> None:
    async def round_trip() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        handler = EchoHandler()
        gate = handler.gate(b"slow")
        async with serving(handler, in_flight_per_connection_max=2) as server:
            client = await Client.open(server)
            await client.send(b"slow", b"fast")
            assert await client.recv() == b"echo:fast"
            gate.set()
            assert await client.recv() == b"echo:slow"
            client.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(round_trip())
