"""
The service's Prometheus metrics: one registry, and the counters and
histograms the code paths increment as things happen.  Gauges of live state
(queue depth, tunnel connections and streams, certificate expiry) are read
at scrape time by collectors the daemon registers on L{REGISTRY}.

Base units (seconds, bytes), C{_total} counters, and labels of bounded
cardinality only: an app, a connector group or connector, a status class, a
result or reason from a fixed set.  Never a user, a path or an address.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = [
    "CONFIG_RELOADS",
    "LATENCY_BUCKETS",
    "LIMIT_HITS",
    "POLICY_DECISIONS",
    "QUEUE_WAIT",
    "REGISTRY",
    "REQUESTS",
    "REQUEST_BYTES",
    "REQUEST_DURATION",
    "SIGN_INS",
    "before_scrape",
    "status_class",
]

#: Every metric of the service (not the process-wide default registry, so
#: that tests and several services in one process stay apart).
REGISTRY: Final = CollectorRegistry(auto_describe=True)

#: What runs before each collection of L{REGISTRY} (counts kept outside the
#: metrics per request, moved into them: L{appproxy.observe.requests}).
_BEFORE_SCRAPE: Final[list[Callable[[], None]]] = []


def before_scrape(hook: Callable[[], None]) -> None:
    """Run C{hook} whenever L{REGISTRY} is collected, before its metrics are."""
    _BEFORE_SCRAPE.append(hook)


class _BeforeScrape:
    """The registry's first collector: runs the hooks, has no metrics of its own."""

    def collect(self) -> list[Any]:
        for hook in _BEFORE_SCRAPE:
            hook()
        return []

    def describe(self) -> list[Any]:
        return []


# Registered before every metric: a registry collects in registration order.
REGISTRY.register(_BeforeScrape())

#: Latency buckets (seconds): a proxied request takes from about a
#: millisecond to the apps' timeouts.
_LATENCY: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

#: The duration histograms' upper bounds, +Inf last (as prometheus_client keeps them).
LATENCY_BUCKETS: Final = (*_LATENCY, float("inf"))

REQUESTS: Final = Counter(
    "appproxy_requests",
    "Requests answered on the public listener, by app and status class.",
    ("app", "status_class"),
    registry=REGISTRY,
)
REQUEST_DURATION: Final = Histogram(
    "appproxy_request_duration_seconds",
    "Time from a request's header block to the end of its response, by app.",
    ("app",),
    buckets=_LATENCY,
    registry=REGISTRY,
)
REQUEST_BYTES: Final = Counter(
    "appproxy_request_bytes",
    "Body bytes through the public listener, by app and direction (in: from clients,"
    " out: to clients).",
    ("app", "direction"),
    registry=REGISTRY,
)
QUEUE_WAIT: Final = Histogram(
    "appproxy_queue_wait_seconds",
    "Time a request waited in its connector group's queue for a tunnel stream.",
    ("group",),
    buckets=_LATENCY,
    registry=REGISTRY,
)
SIGN_INS: Final = Counter(
    "appproxy_sign_ins",
    "Sign-in log events, by result (success, failure, mfa-required, not-assigned, blocked,"
    " signed-out) and reason (the step: a fixed set of codes; none for a success).",
    ("result", "reason"),
    registry=REGISTRY,
)
POLICY_DECISIONS: Final = Counter(
    "appproxy_policy_decisions",
    "Assignment and conditional-access decisions, by app and decision (allow, not-assigned,"
    " block, mfa, reauthenticate).",
    ("app", "decision"),
    registry=REGISTRY,
)
LIMIT_HITS: Final = Counter(
    "appproxy_limit_hits",
    "Requests or connections refused by an abuse limit, by limit name.",
    ("limit",),
    registry=REGISTRY,
)
CONFIG_RELOADS: Final = Counter(
    "appproxy_config_reloads",
    "Configuration reloads, by result (success, failure).",
    ("result",),
    registry=REGISTRY,
)


def status_class(code: int) -> str:
    """C{2xx} for 200..299, and so on; C{other} outside 100..599."""
    return f"{code // 100}xx" if 100 <= code <= 599 else "other"


# Both results exist from the start (0), so that a rate or an alert on
# failures has a series before the first one.
for _result in ("success", "failure"):
    CONFIG_RELOADS.labels(_result)
