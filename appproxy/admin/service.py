"""
The admin API's listener (C{[admin] listen}: HTTPS, ALPN C{http/1.1}, with
C{[admin] cert}/C{key} or the service's first certificate; no request body,
a header deadline and caps on connections: L{appproxy.daemon.side_listener})
and the retention of sign-in and audit events (C{[events] retention_days}:
rows older are purged at start and then daily, in the database's pool).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.protocols.tls import TLSMemoryBIOFactory

from appproxy.access.cookie import Sealer
from appproxy.admin.api import AdminResource
from appproxy.admin.auth import AdminAuth
from appproxy.admin.page import AdminSite
from appproxy.admin.page_auth import PageAuth
from appproxy.admin.retention import PURGE_INTERVAL, Retention
from appproxy.config import ServiceConfig
from appproxy.daemon.side_listener import SideSite, capped
from appproxy.daemon.tls import ReloadableTLS, SNIServerContextFactory
from appproxy.oidc.client import RelyingParty
from appproxy.state.database import StateDatabase

__all__ = ["PURGE_INTERVAL", "AdminService", "Retention"]


def _tls(config: ServiceConfig) -> SNIServerContextFactory:
    cert = config.admin.cert or config.certificates[0]
    return SNIServerContextFactory([(cert.cert_pem, cert.key_pem)], (b"http/1.1",))


class AdminService:
    """The admin listener's site and the retention purge, for the service to start and stop."""

    def __init__(
        self,
        config: ServiceConfig,
        reactor: Any,
        database: StateDatabase,
        relying_party: Callable[[], RelyingParty | None],
        sealer: Callable[[], Sealer | None] = lambda: None,
    ) -> None:
        self.reactor = reactor
        self.auth = AdminAuth(config, relying_party, reactor)
        self.retention = Retention(database, reactor, config.events.retention_days)
        self.tls = ReloadableTLS(_tls(config))
        self.resource = AdminResource(self.auth, database)
        #: The admin page's sign-in (C{[admin] url}).
        self.page = PageAuth(config, relying_party, sealer, reactor, database)
        site = SideSite(AdminSite(self.resource, self.page), reactor)
        self.factory = capped(TLSMemoryBIOFactory(self.tls, False, site), "admin", reactor)

    def reload(self, config: ServiceConfig) -> None:
        """New tokens' checks, certificate and retention (the listener itself: on restart)."""
        self.auth.config = config
        self.page.config = config
        self.retention.retention_days = config.events.retention_days
        self.tls.current = _tls(config)

    def start(self) -> None:
        self.retention.start()

    def stop(self) -> None:
        self.retention.stop()
        self.page.close()
