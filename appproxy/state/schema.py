"""
The state database's file: its name, the versioned schema and its ordered
migrations, the checks that refuse a file that is not appproxy's, and the
settings of every connection.

The schema is versioned with C{PRAGMA user_version} and upgraded when the
database is opened, one migration per transaction; C{PRAGMA application_id}
marks the file as appproxy's.  A database written by a newer appproxy is
refused.

Plain, blocking C{sqlite3}: these run in the connection pool's thread, or at a
daemon's start-up before the reactor runs, or in the command line.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appproxy.state.files import PRIVATE_MODE

__all__ = [
    "APPLICATION_ID",
    "BUSY_TIMEOUT_MS",
    "DATABASE_NAME",
    "SCHEMA_VERSION",
    "check_schema",
    "configure_connection",
    "create_private",
    "migrate",
    "migrate_now",
    "read_schema",
    "unusable",
]

#: The database's file name in the state directory.
DATABASE_NAME = "appproxy.sqlite"

#: C{PRAGMA application_id} of an appproxy state database ("APPX").
APPLICATION_ID = 0x41505058

#: How long a connection waits for another writer's lock.
BUSY_TIMEOUT_MS = 5000

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
    # 2: sessions issued, and revocations (appproxy.state.sessions).
    (
        """
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            user TEXT NOT NULL,
            app TEXT NOT NULL,
            issued_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            client_address TEXT NOT NULL
        ) WITHOUT ROWID
        """,
        "CREATE INDEX sessions_by_user ON sessions (user, issued_at)",
        "CREATE INDEX sessions_by_expiry ON sessions (expires_at)",
        """
        CREATE TABLE revocations (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('session', 'user')),
            subject TEXT NOT NULL,
            revoked_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL
        )
        """,
        "CREATE INDEX revocations_by_subject ON revocations (kind, subject)",
        "CREATE INDEX revocations_by_expiry ON revocations (expires_at)",
    ),
    # 3: connectors, their certificates, enrolment tokens and the audit log
    # (appproxy.state.connectors).
    (
        """
        CREATE TABLE connectors (
            id TEXT PRIMARY KEY,
            grp TEXT NOT NULL,
            host_name TEXT NOT NULL,
            version TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('enabled', 'disabled', 'revoked')),
            registered REAL,
            registered_by TEXT,
            serial TEXT NOT NULL,
            not_before REAL,
            not_after REAL NOT NULL,
            last_seen REAL,
            last_address TEXT,
            connections INTEGER NOT NULL DEFAULT 0,
            streams INTEGER NOT NULL DEFAULT 0,
            changed REAL NOT NULL
        )
        """,
        """
        CREATE TABLE connector_certificates (
            serial TEXT PRIMARY KEY,
            connector_id TEXT NOT NULL,
            issued REAL,
            not_after REAL,
            status TEXT CHECK (status IN ('current', 'retired'))
        )
        """,
        "CREATE INDEX connector_certificates_by_connector ON connector_certificates (connector_id)",
        """
        CREATE TABLE enrolment_tokens (
            id TEXT PRIMARY KEY,
            hash BLOB NOT NULL,
            grp TEXT NOT NULL,
            created REAL,
            expires REAL NOT NULL,
            uses_left INTEGER NOT NULL,
            created_by TEXT,
            revoked INTEGER NOT NULL DEFAULT 0
        )
        """,
        """
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            time REAL NOT NULL,
            event TEXT NOT NULL,
            actor TEXT,
            address TEXT,
            connector_id TEXT,
            detail TEXT
        )
        """,
        "CREATE INDEX audit_by_time ON audit (time)",
    ),
    # 4: the sign-in log's subject, issuer and user agent (appproxy.admin's API).
    (
        "ALTER TABLE sign_ins ADD COLUMN subject TEXT",
        "ALTER TABLE sign_ins ADD COLUMN issuer TEXT",
        "ALTER TABLE sign_ins ADD COLUMN user_agent TEXT",
    ),
)

#: The schema version this appproxy writes.
SCHEMA_VERSION = len(_MIGRATIONS)


def unusable(path: Path, error: object) -> ValueError:
    """The one-line error for a file SQLite cannot use as the state database."""
    return ValueError(f"{path}: cannot use it as the state database: {error}")


def check_schema(path: Path, version: int, application_id: int, objects: int) -> None:
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


def read_schema(cursor: Any) -> tuple[int, int, int]:
    """C{user_version}, C{application_id} and the number of schema objects."""
    (version,) = cursor.execute("PRAGMA user_version").fetchone()
    (application_id,) = cursor.execute("PRAGMA application_id").fetchone()
    (objects,) = cursor.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return int(version), int(application_id), int(objects)


def migrate(connection: Any, path: Path) -> int:
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
            version, application_id, objects = read_schema(cursor)
            check_schema(path, version, application_id, objects)
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


def configure_connection(connection: sqlite3.Connection) -> None:
    """C{cp_openfun}: per-connection settings.  Runs in the pool's thread."""
    try:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        connection.close()
        raise


def create_private(path: Path) -> None:
    """Create C{path} (mode 0600) unless it exists, so SQLite never creates it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_MODE)
    os.close(fd)


def migrate_now(path: Path) -> None:
    """
    Create (mode 0600, if missing) and migrate the database, blocking, on a
    connection of its own that is closed before this returns.

    @raise ValueError: (one line naming the file) if it is not an appproxy
        database, is from a newer appproxy or cannot be used.
    @raise OSError: if it cannot be created.
    """
    create_private(path)
    try:
        connection = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as e:
        raise unusable(path, e) from None
    try:
        configure_connection(connection)
        migrate(connection, path)
    except sqlite3.Error as e:
        raise unusable(path, e) from None
    finally:
        connection.close()
