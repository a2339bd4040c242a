"""The server's connections: a deadline for each request to arrive whole, the connection bound, the socket.

uvicorn closes idle keep-alive connections only: a client that sends half a header, or a body one byte at
a time, would hold its connection forever. `Guarded` wraps the protocol uvicorn itself chooses (httptools
where installed, else h11) by composition, through asyncio's public Protocol interface only: each
connection's deadline is armed when it opens and again when a response ends (`WholeRequests`, an ASGI
layer over the app, says when), and a connection still short of a whole request when it fires is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from typing import Any

from fmnist.core import errors
from fmnist.serving import limits

LOOPBACK_NAMES = ["127.0.0.1", "localhost"]
log = logging.getLogger("uvicorn.error")  # uvicorn's server log: shown at `fmnist serve`'s log level


class Connections:
    """What the ASGI layer knows of each connection (keyed by the client's address, one per TCP connection):
    whether a whole request is in, being answered; and each connection's guard, to re-arm after a response."""

    def __init__(self) -> None:
        self.answering: set[tuple] = set()
        self.guards: dict[tuple, Guarded] = {}


class WholeRequests:
    """ASGI: marks a connection as answering once its request's body is whole (or once the app answers
    without reading it), and re-arms its deadline when the response ends."""

    def __init__(self, app, connections: Connections):
        self.app, self.connections = app, connections

    async def __call__(self, scope, receive, send):
        client = tuple(scope.get("client") or ())
        if scope["type"] != "http" or not client:
            return await self.app(scope, receive, send)

        async def receive_marked():
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                self.connections.answering.add(client)
            return message

        async def send_marked(message):
            if message["type"] == "http.response.start":
                self.connections.answering.add(client)  # answered without reading all of it: not the client's wait
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                self.connections.answering.discard(client)
                guard = self.connections.guards.get(client)
                if guard is not None:
                    guard.arm()
            await send(message)

        await self.app(scope, receive_marked, send_marked)


class Guarded(asyncio.Protocol):
    """uvicorn's own HTTP protocol (`inner`, made with the arguments uvicorn gives), with a deadline per
    request. Set per server by `server_config`: `inner_class`, `request_timeout`, `connections`."""

    inner_class: Any = None
    request_timeout: float = limits.REQUEST_TIMEOUT_S
    connections: Connections = Connections()

    def __init__(self, **kwargs):
        self.inner = self.inner_class(**kwargs)
        self.loop = kwargs.get("_loop") or asyncio.get_event_loop()
        self.deadline: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.client: tuple = ()

    def arm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = self.loop.call_later(self.request_timeout, self.drop_if_still_sending)

    def drop_if_still_sending(self) -> None:
        if self.client in self.connections.answering:  # the app's time, not the client's: wait for the response
            self.arm()
        elif self.transport is not None and not self.transport.is_closing():
            log.info("closed a connection from %s: no whole request within %s s", self.client, self.request_timeout)
            self.transport.close()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.client = tuple((transport.get_extra_info("peername") or ())[:2])
        self.connections.guards[self.client] = self
        self.inner.connection_made(transport)
        self.arm()

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        if self.connections.guards.get(self.client) is self:
            del self.connections.guards[self.client]
        self.connections.answering.discard(self.client)
        self.inner.connection_lost(exc)


def connection_limit() -> int:
    """limits.MAX_CONNECTIONS, or fewer where file descriptors run short (the soft limit is raised to the hard one).
    Where there is no `resource` module (Windows), the bound as it is."""
    try:
        import resource  # POSIX only
    except ImportError:
        return limits.MAX_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(16, min(limits.MAX_CONNECTIONS, soft - 256))  # 256 left for the model's files, logs and threads


def server_config(app, host: str, port: int, request_timeout: float = limits.REQUEST_TIMEOUT_S, **kwargs):
    """uvicorn's configuration with fmnist's deadline for slow clients and its connection bound."""
    import uvicorn

    chosen = uvicorn.Config(app, http="auto")
    chosen.load()  # public: resolves "auto" to the protocol class uvicorn would use here
    connections = Connections()
    protocol = type(
        "Guarded",
        (Guarded,),
        {"inner_class": chosen.http_protocol_class, "request_timeout": request_timeout, "connections": connections},
    )
    return uvicorn.Config(
        WholeRequests(app, connections),
        host=host,
        port=port,
        http=protocol,
        limit_concurrency=connection_limit(),
        backlog=4096,
        timeout_keep_alive=5,
        **kwargs,
    )


def default_allowed_hosts(host: str) -> list[str] | None:
    """Loopback binds answer only to loopback names (a page elsewhere cannot reach us by DNS rebinding)."""
    try:
        return LOOPBACK_NAMES if host == "localhost" or ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return None


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound here (before the model loads) so that a taken port or a foreign address is
    one error saying what to change, not uvicorn's log line and exit status 3."""

    def refused(exc: Exception, fix: str) -> errors.AddressError:
        return errors.AddressError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}; {fix}")

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (OSError, OverflowError) as exc:  # a name that does not resolve
        raise refused(exc, "give another --host") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart need not wait out TIME_WAIT
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:  # taken, not this machine's address, a port under 1024 without root
        sock.close()
        raise refused(exc, "give another --port (or --host), or stop what is listening there") from None
    return sock
