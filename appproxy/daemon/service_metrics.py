"""
The service's metrics, put together: the live gauges' snapshot read from
the running service (L{snapshot}), and the C{[metrics] listen} listener
(L{ServiceMetrics}).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from appproxy.daemon.first_use import BuiltAtFirstConnection
from appproxy.observe.live import LIVE, Snapshot
from appproxy.observe.metrics import CONFIG_RELOADS

__all__ = ["ServiceMetrics", "snapshot"]

log = Logger()


def snapshot(service: Any, last_reload: float | None) -> Snapshot:
    """What C{service} (an L{AppProxyService}) is doing now."""
    depth = {
        (group.name, "websockets" if group.upgrades else "requests"): group.waiting
        for group in service.groups
    }
    connections: Counter[tuple[str, str]] = Counter()
    streams: Counter[tuple[str, str]] = Counter()
    expiry: dict[str, float] = {}
    for protocol in service.tunnel_factory.protocols:
        group = getattr(protocol, "group", None)
        connector = getattr(protocol, "connector_id", None)
        if group is None or connector is None:
            continue
        key = (connector, group.name)
        connections[key] += 1
        streams[key] += len(protocol.active) + len(protocol.upgrades)
        watch = protocol.expiry
        if watch is not None and watch.not_after is not None:
            expiry[connector] = max(expiry.get(connector, 0.0), watch.not_after)
    websockets = service.frontend.websockets
    return Snapshot(
        queue_depth=depth,
        tunnel_connections=dict(connections),
        tunnel_streams=dict(streams),
        certificate_expiry=expiry,
        websockets_open={app.name: websockets.count(app=app.name) for app in service.config.apps},
        last_reload=last_reload,
    )


class ServiceMetrics:
    """
    The metrics of one service: its live gauges (from when it is built) and
    the metrics listener, if C{[metrics] listen} is set.
    """

    def __init__(self, service: Any) -> None:
        self.service = service
        self.port: IListeningPort | None = None
        #: When the configuration was last loaded successfully (seconds since the epoch).
        self.last_reload: float = service.reactor.seconds()
        self._source = lambda: snapshot(service, self.last_reload)
        LIVE.source = self._source

    def reloaded(self, ok: bool) -> None:
        """A reload was tried: C{ok}, the new configuration is in force."""
        if ok:
            self.last_reload = self.service.reactor.seconds()
        CONFIG_RELOADS.labels("success" if ok else "failure").inc()

    def listen(self) -> None:
        """
        Open the metrics listener (plain HTTP, C{/metrics} only, with the
        limits of L{appproxy.daemon.side_listener}), if configured.

        @raise SystemExit: it cannot be bound (one line on stderr).
        """
        description = self.service.config.metrics.listen
        if description is not None and self.port is None:
            # The side listener's modules (twisted.web's server) are
            # imported with the site, at the first scrape (the daemon's
            # memory, docs/performance.md); the caps are imported here.
            from appproxy.daemon.capped import capped

            site = BuiltAtFirstConnection(self._site)
            factory = capped(site, "metrics", self.service.reactor)
            self.port = self.service._listen(description, "metrics.listen", factory)
            log.info("Metrics on {description} (/metrics)", description=description)

    def _site(self) -> Any:
        from appproxy.daemon.side_listener import SideSite
        from appproxy.observe.exposition import MetricsResource

        site = SideSite(MetricsResource(), self.service.reactor)
        # No access log: scrapes are frequent.
        site.log = lambda request: None  # type: ignore[method-assign]
        return site

    def stop(self) -> Deferred[None] | None:
        """Close the listener; the live gauges stop reading this service."""
        if LIVE.source is self._source:
            LIVE.source = None
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None
