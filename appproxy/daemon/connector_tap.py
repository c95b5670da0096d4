"""
C{twistd appproxy-connector}: the connector inside the private network.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application.internet import ClientService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from appproxy.config import ConnectorConfig, load_connector_config
from appproxy.connector.backend import BackendClient
from appproxy.connector.tunnel import ConnectorTunnelFactory
from appproxy.daemon import heap, malloc
from appproxy.daemon.redial import DialReport, Redial, watched_factory
from appproxy.daemon.runtime import (
    config_options,
    make_daemon,
    notify,
    reload_or_keep,
    use_log_format,
)
from appproxy.daemon.tls import ReloadableTLS, tunnel_client_options

#: Seconds in-flight requests get to finish after GOAWAY when stopping.
DRAIN_TIMEOUT = 60.0
#: Redial backoff: first retry after about this many seconds, doubling with
#: each failure until a tunnel is established (L{appproxy.daemon.redial})...
INITIAL_RETRY_DELAY = 0.5
#: ...up to this many (each with +-20% jitter).
MAX_RETRY_DELAY = 30.0


Options = config_options("connector", "/etc/appproxy/connector/connector.toml")


@implementer(IStreamClientEndpoint)
class _DescribedEndpoint:
    """
    An endpoint that reads as host:port in the logs (L{ClientService} logs
    its endpoint on every retry; Twisted's own endpoints have no C{str}),
    and reports why connecting failed.
    """

    def __init__(
        self, endpoint: IStreamClientEndpoint, description: str, report: DialReport
    ) -> None:
        self._endpoint = endpoint
        self._description = description
        self._report = report

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def failed(failure: Failure) -> Failure:
            if not failure.check(CancelledError):
                self._report.connection_failed(failure)
            return failure

        return self._endpoint.connect(factory).addErrback(failed)

    def __str__(self) -> str:
        return self._description

    __repr__ = __str__


class ConnectorService(MultiService):
    """
    Keeps C{connections} tunnel connections to the service, each redialled
    with exponential backoff and jitter, and drains them with GOAWAY on stop.
    """

    log = Logger()

    def __init__(self, config: ConnectorConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.backend = BackendClient(reactor)
        self.factory = ConnectorTunnelFactory(
            reactor,
            self.backend,
            config.capacity,
            config.ping_interval,
            config.websocket_capacity,
        )
        self.tls = tls = ReloadableTLS(self._tls(config))
        description = (
            f"{config.service_host}:{config.service_port} (TLS, via {config.service_address})"
        )
        #: Why connections fail, told once per reason (all connections).
        self.report = DialReport(self.log, description, config.service_host)
        endpoint = _DescribedEndpoint(
            wrapClientTLS(
                tls, HostnameEndpoint(reactor, config.service_address, config.service_port)
            ),
            description,
            self.report,
        )
        #: Each connection's backoff, reset once its tunnel is established.
        self.redials: list[Redial] = []
        for _ in range(config.connections):
            redial = Redial(INITIAL_RETRY_DELAY, MAX_RETRY_DELAY)
            self.redials.append(redial)
            ClientService(
                endpoint,
                watched_factory(self.factory, redial, self.report),
                retryPolicy=redial,
                clock=reactor,
            ).setServiceParent(self)

    @staticmethod
    def _tls(config: ConnectorConfig) -> Any:
        return tunnel_client_options(
            config.service_host, config.ca_pem, config.cert.cert_pem, config.cert.key_pem
        )

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        use_log_format(parent, self.config.log_format)

    def reload(self) -> None:
        """
        Re-read the configuration (SIGHUP): a renewed certificate or CA is
        used for the next connections; other changes take effect on restart.
        A bad file is refused and the running configuration kept.
        """
        reload_or_keep(self.log, self._load_reload, self._apply_reload)

    def _load_reload(self) -> tuple[ConnectorConfig, Any]:
        config = load_connector_config(self.config.path)
        return config, self._tls(config)

    def _apply_reload(self, loaded: tuple[ConnectorConfig, Any]) -> None:
        config, tls = loaded
        self.tls.current = tls
        old = self.config
        later = [
            key
            for key in (
                "service_address",
                "service_port",
                "connections",
                "capacity",
                "websocket_capacity",
                "ping_interval",
                "log_format",
            )
            if getattr(old, key) != getattr(config, key)
        ]
        self.config = attrs.evolve(config, **{key: getattr(old, key) for key in later})
        self.log.info(
            "Configuration reloaded; certificate and CA apply to new connections{later}",
            later=f"; on restart: {', '.join(later)}" if later else "",
        )

    def startService(self) -> None:
        super().startService()
        self.log.info(
            "appproxy connector started: {n} connections to {host}:{port} (via {address})",
            n=self.config.connections,
            host=self.config.service_host,
            port=self.config.service_port,
            address=self.config.service_address,
        )
        notify(b"READY=1")

    def stopService(self) -> Deferred[None]:
        notify(b"STOPPING=1")
        self.log.info(
            "Draining {n} tunnel connections (WebSockets end now, in-flight requests"
            " finish, up to {t:g} s)",
            n=len(self.factory.protocols),
            t=DRAIN_TIMEOUT,
        )
        self.factory.draining = True
        # consumeErrors: a drain cut short by the timeout is told once, below.
        drains = gatherResults(
            [p.drain() for p in list(self.factory.protocols)], consumeErrors=True
        )
        drains.addTimeout(DRAIN_TIMEOUT, self.reactor)
        drains.addErrback(self._drain_incomplete)

        def stop(_: object) -> Deferred[Any]:
            stopped = MultiService.stopService(self)
            stopped.addCallback(lambda _: self.backend.close())
            return stopped

        drains.addCallback(stop)
        return drains  # type: ignore[return-value]

    def _drain_incomplete(self, failure: Failure) -> None:
        """The drain timed out (or failed): one plain line, then stop all the same."""
        busy = sum(p.connected for p in self.factory.protocols)
        self.log.warn(
            "Drain incomplete after {t:g} s: closing {n} tunnel connections with requests"
            " still in flight",
            t=DRAIN_TIMEOUT,
            n=busy,
        )


def makeService(options: usage.Options) -> IService:
    service = make_daemon(
        options, lambda path, reactor: ConnectorService(load_connector_config(path), reactor)
    )
    heap.install(
        "connector",
        lambda: heap.tunnel_counts(service.factory.protocols),
        service.reactor.callFromThread,
    )
    malloc.start_trimming(service.reactor)
    return service
