"""
The service's metrics, put together: the live gauges' snapshot read from
the running service (L{snapshot}), and the C{[metrics] listen} listener
(L{ServiceMetrics}, L{MetricsServer}).

The listener is served by twisted.web's C{http} module alone, not by its
site (C{twisted.web.server}, whose imports cost the daemon about 3 MiB:
docs/performance.md), with the side listeners' limits
(L{appproxy.daemon.side_http}): HTTP/1.1, no request body, the header
deadline, a short idle timeout, the caps on open connections.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.web.http import HTTPFactory
from twisted.web.resource import IResource

from appproxy.daemon.side_http import (
    IDLE_TIMEOUT,
    BodilessRequest,
    answer_as_site,
    capped,
    side_deadlines,
)
from appproxy.frontend.deadlines import deadline_channel_protocol
from appproxy.observe.exposition import MetricsResource
from appproxy.observe.live import LIVE, Snapshot
from appproxy.observe.metrics import CONFIG_RELOADS

__all__ = ["MetricsServer", "ServiceMetrics", "snapshot"]

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


class _MetricsRequest(BodilessRequest):
    """A scrape, answered by the server's (leaf) resource."""

    def process(self) -> None:
        server: MetricsServer = self.channel.site  # type: ignore[attr-defined]
        answer_as_site(self, server.resource.render)


class MetricsServer(HTTPFactory):
    """The metrics listener's connections (without an access log: scrapes are frequent)."""

    #: The public listener's HTTP/1.1 channel, with its header deadline.
    protocol = deadline_channel_protocol
    noisy = False

    def __init__(self, resource: IResource, clock: IReactorTime) -> None:
        super().__init__(timeout=IDLE_TIMEOUT, reactor=clock)
        self.resource = resource
        #: Read by L{deadline_channel_protocol}.
        self.client_deadlines = side_deadlines(clock)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        channel = super().buildProtocol(addr)
        channel.requestFactory = _MetricsRequest  # type: ignore[union-attr]
        channel.site = self  # type: ignore[union-attr]
        return channel

    def log(self, request: Any) -> None:
        pass


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
        limits of L{appproxy.daemon.side_http}), if configured.

        @raise SystemExit: it cannot be bound (one line on stderr).
        """
        description = self.service.config.metrics.listen
        if description is not None and self.port is None:
            server = MetricsServer(MetricsResource(), self.service.reactor)
            factory = capped(server, "metrics", self.service.reactor)
            self.port = self.service._listen(description, "metrics.listen", factory)
            log.info("Metrics on {description} (/metrics)", description=description)

    def stop(self) -> Deferred[None] | None:
        """Close the listener; the live gauges stop reading this service."""
        if LIVE.source is self._source:
            LIVE.source = None
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None
