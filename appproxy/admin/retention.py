"""
The retention of sign-in and audit events (C{[events] retention_days}: rows
older are purged at start and then daily, in the database's pool).  The
service runs it whether or not the admin listener is configured, so it lives
apart from the listener's modules (which the service imports only when
C{[admin] listen} is set).
"""

from __future__ import annotations

from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from appproxy.admin import records
from appproxy.config import ServiceConfig
from appproxy.state.database import StateDatabase

__all__ = ["PURGE_INTERVAL", "EventsRetention", "Retention"]

log = Logger()

#: Seconds between two retention purges.
PURGE_INTERVAL: Final = 86_400.0


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


class EventsRetention:
    """
    What the service runs in place of L{appproxy.admin.service.AdminService}
    when C{[admin] listen} is not set: the retention purge alone.
    """

    def __init__(self, config: ServiceConfig, reactor: Any, database: StateDatabase) -> None:
        self.retention = Retention(database, reactor, config.events.retention_days)

    def reload(self, config: ServiceConfig) -> None:
        self.retention.retention_days = config.events.retention_days

    def start(self) -> None:
        self.retention.start()

    def stop(self) -> None:
        self.retention.stop()
