"""
The public listener's request metrics, counted where the access log line is
written, and the access decisions the gate makes on every request with a
session: each app's children of L{REQUESTS}, L{REQUEST_DURATION} and
L{REQUEST_BYTES} (and of L{POLICY_DECISIONS}) are resolved once
(C{labels()} builds a tuple and looks it up each time), so a finished
request costs a dictionary lookup and three increments.
"""

from __future__ import annotations

from typing import Any, Final

from appproxy.observe.metrics import (
    POLICY_DECISIONS,
    REQUEST_BYTES,
    REQUEST_DURATION,
    REQUESTS,
    status_class,
)

__all__ = ["NO_APP", "AppMetrics", "app_metrics"]

#: The C{app} label of requests no app took (the login hosts, unknown hosts).
NO_APP: Final = "-"


class AppMetrics:
    """One app's bound metric children."""

    __slots__ = ("_app", "_by_decision", "_by_status", "bytes_in", "bytes_out", "duration")

    def __init__(self, app: str) -> None:
        self._app = app
        self.duration: Any = REQUEST_DURATION.labels(app)
        self.bytes_in: Any = REQUEST_BYTES.labels(app, "in")
        self.bytes_out: Any = REQUEST_BYTES.labels(app, "out")
        #: Status code -> its class's counter (at most 500 codes: bounded).
        self._by_status: dict[int, Any] = {}
        #: Policy outcome -> its decision counter (a fixed set).
        self._by_decision: dict[str, Any] = {}

    def requests(self, status: int) -> Any:
        """The request counter of C{status}'s class."""
        counter = self._by_status.get(status)
        if counter is None:
            counter = self._by_status[status] = REQUESTS.labels(self._app, status_class(status))
        return counter

    def decision(self, outcome: str) -> Any:
        """The counter of the app's access decisions with C{outcome}."""
        counter = self._by_decision.get(outcome)
        if counter is None:
            counter = self._by_decision[outcome] = POLICY_DECISIONS.labels(self._app, outcome)
        return counter

    def finished(self, status: int, seconds: float | None, received: int, sent: int) -> None:
        """
        A request (or WebSocket) is over: count it, its body bytes both ways
        and, unless C{seconds} is L{None}, its duration.
        """
        self.requests(status).inc()
        if seconds is not None:
            self.duration.observe(seconds)
        if received:
            self.bytes_in.inc(received)
        if sent:
            self.bytes_out.inc(sent)


_APPS: dict[str, AppMetrics] = {}


def app_metrics(app: str | None) -> AppMetrics:
    """The bound metrics of C{app} (L{None}: no app, L{NO_APP})."""
    name = NO_APP if app is None else app
    found = _APPS.get(name)
    if found is None:
        found = _APPS[name] = AppMetrics(name)
    return found
