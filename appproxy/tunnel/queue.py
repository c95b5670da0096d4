"""
The hand-off between user requests and connector connections.

Each connector group has one L{ConnectorGroupQueue}: the web front end puts
L{ProxyJob}s in it, and every tunnel connection of the group keeps
C{capacity - active streams} outstanding C{get()}s on it.  A job goes to
whichever connection has room; a group with several connectors survives the
loss of one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred, DeferredQueue, QueueOverflow
from twisted.internet.interfaces import IDelayedCall, IReactorTime

if TYPE_CHECKING:
    from appproxy.config.loader import AppConfig

#: Methods whose requests may be repeated without changing the outcome.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class Exchange(Protocol):
    """
    The user side of a proxied request, as the tunnel sees it.  Implemented by
    L{appproxy.frontend.proxy.ProxyRequest}.
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


class ProxyJob:
    """
    One user request on its way to a connector.

    @ivar app: the published application.
    @ivar method: request method.
    @ivar path: the path and query on the internal app.
    @ivar headers: request headers prepared for the internal app (lowercase).
    @ivar request_id: the id shown to the user and logged everywhere.
    @ivar has_body: a request body follows the headers.
    @ivar exchange: the user side.
    @ivar attempts: how many tunnel streams have carried it.
    @ivar dispatched: the connector said it passed the request to the app.
    @ivar body_sent: some of the body has left the service.
    @ivar cancelled: nobody wants the job any more (user gone, timed out).
    """

    def __init__(
        self,
        app: AppConfig,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        request_id: str,
        has_body: bool,
        exchange: Exchange,
    ) -> None:
        self.app = app
        self.method = method
        self.path = path
        self.headers = headers
        self.request_id = request_id
        self.has_body = has_body
        self.exchange = exchange
        self.attempts = 0
        self.dispatched = False
        self.body_sent = False
        self.cancelled = False
        self._timer: IDelayedCall | None = None

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


class ConnectorGroupQueue:
    """
    The queue of one connector group.

    @ivar name: the group name.
    @ivar connections: the tunnel connections currently serving the group.
    """

    def __init__(self, name: str, clock: IReactorTime, timeout: float, backlog: int = 10000):
        self.name = name
        self.clock = clock
        self.timeout = timeout
        self._queue: DeferredQueue[ProxyJob] = DeferredQueue(backlog=None, size=backlog)
        self.connections: set[object] = set()

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


class ConnectorGroups:
    """
    All connector groups of a service, created on first use.
    """

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self._groups: dict[str, ConnectorGroupQueue] = {}

    def __getitem__(self, name: str) -> ConnectorGroupQueue:
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = ConnectorGroupQueue(name, self.clock, self.timeout)
        return group

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._groups.values())
