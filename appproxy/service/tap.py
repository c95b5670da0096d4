"""
C{twistd appproxy}: the public service.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.python.failure import Failure

from appproxy.config import ServiceConfig, load_service_config
from appproxy.daemon import load_or_exit, notify
from appproxy.service.proxy import FrontEnd, ProxyHTTPFactory
from appproxy.service.queue import ConnectorGroups
from appproxy.service.tunnel import ServiceTunnelFactory
from appproxy.tls import SNIServerContextFactory, tunnel_server_context

#: Seconds in-flight requests get to finish when the service stops.
DRAIN_TIMEOUT = 30.0


class Options(usage.Options):
    synopsis = "--config PATH"
    optParameters = [
        ["config", "c", "/etc/appproxy/service.toml", "The service configuration file (TOML)."],
    ]


class AppProxyService(Service):
    """
    The service: the public HTTPS listener and the tunnel listener.

    Ports are bound in C{privilegedStartService} (before twistd drops
    privileges, so port 443 works), and a port that cannot be bound stops
    the daemon with one clear line.
    """

    log = Logger()

    def __init__(self, config: ServiceConfig, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.groups = ConnectorGroups(reactor, config.queue_timeout)
        self.frontend = FrontEnd(config.apps, self.groups, reactor)
        self.tunnel_factory = ServiceTunnelFactory(reactor, self.groups, config.apps)
        self.public_port: IListeningPort | None = None
        self.tunnel_port: IListeningPort | None = None

    def _listen(self, description: str, what: str, factory: Any) -> IListeningPort:
        result: list[Any] = []
        serverFromString(self.reactor, description).listen(factory).addBoth(result.append)
        if not result or isinstance(result[0], Failure):
            reason = result[0].getErrorMessage() if result else "did not bind"
            sys.stderr.write(
                f"appproxy: cannot listen on {what} {description!r} "
                f"({self.config.path}): {reason}\n"
            )
            raise SystemExit(1)
        port: IListeningPort = result[0]
        return port

    def privilegedStartService(self) -> None:
        config = self.config
        public_tls = SNIServerContextFactory([(c.cert_pem, c.key_pem) for c in config.certificates])
        self.public_port = self._listen(
            config.listen,
            "service.listen",
            TLSMemoryBIOFactory(public_tls, False, ProxyHTTPFactory(self.frontend, self.reactor)),
        )
        tunnel_tls = tunnel_server_context(
            config.tunnel_cert.cert_pem, config.tunnel_cert.key_pem, config.connector_ca_pem
        )
        self.tunnel_port = self._listen(
            config.tunnel_listen,
            "tunnel.listen",
            TLSMemoryBIOFactory(tunnel_tls, False, self.tunnel_factory),
        )
        super().privilegedStartService()

    def startService(self) -> None:
        if self.public_port is None:
            self.privilegedStartService()
        super().startService()
        assert self.public_port is not None and self.tunnel_port is not None
        self.log.info(
            "appproxy service ready: HTTPS on {public}, tunnel on {tunnel}, apps: {apps}",
            public=str(self.public_port.getHost()),
            tunnel=str(self.tunnel_port.getHost()),
            apps=", ".join(f"{a.name} ({a.external_url})" for a in self.config.apps),
        )
        notify(b"READY=1")

    def stopService(self) -> Deferred[None]:
        notify(b"STOPPING=1")
        super().stopService()
        stopping = [
            port.stopListening()
            for port in (self.public_port, self.tunnel_port)
            if port is not None
        ]
        self.public_port = self.tunnel_port = None
        d = gatherResults([d for d in stopping if d is not None])
        d.addCallback(lambda _: self._drain(self.reactor.seconds() + DRAIN_TIMEOUT))
        return d  # type: ignore[return-value]

    def _drain(self, deadline: float) -> Deferred[None]:
        """
        Let requests in flight finish, then close the tunnel connections.
        """
        protocols = self.tunnel_factory.protocols
        if any(p.active for p in protocols) and self.reactor.seconds() < deadline:
            d: Deferred[None] = Deferred()
            self.reactor.callLater(0.1, lambda: self._drain(deadline).chainDeferred(d))
            return d
        for protocol in list(protocols):
            protocol.abort()
        return succeed(None)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    config = load_or_exit(load_service_config, options["config"])
    return AppProxyService(config, reactor)
