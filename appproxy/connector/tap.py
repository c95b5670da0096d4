"""
C{twistd appproxy-connector}: the connector inside the private network.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.logger import Logger
from twisted.python import usage

from appproxy.config import ConnectorConfig, load_connector_config
from appproxy.connector.backend import BackendClient
from appproxy.connector.tunnel import ConnectorTunnelFactory
from appproxy.daemon import load_or_exit, notify
from appproxy.tls import tunnel_client_options

#: Seconds in-flight requests get to finish after GOAWAY when stopping.
DRAIN_TIMEOUT = 60.0
#: Redial backoff: first retry after about this many seconds, doubling...
INITIAL_RETRY_DELAY = 0.5
#: ...up to this many.
MAX_RETRY_DELAY = 30.0


class Options(usage.Options):
    synopsis = "--config PATH"
    optParameters = [
        ["config", "c", "/etc/appproxy/connector.toml", "The connector configuration file (TOML)."],
    ]


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
            reactor, self.backend, config.capacity, config.ping_interval
        )
        tls = tunnel_client_options(
            config.service_host, config.ca_pem, config.cert.cert_pem, config.cert.key_pem
        )
        endpoint = wrapClientTLS(
            tls, HostnameEndpoint(reactor, config.service_address, config.service_port)
        )
        for _ in range(config.connections):
            ClientService(
                endpoint,
                self.factory,
                retryPolicy=backoffPolicy(INITIAL_RETRY_DELAY, MAX_RETRY_DELAY, 2.0),
                clock=reactor,
            ).setServiceParent(self)

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
        self.factory.draining = True
        drains = gatherResults([p.drain() for p in list(self.factory.protocols)])
        drains.addTimeout(DRAIN_TIMEOUT, self.reactor)
        drains.addErrback(lambda f: self.log.warn("Drain incomplete: {f}", f=f.getErrorMessage()))

        def stop(_: object) -> Deferred[Any]:
            stopped = MultiService.stopService(self)
            stopped.addCallback(lambda _: self.backend.close())
            return stopped

        drains.addCallback(stop)
        return drains  # type: ignore[return-value]


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    config = load_or_exit(load_connector_config, options["config"])
    return ConnectorService(config, reactor)
