"""
The revoked sessions, held in memory for the per-request check.

L{RevocationSet} is a copy of the state database's revocations
(L{appproxy.state.sessions.Revocation}): session ids, and per user the time
before which their sessions are revoked.  Checking a session is two
dictionary lookups, whatever the number of revocations.  The service keeps
it current (L{appproxy.gate.sessions}); this module only holds and answers.

Pure: no reactor, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from appproxy.access.session import Session
from appproxy.state.sessions import Revocation

__all__ = ["RevocationSet"]


@attrs.define
class RevocationSet:
    """
    The revocations a service process knows of.

    @ivar last_seq: the highest C{seq} taken in: the next read asks for the
        revocations after it.
    """

    #: Revoked session id -> when the revocation may be forgotten.
    _sessions: dict[str, int] = attrs.field(factory=dict)
    #: User -> (sessions issued before this time are revoked, forget after).
    _users: dict[str, tuple[int, int]] = attrs.field(factory=dict)
    last_seq: int = 0

    def __len__(self) -> int:
        return len(self._sessions) + len(self._users)

    def add(self, revocation: Revocation) -> None:
        """Take in C{revocation} (again: taking one twice changes nothing)."""
        if revocation.kind == "session":
            known = self._sessions.get(revocation.subject, 0)
            self._sessions[revocation.subject] = max(known, revocation.expires_at)
        else:
            cut, forget = self._users.get(revocation.subject, (0, 0))
            self._users[revocation.subject] = (
                max(cut, revocation.revoked_at),
                max(forget, revocation.expires_at),
            )
        self.last_seq = max(self.last_seq, revocation.seq)

    def add_all(self, revocations: Iterable[Revocation]) -> None:
        for revocation in revocations:
            self.add(revocation)

    def revoked(self, session: Session) -> bool:
        """Whether C{session} has been revoked: by its id, or by its user since."""
        if session.session_id in self._sessions:
            return True
        cut = self._users.get(session.user)
        return cut is not None and session.issued_at < cut[0]

    def purge(self, now: int) -> int:
        """Forget the revocations that expired by C{now}; how many."""
        sessions = [key for key, forget in self._sessions.items() if forget <= now]
        for key in sessions:
            del self._sessions[key]
        users = [key for key, (_, forget) in self._users.items() if forget <= now]
        for key in users:
            del self._users[key]
        return len(sessions) + len(users)
