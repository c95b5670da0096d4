"""
The hand-off between user requests and connector connections.

Each connector group has one L{ConnectorGroupQueue}: the web front end puts
L{ProxyJob}s in it, and every tunnel connection of the group keeps
C{capacity - active streams} outstanding C{get()}s on it.  A job goes to
whichever connection has room; a group with several connectors survives the
loss of one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import attrs
from twisted.internet.defer import Deferred, DeferredQueue, QueueOverflow
from twisted.internet.interfaces import IDelayedCall, IReactorTime

if TYPE_CHECKING:
    from appproxy.config import AppConfig

#: Methods whose requests may be repeated without changing the outcome.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class Exchange(Protocol):
    """
    The user side of a proxied request, as the tunnel sees it.  Implemented by
    L{appproxy.frontend.request.ProxyRequest}.
    """

    def stream_opened(self, stream: ExchangeStream) -> None:
        """A tunnel stream now carries the request."""

    def body_wanted(self, stream: ExchangeStream) -> None:
        """The connector is ready for the request body: start sending it."""

    def body_drained(self) -> None:
        """The tunnel took all the body sent so far: resume reading it."""

    def response_started(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    def response_data(self, data: bytes) -> None: ...

    def response_ended(self) -> None: ...

    def upstream_error(self, status: int, kind: str, detail: str) -> None:
        """The connector answered with an error of its own (backend down, timeout)."""

    def stream_lost(self, job: ProxyJob, reason: str) -> None:
        """The tunnel stream failed: retry or fail the request."""


class ExchangeStream(Protocol):
    """
    The tunnel side of a proxied request, as the user side sees it.
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
    attempts: int = attrs.field(init=False, default=0)
    """How many tunnel streams have carried it."""
    dispatched: bool = attrs.field(init=False, default=False)
    """The connector said it passed the request to the app."""
    body_sent: bool = attrs.field(init=False, default=False)
    """Some of the body has left the service."""
    cancelled: bool = attrs.field(init=False, default=False)
    """Nobody wants the job any more (user gone, timed out)."""
    _timer: IDelayedCall | None = attrs.field(init=False, default=None)

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


class NoCapacity(Exception):
    """
    The group's backlog is full.
    """


@attrs.define(eq=False)
class ConnectorGroupQueue:
    """
    The queue of one connector group.
    """

    name: str
    """The group name."""
    clock: IReactorTime
    timeout: float
    """Seconds a job may wait for a connection."""
    backlog: int = 10000
    """How many jobs may wait."""
    _queue: DeferredQueue[ProxyJob] = attrs.field(init=False)
    connections: set[object] = attrs.field(init=False, factory=set)
    """The tunnel connections currently serving the group."""

    @_queue.default
    def _new_queue(self) -> DeferredQueue[ProxyJob]:
        return DeferredQueue(backlog=None, size=self.backlog)

    def put(self, job: ProxyJob, on_timeout: Callable[[ProxyJob], None]) -> None:
        """
        Queue C{job}; C{on_timeout(job)} is called if no connection takes it
        within the queue timeout.

        @raise NoCapacity: the backlog is full.
        """

        def expired() -> None:
            job._timer = None
            try:
                self._queue.pending.remove(job)
            except ValueError:
                return
            on_timeout(job)

        job.start_timer(self.clock, self.timeout, expired)
        try:
            self._queue.put(job)
        except QueueOverflow:
            job.stop_timer()
            raise NoCapacity(self.name) from None

    def get(self) -> Deferred[ProxyJob]:
        """
        Wait for the next live job.  Cancel the result to stop waiting.
        """
        return self._queue.get()

    def withdraw(self, job: ProxyJob) -> None:
        """
        Take a job that is still waiting out of the queue (its user left).
        """
        job.stop_timer()
        try:
            self._queue.pending.remove(job)
        except ValueError:
            pass

    @property
    def waiting(self) -> int:
        return len(self._queue.pending)


@attrs.define(eq=False)
class ConnectorGroups:
    """
    All connector groups of a service, created on first use.
    """

    clock: IReactorTime
    timeout: float
    """The queue timeout of groups created from now on."""
    _groups: dict[str, ConnectorGroupQueue] = attrs.field(init=False, factory=dict)

    def __getitem__(self, name: str) -> ConnectorGroupQueue:
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = ConnectorGroupQueue(name, self.clock, self.timeout)
        return group

    def __iter__(self) -> Iterator[ConnectorGroupQueue]:
        return iter(self._groups.values())
