"""
The metrics listener's site: C{GET /metrics} (and C{HEAD}) is the text
exposition of L{appproxy.observe.metrics.REGISTRY}, anything else 404.

Rendered in the reactor's thread (not prometheus_client's WSGI resource,
which renders in a thread pool): the collectors read the service's live
state, which only the reactor's thread may touch.  The listener's site and
its limits are L{appproxy.daemon.side_listener}'s (built in
L{appproxy.daemon.service_metrics}).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.logger import Logger
from twisted.web import resource

from appproxy.observe.metrics import REGISTRY

__all__ = ["MetricsResource"]

log = Logger()


class MetricsResource(resource.Resource):
    """The root: only C{/metrics} exists."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        super().__init__()
        self.registry = registry

    def render(self, request: Any) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        if request.path != b"/metrics":
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Not found: metrics are at /metrics\n"
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return b""
        try:
            body = generate_latest(self.registry)
        except Exception:
            log.failure("Collecting the metrics failed")
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Collecting the metrics failed: see the service's log\n"
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return body
