"""
The connector's connection to an internal app for one WebSocket: the
HTTP/1.1 handshake, built and its answer parsed with h11 (never by hand),
then raw bytes both ways (frames untouched: the connector never re-frames).
A 101 is taken only if it accepts the WebSocket (RFC 6455 4.1: C{Upgrade},
C{Connection} and C{Sec-WebSocket-Accept} checked); any other is a
malformed answer (a 502), nothing of it relayed.

L{AppConnection} tells its L{UpgradeStream} what happens, inside the
tunnel's per-stream error boundary, and is the producer the app's transport
pauses while its write buffer is full: the stream acknowledges the
service's DATA (reopening its window) only as that buffer drains.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import attrs
import h11
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from appproxy.connector.backend import BackendApp, tls_policy
from appproxy.http.headers import HOP_BY_HOP

if TYPE_CHECKING:
    from appproxy.connector.websocket import UpgradeStream

Fields = list[tuple[bytes, bytes]]

#: Seconds to establish the TCP connection to the app (as for requests).
CONNECT_TIMEOUT = 10

#: The field of the tunnel answer that says the app took the upgrade.
UPGRADED_FIELD = (b"appproxy-upgraded", b"websocket")

#: Request fields the handshake never carries from the tunnel stream: the
#: connection's own, and those the handshake sets itself.
_NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length"}
#: Answer fields never relayed: the connection's own (a 101's C{Upgrade} and
#: C{Connection} above all) and the body's framing.
_NOT_RELAYED = HOP_BY_HOP | {b"content-length"}
#: What RFC 6455 (section 1.3) appends to the client's key before hashing it.
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def is_upgrade(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a stream's header block opens a WebSocket (extended CONNECT)."""
    fields = dict(headers)
    return fields.get(b":method") == b"CONNECT" and fields.get(b":protocol") == b"websocket"


@attrs.frozen
class Target:
    """What an upgraded stream's header block asks for."""

    app_name: str
    request_id: str
    scheme: bytes
    authority: bytes
    path: bytes
    fields: Fields
    """The fields to pass on (no pseudo-header field, nor C{appproxy-app})."""


def target(headers: Sequence[tuple[bytes, bytes]]) -> Target:
    pseudo: dict[bytes, bytes] = {}
    fields: Fields = []
    app_name = request_id = "-"
    for name, value in headers:
        if name.startswith(b":"):
            pseudo[name] = value
        elif name == b"appproxy-app":
            app_name = value.decode("latin-1")
        else:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
            fields.append((name, value))
    scheme = pseudo.get(b":scheme", b"http")
    authority = pseudo.get(b":authority", b"")
    return Target(app_name, request_id, scheme, authority, pseudo.get(b":path", b"/"), fields)


def handshake(
    path: bytes, authority: bytes, fields: Sequence[tuple[bytes, bytes]]
) -> tuple[h11.Connection, bytes]:
    """
    The handshake to send to the app for a tunnel stream's fields (its
    pseudo-header and appproxy fields left out), and the h11 connection
    that will parse the answer.  Cookies, which HTTP/2 may split, are
    joined again (RFC 9113 8.2.3).

    @raise h11.LocalProtocolError: the request cannot be sent.
    """
    headers: Fields = [
        (b"host", authority),
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
    ]
    cookies: list[bytes] = []
    for name, value in fields:
        if name.startswith((b":", b"appproxy-")) or name in _NOT_FORWARDED:
            continue
        if name == b"cookie":
            cookies.append(value)
        else:
            headers.append((name, value))
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    parser = h11.Connection(h11.CLIENT)
    data = parser.send(h11.Request(method=b"GET", target=path, headers=headers))
    data += parser.send(h11.EndOfMessage()) or b""
    return parser, data or b""


def accept_value(fields: Sequence[tuple[bytes, bytes]]) -> bytes:
    """
    The C{Sec-WebSocket-Accept} an app that takes the handshake must answer
    (RFC 6455 4.2.2): base64 of the SHA-1 of the client's key and the GUID.
    """
    key = next((value for name, value in fields if name == b"sec-websocket-key"), b"")
    return base64.b64encode(
        hashlib.sha1(key.strip() + _ACCEPT_GUID, usedforsecurity=False).digest()
    )


def _tokens(headers: Sequence[tuple[bytes, bytes]], field: bytes) -> set[bytes]:
    return {
        token.strip().lower()
        for name, value in headers
        if name == field
        for token in value.split(b",")
    }


def acceptance_problem(headers: Sequence[tuple[bytes, bytes]], accept: bytes) -> str | None:
    """
    Why a 101's fields (lowercase names, as h11 gives them) are not an
    acceptance of the WebSocket handshake whose key gives C{accept} (RFC
    6455 4.1: C{Upgrade: websocket}, C{Connection} naming C{upgrade}, the
    right C{Sec-WebSocket-Accept}); L{None} if they are.
    """
    if b"websocket" not in _tokens(headers, b"upgrade"):
        return "a 101 without Upgrade: websocket"
    if b"upgrade" not in _tokens(headers, b"connection"):
        return "a 101 whose Connection does not name upgrade"
    answers = [value.strip() for name, value in headers if name == b"sec-websocket-accept"]
    if answers != [accept]:
        return "a 101 without the right Sec-WebSocket-Accept"
    return None


def relayed_fields(headers: Sequence[tuple[bytes, bytes]]) -> Fields:
    """
    The app's answer fields fit to relay (lowercase, as h11 gives them):
    without hop-by-hop ones or those its C{Connection} names, appproxy's
    own, or C{content-length}.
    """
    named = _tokens(headers, b"connection")
    return [
        (name, value)
        for name, value in headers
        if name not in _NOT_RELAYED
        and name not in named
        and not name.startswith((b"appproxy-", b":"))
    ]


@lru_cache(maxsize=64)
def _policy(app: BackendApp) -> IPolicyForHTTPS:
    # Made once per app's settings: loading its CA bundle is not free.
    return tls_policy(app)


def endpoint(
    reactor: Any, app: BackendApp, scheme: bytes, host: bytes, port: int
) -> IStreamClientEndpoint:
    """
    Where the app listens: TCP, or TLS with the app's pushed settings when
    its internal scheme is C{https} (or C{wss}).

    @raise ValueError: another scheme.
    """
    tcp = HostnameEndpoint(reactor, host.decode("ascii"), port, timeout=CONNECT_TIMEOUT)
    if scheme in (b"https", b"wss"):
        return wrapClientTLS(_policy(app).creatorForNetloc(host, port), tcp)
    if scheme not in (b"http", b"ws"):
        raise ValueError(f"unsupported scheme {scheme.decode('latin-1')!r}")
    return tcp


@implementer(IPushProducer)
class AppConnection(Protocol):
    """
    One WebSocket's connection to the app: the handshake written when it
    is made, the answer parsed until a 101 (then raw bytes) or the end of
    another response.
    """

    def __init__(
        self, stream: UpgradeStream, parser: h11.Connection, request: bytes, accept: bytes
    ) -> None:
        self.stream = stream
        self.parser = parser
        self.request = request
        #: The C{Sec-WebSocket-Accept} the app must answer with its 101.
        self.accept = accept
        #: The app answered 101: what it sends is WebSocket bytes.
        self.relaying = False
        #: The app answered another status: what it sends is its response's body.
        self.refused = False
        #: The connection is gone, or closing at our request.
        self.gone = False
        #: The connection is gone (connectionLost ran).
        self.lost = False

    def _within(self, handler: Callable[..., object], *args: Any) -> None:
        stream = self.stream
        stream.proto.within_stream(stream.stream_id, handler, *args)

    def connectionMade(self) -> None:
        transport: Any = self.transport
        # What we write to the app is paced by its reading (see the module).
        transport.registerProducer(self, True)
        transport.write(self.request)
        self._within(self.stream.app_connected, self)

    def dataReceived(self, data: bytes) -> None:
        if self.relaying:
            self._within(self.stream.from_app, data)
        else:
            self._within(self._parse, data)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        was_gone, self.gone = self.gone, True
        self.lost = True
        if self.refused and not was_gone:
            # A refusal's body delimited by the close ends here.
            self._within(self._parse, b"")
        self._within(self.stream.app_lost, reason)

    def _parse(self, data: bytes) -> None:
        parser = self.parser
        stream = self.stream
        if stream.complete:
            return  # after a refusal's end: nothing more is relayed
        parser.receive_data(data)
        while not stream.finished:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as e:
                stream.app_malformed(str(e))
                return
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return
            if event is h11.PAUSED:
                # Switched: what came after the 101's head is the app's first bytes.
                self.relaying = True
                trailing = parser.trailing_data[0]
                if trailing:
                    stream.from_app(bytes(trailing))
                return
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    headers = list(event.headers)
                    problem = acceptance_problem(headers, self.accept)
                    if problem is not None:
                        # Not a WebSocket: nothing of it is relayed.
                        stream.app_malformed(problem)
                        return
                    stream.accepted(headers)
            elif isinstance(event, h11.Response):
                self.refused = True
                stream.refused(event.status_code, list(event.headers))
            elif isinstance(event, h11.Data):
                stream.from_app(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                stream.response_complete()
                return

    # -- what the stream does with it ------------------------------------

    def write(self, data: bytes) -> None:
        if not self.gone and self.transport is not None:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if not self.gone and self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        if not self.gone and self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def close(self, at_once: bool) -> None:
        """Close at once, or once what we wrote is flushed."""
        transport: Any = self.transport
        if self.gone or transport is None:
            return
        self.gone = True
        transport.unregisterProducer()
        if at_once:
            transport.abortConnection()
        else:
            transport.loseConnection()

    # -- IPushProducer: the app's transport's write buffer -----------------

    def pauseProducing(self) -> None:
        self.stream.app_write_paused()

    def resumeProducing(self) -> None:
        self._within(self.stream.app_write_resumed)

    def stopProducing(self) -> None:
        """The transport is closing: connectionLost follows."""


class AppFactory(ClientFactory):
    """Builds the one L{AppConnection} of a WebSocket."""

    noisy = False

    def __init__(
        self, stream: UpgradeStream, parser: h11.Connection, request: bytes, accept: bytes
    ) -> None:
        self.stream = stream
        self.parser = parser
        self.request = request
        self.accept = accept

    def buildProtocol(self, addr: object) -> AppConnection:
        return AppConnection(self.stream, self.parser, self.request, self.accept)


def connect(
    reactor: Any, app: BackendApp, scheme: bytes, host: bytes, port: int, factory: AppFactory
) -> Deferred[Any]:
    """Connect to the app; fires once connected (the handshake written)."""
    return endpoint(reactor, app, scheme, host, port).connect(factory)
