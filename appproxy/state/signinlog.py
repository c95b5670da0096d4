"""
The sign-in log: who signed in to which app, from where, and how it ended.

Every sign-in attempt the service sees ends in one
L{appproxy.state.signins.SignInEvent}.  L{SignInLog.record} sends it to two
places: a structured C{twisted.logger} event (C{log_system="sign-in"}), and
the C{sign_ins} table of the state database, which C{appproxy logs sign-ins}
(L{appproxy.cli.logs}) reads, as text for people or JSON Lines for security
tooling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from appproxy.state._settled import all_settled
from appproxy.state.signins import SignInEvent

if TYPE_CHECKING:
    from appproxy.state.database import StateDatabase

__all__ = ["SignInLog"]

_QUIET_RESULTS = frozenset({"success", "signed-out"})


def _logger(log: Logger | None) -> Logger:
    return log if log is not None else Logger(namespace="appproxy.state.signinlog")


@attrs.define(eq=False)
class SignInLog:
    """
    Records sign-in events: to the log, and to the state database.

    @ivar write_failures: how many events could not be written to the
        database (each is logged).
    """

    #: Where events are kept; L{None} to only log them.
    _db: StateDatabase | None
    #: The logger for the events and for write failures.
    _log: Logger = attrs.field(default=None, converter=_logger)
    _pending: set[Deferred[None]] = attrs.field(factory=set, init=False, repr=False)
    write_failures: int = attrs.field(default=0, init=False)

    def record(self, event: SignInEvent) -> None:
        """
        Log C{event} and append it to the database, in the background.

        The log event is at level C{info} for C{success} and C{signed-out},
        C{warn} otherwise.  Never raises and never blocks: a database failure
        is logged and counted in L{write_failures}.  L{flush} waits for the
        writes.
        """
        try:
            self._emit(event)
        except Exception:
            self._log.failure("Could not log a sign-in event")
        if self._db is None:
            return
        try:
            d = self._db.record_sign_in(event)
        except Exception:
            self._write_failed(Failure(), event)
            return
        self._pending.add(d)
        d.addErrback(self._write_failed, event)
        d.addBoth(self._written, d)

    def _emit(self, event: SignInEvent) -> None:
        emit = self._log.info if event.result in _QUIET_RESULTS else self._log.warn
        emit(
            "Sign-in {summary}",
            summary=event.to_text(),
            log_system="sign-in",
            time=event.time,
            user=event.user,
            app=event.app,
            client_address=event.client_address,
            result=event.result,
            step=event.step,
            policy=event.policy,
            request_id=event.request_id,
            detail=event.detail,
        )

    def _write_failed(self, failure: Failure, event: SignInEvent) -> None:
        self.write_failures += 1
        self._log.error(
            "Sign-in event {request_id} not written to the state database: {error}",
            request_id=event.request_id,
            error=failure.getErrorMessage(),
        )

    def _written(self, result: object, d: Deferred[None]) -> None:
        self._pending.discard(d)

    def flush(self) -> Deferred[None]:
        """
        Wait for the writes under way when called.  Never fails.

        The service calls it from C{stopService}, before it closes the
        database, so no event is lost at shutdown.
        """
        return all_settled(self._pending)
