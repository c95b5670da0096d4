"""
C{twistd appproxy-connector}: the connector inside the private network.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import attrs
from twisted.application.internet import ClientService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from appproxy.config import ConnectorConfig, load_connector_config
from appproxy.config._files import read_toml
from appproxy.config.model import CertificateFiles
from appproxy.connector.backend import BackendClient
from appproxy.connector.enrolment import ServiceAddress
from appproxy.connector.keyfiles import recover_renewal
from appproxy.connector.origins import AllowedOrigins
from appproxy.connector.trust import ConnectorTrust, expired_message
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
from appproxy.daemon.tls_failures import CA_HINT, SYSTEM_TRUST_HINT
from appproxy.daemon.tls_transport import lean_client_tls
from appproxy.tunnel.enrolment import ConnectorSettings

#: Seconds in-flight requests get to finish after GOAWAY when stopping.
DRAIN_TIMEOUT = 60.0
#: Seconds a settings push waits for the configuration pull it triggers.
PUSH_WAIT = 5.0
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
    Pulls its configuration from the service (L{ConnectorTrust}), then keeps
    C{connections} tunnel connections to the service, each redialled with
    exponential backoff and jitter, and drains them with GOAWAY on stop.
    Requests go only to the internal origins of the apps in the pulled
    configuration; before the first pull no tunnel is dialled.
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
            origins=self._refusal,
            settings_pushed=self._pushed,
        )
        #: The pulled configuration's apps and origins (None: none pulled yet).
        self.allowed: AllowedOrigins | None = None
        self.tls = tls = ReloadableTLS(self._tls(config))
        description = (
            f"{config.service_host}:{config.service_port} (TLS, via {config.service_address})"
        )
        #: Why connections fail, told once per reason (all connections).
        self.report = DialReport(
            self.log,
            description,
            config.service_host,
            ca_hint=CA_HINT if config.service_ca_pem is not None else SYSTEM_TRUST_HINT,
        )
        self.endpoint = _DescribedEndpoint(
            lean_client_tls(
                tls, HostnameEndpoint(reactor, config.service_address, config.service_port)
            ),
            description,
            self.report,
        )
        #: Each connection's backoff, reset once its tunnel is established.
        self.redials: list[Redial] = []
        self.trust = ConnectorTrust(
            reactor,
            ServiceAddress(config.service_host, config.service_port, config.service_address),
            config.service_ca_pem,
            config.cert.cert,
            config.cert.key,
            config.cert.cert_pem,
            config.cert.key_pem,
            self._configured,
            self._renewed,
        )
        # A tunnel closed by the service after the handshake: its registry
        # refused the certificate (disabled, revoked, deleted); the API says
        # why, and the pull's report tells the operator (once per reason).
        self.report.refused = self.trust.pull

    def _refusal(self, app: str, scheme: bytes, authority: bytes) -> str | None:
        if self.allowed is None:
            return "no configuration has been pulled from the service yet"
        return self.allowed.refusal(app, scheme, authority)

    def _pushed(self) -> Deferred[None]:
        """
        The service pushed its settings (a new connection, or its reload):
        pull, and let the push be acknowledged once the pull is done (or
        after L{PUSH_WAIT} seconds, well within the service's patience).
        """
        return self.trust.pulled(PUSH_WAIT)

    def _configured(self, settings: ConnectorSettings) -> None:
        self.allowed = AllowedOrigins.of((app.name, app.internal_url) for app in settings.apps)
        wanted = settings.connections or self.config.connections
        if wanted < len(self.redials):
            self.log.info(
                "The service asks for {n} tunnel connections; {m} stay until restart",
                n=wanted,
                m=len(self.redials),
            )
        self._dial(wanted)

    def _dial(self, count: int) -> None:
        """Keep at least C{count} tunnel connections (new ones start now if running)."""
        while len(self.redials) < count:
            redial = Redial(INITIAL_RETRY_DELAY, MAX_RETRY_DELAY)
            self.redials.append(redial)
            ClientService(
                self.endpoint,
                watched_factory(self.factory, redial, self.report),
                retryPolicy=redial,
                clock=self.reactor,
            ).setServiceParent(self)

    def _renewed(self, cert_pem: bytes, key_pem: bytes) -> None:
        """A renewed certificate: new tunnel connections present it."""
        config = self.config
        self.tls.current = tunnel_client_options(
            config.service_host, config.service_ca_pem, cert_pem, key_pem
        )
        files = CertificateFiles(
            cert=config.cert.cert, key=config.cert.key, cert_pem=cert_pem, key_pem=key_pem
        )
        self.config = attrs.evolve(config, cert=files)

    @staticmethod
    def _tls(config: ConnectorConfig) -> Any:
        return tunnel_client_options(
            config.service_host, config.service_ca_pem, config.cert.cert_pem, config.cert.key_pem
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
        self.report.ca_hint = CA_HINT if config.service_ca_pem is not None else SYSTEM_TRUST_HINT
        self.trust.use(config.cert.cert_pem, config.cert.key_pem, config.service_ca_pem)
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
        self.trust.start()
        self.log.info(
            "appproxy connector started: pulling its configuration, then {n} connections"
            " to {host}:{port} (via {address})",
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
        trust: ConnectorTrust | None = getattr(self, "trust", None)  # None: half-built in tests
        if trust is not None:
            trust.stop()
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


def _recover(path: Path) -> None:
    """Finish a renewal a crash interrupted, before the files are read."""
    try:
        table = read_toml(path).get("connector")
        cert, key = table["cert"], table["key"]  # type: ignore[index]
    except Exception:
        return  # loading the file will say what is wrong with it
    if isinstance(cert, str) and isinstance(key, str):
        done = recover_renewal(path.parent / cert, path.parent / key)
        if done:
            ConnectorService.log.warn("Certificate files: {done}", done=done)


def load_connector(path: Path, reactor: Any, now: float | None = None) -> ConnectorService:
    """
    The connector daemon for its file, or exit with one clear line if its
    certificate has expired (it must be registered again: the line says how).
    """
    _recover(path)
    config = load_connector_config(path)
    service = ServiceAddress(config.service_host, config.service_port, config.service_address)
    message = expired_message(
        config.cert.cert_pem,
        config.cert.cert,
        config.service_ca_pem,
        service,
        config.path.parent,
        time.time() if now is None else now,
    )
    if message is not None:
        sys.stderr.write(f"appproxy-connector: {message}\n")
        raise SystemExit(1)
    return ConnectorService(config, reactor)


def makeService(options: usage.Options) -> IService:
    service = make_daemon(options, load_connector)
    heap.install(
        "connector",
        lambda: heap.tunnel_counts(service.factory.protocols),
        service.reactor.callFromThread,
    )
    malloc.start_trimming(service.reactor)
    return service
