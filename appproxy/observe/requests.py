"""
The public listener's request metrics, counted where the access log line is
written, and the access decisions the gate makes on every request with a
session: each app's L{REQUESTS}, L{REQUEST_DURATION}, L{REQUEST_BYTES} and
L{POLICY_DECISIONS}.

A finished request bumps plain integers and floats here (a dictionary lookup,
a bisection into the latency buckets, a few additions): no lock, no value
object, no call into prometheus_client per request.  The counts are moved
into the metrics' children at scrape time (L{flush}, which the registry calls
before it collects the metrics: L{before_scrape}), so the exposition
(names, labels, values, C{_created}) is exactly what the children would show
had they been incremented one request at a time.  Everything runs in the
reactor's thread (the scrape too), so nothing is counted twice or lost.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Final

from appproxy.observe.metrics import (
    LATENCY_BUCKETS,
    POLICY_DECISIONS,
    REQUEST_BYTES,
    REQUEST_DURATION,
    REQUESTS,
    before_scrape,
    status_class,
)

__all__ = ["NO_APP", "AppMetrics", "Count", "Observations", "app_metrics", "flush", "observations"]

#: The C{app} label of requests no app took (the login hosts, unknown hosts).
NO_APP: Final = "-"

#: The duration histogram's upper bounds, +Inf last (as prometheus_client has them).
_BOUNDS: Final = LATENCY_BUCKETS


class Count:
    """A counter bumped per request, moved into its metric child when scraped."""

    __slots__ = ("_child", "pending")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.pending: float = 0

    def inc(self, amount: float = 1) -> None:
        self.pending += amount

    def flush(self) -> None:
        if self.pending:
            amount, self.pending = self.pending, 0
            self._child.inc(amount)


class Observations:
    """
    A histogram child's observations since the last scrape: per bucket (not
    cumulative, as the child keeps them) and their sum, moved into the child
    by L{flush}.  C{observe} is a bisection and two additions; every
    instance is flushed before each scrape.
    """

    __slots__ = ("_bounds", "_buckets", "_child", "_sum")

    def __init__(self, child: Any, bounds: tuple[float, ...]) -> None:
        self._child = child
        self._bounds = bounds
        self._buckets = [0] * len(bounds)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        # The first bound not below it, as prometheus_client's observe().
        self._buckets[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def flush(self) -> None:
        if not any(self._buckets):
            return
        # The histogram child's own values (prometheus_client has no
        # public way to add many observations at once).
        child = self._child
        child._sum.inc(self._sum)
        for i, n in enumerate(self._buckets):
            if n:
                child._buckets[i].inc(n)
                self._buckets[i] = 0
        self._sum = 0.0


#: Every L{Observations} by its child (one each), flushed before each scrape.
_OBSERVATIONS: dict[int, Observations] = {}


def observations(child: Any, bounds: tuple[float, ...]) -> Observations:
    """The one L{Observations} of histogram C{child} (made at its first use)."""
    found = _OBSERVATIONS.get(id(child))
    if found is None:
        found = _OBSERVATIONS[id(child)] = Observations(child, bounds)
    return found


class AppMetrics:
    """One app's request counts since the last scrape."""

    __slots__ = (
        "_app",
        "_by_class",
        "_by_decision",
        "_by_status",
        "_duration",
        "bytes_in",
        "bytes_out",
    )

    def __init__(self, app: str) -> None:
        self._app = app
        self._duration = observations(REQUEST_DURATION.labels(app), _BOUNDS)
        self.bytes_in = Count(REQUEST_BYTES.labels(app, "in"))
        self.bytes_out = Count(REQUEST_BYTES.labels(app, "out"))
        #: Status class -> its count; status code -> the same (at most 500 codes).
        self._by_class: dict[str, Count] = {}
        self._by_status: dict[int, Count] = {}
        #: Policy outcome -> its decision count (a fixed set).
        self._by_decision: dict[str, Count] = {}

    def requests(self, status: int) -> Count:
        """The request count of C{status}'s class."""
        count = self._by_status.get(status)
        if count is None:
            label = status_class(status)
            count = self._by_class.get(label)
            if count is None:
                count = self._by_class[label] = Count(REQUESTS.labels(self._app, label))
            self._by_status[status] = count
        return count

    def decision(self, outcome: str) -> Count:
        """The count of the app's access decisions with C{outcome}."""
        count = self._by_decision.get(outcome)
        if count is None:
            child = POLICY_DECISIONS.labels(self._app, outcome)
            count = self._by_decision[outcome] = Count(child)
        return count

    def finished(self, status: int, seconds: float | None, received: int, sent: int) -> None:
        """
        A request (or WebSocket) is over: count it, its body bytes both ways
        and, unless C{seconds} is L{None}, its duration.
        """
        count = self._by_status.get(status)
        if count is None:
            count = self.requests(status)
        count.pending += 1
        if seconds is not None:
            self._duration.observe(seconds)
        if received:
            self.bytes_in.pending += received
        if sent:
            self.bytes_out.pending += sent

    def flush(self) -> None:
        """Move the counts into the metrics' children."""
        for count in self._by_class.values():
            count.flush()
        for count in self._by_decision.values():
            count.flush()
        self.bytes_in.flush()
        self.bytes_out.flush()


_APPS: dict[str, AppMetrics] = {}


def app_metrics(app: str | None) -> AppMetrics:
    """The metrics of C{app} (L{None}: no app, L{NO_APP})."""
    name = NO_APP if app is None else app
    found = _APPS.get(name)
    if found is None:
        found = _APPS[name] = AppMetrics(name)
    return found


def flush() -> None:
    """Move every app's counts and every observation into the metrics (before each scrape)."""
    for metrics in _APPS.values():
        metrics.flush()
    for pending in _OBSERVATIONS.values():
        pending.flush()


before_scrape(flush)
