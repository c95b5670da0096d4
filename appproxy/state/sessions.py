"""
Sessions issued and sessions ended, in the state database.

Every session the service issues is recorded (L{SessionRecord}: its id,
user, app, times and the client's address) so that C{appproxy sessions list}
can show it.  Ending sessions appends a L{Revocation}:

  - C{session}: the session with that id is revoked (sign-out, or
    C{appproxy sessions revoke --session ID});
  - C{user}: every session of that user issued before C{revoked_at} is
    revoked (C{appproxy sessions revoke --user}, C{appproxy users remove}
    or C{disable}).  Sessions issued within that same second are revoked by
    id in the same transaction, so the cut is exact.

Revocations are only ever appended (and purged once expired), each with a
rising C{seq} (C{AUTOINCREMENT}: never reused), so a service process keeps
its copy current by asking for the rows after the last C{seq} it has: one
indexed query that finds nothing nearly every time.

The statements take a DB-API cursor (the pool's transaction, in the pool's
thread, or a plain C{sqlite3} cursor); L{list_sessions} and L{revoke} are
the command line's synchronous entry points.  Pure: C{sqlite3} only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import attrs

from appproxy.state.schema import BUSY_TIMEOUT_MS, configure_connection, migrate

__all__ = [
    "USER_REVOCATION_LIFETIME",
    "Revocation",
    "SessionRecord",
    "insert_revocation",
    "insert_session",
    "list_sessions",
    "purge_expired_sessions",
    "read_revocations",
    "recorded_users",
    "revoke",
    "revoke_session",
    "revoke_user",
    "select_revocations",
    "select_sessions",
    "select_users",
]

_T = TypeVar("_T")

#: How long a revocation by user is kept: the longest session an app may
#: have (C{session_lifetime} is at most 30 days) and a day to spare.
USER_REVOCATION_LIFETIME: Final = 31 * 24 * 3600

RevocationKind = Literal["session", "user"]


@attrs.frozen(kw_only=True)
class SessionRecord:
    """
    A session the service issued.

    @ivar id: the session's id (L{appproxy.access.session.Session.session_id}).
    @ivar user: the user name.
    @ivar app: the app's name.
    @ivar issued_at: when it was issued (POSIX seconds).
    @ivar expires_at: when it expires.
    @ivar client_address: the address of the client that signed in.
    @ivar revoked: whether it has been revoked (when read back).
    """

    id: str
    user: str
    app: str
    issued_at: int
    expires_at: int
    client_address: str
    revoked: bool = False


@attrs.frozen(kw_only=True)
class Revocation:
    """
    One revocation.

    @ivar seq: its place in the order revocations were made (rising).
    @ivar kind: C{"session"} (C{subject} is a session id) or C{"user"}
        (C{subject} is a user name: their sessions issued before
        C{revoked_at} are revoked).
    @ivar revoked_at: when it was made (whole POSIX seconds).
    @ivar expires_at: when it may be forgotten (no session it revokes is
        valid any longer).
    """

    seq: int
    kind: RevocationKind
    subject: str
    revoked_at: int
    expires_at: int


def insert_session(txn: Any, record: SessionRecord) -> None:
    """Record C{record}, a session just issued."""
    txn.execute(
        "INSERT OR REPLACE INTO sessions (id, user, app, issued_at, expires_at, client_address)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            record.id,
            record.user,
            record.app,
            record.issued_at,
            record.expires_at,
            record.client_address,
        ),
    )


def insert_revocation(
    txn: Any, kind: RevocationKind, subject: str, revoked_at: int, expires_at: int
) -> Revocation:
    """Append a revocation; the row as stored."""
    txn.execute(
        "INSERT INTO revocations (kind, subject, revoked_at, expires_at) VALUES (?, ?, ?, ?)",
        (kind, subject, revoked_at, expires_at),
    )
    return Revocation(
        seq=int(txn.lastrowid),
        kind=kind,
        subject=subject,
        revoked_at=revoked_at,
        expires_at=expires_at,
    )


def revoke_session(txn: Any, session_id: str, now: int) -> SessionRecord | None:
    """
    Revoke the recorded session C{session_id}, unless it has expired.

    @return: the session revoked, or L{None} if no unexpired session of
        that id is recorded (then nothing is written).
    """
    txn.execute(
        "SELECT user, app, issued_at, expires_at, client_address FROM sessions"
        " WHERE id = ? AND expires_at > ?",
        (session_id, now),
    )
    row = txn.fetchone()
    if row is None:
        return None
    insert_revocation(txn, "session", session_id, now, int(row[3]))
    return SessionRecord(
        id=session_id,
        user=row[0],
        app=row[1],
        issued_at=row[2],
        expires_at=row[3],
        client_address=row[4],
        revoked=True,
    )


def revoke_user(txn: Any, user: str, now: int) -> int:
    """
    Revoke every session of C{user} issued up to C{now}: those issued in
    earlier seconds through one C{user} revocation, those recorded within
    second C{now} by id.

    @return: how many recorded sessions of C{user} this ended (those in
        force until now: unexpired and not already revoked).
    """
    in_force = sum(not record.revoked for record in select_sessions(txn, now, user))
    insert_revocation(txn, "user", user, now, now + USER_REVOCATION_LIFETIME)
    txn.execute(
        "SELECT id, expires_at FROM sessions WHERE user = ? AND issued_at >= ? AND expires_at > ?",
        (user, now, now),
    )
    for session_id, expires_at in txn.fetchall():
        insert_revocation(txn, "session", session_id, now, int(expires_at))
    return in_force


def select_revocations(txn: Any, after: int, now: int) -> list[Revocation]:
    """The revocations after C{seq} C{after} that have not expired by C{now}, in order."""
    txn.execute(
        "SELECT seq, kind, subject, revoked_at, expires_at FROM revocations"
        " WHERE seq > ? AND expires_at > ? ORDER BY seq",
        (after, now),
    )
    return [
        Revocation(seq=row[0], kind=row[1], subject=row[2], revoked_at=row[3], expires_at=row[4])
        for row in txn.fetchall()
    ]


def select_sessions(
    txn: Any, now: int, user: str | None = None, *, expired: bool = False
) -> list[SessionRecord]:
    """
    The recorded sessions, oldest first, each saying whether it is revoked.

    @param user: only this user's.
    @param expired: include the expired ones too.
    """
    txn.execute(
        "SELECT s.id, s.user, s.app, s.issued_at, s.expires_at, s.client_address,"
        " EXISTS (SELECT 1 FROM revocations r WHERE r.kind = 'session' AND r.subject = s.id)"
        " OR EXISTS (SELECT 1 FROM revocations r WHERE r.kind = 'user'"
        " AND r.subject = s.user AND r.revoked_at > s.issued_at)"
        " FROM sessions s WHERE (? OR s.expires_at > ?) AND (? IS NULL OR s.user = ?)"
        " ORDER BY s.issued_at, s.id",
        (expired, now, user, user),
    )
    return [
        SessionRecord(
            id=row[0],
            user=row[1],
            app=row[2],
            issued_at=row[3],
            expires_at=row[4],
            client_address=row[5],
            revoked=bool(row[6]),
        )
        for row in txn.fetchall()
    ]


def select_users(txn: Any) -> list[str]:
    """The user names of the recorded sessions (expired or not), sorted."""
    txn.execute("SELECT DISTINCT user FROM sessions ORDER BY user")
    return [row[0] for row in txn.fetchall()]


def purge_expired_sessions(txn: Any, now: float) -> int:
    """Delete the sessions and revocations expired by C{now}; how many."""
    txn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
    count = int(txn.rowcount)
    txn.execute("DELETE FROM revocations WHERE expires_at <= ?", (now,))
    return count + int(txn.rowcount)


# -- the command line's and the service's start-up synchronous access


def _connected(path: Path, work: Callable[[Any], _T], *, write: bool) -> _T:
    """
    Run C{work(cursor)} on an existing state database, in one transaction
    (taking the write lock first when C{write}).

    @raise ValueError: one line, if the file is missing or is not a usable
        appproxy state database.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such state database (has the service run yet?)")
    try:
        connection = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as e:
        raise ValueError(f"{path}: cannot open it: {e}") from None
    try:
        configure_connection(connection)
        migrate(connection, path)
        cursor = connection.cursor()
        cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = work(cursor)
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
        return result
    except sqlite3.Error as e:
        raise ValueError(f"{path}: cannot use it as the state database: {e}") from None
    finally:
        connection.close()


def list_sessions(
    path: Path, now: int, user: str | None = None, *, expired: bool = False
) -> list[SessionRecord]:
    """L{select_sessions} on the database at C{path}, synchronously."""
    return _connected(
        path, lambda cursor: select_sessions(cursor, now, user, expired=expired), write=False
    )


def revoke(path: Path, now: int, *, user: str | None = None, session: str | None = None) -> int:
    """
    Revoke the sessions of C{user}, or the session C{session}, in the
    database at C{path}, synchronously.

    @return: how many recorded sessions in force this ended.
    @raise ValueError: if C{session} names no unexpired recorded session,
        or the database is unusable.
    """
    if (user is None) == (session is None):
        raise ValueError("name a user or a session")
    if user is not None:
        return _connected(path, lambda cursor: revoke_user(cursor, user, now), write=True)
    assert session is not None
    record = _connected(path, lambda cursor: revoke_session(cursor, session, now), write=True)
    if record is None:
        raise ValueError(f"no session {session!r} (or it has already expired)")
    return 1


def recorded_users(path: Path) -> list[str]:
    """L{select_users} on the database at C{path}, synchronously."""
    return _connected(path, select_users, write=False)


def read_revocations(path: Path, now: int) -> list[Revocation]:
    """
    Every revocation in force at C{now}, synchronously: for a service's
    start-up, before the reactor runs.

    @raise ValueError: if the database is missing or unusable.
    """
    return _connected(path, lambda cursor: select_revocations(cursor, 0, now), write=False)
