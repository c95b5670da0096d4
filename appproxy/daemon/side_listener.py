"""
The service's side listeners (the admin API and page, C{[admin] listen};
the metrics, C{[metrics] listen}): twisted.web sites that take no request
body and hold few connections, whoever connects.

  - L{SideSite}: HTTP/1.1 only (the ALPN twisted.web would add, C{h2}, is
    not offered), the public listener's stricter HTTP/1.1 channel with its
    header deadline (L{appproxy.frontend.deadlines}: L{HEADER_TIMEOUT}
    seconds from the connection, or from a kept-alive request's first byte,
    to the end of the header block; at most L{HEADERS_PER_ADDRESS}
    connections of one address reading one), a short idle timeout, and
    requests that refuse a body (L{NoBodyRequest}: a C{Content-Length} over
    L{MAX_BODY} or a chunked body gets C{413} and the connection is closed
    before any of it is read).  Its access log hides query values
    (L{appproxy.http.redact}: C{/admin/callback?code=...}).
  - L{capped}: the caps on open connections per address and in total
    (L{appproxy.daemon.capped}, re-exported here).
"""

from __future__ import annotations

from typing import Any, Final

from twisted.internet.interfaces import IReactorTime
from twisted.web import http, server
from twisted.web.resource import IResource

from appproxy.config.model import ClientLimits
from appproxy.daemon.capped import MAX_CONNECTIONS, MAX_PER_ADDRESS, capped
from appproxy.frontend.deadlines import ClientDeadlines, deadline_channel_protocol
from appproxy.http.redact import redact_query

__all__ = [
    "HEADER_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_BODY",
    "MAX_CONNECTIONS",
    "MAX_PER_ADDRESS",
    "NoBodyRequest",
    "SideSite",
    "capped",
]

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


class NoBodyRequest(server.Request):
    """A request refused (C{413}, connection closed) if it carries a body."""

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


def _redacted_log(timestamp: str, request: Any) -> str:
    """twisted.web's combined log line, query values hidden."""
    return redact_query(http.combinedLogFormatter(timestamp, request))


class SideSite(server.Site):
    """A side listener's site (the module docstring)."""

    noisy = False
    requestFactory = NoBodyRequest
    #: The public listener's HTTP/1.1 channel, with its header deadline.
    protocol = deadline_channel_protocol

    def __init__(self, root: IResource, clock: IReactorTime, timeout: float = IDLE_TIMEOUT):
        super().__init__(root, logFormatter=_redacted_log, timeout=timeout, reactor=clock)
        self.displayTracebacks = False
        #: Read by L{deadline_channel_protocol}: no body, so no body rate.
        self.client_deadlines = ClientDeadlines(
            clock,
            ClientLimits(
                header_timeout=HEADER_TIMEOUT,
                body_min_rate=0,
                header_connections_per_address=HEADERS_PER_ADDRESS,
            ),
        )

    def acceptableProtocols(self) -> list[bytes]:
        # twisted.web offers h2 too, and TLS adds what the site offers to
        # the context's ALPN list: HTTP/1.1 only here.
        return [b"http/1.1"]
