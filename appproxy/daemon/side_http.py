"""
What the service's side listeners (L{appproxy.daemon.side_listener}: the
admin API and page; the metrics) share without twisted.web's site, so that
the metrics listener, served by twisted.web's C{http} module alone, does not
import C{twisted.web.server} and all it imports (about 3 MiB of the daemon's
memory, docs/performance.md):

  - L{BodilessRequest}: a request that carries a body (a C{Content-Length}
    over L{MAX_BODY}, or chunked) gets C{413} and the connection is closed
    before any of it is read.
  - L{side_deadlines}: the public listener's header deadline
    (L{appproxy.frontend.deadlines}: L{HEADER_TIMEOUT} seconds from the
    connection, or from a kept-alive request's first byte, to the end of
    the header block; at most L{HEADERS_PER_ADDRESS} connections of one
    address reading one).
  - L{capped}: the caps on open connections per address (IPv6 per /64) and
    in total (L{appproxy.http.ratelimit.ConnectionCounts}), from the TCP
    accept to the close; one more is closed at once.
  - L{answer_as_site}: a leaf resource's answer, as twisted.web's site
    sends it (C{Server}, C{Date}, C{Content-Length}, HEAD without the body).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from twisted.copyright import version as twisted_version
from twisted.internet.interfaces import IAddress, IProtocolFactory, IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web import http

from appproxy.config.model import ClientLimits
from appproxy.frontend.deadlines import ClientDeadlines
from appproxy.http.ratelimit import ConnectionCounts, Throttle, connection_key
from appproxy.http.render import NOT_DONE_YET

__all__ = [
    "HEADERS_PER_ADDRESS",
    "HEADER_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_BODY",
    "MAX_CONNECTIONS",
    "MAX_PER_ADDRESS",
    "SERVER",
    "TOO_LARGE_REPLY",
    "BodilessRequest",
    "answer_as_site",
    "capped",
    "side_deadlines",
]

log = Logger()

#: Open connections of one address (IPv6: of one /64).
MAX_PER_ADDRESS: Final = 32
#: Open connections in all.
MAX_CONNECTIONS: Final = 256
#: The C{Server} field, as twisted.web's site sends it.
SERVER: Final = b"TwistedWeb/" + twisted_version.encode("ascii")

#: Bytes of request body accepted (the page's sign-out form sends none).
MAX_BODY: Final = 1024
#: Seconds to send a header block.
HEADER_TIMEOUT: Final = 10.0
#: Seconds a connection may be idle.
IDLE_TIMEOUT: Final = 60
#: Connections of one address reading a header block at once.
HEADERS_PER_ADDRESS: Final = 16

_TOO_LARGE: Final = b"This listener takes no request body.\n"
TOO_LARGE_REPLY: Final = (
    b"HTTP/1.1 413 Content Too Large\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Cache-Control: no-store\r\n"
    b"Connection: close\r\n\r\n%s" % (len(_TOO_LARGE), _TOO_LARGE)
)


def _discard(data: bytes) -> None:
    pass


class BodilessRequest(http.Request):
    """
    A request refused (C{413}, connection closed) if it carries a body: the
    side listeners' requests (twisted.web's site's, L{appproxy.daemon.side_listener};
    the metrics listener's, on twisted.web's C{http} module alone).
    """

    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is None or length > MAX_BODY:
            self._refused = True
            transport: Any = self.channel.transport
            if transport is not None:
                transport.write(TOO_LARGE_REPLY)
                self.channel.loseConnection()
                # Nothing more is read (the channel's raw mode drops it all),
                # and no "100 Continue" goes after the answer.
                self.requestHeaders.removeHeader(b"expect")
                self.channel.rawDataReceived = _discard  # type: ignore[method-assign]
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if not self._refused:
            super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)


def side_deadlines(clock: IReactorTime) -> ClientDeadlines:
    """A side listener's header deadline (no body, so no body rate)."""
    return ClientDeadlines(
        clock,
        ClientLimits(
            header_timeout=HEADER_TIMEOUT,
            body_min_rate=0,
            header_connections_per_address=HEADERS_PER_ADDRESS,
        ),
    )


def answer_as_site(request: http.Request, render: Callable[[http.Request], Any]) -> None:
    """
    Answer C{request} with what C{render} (a leaf resource's C{render})
    returns, as twisted.web's site would: its C{Server} and C{Date} fields,
    C{Content-Length}, the fields alone for HEAD; nothing more if it answers
    later (L{NOT_DONE_YET}) or already did.
    """
    request.setHeader(b"server", SERVER)
    request.setHeader(b"date", http.datetimeToString())
    body = render(request)
    if body is NOT_DONE_YET or request.finished or request._disconnected:
        return
    if request.method == b"HEAD":
        if body:
            request.setHeader(b"content-length", b"%d" % len(body))
        request.write(b"")
    else:
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
    request.finish()


class _Capped(WrappingFactory):
    """Closes a connection past the caps at its accept (L{capped})."""

    noisy = False

    def __init__(
        self, wrapped: IProtocolFactory, counts: ConnectionCounts, what: str, clock: IReactorTime
    ) -> None:
        super().__init__(wrapped)
        self.clock = clock
        self.counts = counts
        self.what = what
        self._keys: dict[Any, str] = {}
        self.refusals = Throttle(60.0)

    def buildProtocol(self, addr: IAddress | None) -> ProtocolWrapper | None:  # type: ignore[override]
        host = str(getattr(addr, "host", addr))
        key = connection_key(host)
        refused = self.counts.enter(key)
        if refused is not None:
            if self.refusals.due(f"{refused} {key}", self.clock.seconds()):
                log.info(
                    "Closing a connection from {address} to the {what} listener: over"
                    " {limit} (said once a minute)",
                    address=host,
                    what=self.what,
                    limit=refused,
                )
            return None
        protocol: ProtocolWrapper | None = super().buildProtocol(addr)
        if protocol is None:
            self.counts.leave(key)
            return None
        self._keys[protocol] = key
        return protocol

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        key = self._keys.pop(p, None)
        if key is not None:
            self.counts.leave(key)


def capped(
    factory: IProtocolFactory,
    what: str,
    clock: IReactorTime,
    per_address: int = MAX_PER_ADDRESS,
    total: int = MAX_CONNECTIONS,
) -> WrappingFactory:
    """C{factory} behind the caps on open connections (C{what}: for the log)."""
    return _Capped(factory, ConnectionCounts(per_address, total), what, clock)
