"""
One transaction for the connector-trust statements, whoever holds the
connection.

The functions of L{appproxy.state.connectors} take either a plain
C{sqlite3.Connection} (the command line, C{appproxy init}, tests), on which
they run in a transaction of their own that takes the write lock first
(C{BEGIN IMMEDIATE}), or the service's adbapi transaction
(C{runInteraction}: it already is one transaction, committed or rolled back
by the pool), used as it is.  Pure: C{sqlite3} only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["transaction"]


@contextmanager
def transaction(conn: Any, *, write: bool) -> Iterator[Any]:
    """
    A cursor in a transaction on C{conn}: a C{sqlite3.Connection} not yet in
    a transaction gets one of its own (C{BEGIN IMMEDIATE} when C{write}, so
    that what it reads cannot change before it writes; a plain C{BEGIN}, one
    snapshot, to read), committed when the block ends and rolled back if it
    raises.  A connection already in a transaction, and anything else (an
    adbapi transaction, a cursor), is the caller's transaction: used as it
    is, neither committed nor rolled back here.
    """
    if not isinstance(conn, sqlite3.Connection):
        yield conn
        return
    cursor = conn.cursor()
    try:
        if conn.in_transaction:
            yield cursor
            return
        cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield cursor
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
    finally:
        cursor.close()
