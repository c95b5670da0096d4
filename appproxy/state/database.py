"""
The service's durable state: one SQLite database in the state directory.

C{STATE_DIR/appproxy.sqlite} holds the sign-in log, values stored by
reference (a user's groups when they would make the session cookie too
large, ID tokens kept for sign-out) and the single-use ids of hand-offs.

The service uses it off the reactor thread through
L{twisted.enterprise.adbapi}, over one connection: SQLite serialises writers
anyway.  The database is in WAL mode, so readers (the C{appproxy logs}
command, another service process) read while the service writes.

The schema is versioned with C{PRAGMA user_version} and upgraded when the
database is opened, by ordered migrations; C{PRAGMA application_id} marks the
file as appproxy's.  A database written by a newer appproxy is refused.

L{read_sign_ins} reads the sign-in log synchronously, read-only, for the
command line.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.python.failure import Failure

from appproxy.state.signinlog import SignInEvent

__all__ = [
    "APPLICATION_ID",
    "DATABASE_NAME",
    "SCHEMA_VERSION",
    "StateDatabase",
    "StateDatabaseClosed",
    "read_sign_ins",
]

_T = TypeVar("_T")

#: The database's file name in the state directory.
DATABASE_NAME = "appproxy.sqlite"

#: C{PRAGMA application_id} of an appproxy state database ("APPX").
APPLICATION_ID = 0x41505058

#: The default number of references kept in memory by L{StateDatabase}.
REFERENCE_CACHE_SIZE = 10_000

_FILE_MODE = 0o600
_BUSY_TIMEOUT_MS = 5000

# Each migration is a list of statements, run in one transaction that also
# sets user_version to its (1-based) position.  Append only: never edit a
# migration that has shipped.
_MIGRATIONS: Sequence[Sequence[str]] = (
    # 1: the sign-in log, references, used ids.
    (
        """
        CREATE TABLE sign_ins (
            id INTEGER PRIMARY KEY,
            time REAL NOT NULL,
            user TEXT,
            app TEXT NOT NULL,
            client_address TEXT NOT NULL,
            result TEXT NOT NULL,
            step TEXT,
            policy TEXT,
            request_id TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        )
        """,
        "CREATE INDEX sign_ins_by_time ON sign_ins (time)",
        """
        CREATE TABLE refs (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            expires_at INTEGER NOT NULL,
            PRIMARY KEY (kind, key)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX refs_by_expiry ON refs (expires_at)",
        """
        CREATE TABLE used_ids (
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            expires_at INTEGER NOT NULL,
            PRIMARY KEY (kind, id)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX used_ids_by_expiry ON used_ids (expires_at)",
        f"PRAGMA application_id = {APPLICATION_ID}",
    ),
)

#: The schema version this appproxy writes.
SCHEMA_VERSION = len(_MIGRATIONS)

_SIGN_IN_COLUMNS = "time, user, app, client_address, result, step, policy, request_id, detail"


class StateDatabaseClosed(Exception):
    """The state database was used after L{StateDatabase.close}."""


# ---------------------------------------------------------------------------
# schema


def _check_schema(path: Path, version: int, application_id: int, objects: int) -> None:
    """
    Refuse a database that is not appproxy's or is from a newer appproxy.

    @param version: its C{user_version}.
    @param application_id: its C{application_id}.
    @param objects: how many tables, indexes, ... it has.
    @raise ValueError: one line naming C{path}.
    """
    if application_id != APPLICATION_ID and (application_id != 0 or version != 0 or objects):
        raise ValueError(f"{path} is not an appproxy state database")
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{path} was written by a newer appproxy (schema version {version}; this one "
            f"knows up to {SCHEMA_VERSION}): refusing to use it"
        )


def _read_schema(cursor: Any) -> tuple[int, int, int]:
    """C{user_version}, C{application_id} and the number of schema objects."""
    (version,) = cursor.execute("PRAGMA user_version").fetchone()
    (application_id,) = cursor.execute("PRAGMA application_id").fetchone()
    (objects,) = cursor.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return int(version), int(application_id), int(objects)


def _migrate(connection: Any, path: Path) -> int:
    """
    Bring the database up to L{SCHEMA_VERSION}, one migration per transaction.

    Each step takes the write lock (C{BEGIN IMMEDIATE}) before it looks at the
    version, so two processes opening the same file cannot both apply a
    migration.  Runs in the pool's thread.

    @return: the schema version found before migrating.
    """
    cursor = connection.cursor()
    found: int | None = None
    try:
        while True:
            cursor.execute("BEGIN IMMEDIATE")
            version, application_id, objects = _read_schema(cursor)
            _check_schema(path, version, application_id, objects)
            if found is None:
                found = version
            if version == SCHEMA_VERSION:
                connection.commit()
                return found
            for statement in _MIGRATIONS[version]:
                cursor.execute(statement)
            cursor.execute(f"PRAGMA user_version = {version + 1}")
            connection.commit()
    except BaseException:
        connection.rollback()
        raise
    finally:
        cursor.close()


def _configure_connection(connection: sqlite3.Connection) -> None:
    """C{cp_openfun}: per-connection settings.  Runs in the pool's thread."""
    try:
        connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        connection.close()
        raise


def _create_private(path: Path) -> None:
    """Create C{path} (mode 0600) unless it exists, so SQLite never creates it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
    os.close(fd)


# ---------------------------------------------------------------------------
# queries (each runs in the pool's thread, or on a plain sqlite3 cursor)


def _select_sign_ins(cursor: Any, since: float | None, limit: int | None) -> list[SignInEvent]:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must not be negative, not {limit}")
    where = "" if since is None else "WHERE time >= ?"
    params: list[object] = [] if since is None else [since]
    if limit is None:
        sql = f"SELECT {_SIGN_IN_COLUMNS} FROM sign_ins {where} ORDER BY time, id"  # noqa: S608
        rows = cursor.execute(sql, params).fetchall()
    else:
        # The newest `limit`, returned oldest first.
        sql = (
            f"SELECT {_SIGN_IN_COLUMNS} FROM sign_ins {where} "  # noqa: S608
            "ORDER BY time DESC, id DESC LIMIT ?"
        )
        rows = cursor.execute(sql, [*params, limit]).fetchall()
        rows.reverse()
    return [
        SignInEvent(
            time=row[0],
            user=row[1],
            app=row[2],
            client_address=row[3],
            result=row[4],
            step=row[5],
            policy=row[6],
            request_id=row[7],
            detail=row[8],
        )
        for row in rows
    ]


def _insert_sign_in(txn: Any, event: SignInEvent) -> None:
    txn.execute(
        f"INSERT INTO sign_ins ({_SIGN_IN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            event.time,
            event.user,
            event.app,
            event.client_address,
            event.result,
            event.step,
            event.policy,
            event.request_id,
            event.detail,
        ),
    )


def _delete_sign_ins(txn: Any, before: float) -> int:
    txn.execute("DELETE FROM sign_ins WHERE time < ?", (before,))
    return int(txn.rowcount)


def _insert_reference(txn: Any, kind: str, key: str, value: str, expires_at: int) -> None:
    txn.execute(
        "INSERT INTO refs (kind, key, value, expires_at) VALUES (?, ?, ?, ?)",
        (kind, key, value, expires_at),
    )


def _select_reference(txn: Any, kind: str, key: str, now: float) -> tuple[str, int] | None:
    txn.execute(
        "SELECT value, expires_at FROM refs WHERE kind = ? AND key = ? AND expires_at > ?",
        (kind, key, now),
    )
    row = txn.fetchone()
    return None if row is None else (row[0], row[1])


def _purge(txn: Any, now: float) -> int:
    txn.execute("DELETE FROM refs WHERE expires_at <= ?", (now,))
    count: int = txn.rowcount
    txn.execute("DELETE FROM used_ids WHERE expires_at <= ?", (now,))
    return count + int(txn.rowcount)


def _use_once(txn: Any, kind: str, id: str, expires_at: float, now: float) -> bool:
    txn.execute("DELETE FROM used_ids WHERE expires_at <= ?", (now,))
    try:
        txn.execute(
            "INSERT INTO used_ids (kind, id, expires_at) VALUES (?, ?, ?)", (kind, id, expires_at)
        )
    except sqlite3.IntegrityError:
        # Caught here, not in the caller: the purge above is still committed.
        return False
    return True


# ---------------------------------------------------------------------------
# the database


class StateDatabase:
    """
    The service's state database.  Open it with L{StateDatabase.open}.

    Every method returning a L{Deferred} runs its statement in the pool's
    thread and fires in the reactor thread; after L{close} they fail with
    L{StateDatabaseClosed}.  Times are POSIX seconds.

    @ivar path: the database file.
    """

    def __init__(
        self, pool: adbapi.ConnectionPool, path: Path, cache_size: int = REFERENCE_CACHE_SIZE
    ) -> None:
        """
        Use L{StateDatabase.open}, which creates and migrates the file, rather
        than this.

        @param pool: an open pool on the migrated database.
        @param cache_size: how many references L{load_reference} keeps in memory.
        """
        self.path = path
        self._pool = pool
        self._cache_size = cache_size
        # (kind, key) -> (JSON text, expires_at), least recently used first.
        self._cache: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._pending: set[Deferred[Any]] = set()
        self._closing = False
        self._closed = False
        self._close_waiters: list[Deferred[None]] = []

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

        @param path: the file, normally C{STATE_DIR / DATABASE_NAME}.
        @param reactor: the reactor (default: the global one).
        @param cache_size: how many references to keep in memory.
        @return: fires with the database; fails with L{ValueError} (one line
            naming the file) if it is not an appproxy database, is from a
            newer appproxy or cannot be used, or with L{OSError} if it cannot
            be created.
        """
        path = Path(path)
        try:
            _create_private(path)
        except OSError:
            return fail()
        extra: dict[str, Any] = {} if reactor is None else {"cp_reactor": reactor}
        pool = adbapi.ConnectionPool(
            "sqlite3",
            str(path),
            check_same_thread=False,
            timeout=_BUSY_TIMEOUT_MS / 1000,
            cp_min=1,
            cp_max=1,
            cp_openfun=_configure_connection,
            **extra,
        )

        def opened(_: int) -> StateDatabase:
            return cls(pool, path, cache_size)

        def failed(failure: Failure) -> Failure:
            pool.close()
            if failure.check(sqlite3.Error):
                raise ValueError(f"{path}: cannot use it as the state database: {failure.value}")
            return failure

        d: Deferred[int] = pool.runWithConnection(_migrate, path)
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
        _create_private(path)
        try:
            connection = sqlite3.connect(str(path), timeout=_BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as e:
            raise ValueError(f"{path}: cannot use it as the state database: {e}") from None
        try:
            _configure_connection(connection)
            _migrate(connection, path)
        except sqlite3.Error as e:
            raise ValueError(f"{path}: cannot use it as the state database: {e}") from None
        finally:
            connection.close()
        extra: dict[str, Any] = {} if reactor is None else {"cp_reactor": reactor}
        pool = adbapi.ConnectionPool(
            "sqlite3",
            str(path),
            check_same_thread=False,
            timeout=_BUSY_TIMEOUT_MS / 1000,
            cp_min=1,
            cp_max=1,
            cp_openfun=_configure_connection,
            **extra,
        )
        return cls(pool, path, cache_size)

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
            pending = [_settled(d) for d in self._pending]
            DeferredList(pending).addCallback(self._finish_close)
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

    # -- sign-in log

    def record_sign_in(self, event: SignInEvent) -> Deferred[None]:
        """Append C{event} to the sign-in log."""
        return self._run(_insert_sign_in, event)

    def sign_ins(
        self, since: float | None = None, limit: int | None = None
    ) -> Deferred[list[SignInEvent]]:
        """
        The sign-in log, oldest first.

        @param since: only events at or after this time.
        @param limit: only the newest C{limit} events (still oldest first).
        """
        return self._run(_select_sign_ins, since, limit)

    def purge_sign_ins(self, before: float) -> Deferred[int]:
        """
        Delete the sign-in events older than C{before} (for a retention period).

        @return: fires with how many were deleted.
        """
        return self._run(_delete_sign_ins, before)

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

        return self._run(_insert_reference, kind, key, text, expires_at).addCallback(stored)

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

        return self._run(_select_reference, kind, key, now).addCallback(loaded)

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
        Delete the references and used ids that have expired by C{now}.

        @return: fires with how many rows were deleted.
        """
        for cache_key in [k for k, (_, exp) in self._cache.items() if now >= exp]:
            del self._cache[cache_key]
        return self._run(_purge, now)

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
        return self._run(_use_once, kind, id, expires_at, now)


def _settled(d: Deferred[Any]) -> Deferred[None]:
    """A new L{Deferred} that fires with L{None} when C{d} fires, leaving C{d}'s result alone."""
    observer: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        observer.callback(None)
        return result

    d.addBoth(fire)
    return observer


# ---------------------------------------------------------------------------
# command line


def read_sign_ins(
    path: Path, since: float | None = None, limit: int | None = None
) -> list[SignInEvent]:
    """
    Read the sign-in log synchronously, opening the database read-only.

    For the command line: it never changes the file, and works while the
    service is running.

    @param path: the database file.
    @param since: only events at or after this time.
    @param limit: only the newest C{limit} events.
    @return: the events, oldest first.
    @raise ValueError: one line, if the file is missing or not an appproxy
        state database.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such state database")
    try:
        connection = sqlite3.connect(
            path.absolute().as_uri() + "?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_MS / 1000
        )
    except sqlite3.Error as e:
        raise ValueError(f"{path}: cannot open it: {e}") from None
    try:
        cursor = connection.cursor()
        version, application_id, objects = _read_schema(cursor)
        _check_schema(path, version, application_id, objects)
        if version == 0:
            raise ValueError(f"{path} is not an appproxy state database (it is empty)")
        return _select_sign_ins(cursor, since, limit)
    except sqlite3.Error as e:
        raise ValueError(f"{path}: cannot read it: {e}") from None
    finally:
        connection.close()
