"""
L{AuditTrail}: the service's audit events (registrations, refusals, renewals,
clone suspicions, expired certificates) written to the state database's
audit table off the reactor thread, with a log line each; events a
misconfigured or hostile peer repeats for ever are rate limited.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from appproxy.state import connectors
from appproxy.state.database import StateDatabase, StateDatabaseClosed

__all__ = ["RATE_INTERVAL", "AuditTrail"]

log = Logger(namespace="appproxy.trust.audit")

#: A rate-limited event is recorded at most once per key per this many seconds.
RATE_INTERVAL = 60.0
#: Keys remembered for rate limiting (bounded: a flood forgets).
_MAX_KEYS = 4096


class AuditTrail:
    """The audit table, written by one service process."""

    def __init__(
        self, database: StateDatabase, clock: IReactorTime, interval: float = RATE_INTERVAL
    ) -> None:
        self.database = database
        self.clock = clock
        self.interval = interval
        self._last: dict[Hashable, tuple[float, int]] = {}

    def _allowed(self, key: Hashable) -> int | None:
        """L{None} if C{key} was reported within the interval, else how many were left out."""
        now = self.clock.seconds()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return None
        if len(self._last) >= _MAX_KEYS:
            self._last.clear()
        self._last[key] = (now, 0)
        return last[1] if last is not None else 0

    def record(
        self,
        event: str,
        *,
        actor: str | None = None,
        address: str | None,
        connector_id: str | None,
        detail: Mapping[str, Any],
    ) -> defer.Deferred[None]:
        """Write one event (failures are logged, never raised)."""

        def failed(failure: Any) -> None:
            if not failure.check(StateDatabaseClosed):
                log.error(
                    "Cannot write the audit event {event}: {problem}",
                    event=event,
                    problem=str(failure.value),
                )

        writing = self.database.run_interaction(
            _write, event, actor, address, connector_id, dict(detail), self.clock.seconds()
        )
        return writing.addCallbacks(lambda _: None, failed)

    def record_limited(
        self,
        event: str,
        *,
        key: Hashable,
        address: str | None,
        connector_id: str | None,
        detail: Mapping[str, Any],
        message: str | None = None,
        error: bool = False,
        actor: str | None = None,
        **fields: Any,
    ) -> defer.Deferred[None]:
        """
        L{record}, at most once per C{(event, key)} per interval, and log
        C{message} as often: a twisted.logger format over C{fields} and
        C{address} and C{connector_id} (the event's own).  The next entry
        says how many were left out (C{repeated}).  Fires once written.
        """
        more = self._allowed((event, key))
        if more is None:
            return defer.succeed(None)
        if more:
            detail = {**detail, "repeated": more}
        written = self.record(
            event, actor=actor, address=address, connector_id=connector_id, detail=detail
        )
        if message is not None:
            suffix = f" ({more} more like it since the last report)" if more else ""
            (log.error if error else log.warn)(
                message + suffix, address=address, connector_id=connector_id, **fields
            )
        return written

    def log_limited(self, key: Hashable, message: str, **fields: Any) -> None:
        """Log C{message} at most once per C{key} per interval (nothing recorded)."""
        if self._allowed(key) is not None:
            log.warn(message, **fields)


def _write(
    txn: Any,
    event: str,
    actor: str | None,
    address: str | None,
    connector_id: str | None,
    detail: dict[str, Any],
    now: float,
) -> None:
    connectors.audit(
        txn,
        event,
        actor=actor,
        address=address,
        connector_id=connector_id,
        detail=detail,
        now=now,
    )
