"""The gRPC transport under the gateway's port: grpclib (HTTP/2 in the event loop, no threads of
its own), with the limits a server on a mall network needs and grpclib leaves to the caller.

Why grpclib and not grpcio: grpcio's C core costs the gateway about 12 MB of resident memory
and six threads for two small services (docs/decisions.md §18). Clients keep using whatever gRPC
they like; the tests drive this server with grpcio's generated stubs, so the wire is checked
against the reference implementation.

What this module adds to grpclib:

- **Services from the proto's descriptors.** :meth:`GrpcServer.add` takes a service descriptor
  and an object with one ``async`` method per RPC, called as ``method(request, context)``: a
  unary method returns the reply, a server-streaming one is an async generator. Every method of
  the service must be there (none can be left out silently); client streaming is refused.
- **Message size limits** (:data:`MAX_MESSAGE_BYTES` each way). grpclib buffers a whole message
  before decoding it, whatever length its prefix claims, so the request is read here: the 5-byte
  prefix first, and a message over the limit fails with RESOURCE_EXHAUSTED before its body is
  buffered. A reply over the limit fails the same way instead of being sent.
- **A cap on calls in flight** (open streams included): one more gets RESOURCE_EXHAUSTED.
- **Keepalive**: an idle connection is pinged and dropped when the ping goes unanswered, so a
  tower that vanished without a FIN does not hold its stream for ever.
- **A graceful stop**: new calls get UNAVAILABLE, calls in flight get ``grace`` seconds, then
  they are cancelled and every connection is closed (grpclib alone would leave connections open
  and still serving).
- :class:`CallContext`: ``abort``, ``peer`` and ``invocation_metadata`` for the servicers.

grpclib internals used (pinned to 0.4.x, each covered by a test): ``Stream._stream`` (the
HTTP/2 stream the request is read from, for the size limit) and ``Server._protocol_factory``
(to know the connections, for the stop).

Public: :class:`GrpcServer`, :class:`CallContext`, :class:`GrpcServerError`, :data:`Status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, NoReturn, cast

import grpclib.const
import grpclib.server
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpclib.config import Configuration
from grpclib.exceptions import GRPCError

if TYPE_CHECKING:
    from grpclib.protocol import H2Protocol

log = logging.getLogger(__name__)

Status = grpclib.const.Status

#: The tower's messages are small; anything bigger is not a tower.
MAX_MESSAGE_BYTES: Final = 1024 * 1024
#: Calls (open streams included) served at once; more get RESOURCE_EXHAUSTED.
MAX_CONCURRENT_RPCS: Final = 1000
#: An idle connection is pinged this often and dropped when the ping goes unanswered.
KEEPALIVE_SECONDS: Final = 60.0
KEEPALIVE_TIMEOUT_SECONDS: Final = 20.0

_PREFIX: Final = struct.Struct(">?I")


class GrpcServerError(Exception):
    """The gRPC port cannot be opened."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"gRPC: cannot listen on {address}: {reason}")
        self.address = address
        self.reason = reason


class CallContext:
    """What a servicer method may ask of its call."""

    __slots__ = ("_stream",)

    def __init__(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        self._stream = stream

    async def abort(self, code: grpclib.const.Status, details: str) -> NoReturn:
        """End the call with ``code`` and ``details`` (raises; nothing after it runs)."""
        raise GRPCError(code, details)

    def peer(self) -> str:
        """The client's address as grpcio writes it: ``ipv4:10.0.0.5:41234``,
        ``ipv6:[fe80::1]:41234``."""
        address = self._stream.peer.addr()
        if not address:
            return "unknown"
        host, port = str(address[0]), address[1]
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"

    def invocation_metadata(self) -> list[tuple[str, str | bytes]]:
        """Every metadata pair the client sent (a key may repeat); ``-bin`` values as bytes."""
        metadata = self._stream.metadata
        return list(metadata.items()) if metadata is not None else []


Unary = Callable[[Any, CallContext], Awaitable[Message]]
Streaming = Callable[[Any, CallContext], AsyncGenerator[Message, None]]


class _Calls:
    """The calls in flight: the cap, and the drain on stop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if self.closing:
            raise GRPCError(Status.UNAVAILABLE, "the gateway is stopping")
        if self.active >= self.limit:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, f"more than {self.limit} calls at once")
        self.active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def drained(self, within: float | None) -> bool:
        try:
            async with asyncio.timeout(within):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


async def _receive(stream: grpclib.server.Stream[Any, Any], message_type: type[Message]) -> Message:
    """The request, read prefix first so an oversized one is refused before it is buffered."""
    h2_stream = stream._stream  # grpclib internal (see the module's docstring)
    prefix = await h2_stream.recv_data(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        raise GRPCError(Status.INTERNAL, "the call carried no request message")
    compressed, length = _PREFIX.unpack(prefix)
    if compressed:
        raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not accepted")
    if length > MAX_MESSAGE_BYTES:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"request message of {length} bytes is over the limit of {MAX_MESSAGE_BYTES}",
        )
    body = await h2_stream.recv_data(length)
    if len(body) < length:
        raise GRPCError(Status.INTERNAL, "the request message was cut short")
    try:
        return message_type.FromString(body)
    except DecodeError:
        raise GRPCError(Status.INVALID_ARGUMENT, "the request message does not decode") from None


async def _send(stream: grpclib.server.Stream[Any, Any], message: Message) -> None:
    size = message.ByteSize()
    if size > MAX_MESSAGE_BYTES:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"reply message of {size} bytes is over the limit of {MAX_MESSAGE_BYTES}",
        )
    await stream.send_message(message)


def _handler(
    method: MethodDescriptor, implementation: Callable[..., Any], calls: _Calls
) -> grpclib.const.Handler:
    request_type = GetMessageClass(method.input_type)
    reply_type = GetMessageClass(method.output_type)

    if method.server_streaming:

        async def serve(stream: grpclib.server.Stream[Any, Any]) -> None:
            with calls.slot():
                request = await _receive(stream, request_type)
                replies = cast(Streaming, implementation)(request, CallContext(stream))
                async with contextlib.aclosing(replies) as messages:
                    async for message in messages:
                        await _send(stream, message)

        cardinality = grpclib.const.Cardinality.UNARY_STREAM
    else:

        async def serve(stream: grpclib.server.Stream[Any, Any]) -> None:
            with calls.slot():
                request = await _receive(stream, request_type)
                reply = await cast(Unary, implementation)(request, CallContext(stream))
                await _send(stream, reply)

        cardinality = grpclib.const.Cardinality.UNARY_UNARY
    return grpclib.const.Handler(serve, cardinality, request_type, reply_type)


class _Service:
    """One service as grpclib serves it (its ``__mapping__``)."""

    def __init__(self, mapping: dict[str, grpclib.const.Handler]) -> None:
        self._mapping = mapping

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return self._mapping


class _TrackingServer(grpclib.server.Server):
    """grpclib's server, knowing its connections so a stop can close them."""

    def __init__(self, services: list[_Service], config: Configuration) -> None:
        super().__init__(services, config=config)
        self.connections: weakref.WeakSet[H2Protocol] = weakref.WeakSet()

    def _protocol_factory(self) -> H2Protocol:  # grpclib internal (see the module's docstring)
        protocol = super()._protocol_factory()
        self.connections.add(protocol)
        return protocol

    def close_connections(self) -> None:
        for protocol in list(self.connections):
            processor = getattr(protocol, "processor", None)  # set once the connection is made
            if processor is not None:
                processor.close("the gateway is stopping")


class GrpcServer:
    """Services added with :meth:`add`, then :meth:`start`; :meth:`stop` ends it."""

    def __init__(
        self,
        *,
        max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
        keepalive_timeout_seconds: float = KEEPALIVE_TIMEOUT_SECONDS,
    ) -> None:
        self._calls = _Calls(max_concurrent_rpcs)
        self._services: list[_Service] = []
        self._config = Configuration(
            _keepalive_time=keepalive_seconds,
            _keepalive_timeout=keepalive_timeout_seconds,
            _keepalive_permit_without_calls=True,
        )
        self._server: _TrackingServer | None = None
        self.port = 0

    def add(self, service: ServiceDescriptor, servicer: object) -> None:
        """Serve ``service`` with ``servicer``'s methods (named as the RPCs)."""
        mapping: dict[str, grpclib.const.Handler] = {}
        for method in service.methods:
            if method.client_streaming:
                raise ValueError(f"{service.full_name}.{method.name}: client streaming")
            implementation = getattr(servicer, method.name, None)
            if implementation is None:
                raise ValueError(f"{type(servicer).__name__} has no {method.name}")
            path = f"/{service.full_name}/{method.name}"
            mapping[path] = _handler(method, implementation, self._calls)
        self._services.append(_Service(mapping))

    @property
    def active_calls(self) -> int:
        return self._calls.active

    async def start(self, address: str, *, tls: ssl.SSLContext | None = None) -> int:
        """Listen on ``address`` (``host:port``; port 0 picks one; ``[::]`` is every address of
        both families), with TLS when ``tls`` is given (it must offer ALPN ``h2``); returns the
        bound port. Raises :class:`GrpcServerError`."""
        host, _, port_text = address.rpartition(":")
        host = host.strip("[]")
        try:
            port = int(port_text)
            sock = _listening_socket(host, port)
        except (ValueError, OSError) as exc:
            raise GrpcServerError(address, str(exc)) from None
        server = _TrackingServer(self._services, self._config)
        try:
            await server.start(sock=sock, ssl=tls)
        except OSError as exc:
            sock.close()
            raise GrpcServerError(address, str(exc)) from None
        self._server = server
        self.port = sock.getsockname()[1]
        log.info(
            "gRPC listening on %s (port %d, %s)", address, self.port, "TLS" if tls else "no TLS"
        )
        return self.port

    async def stop(self, grace: float | None) -> None:
        """New calls get UNAVAILABLE at once; calls in flight get ``grace`` seconds (None: no
        wait), then they are cancelled and every connection is closed."""
        server = self._server
        if server is None:
            return
        self._server = None
        self._calls.closing = True
        started = time.monotonic()
        if grace and not await self._calls.drained(grace):
            log.info("gRPC: %d calls cancelled after %.1f s", self._calls.active, grace)
        server.close()
        server.close_connections()
        await server.wait_closed()
        log.debug("gRPC stopped in %.2f s", time.monotonic() - started)


def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound socket: no SO_REUSEPORT (a second gateway on the port must fail, not share the
    towers), SO_REUSEADDR (a restart binds at once), dual-stack for ``::``."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    if host in ("", "*"):
        host = "::"
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
