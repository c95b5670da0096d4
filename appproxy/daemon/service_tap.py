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
from twisted.python import usage
from twisted.python.failure import Failure

from appproxy.access.cookie import Sealer
from appproxy.admin.retention import EventsRetention
from appproxy.config import ServiceConfig, load_service_config
from appproxy.daemon import heap, malloc
from appproxy.daemon.plain_http import HTTPSOnlyFactory
from appproxy.daemon.runtime import (
    config_options,
    make_daemon,
    notify,
    reload_or_keep,
    use_log_format,
)
from appproxy.daemon.service_metrics import ServiceMetrics
from appproxy.daemon.tls import ReloadableTLS, SNIServerContextFactory, tunnel_server_context
from appproxy.daemon.tls_transport import LeanTLSFactory
from appproxy.frontend.deadlines import ClientDeadlines
from appproxy.frontend.front_end import FrontEnd
from appproxy.frontend.proxy import ProxyHTTPFactory
from appproxy.gate.setup import SignInSetup, build_sign_in
from appproxy.http.ratelimit import ConnectionCounts
from appproxy.oidc.client import RelyingParty
from appproxy.trust.service import ConnectorTrust
from appproxy.tunnel.queue import ConnectorGroups
from appproxy.tunnel.service import ServiceTunnelFactory

#: Seconds in-flight requests get to finish when the service stops.
DRAIN_TIMEOUT = 30.0
#: What a WebSocket's client reads when the service stops (close code 1001).
STOPPING_REASON = "service stopping"


Options = config_options("service", "/etc/appproxy/service.toml")


class AppProxyService(Service):
    """
    The service: the public HTTPS listener and the tunnel listener (the
    tunnel and, by ALPN, the connector enrolment API).

    Ports are bound in C{privilegedStartService} (before twistd drops
    privileges, so port 443 works), and a port that cannot be bound stops
    the daemon with one clear line.
    """

    log = Logger()

    def __init__(self, config: ServiceConfig, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.groups = ConnectorGroups(reactor, config.queue_timeout, config.limits.queued_per_group)
        self.frontend = FrontEnd(config.apps, self.groups, reactor)
        self.frontend.limiter.configure(config.limits, _provider_address(config))
        #: The caps on open public connections (C{[limits]}).
        self.connections = ConnectionCounts(
            config.limits.connections_per_address, config.limits.connections_total
        )
        self.frontend.websockets.per_user = config.client_limits.websockets_per_user
        self.client_deadlines = ClientDeadlines(
            reactor, config.client_limits, trusted=lambda: self.frontend.trusted_proxies
        )
        self.tunnel_factory = ServiceTunnelFactory(reactor, self.groups, config.apps)
        self.public_tls = ReloadableTLS(self._public_tls(config))
        self.public_port: IListeningPort | None = None
        self.tunnel_port: IListeningPort | None = None
        self.sign_in: SignInSetup = build_sign_in(config, reactor)
        self.sign_in.install(self.frontend)
        # Connector admission is read here, before the tunnel listener opens.
        self.trust = ConnectorTrust(
            config, reactor, self.tunnel_factory, self.sign_in.database, self._relying_party
        )
        self.tunnel_tls = ReloadableTLS(self._tunnel_tls(config))
        #: The admin API's listener (C{[admin]}) and the events' retention.
        # Its modules (twisted.web's server, the API, the page, JWT checks)
        # are imported only when it is configured: they cost the daemon's
        # memory (docs/performance.md); without it, only the retention runs.
        self.admin: Any
        if config.admin.listen is not None:
            from appproxy.admin.service import AdminService

            self.admin = AdminService(
                config, reactor, self.trust.database, self._relying_party, self._sealer
            )
        else:
            self.admin = EventsRetention(config, reactor, self.trust.database)
        self.admin_port: IListeningPort | None = None
        #: The live gauges and the metrics listener (C{[metrics]}).
        self.metrics = ServiceMetrics(self)

    @staticmethod
    def _public_tls(config: ServiceConfig) -> SNIServerContextFactory:
        return SNIServerContextFactory([(c.cert_pem, c.key_pem) for c in config.certificates])

    def _tunnel_tls(self, config: ServiceConfig) -> Any:
        return tunnel_server_context(
            config.tunnel_cert.cert_pem,
            config.tunnel_cert.key_pem,
            config.connector_ca_pem,
            refused=self.trust.certificate_refused,
        )

    def _relying_party(self) -> RelyingParty | None:
        """The relying party sign-in uses now (ID tokens of registrations are checked by it)."""
        sign_in = self.sign_in.sign_in
        return sign_in.context.relying_party if sign_in is not None else None

    def _sealer(self) -> Sealer | None:
        """The sealer of the service's key ring (the admin page's cookies), if it signs in."""
        sign_in = self.sign_in.sign_in
        return sign_in.context.sealer if sign_in is not None else None

    def refresh_admission(self) -> Deferred[None]:
        """
        Read the connector registry now, as the 1 s poll does; fires once
        what was read is in force (tests record a connector, then wait for this).
        """
        return self.trust.refresh()

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        use_log_format(parent, self.config.log_format)

    def reload(self) -> None:
        """
        Re-read the configuration (SIGHUP, C{systemctl reload}): apps, routing,
        certificates and the settings pushed to connectors change at once;
        a bad file is refused and the running configuration kept.
        """
        applied: list[bool] = []

        def apply(loaded: tuple[ServiceConfig, SNIServerContextFactory, Any]) -> None:
            self._apply_reload(loaded)
            applied.append(True)

        reload_or_keep(self.log, self._load_reload, apply)
        self.metrics.reloaded(bool(applied))

    def _load_reload(self) -> tuple[ServiceConfig, SNIServerContextFactory, Any]:
        config = load_service_config(self.config.path)
        public_tls, tunnel_tls = self._public_tls(config), self._tunnel_tls(config)
        self.sign_in.check_reload(config)
        return config, public_tls, tunnel_tls

    def _apply_reload(self, loaded: tuple[ServiceConfig, SNIServerContextFactory, Any]) -> None:
        config, public_tls, tunnel_tls = loaded
        old = self.config
        for key, before, after in [
            ("service.listen", old.listen, config.listen),
            ("tunnel.listen", old.tunnel_listen, config.tunnel_listen),
            ("service.state_dir", old.state_dir, config.state_dir),
            ("admin.listen", old.admin.listen, config.admin.listen),
            ("metrics.listen", old.metrics.listen, config.metrics.listen),
        ]:
            if before != after:
                self.log.warn("{key} changed: takes effect on restart", key=key)
        self.public_tls.current = public_tls
        self.tunnel_tls.current = tunnel_tls
        self.groups.timeout = config.queue_timeout
        self.client_deadlines.limits = config.client_limits
        self.frontend.limiter.configure(config.limits, _provider_address(config))
        self.groups.set_backlog(config.limits.queued_per_group)
        self.connections.per_address = config.limits.connections_per_address
        self.connections.total = config.limits.connections_total
        self.frontend.websockets.per_user = config.client_limits.websockets_per_user
        for group in self.groups:
            group.timeout = config.queue_timeout
        self.frontend.set_apps(config.apps)
        self.sign_in.reload(config, self.frontend)
        self.tunnel_factory.set_apps(config.apps)
        self.trust.reload(config)
        self.admin.reload(config)
        self.config = config
        self.log.info(
            "Configuration reloaded: apps {apps}",
            apps=", ".join(f"{a.name} ({a.external_url})" for a in config.apps),
        )

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
        self.public_port = self._listen(
            config.listen,
            "service.listen",
            HTTPSOnlyFactory(
                LeanTLSFactory(
                    self.public_tls,
                    False,
                    ProxyHTTPFactory(self.frontend, self.reactor, self.client_deadlines),
                ),
                self.reactor,
                self.client_deadlines,
                self.connections,
            ),
        )
        self.tunnel_port = self._listen(
            config.tunnel_listen,
            "tunnel.listen",
            LeanTLSFactory(self.tunnel_tls, False, self.trust.factory),
        )
        if config.admin.listen is not None:
            self.admin_port = self._listen(config.admin.listen, "admin.listen", self.admin.factory)
        self.metrics.listen()
        super().privilegedStartService()

    def startService(self) -> None:
        if self.public_port is None:
            self.privilegedStartService()
        super().startService()
        self.trust.start()
        self.admin.start()
        assert self.public_port is not None and self.tunnel_port is not None
        self.log.info(
            "appproxy service ready: HTTPS on {public}, tunnel on {tunnel}, apps: {apps}",
            public=_host_port(self.public_port.getHost()),
            tunnel=_host_port(self.tunnel_port.getHost()),
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
        if self.admin_port is not None:
            stopping.append(self.admin_port.stopListening())
            self.admin_port = None
        self.admin.stop()
        stopping.append(self.metrics.stop())
        # WebSockets cannot be drained: each gets a close frame (1001) now,
        # and the drain waits for their clients' connections to close.
        self.frontend.websockets.close_all(
            "service-stopping", "the service is stopping", STOPPING_REASON
        )
        d = gatherResults([d for d in stopping if d is not None])
        d.addCallback(lambda _: self._drain(self.reactor.seconds() + DRAIN_TIMEOUT))
        d.addCallback(lambda _: self.trust.close())
        d.addCallback(lambda _: self.sign_in.close())
        return d  # type: ignore[return-value]

    def _drain(self, deadline: float) -> Deferred[None]:
        """
        Let requests in flight finish, and closing WebSockets' connections
        close, then close the tunnel connections.
        """
        protocols = self.tunnel_factory.protocols
        busy = any(p.active for p in protocols) or self.frontend.websockets.closing
        if busy and self.reactor.seconds() < deadline:
            d: Deferred[None] = Deferred()
            self.reactor.callLater(0.1, lambda: self._drain(deadline).chainDeferred(d))
            return d
        for protocol in list(protocols):
            protocol.abort()
        return succeed(None)


def _provider_address(config: ServiceConfig) -> str | None:
    """Where the relying party reaches the built-in provider (its calls are not charged)."""
    if config.builtin_provider is None or config.oidc is None:
        return None
    return config.oidc.provider_address


def _host_port(address: Any) -> str:
    """C{127.0.0.1:8443} (C{[::1]:8443}) for a log line, not the address's repr."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None or port is None:
        return str(getattr(address, "name", None) or address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def makeService(options: usage.Options) -> IService:
    # The state directory (keys, database, users) is read as the service is
    # built: a problem there stops the daemon the same way as a bad file.
    service = make_daemon(
        options, lambda path, reactor: AppProxyService(load_service_config(path), reactor)
    )
    heap.install(
        "service",
        lambda: heap.tunnel_counts(service.tunnel_factory.protocols),
        service.reactor.callFromThread,
    )
    malloc.start_trimming(service.reactor)
    return service
