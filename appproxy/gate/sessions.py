"""
L{SessionRegistry}: sessions issued and ended, for one service process.

Each session issued is recorded in the state database; sign-out revokes its
id there.  The gate checks every request against an in-memory
L{RevocationSet}, which this keeps current: read whole at start-up
(blocking, before the reactor runs), then every L{POLL_INTERVAL} seconds the
revocations added since, by any process (the C{appproxy sessions} and
C{appproxy users} commands, other service processes), are read off the
reactor thread.  No request waits for the database.

Deny by default: if the revocations cannot be read at start, or have not
been read for L{MAX_STALENESS} seconds, the gate answers 503 to signed-in
requests rather than admit a session that may have been ended.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from appproxy.access.revocation import RevocationSet
from appproxy.access.session import Session
from appproxy.state.database import StateDatabase, StateDatabaseClosed
from appproxy.state.sessions import Revocation, SessionRecord, read_revocations

__all__ = ["MAX_STALENESS", "POLL_INTERVAL", "SessionRegistry"]

log = Logger()

#: How often (seconds) the revocations made since the last read are read.
POLL_INTERVAL = 1.0

#: After how long (seconds) without a successful read the revocations are
#: considered unknown, and signed-in requests refused.
MAX_STALENESS = 60.0

#: How often (seconds) revocations that have expired are dropped from memory.
PURGE_INTERVAL = 60.0

#: What the gate learns of a session: in force, revoked, or not knowable.
Standing = Literal["valid", "revoked", "unknown"]


class SessionRegistry:
    """
    The sessions of one service process: records those issued, ends them,
    and answers whether one has been revoked.

    @ivar revocations: the revocations known (read by the benchmarks and tests).
    """

    def __init__(
        self,
        database: StateDatabase,
        clock: IReactorTime,
        *,
        interval: float = POLL_INTERVAL,
        max_staleness: float = MAX_STALENESS,
    ) -> None:
        self.database = database
        self.clock = clock
        self.interval = interval
        self.max_staleness = max_staleness
        self.revocations = RevocationSet()
        #: When the revocations were last read (clock time); None: never.
        self._read_at: float | None = None
        self._failing = False
        self._purged_at = 0.0
        self._loop: LoopingCall | None = None

    # -- start and stop

    def load_at_startup(self, path: Path) -> None:
        """
        Read every revocation in force, blocking: call before the reactor
        runs.  On failure say so in the log; the gate refuses signed-in
        requests until a later read succeeds.
        """
        now = self.clock.seconds()
        try:
            revocations = read_revocations(path, int(now))
        except ValueError as e:
            log.critical(
                "Cannot read the session revocations ({problem}): signed-in requests are refused"
                " until they can be read",
                problem=str(e),
            )
            self._failing = True
            return
        self.revocations.add_all(revocations)
        self._read_at = now
        log.info("Session revocations loaded: {count} in force", count=len(self.revocations))

    def start(self) -> None:
        """Read the new revocations every L{interval} seconds from now on."""
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=self._read_at is None)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    # -- keeping current

    def poll(self) -> defer.Deferred[None]:
        """Read the revocations made since the last read; never fails."""
        now = self.clock.seconds()
        reading = self.database.revocations_since(self.revocations.last_seq, int(now))

        def read(revocations: list[Revocation]) -> None:
            self.revocations.add_all(revocations)
            if now - self._purged_at >= PURGE_INTERVAL:
                self._purged_at = now
                self.revocations.purge(int(now))
            self._read_at = now
            if revocations:
                log.info(
                    "Session revocations read: {new} new, {count} in force",
                    new=len(revocations),
                    count=len(self.revocations),
                )
            if self._failing:
                self._failing = False
                log.info(
                    "Session revocations read again: {count} in force",
                    count=len(self.revocations),
                )

        def failed(failure: Any) -> None:
            if failure.check(StateDatabaseClosed):
                return
            if not self._failing:
                self._failing = True
                log.error(
                    "Cannot read the session revocations: {problem}; signed-in requests are"
                    " refused if this lasts {seconds:.0f} s",
                    problem=str(failure.value),
                    seconds=self.max_staleness,
                )

        return reading.addCallbacks(read, failed)

    # -- per request

    def standing(self, session: Session, now: float) -> Standing:
        """Whether C{session} is in force, revoked, or cannot be known now."""
        if self.revocations.revoked(session):
            return "revoked"
        read_at = self._read_at
        if read_at is None or now - read_at > self.max_staleness:
            return "unknown"
        return "valid"

    # -- issuing and ending

    def record_issued(self, session: Session, client_address: str) -> defer.Deferred[bool]:
        """Record C{session}, just issued; whether that worked (failures are logged)."""
        record = SessionRecord(
            id=session.session_id,
            user=session.user,
            app=session.app,
            issued_at=session.issued_at,
            expires_at=session.expires_at,
            client_address=client_address,
        )

        def failed(failure: Any) -> bool:
            log.error("Cannot record a new session: {problem}", problem=str(failure.value))
            return False

        return self.database.record_session(record).addCallbacks(lambda _: True, failed)

    def end(self, session: Session, now: int) -> defer.Deferred[bool]:
        """
        Revoke C{session}: at once in this process, and in the state database
        for every other; whether the database took it (failures are logged).
        """
        # seq 0: last_seq must only move with what is read back, in order.
        self.revocations.add(
            Revocation(
                seq=0,
                kind="session",
                subject=session.session_id,
                revoked_at=now,
                expires_at=session.expires_at,
            )
        )

        def failed(failure: Any) -> bool:
            log.error(
                "Cannot record the end of a session of {user} for {app}: {problem}; other"
                " service processes may still accept it",
                user=session.user,
                app=session.app,
                problem=str(failure.value),
            )
            return False

        revoking = self.database.revoke_session(session.session_id, now, session.expires_at)
        return revoking.addCallbacks(lambda _: True, failed)
