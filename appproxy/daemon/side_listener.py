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

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web import http, server
from twisted.web.resource import IResource

from appproxy.daemon.side_http import (
    HEADER_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_BODY,
    MAX_CONNECTIONS,
    MAX_PER_ADDRESS,
    BodilessRequest,
    capped,
    side_deadlines,
)
from appproxy.frontend.deadlines import deadline_channel_protocol
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


class NoBodyRequest(BodilessRequest, server.Request):
    """A twisted.web site's request refused (C{413}, connection closed) if it carries a body."""


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
        self.client_deadlines = side_deadlines(clock)

    def acceptableProtocols(self) -> list[bytes]:
        # twisted.web offers h2 too, and TLS adds what the site offers to
        # the context's ALPN list: HTTP/1.1 only here.
        return [b"http/1.1"]
