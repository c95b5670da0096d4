"""
The service's durable state: one SQLite database in the state directory.

C{STATE_DIR/appproxy.sqlite} holds the sign-in log, values stored by
reference (a user's groups when they would make the session cookie too
large, ID tokens kept for sign-out), the single-use ids of hand-offs, and
the sessions issued and revoked (L{appproxy.state.sessions}).

The service uses it off the reactor thread through
L{twisted.enterprise.adbapi}, over one connection: SQLite serialises writers
anyway.  The database is in WAL mode, so readers (the C{appproxy logs}
command, another service process) read while the service writes.

The file, its schema and migrations are L{appproxy.state.schema}; the
statements, and the command line's synchronous reader
L{appproxy.state.queries.read_sign_ins}, are L{appproxy.state.queries}.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from appproxy.state import queries, sessions
from appproxy.state._settled import all_settled
from appproxy.state.schema import (
    BUSY_TIMEOUT_MS,
    configure_connection,
    create_private,
    migrate,
    migrate_now,
    unusable,
)
from appproxy.state.sessions import Revocation, SessionRecord
from appproxy.state.signins import SignInEvent

__all__ = [
    "REFERENCE_CACHE_SIZE",
    "StateDatabase",
    "StateDatabaseClosed",
]

_T = TypeVar("_T")

#: The default number of references kept in memory by L{StateDatabase}.
REFERENCE_CACHE_SIZE = 10_000


def _purge_all(txn: Any, now: float) -> int:
    return queries.purge_expired(txn, now) + sessions.purge_expired_sessions(txn, now)


class StateDatabaseClosed(Exception):
    """The state database was used after L{StateDatabase.close}."""


def _connection_pool(path: Path, reactor: Any) -> adbapi.ConnectionPool:
    """
    A pool of one connection to C{path}, configured by
    L{configure_connection}; it starts with C{reactor} (default: the global
    one).
    """
    extra: dict[str, Any] = {} if reactor is None else {"cp_reactor": reactor}
    return adbapi.ConnectionPool(
        "sqlite3",
        str(path),
        check_same_thread=False,
        timeout=BUSY_TIMEOUT_MS / 1000,
        cp_min=1,
        cp_max=1,
        cp_openfun=configure_connection,
        **extra,
    )


@attrs.define(eq=False)
class StateDatabase:
    """
    The service's state database.  Open it with L{StateDatabase.open} (or
    L{StateDatabase.open_at_startup}), which create and migrate the file,
    rather than with the constructor.

    Every method returning a L{Deferred} runs its statement in the pool's
    thread and fires in the reactor thread; after L{close} they fail with
    L{StateDatabaseClosed}.  Times are POSIX seconds.

    @ivar path: the database file.
    """

    #: An open pool on the migrated database.
    _pool: adbapi.ConnectionPool = attrs.field(repr=False)
    path: Path
    #: How many references L{load_reference} keeps in memory.
    _cache_size: int = REFERENCE_CACHE_SIZE
    #: (kind, key) -> (JSON text, expires_at), least recently used first.
    _cache: OrderedDict[tuple[str, str], tuple[str, float]] = attrs.field(
        factory=OrderedDict, init=False, repr=False
    )
    _pending: set[Deferred[Any]] = attrs.field(factory=set, init=False, repr=False)
    _closing: bool = attrs.field(default=False, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _close_waiters: list[Deferred[None]] = attrs.field(factory=list, init=False, repr=False)

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        reactor: Any = None,
        cache_size: int = REFERENCE_CACHE_SIZE,
    ) -> Deferred[StateDatabase]:
        """
        Open (creating it, mode 0600, if missing) and migrate the database.

        @param path: the file, normally C{STATE_DIR / schema.DATABASE_NAME}.
        @param reactor: the reactor (default: the global one).
        @param cache_size: how many references to keep in memory.
        @return: fires with the database; fails with L{ValueError} (one line
            naming the file) if it is not an appproxy database, is from a
            newer appproxy or cannot be used, or with L{OSError} if it cannot
            be created.
        """
        path = Path(path)
        try:
            create_private(path)
        except OSError:
            return fail()
        pool = _connection_pool(path, reactor)

        def opened(_: int) -> StateDatabase:
            return cls(pool, path, cache_size)

        def failed(failure: Failure) -> Failure:
            pool.close()
            if failure.check(sqlite3.Error):
                raise unusable(path, failure.value)
            return failure

        d: Deferred[int] = pool.runWithConnection(migrate, path)
        return d.addCallbacks(opened, failed)

    @classmethod
    def open_at_startup(
        cls, path: Path, *, reactor: Any = None, cache_size: int = REFERENCE_CACHE_SIZE
    ) -> StateDatabase:
        """
        Create and migrate the database now, blocking, then return it with a
        pool that starts with the reactor: for a daemon's start-up, before
        the reactor runs, so a bad database stops the daemon at once and no
        request ever finds the database not yet open.

        @raise ValueError: (one line naming the file) if it is not an
            appproxy database, is from a newer appproxy or cannot be used.
        @raise OSError: if it cannot be created.
        """
        path = Path(path)
        migrate_now(path)
        return cls(_connection_pool(path, reactor), path, cache_size)

    def close(self) -> Deferred[None]:
        """
        Wait for the statements under way, then close the database.

        Calls made after this one fail with L{StateDatabaseClosed}.
        """
        if self._closed:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._close_waiters.append(waiter)
        if not self._closing:
            self._closing = True
            all_settled(self._pending).addCallback(self._finish_close)
        return waiter

    def _finish_close(self, _: object) -> None:
        self._pool.close()
        self._closed = True
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _run(self, interaction: Callable[..., _T], *args: object) -> Deferred[_T]:
        if self._closing:
            return fail(StateDatabaseClosed(f"the state database {self.path} is closed"))
        d: Deferred[_T] = self._pool.runInteraction(interaction, *args)
        self._pending.add(d)

        def done(result: _T | Failure) -> _T | Failure:
            self._pending.discard(d)
            return result

        return d.addBoth(done)

    def run_interaction(self, interaction: Callable[..., _T], *args: object) -> Deferred[_T]:
        """
        C{interaction(txn, *args)} in the pool's thread, in one transaction
        (committed if it returns, rolled back if it raises): for the blocking
        functions of the state modules (L{appproxy.state.connectors}).
        """
        return self._run(interaction, *args)

    # -- sign-in log

    def record_sign_in(self, event: SignInEvent) -> Deferred[None]:
        """Append C{event} to the sign-in log."""
        return self._run(queries.insert_sign_in, event)

    def sign_ins(
        self, since: float | None = None, limit: int | None = None
    ) -> Deferred[list[SignInEvent]]:
        """
        The sign-in log, oldest first.

        @param since: only events at or after this time.
        @param limit: only the newest C{limit} events (still oldest first).
        """
        return self._run(queries.select_sign_ins, since, limit)

    def purge_sign_ins(self, before: float) -> Deferred[int]:
        """
        Delete the sign-in events older than C{before} (for a retention period).

        @return: fires with how many were deleted.
        """
        return self._run(queries.delete_sign_ins, before)

    # -- values stored by reference

    def store_reference(self, kind: str, value: object, expires_at: int) -> Deferred[str]:
        """
        Store C{value} until C{expires_at} under a new random key.

        @param kind: what it is (e.g. C{"groups"}, C{"id-token"}); a key is
            only found again with the same kind.
        @param value: any JSON value but C{null}.
        @return: fires with the key: 128 random bits, URL-safe base64.
        """
        if value is None:
            return fail(ValueError("a reference cannot store null"))
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            return fail()
        key = secrets.token_urlsafe(16)

        def stored(_: None) -> str:
            self._remember(kind, key, text, expires_at)
            return key

        return self._run(queries.insert_reference, kind, key, text, expires_at).addCallback(stored)

    def load_reference(self, kind: str, key: str, now: float) -> Deferred[object | None]:
        """
        The value stored under C{key} with L{store_reference}.

        Served from memory when it is there (no database round trip, even
        after L{close}).

        @return: fires with the value (a new object each time), or L{None} if
            there is none or it has expired (C{now >= expires_at}).
        """
        cached = self._cache.get((kind, key))
        if cached is not None and now < cached[1]:
            self._cache.move_to_end((kind, key))
            value: object = json.loads(cached[0])
            return succeed(value)

        def loaded(row: tuple[str, int] | None) -> object | None:
            if row is None:
                return None
            text, expires_at = row
            self._remember(kind, key, text, expires_at)
            value: object = json.loads(text)
            return value

        return self._run(queries.select_reference, kind, key, now).addCallback(loaded)

    def cached_reference(self, kind: str, key: str, now: float) -> object | None:
        """
        The value L{load_reference} would give, if it is in memory; else L{None}.

        Synchronous: for the request fast path, which falls back to
        L{load_reference} on L{None}.
        """
        cached = self._cache.get((kind, key))
        if cached is None:
            return None
        if now >= cached[1]:
            del self._cache[(kind, key)]
            return None
        self._cache.move_to_end((kind, key))
        value: object = json.loads(cached[0])
        return value

    def _remember(self, kind: str, key: str, text: str, expires_at: float) -> None:
        if self._cache_size <= 0:
            return
        self._cache[(kind, key)] = (text, expires_at)
        self._cache.move_to_end((kind, key))
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def purge_expired(self, now: float) -> Deferred[int]:
        """
        Delete the references, used ids, sessions and revocations that have
        expired by C{now}.

        @return: fires with how many rows were deleted.
        """
        for cache_key in [k for k, (_, exp) in self._cache.items() if now >= exp]:
            del self._cache[cache_key]
        return self._run(_purge_all, now)

    # -- sessions issued and revoked

    def record_session(self, record: SessionRecord) -> Deferred[None]:
        """Record a session just issued (for C{appproxy sessions list})."""
        return self._run(sessions.insert_session, record)

    def revoke_session(self, session_id: str, now: int, expires_at: int) -> Deferred[Revocation]:
        """Revoke the session C{session_id} (which expires at C{expires_at})."""
        return self._run(
            sessions.insert_revocation, "session", session_id, now, max(expires_at, now + 1)
        )

    def revocations_since(self, seq: int, now: int) -> Deferred[list[Revocation]]:
        """The revocations in force at C{now} made after C{seq}, in order."""
        return self._run(sessions.select_revocations, seq, now)

    # -- single-use ids

    def use_once(self, kind: str, id: str, expires_at: int, now: int) -> Deferred[bool]:
        """
        Mark C{id} used; whether this is the first time.

        Atomic, across processes too: the id is the primary key of the row
        that records it.  The row is kept until C{expires_at}; the caller must
        refuse the thing itself after that time.  Rows expired by C{now} are
        purged on the way.

        @return: fires with L{True} the first time, L{False} on any later
            call, and L{False} if C{expires_at} has already passed.
        """
        if expires_at <= now:
            return succeed(False)
        return self._run(queries.use_once, kind, id, expires_at, now)
