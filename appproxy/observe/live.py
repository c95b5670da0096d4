"""
Gauges of the service's live state, read at scrape time: the daemon hands
L{LIVE} a function that takes a L{Snapshot} of what is running now (queues,
tunnel connections, certificates, WebSockets, the last reload), and the
collector turns it into metric families.  Nothing is counted in the data
path for these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Final

import attrs
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appproxy.observe.metrics import REGISTRY

__all__ = ["LIVE", "LiveCollector", "Snapshot"]


@attrs.frozen(kw_only=True)
class Snapshot:
    """What the service is doing now."""

    queue_depth: Mapping[tuple[str, str], int] = attrs.field(factory=dict)
    """(group, queue: C{requests} or C{websockets}) -> jobs waiting."""
    tunnel_connections: Mapping[tuple[str, str], int] = attrs.field(factory=dict)
    """(connector, group) -> tunnel connections."""
    tunnel_streams: Mapping[tuple[str, str], int] = attrs.field(factory=dict)
    """(connector, group) -> streams in flight (requests and WebSockets)."""
    certificate_expiry: Mapping[str, float] = attrs.field(factory=dict)
    """connector -> its connected certificate's notAfter (seconds since the epoch)."""
    websockets_open: Mapping[str, int] = attrs.field(factory=dict)
    """app -> open (and opening) WebSockets."""
    last_reload: float | None = None
    """When the configuration was last loaded successfully (start or reload)."""


class LiveCollector(Collector):
    """The collector of live gauges: empty until a service gives it a source."""

    def __init__(self) -> None:
        self.source: Callable[[], Snapshot] | None = None

    def describe(self) -> list[Metric]:
        return list(self._families(Snapshot()))

    def collect(self) -> Iterator[Metric]:
        source = self.source
        yield from self._families(source() if source is not None else Snapshot())

    @staticmethod
    def _families(now: Snapshot) -> Iterator[Metric]:
        for name, text, labels, values in (
            (
                "appproxy_queue_depth",
                "Requests waiting in a connector group's queue for a tunnel stream.",
                ("group", "queue"),
                now.queue_depth,
            ),
            (
                "appproxy_tunnel_connections",
                "Tunnel connections open, per connector and its group.",
                ("connector", "group"),
                now.tunnel_connections,
            ),
            (
                "appproxy_tunnel_streams",
                "Tunnel streams in flight (requests and WebSockets), per connector and its group.",
                ("connector", "group"),
                now.tunnel_streams,
            ),
            (
                "appproxy_connector_certificate_expiry_timestamp_seconds",
                "The notAfter of each connected connector's certificate (seconds since the epoch).",
                ("connector",),
                {(connector,): when for connector, when in now.certificate_expiry.items()},
            ),
            (
                "appproxy_websockets_open",
                "WebSockets open (or opening) on the public listener, per app.",
                ("app",),
                {(app,): value for app, value in now.websockets_open.items()},
            ),
        ):
            family = GaugeMetricFamily(name, text, labels=labels)
            for key, value in sorted(values.items()):
                family.add_metric(key, value)
            yield family
        if now.last_reload is not None:
            yield GaugeMetricFamily(
                "appproxy_config_last_reload_success_timestamp_seconds",
                "When the configuration was last loaded successfully (start or reload).",
                value=now.last_reload,
            )


#: The one live collector, in L{REGISTRY}; the running service sets its source.
LIVE: Final = LiveCollector()
REGISTRY.register(LIVE)
