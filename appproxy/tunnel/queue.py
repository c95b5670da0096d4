"""
The hand-off between user requests and connector connections.

Each connector group has one L{ConnectorGroupQueue}: the web front end puts
L{ProxyJob}s in it, and every tunnel connection of the group with room keeps
one outstanding C{get()} on it.  WebSocket handshakes (upgraded jobs) wait
in a second queue of the group (L{ConnectorGroups.upgrade_queue}), served
by the connections with room for an upgraded stream.  A job goes to whichever connection has
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
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from appproxy.observe.metrics import LATENCY_BUCKETS, LIMIT_HITS, QUEUE_WAIT
from appproxy.observe.requests import observations

# The job and its exchange live in their own module; imported from here too.
from appproxy.tunnel.job import IDEMPOTENT_METHODS, Exchange, ExchangeStream, ProxyJob

__all__ = [
    "IDEMPOTENT_METHODS",
    "NO_CONNECTOR_GRACE",
    "ConnectorGroupQueue",
    "ConnectorGroups",
    "Exchange",
    "ExchangeStream",
    "NoCapacity",
    "ProxyJob",
]

#: Seconds a group may have no connector connected before its waiting
#: requests fail (503) instead of waiting the whole queue timeout.
NO_CONNECTOR_GRACE = 3.0


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
    upgrades: bool = False
    """The queue of WebSocket handshakes (for the log's words)."""
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
    _wait: Any = attrs.field(init=False)
    """The group's queue waits, moved into its child of the histogram at each scrape."""

    @_wait.default
    def _wait_metric(self) -> Any:
        return observations(QUEUE_WAIT.labels(self.name), LATENCY_BUCKETS)

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
            LIMIT_HITS.labels(limit="queued_per_group").inc()
            raise NoCapacity(self.name)
        job._queued_at = self.clock.seconds()
        job._deadline = job._queued_at + self.timeout
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
            able = " able to carry WebSockets" if self.upgrades else ""
            return f"no connector of group {self.name!r}{able} is connected"
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
        """C{connection} takes C{job}: out of the queue, its wait counted."""
        self._wait.observe(self.clock.seconds() - job._queued_at)
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
    backlog: int = 10000
    """Jobs each queue may hold waiting (C{[limits] queued_per_group}; set
    on every queue by L{set_backlog})."""
    _groups: dict[str, ConnectorGroupQueue] = attrs.field(init=False, factory=dict)
    _upgrade_groups: dict[str, ConnectorGroupQueue] = attrs.field(init=False, factory=dict)
    _started: float = attrs.field(init=False)
    """When the service started: a group not seen yet has had no connection since."""

    @_started.default
    def _now(self) -> float:
        return self.clock.seconds()

    def __getitem__(self, name: str) -> ConnectorGroupQueue:
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = self._new(name)
        return group

    def upgrade_queue(self, name: str) -> ConnectorGroupQueue:
        """
        The queue of group C{name}'s upgraded streams (WebSockets): the same
        semantics as its request queue, served only by the tunnel
        connections that have room for an upgraded stream (a connection
        joins it once its connector offers upgrade capacity).
        """
        group = self._upgrade_groups.get(name)
        if group is None:
            group = self._upgrade_groups[name] = self._new(name)
            group.upgrades = True
        return group

    def set_backlog(self, backlog: int) -> None:
        """Every queue, and those made from now on, hold at most C{backlog} jobs."""
        self.backlog = backlog
        for group in self:
            group.backlog = backlog

    def _new(self, name: str) -> ConnectorGroupQueue:
        group = ConnectorGroupQueue(name, self.clock, self.timeout, self.backlog)
        group._alone_since = self._started
        return group

    def __iter__(self) -> Iterator[ConnectorGroupQueue]:
        """Every queue: each group's request queue, then the upgrade queues."""
        yield from self._groups.values()
        yield from self._upgrade_groups.values()
