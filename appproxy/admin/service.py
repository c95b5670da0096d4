"""
The admin API's listener (C{[admin] listen}: HTTPS, ALPN C{http/1.1}, with
C{[admin] cert}/C{key} or the service's first certificate; no request body,
a header deadline and caps on connections: L{appproxy.daemon.side_listener})
and the retention of sign-in and audit events (C{[events] retention_days}:
rows older are purged at start and then daily, in the database's pool).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from appproxy.access.cookie import Sealer
from appproxy.admin import records
from appproxy.admin.api import AdminResource
from appproxy.admin.auth import AdminAuth
from appproxy.admin.page import AdminSite
from appproxy.admin.page_auth import PageAuth
from appproxy.config import ServiceConfig
from appproxy.daemon.side_listener import SideSite, capped
from appproxy.daemon.tls import ReloadableTLS, SNIServerContextFactory
from appproxy.oidc.client import RelyingParty
from appproxy.state.database import StateDatabase

__all__ = ["PURGE_INTERVAL", "AdminService", "Retention"]

log = Logger()

#: Seconds between two retention purges.
PURGE_INTERVAL: Final = 86_400.0


def _tls(config: ServiceConfig) -> SNIServerContextFactory:
    cert = config.admin.cert or config.certificates[0]
    return SNIServerContextFactory([(cert.cert_pem, cert.key_pem)], (b"http/1.1",))


class Retention:
    """Purges sign-in and audit events older than C{[events] retention_days}."""

    def __init__(self, database: StateDatabase, reactor: Any, retention_days: int) -> None:
        self.database = database
        self.reactor = reactor
        self.retention_days = retention_days
        self._loop = LoopingCall(self.purge)
        self._loop.clock = reactor

    def start(self) -> None:
        """Purge now, then every L{PURGE_INTERVAL} seconds."""
        self._loop.start(PURGE_INTERVAL, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def purge(self) -> Deferred[int]:
        """Delete the old events now; fires with how many (never fails)."""
        before = self.reactor.seconds() - self.retention_days * 86_400

        def done(count: int) -> int:
            if count:
                log.info(
                    "Purged {count} sign-in and audit events older than {days} days",
                    count=count,
                    days=self.retention_days,
                )
            return count

        def failed(failure: Any) -> int:
            log.warn("Purging old sign-in and audit events failed: {e}", e=failure.value)
            return 0

        d: Deferred[int] = self.database.run_interaction(records.purge_before, before)
        return d.addCallbacks(done, failed)


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
