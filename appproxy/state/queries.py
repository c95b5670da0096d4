"""
The statements of the state database, one function each, given a DB-API
cursor: the pool's transaction (L{appproxy.state.database.StateDatabase}, in
the pool's thread) or a plain C{sqlite3} cursor.

L{read_sign_ins} reads the sign-in log synchronously and read-only, for the
command line: it never changes the file, and works while the service runs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from appproxy.state.schema import BUSY_TIMEOUT_MS, check_schema, read_schema
from appproxy.state.signins import SignInEvent

__all__ = [
    "delete_sign_ins",
    "insert_reference",
    "insert_sign_in",
    "purge_expired",
    "read_sign_ins",
    "select_reference",
    "select_sign_ins",
    "use_once",
]

_SIGN_IN_COLUMNS = "time, user, app, client_address, result, step, policy, request_id, detail"


def select_sign_ins(cursor: Any, since: float | None, limit: int | None) -> list[SignInEvent]:
    """The sign-in log, oldest first: at or after C{since}, the newest C{limit}."""
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


def insert_sign_in(txn: Any, event: SignInEvent) -> None:
    """Append C{event} to the sign-in log."""
    txn.execute(
        f"INSERT INTO sign_ins ({_SIGN_IN_COLUMNS}, subject, issuer, user_agent)"  # noqa: S608
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            event.subject,
            event.issuer,
            event.user_agent,
        ),
    )


def delete_sign_ins(txn: Any, before: float) -> int:
    """Delete the sign-in events older than C{before}; how many."""
    txn.execute("DELETE FROM sign_ins WHERE time < ?", (before,))
    return int(txn.rowcount)


def insert_reference(txn: Any, kind: str, key: str, value: str, expires_at: int) -> None:
    """Store the JSON text C{value} under C{(kind, key)} until C{expires_at}."""
    txn.execute(
        "INSERT INTO refs (kind, key, value, expires_at) VALUES (?, ?, ?, ?)",
        (kind, key, value, expires_at),
    )


def select_reference(txn: Any, kind: str, key: str, now: float) -> tuple[str, int] | None:
    """The JSON text and expiry stored under C{(kind, key)}, unless expired by C{now}."""
    txn.execute(
        "SELECT value, expires_at FROM refs WHERE kind = ? AND key = ? AND expires_at > ?",
        (kind, key, now),
    )
    row = txn.fetchone()
    return None if row is None else (row[0], row[1])


def purge_expired(txn: Any, now: float) -> int:
    """Delete the references and used ids expired by C{now}; how many."""
    txn.execute("DELETE FROM refs WHERE expires_at <= ?", (now,))
    count: int = txn.rowcount
    txn.execute("DELETE FROM used_ids WHERE expires_at <= ?", (now,))
    return count + int(txn.rowcount)


def use_once(txn: Any, kind: str, id: str, expires_at: float, now: float) -> bool:
    """Record C{(kind, id)} as used; whether it is the first time."""
    txn.execute("DELETE FROM used_ids WHERE expires_at <= ?", (now,))
    try:
        txn.execute(
            "INSERT INTO used_ids (kind, id, expires_at) VALUES (?, ?, ?)", (kind, id, expires_at)
        )
    except sqlite3.IntegrityError:
        # Caught here, not in the caller: the purge above is still committed.
        return False
    return True


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
            path.absolute().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000
        )
    except sqlite3.Error as e:
        raise ValueError(f"{path}: cannot open it: {e}") from None
    try:
        cursor = connection.cursor()
        version, application_id, objects = read_schema(cursor)
        check_schema(path, version, application_id, objects)
        if version == 0:
            raise ValueError(f"{path} is not an appproxy state database (it is empty)")
        return select_sign_ins(cursor, since, limit)
    except sqlite3.Error as e:
        raise ValueError(f"{path}: cannot read it: {e}") from None
    finally:
        connection.close()
