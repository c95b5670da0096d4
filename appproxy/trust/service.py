"""
L{ConnectorTrust}: connector trust put together for the service daemon from
its configuration and state database.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from appproxy.config import ConfigError, ServiceConfig
from appproxy.daemon.tls_failures import RefusedHook
from appproxy.oidc.client import RelyingParty
from appproxy.state.database import StateDatabase
from appproxy.state.schema import DATABASE_NAME
from appproxy.trust.admission import AdmissionGate
from appproxy.trust.api import enrolment_site
from appproxy.trust.enrol import Enrolment
from appproxy.trust.listener import ListenerFactory
from appproxy.tunnel.service import ServiceTunnelFactory

__all__ = ["ConnectorTrust"]


class ConnectorTrust:
    """
    The tunnel listener's factory (L{factory}: tunnel or enrolment API by
    ALPN), the admission of connectors (L{gate}) and the enrolment API.

    @param database: the service's open state database, or L{None} to open
        one here (a service without sign-in has none otherwise).

    @raise ConfigError: if the state database cannot be opened.
    """

    def __init__(
        self,
        config: ServiceConfig,
        reactor: Any,
        tunnel: ServiceTunnelFactory,
        database: StateDatabase | None,
        relying_party: Callable[[], RelyingParty | None],
    ) -> None:
        path = config.state_dir / DATABASE_NAME
        self._own_database = database is None
        if database is None:
            try:
                config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                database = StateDatabase.open_at_startup(path, reactor=reactor)
            except (OSError, ValueError) as e:
                raise ConfigError(str(path), "", str(e)) from None
        self.database = database
        self.gate = AdmissionGate(database, reactor, tunnel)
        self.gate.load_at_startup(path)
        self.enrolment = Enrolment(config, self.gate, reactor, relying_party)
        self.factory = ListenerFactory(
            tunnel, enrolment_site(self.enrolment, reactor), self.gate.has_certificate
        )

    @property
    def certificate_refused(self) -> RefusedHook:
        """The tunnel listener's TLS hook (expired certificates are audited)."""
        return self.gate.certificate_refused

    def start(self) -> None:
        self.gate.start()

    def reload(self, config: ServiceConfig) -> None:
        self.enrolment.config = config

    def refresh(self) -> defer.Deferred[None]:
        """Read the registry now (see L{AdmissionGate.poll})."""
        return self.gate.poll()

    def close(self) -> defer.Deferred[None]:
        """Stop polling; close the state database if it is ours."""
        self.gate.stop()
        if self._own_database:
            return self.database.close()
        return defer.succeed(None)
