"""
The public listener: HTTP/1.1 and HTTP/2 channels whose requests are
L{ProxyRequest}s, and the access log.

The request's life, module by module: L{appproxy.frontend.front_end} (what
requests share), L{appproxy.frontend.request} (what to do with one),
L{appproxy.frontend.answers} (what the service answers itself),
L{appproxy.frontend.exchange} (streaming it through the tunnel) and
L{appproxy.frontend.relay} (the response on its way back).
"""

from __future__ import annotations

import time
from typing import Any

import attrs
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.web import http
from twisted.web.iweb import INonQueuedRequestFactory
from zope.interface import implementer

from appproxy.frontend.deadlines import ClientDeadlines, deadline_channel_protocol
from appproxy.frontend.front_end import FrontEnd
from appproxy.frontend.request import ProxyRequest
from appproxy.observe.lines import LineLogger
from appproxy.observe.requests import app_metrics

__all__ = ["ProxyHTTPFactory", "ProxyRequestFactory"]

#: The access log (a line per request, written as it is by the text log).
log = LineLogger()


@implementer(INonQueuedRequestFactory)
@attrs.frozen
class ProxyRequestFactory:
    """
    Builds L{ProxyRequest}s bound to a L{FrontEnd}; given to the HTTP channels.
    """

    frontend: FrontEnd

    def __call__(self, channel: Any, queued: object = None) -> ProxyRequest:
        return ProxyRequest(channel, self.frontend)


class ProxyHTTPFactory(http.HTTPFactory):
    """
    The public listener's factory: HTTP/1.1 and HTTP/2 (by ALPN) channels
    whose requests are L{ProxyRequest}s, with limits tightened for a proxy.
    """

    #: Idle connections are closed after this many seconds.
    timeOut = 120
    noisy = False
    #: Stricter HTTP/1.1, or HTTP/2 with a bound on empty DATA frames.
    protocol = deadline_channel_protocol

    def __init__(
        self, frontend: FrontEnd, clock: IReactorTime, deadlines: ClientDeadlines | None = None
    ) -> None:
        super().__init__(reactor=clock)
        self.frontend = frontend
        self.request_factory = ProxyRequestFactory(frontend)
        #: Header deadline, body rate (L{appproxy.frontend.deadlines}).
        self.client_deadlines = deadlines or ClientDeadlines(clock)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        protocol: Any = super().buildProtocol(addr)
        protocol.requestFactory = self.request_factory
        return protocol

    def log(self, request: Any) -> None:
        """
        Access log: one structured event per finished request.  A WebSocket
        (its handshake answered 101) gets its line when it ends, from
        L{appproxy.frontend.ws_relay}, with the same C{log_system}.
        """
        self.frontend.requests_served += 1
        started = getattr(request, "_started_at", 0.0)
        method = request.method.decode("latin-1") if request.method else "-"
        host_field = getattr(request, "host_field", None)
        if host_field is None:
            host_field = request.getHeader(b"host")
        host = (host_field or b"-").decode("latin-1")
        path = (request.path or b"").decode("latin-1")
        seconds = time.monotonic() - started if started else None
        duration_ms = seconds * 1000 if seconds is not None else 0.0
        app = getattr(request, "app", None)
        app_metrics(app.name if app is not None else None).finished(
            request.code,
            seconds,
            getattr(request, "bytes_in", 0),
            request.sentLength,
        )
        rid = getattr(request, "request_id", "")
        # The line is formatted here, once, and given as the event's format
        # with its braces doubled (L{LineLogger}): a text log writes it as it
        # is (L{appproxy.daemon.text_log}).  The fields stay in the event for
        # JSON logs.
        log.line(
            f"{method} {host}{path} {request.code} {duration_ms:.1f}ms {rid}",
            method=method,
            host=host,
            path=path,
            status=request.code,
            duration_ms=duration_ms,
            rid=rid,
            log_system="access",
        )
