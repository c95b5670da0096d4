"""
What the tunnel carries: one user request or WebSocket handshake on its way
to a connector (L{ProxyJob}), and the two sides of its exchange: the user
side as the tunnel sees it (L{Exchange}) and the tunnel side as the user
side sees it (L{ExchangeStream}).  The queue that hands jobs to tunnel
connections is L{appproxy.tunnel.queue}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime

if TYPE_CHECKING:
    from appproxy.config import AppConfig

#: Methods whose requests may be repeated without changing the outcome.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class Exchange(Protocol):
    """
    The user side of a proxied request, as the tunnel sees it.  Implemented by
    L{appproxy.frontend.request.ProxyRequest}.

    For an upgraded job, C{response_started(101, fields)} says the app
    accepted the WebSocket; C{response_data} and C{response_ended} then carry
    the app's bytes and its EOF.  Any other status is an ordinary response
    (the app refused the upgrade).
    """

    def stream_opened(self, stream: ExchangeStream) -> None:
        """A tunnel stream now carries the request."""

    def body_wanted(self, stream: ExchangeStream) -> None:
        """The connector is ready for the request body: start sending it."""

    def body_drained(self) -> None:
        """The tunnel took all the body sent so far: resume reading it."""

    def response_started(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    def response_data(self, data: bytes, last: bool = False) -> None:
        """A piece of the response body; C{last}: the response ends with it."""

    def response_ended(self) -> None: ...

    def upstream_error(self, status: int, kind: str, detail: str) -> None:
        """The connector answered with an error of its own (backend down, timeout)."""

    def stream_lost(self, job: ProxyJob, reason: str) -> None:
        """The tunnel stream failed: retry or fail the request."""


class ExchangeStream(Protocol):
    """
    The tunnel side of a proxied request, as the user side sees it.  For an
    upgraded stream (a WebSocket), the body is the client's bytes to the
    app, C{end_body} the client's EOF, and the producer methods hold back
    the app's bytes to the client.
    """

    def write_body(self, data: bytes) -> bool:
        """Send request body data; C{False} means: pause until C{resume_body}."""

    def end_body(self) -> None: ...

    def cancel(self) -> None:
        """The user went away: reset the stream."""

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...

    def hold(self) -> None:
        """Stop taking response data until C{release}, whatever else resumes it."""

    def release(self) -> None: ...


@attrs.define(eq=False)
class ProxyJob:
    """
    One user request on its way to a connector.
    """

    app: AppConfig
    """The published application."""
    method: bytes
    """The request method."""
    path: bytes
    """The path and query on the internal app."""
    headers: list[tuple[bytes, bytes]]
    """Request headers prepared for the internal app (lowercase)."""
    request_id: str
    """The id shown to the user and logged everywhere."""
    has_body: bool
    """A request body follows the headers."""
    exchange: Exchange
    """The user side."""
    upgrade: bool = attrs.field(default=False, kw_only=True)
    """A WebSocket handshake: carried as an upgraded stream (extended
    CONNECT, see L{appproxy.tunnel.service_upgrade}), queued on the group's
    L{upgrade queue<appproxy.tunnel.queue.ConnectorGroups.upgrade_queue>}."""
    attempts: int = attrs.field(init=False, default=0)
    """How many tunnel streams have carried it."""
    dispatched: bool = attrs.field(init=False, default=False)
    """The connector said it passed the request to the app."""
    body_sent: bool = attrs.field(init=False, default=False)
    """Some of the body has left the service."""
    cancelled: bool = attrs.field(init=False, default=False)
    """Nobody wants the job any more (user gone, timed out)."""
    carriers: set[str] = attrs.field(init=False, factory=set)
    """The connectors (by certificate identity) that have taken the job: a
    retry avoids them while another connector is connected."""
    _timer: IDelayedCall | None = attrs.field(init=False, default=None)
    _deadline: float = attrs.field(init=False, default=0.0)
    """While queued: when the queue timeout expires."""
    _queued_at: float = attrs.field(init=False, default=0.0)
    """When it was last put in a queue (the queue wait metric)."""
    _on_timeout: Callable[[ProxyJob], None] | None = attrs.field(init=False, default=None)
    """While queued: what to call if no connection takes it in time."""

    @property
    def needs_dispatch_ack(self) -> bool:
        """
        Whether the connector must confirm dispatch before the body is sent,
        so that a lost connection can be retried safely.  Idempotent requests
        without a body are always safe to retry and skip the round trip.
        """
        return self.has_body or self.method not in IDEMPOTENT_METHODS

    def retryable(self) -> bool:
        """
        A request may be retried on another connection when the internal app
        cannot have seen it, or when it is idempotent and has no body.
        """
        if self.cancelled or self.attempts >= 2 or self.body_sent:
            return False
        if not self.dispatched:
            return True
        return not self.has_body and self.method in IDEMPOTENT_METHODS

    def start_timer(self, clock: IReactorTime, seconds: float, expired: Callable[[], None]) -> None:
        self.stop_timer()
        self._timer = clock.callLater(seconds, expired)

    def stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
