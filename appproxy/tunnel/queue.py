"""
The hand-off between user requests and connector connections.

Each connector group has one L{ConnectorGroupQueue}: the web front end puts
L{ProxyJob}s in it, and every tunnel connection of the group with room keeps
one outstanding C{get()} on it.  A job goes to whichever connection has
room; a group with several connectors survives the loss of one.

A job that comes back for its one retry avoids the connector that lost it:
a connector keeps several tunnel connections, and when it dies they go one
by one, so the sibling of the connection that failed is likely to fail
next.  The retry goes to a connection of another connector (named by its
certificate) whenever one is connected, and to the same connector only
when it is the only one left.

A group with no connector connected does not make its requests wait the
whole queue timeout: once it has had none for L{NO_CONNECTOR_GRACE} seconds
(enough to ride over a connector's reconnect), its waiting requests fail at
once, and so do new ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Protocol

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

if TYPE_CHECKING:
    from appproxy.config import AppConfig

#: Seconds a group may have no connector connected before its waiting
#: requests fail (503) instead of waiting the whole queue timeout.
NO_CONNECTOR_GRACE = 3.0

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
    carriers: set[str] = attrs.field(init=False, factory=set)
    """The connectors (by certificate identity) that have taken the job: a
    retry avoids them while another connector is connected."""
    _timer: IDelayedCall | None = attrs.field(init=False, default=None)
    _deadline: float = attrs.field(init=False, default=0.0)
    """While queued: when the queue timeout expires."""
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


class NoCapacity(Exception):
    """
    The group's backlog is full.
    """


@attrs.define(eq=False)
class _Waiter:
    """One outstanding C{get()}: the connection that asked, and its answer."""

    connection: object
    deferred: Deferred[ProxyJob]


@attrs.define(eq=False)
class ConnectorGroupQueue:
    """
    The queue of one connector group.

    A job waits at most C{timeout} seconds for a connection to take it.  While
    no connection of the group is connected, it waits at most until the group
    has been without one for C{grace} seconds: a group whose connectors are
    all gone answers 503 promptly instead of after the whole timeout.

    Waiting connections are served in the order they asked, and waiting jobs
    in the order they came, except that a job goes to a connector it has
    already been on only when no other connector is connected (see the
    module docstring).
    """

    name: str
    """The group name."""
    clock: IReactorTime
    timeout: float
    """Seconds a job may wait for a connection."""
    backlog: int = 10000
    """How many jobs may wait."""
    grace: float = NO_CONNECTOR_GRACE
    """Seconds without any connection after which waiting jobs fail."""
    _pending: list[ProxyJob] = attrs.field(init=False, factory=list)
    """Jobs waiting for a connection, oldest first."""
    _waiters: list[_Waiter] = attrs.field(init=False, factory=list)
    """Connections waiting for a job, in the order they asked."""
    connections: dict[object, str | None] = attrs.field(init=False, factory=dict)
    """The tunnel connections currently serving the group, each with its
    connector's identity (read only: use L{connection_made} and
    L{connection_lost})."""
    _alone_since: float = attrs.field(init=False)
    """When the group last had no connection (its creation, at first)."""

    @_alone_since.default
    def _created(self) -> float:
        return self.clock.seconds()

    def put(self, job: ProxyJob, on_timeout: Callable[[ProxyJob], None]) -> None:
        """
        Queue C{job}; C{on_timeout(job)} is called (from a timer, never from
        here) if no connection takes it within the queue timeout, or sooner
        if the group has no connection (see the class docstring).

        @raise NoCapacity: the backlog is full.
        """
        waiter = next((w for w in self._waiters if self._may_take(w.connection, job)), None)
        if waiter is None and len(self._pending) >= self.backlog:
            raise NoCapacity(self.name)
        job._deadline = self.clock.seconds() + self.timeout
        job._on_timeout = on_timeout
        if waiter is None:
            self._arm(job)
            self._pending.append(job)
        else:
            # Taken at once: no queue timer to start (and the taker to stop).
            job.stop_timer()
            self._hand(waiter, job)

    def get(self, connection: object = None) -> Deferred[ProxyJob]:
        """
        Wait for the next live job for C{connection} (one registered with
        L{connection_made}; L{None} takes any job).  Cancel the result to stop
        waiting.
        """
        job = next((j for j in self._pending if self._may_take(connection, j)), None)
        if job is not None:
            self._pending.remove(job)
            self._carried_by(connection, job)
            return succeed(job)

        def cancel(d: Deferred[ProxyJob]) -> None:
            self._waiters = [w for w in self._waiters if w.deferred is not d]

        waiter = _Waiter(connection, Deferred(cancel))
        self._waiters.append(waiter)
        return waiter.deferred

    def withdraw(self, job: ProxyJob) -> None:
        """
        Take a job that is still waiting out of the queue (its user left).
        """
        job.stop_timer()
        job._on_timeout = None
        try:
            self._pending.remove(job)
        except ValueError:
            pass

    def connection_made(self, connection: object, connector: str | None = None) -> None:
        """
        A tunnel connection of the group is up (it may not be ready yet).

        @param connector: the identity of the connector that dialled it
            (its certificate's name); connections of one connector share it.
        """
        self.connections[connection] = connector

    def connection_lost(self, connection: object) -> None:
        """
        A tunnel connection of the group is gone.  If it was the last one,
        the waiting jobs now fail once the group has been alone for
        C{grace} seconds, unless a connection comes back first.  If it was the
        last one of the connectors a waiting job avoids, the job may now go
        back to the connector it came from.
        """
        if connection not in self.connections:
            return
        del self.connections[connection]
        if not self.connections:
            self._alone_since = self.clock.seconds()
            for job in self._pending:
                self._arm(job)
        self._match()

    def unavailable_reason(self) -> str:
        """Why a job timed out, for the log (names the group: not for users)."""
        if not self.connections:
            return f"no connector of group {self.name!r} is connected"
        return (
            f"no connector of group {self.name!r} took the request within {self.timeout:g} seconds"
        )

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def _may_take(self, connection: object, job: ProxyJob) -> bool:
        """
        Whether C{connection} may take C{job}: any job that has not been on
        its connector, and a retry on its own connector only when no other
        connector is connected.
        """
        connector = self.connections.get(connection)
        if connector is None or connector not in job.carriers:
            return True
        return all(other in job.carriers for other in self.connections.values())

    def _carried_by(self, connection: object, job: ProxyJob) -> None:
        connector = self.connections.get(connection)
        if connector is not None:
            job.carriers.add(connector)

    def _hand(self, waiter: _Waiter, job: ProxyJob) -> None:
        self._waiters.remove(waiter)
        self._carried_by(waiter.connection, job)
        waiter.deferred.callback(job)

    def _match(self) -> None:
        """
        Hand waiting jobs to waiting connections that may now take them.
        Bounded: every round hands out one job or stops.
        """
        while True:
            pair = next(
                (
                    (w, j)
                    for w in self._waiters
                    for j in self._pending
                    if self._may_take(w.connection, j)
                ),
                None,
            )
            if pair is None:
                return
            waiter, job = pair
            self._pending.remove(job)
            self._hand(waiter, job)

    def _arm(self, job: ProxyJob) -> None:
        """Set C{job}'s timer to its queue deadline, or sooner when alone."""
        deadline = job._deadline
        if not self.connections:
            deadline = min(deadline, self._alone_since + self.grace)
        job.start_timer(
            self.clock, max(0.0, deadline - self.clock.seconds()), partial(self._expired, job)
        )

    def _expired(self, job: ProxyJob) -> None:
        job._timer = None
        if job not in self._pending:
            return
        if self.connections and self.clock.seconds() < job._deadline:
            # A connection came back during the grace period: wait on.
            self._arm(job)
            return
        self._pending.remove(job)
        on_timeout, job._on_timeout = job._on_timeout, None
        if on_timeout is not None:
            on_timeout(job)


@attrs.define(eq=False)
class ConnectorGroups:
    """
    All connector groups of a service, created on first use.
    """

    clock: IReactorTime
    timeout: float
    """The queue timeout of groups created from now on."""
    _groups: dict[str, ConnectorGroupQueue] = attrs.field(init=False, factory=dict)
    _started: float = attrs.field(init=False)
    """When the service started: a group not seen yet has had no connection since."""

    @_started.default
    def _now(self) -> float:
        return self.clock.seconds()

    def __getitem__(self, name: str) -> ConnectorGroupQueue:
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = ConnectorGroupQueue(name, self.clock, self.timeout)
            group._alone_since = self._started
        return group

    def __iter__(self) -> Iterator[ConnectorGroupQueue]:
        return iter(self._groups.values())
