"""
The admin API's events as JSON objects, read from the state database by
keyset (row id ascending), and the retention purge.  Blocking C{sqlite3}
calls for the connection pool's thread; pure otherwise.
"""

from __future__ import annotations

import json
from typing import Any, Final

from appproxy.admin.filters import Query, where_clause
from appproxy.state.signins import format_time

__all__ = ["TABLES", "last_id", "purge_before", "select_events"]

#: The table of each list.
TABLES: Final = {"sign-ins": "sign_ins", "audit": "audit"}

_COLUMNS: Final = {
    "sign-ins": "id, time, request_id, user, subject, issuer, app, client_address,"
    " user_agent, result, step, policy, detail",
    "audit": "id, time, event, actor, address, connector_id, detail",
}


def _sign_in(row: tuple[Any, ...]) -> dict[str, Any]:
    (id_, time, request_id, user, subject, issuer, app, address, agent, result, step) = row[:11]
    policy, detail = row[11], row[12]
    return {
        "id": str(id_),
        "time": format_time(time),
        "epoch": time,
        "request_id": request_id,
        "user": user,
        "subject": subject,
        "issuer": issuer,
        "app": app,
        "client_address": address,
        "user_agent": agent,
        "result": result,
        "reason": step,
        "detail": detail,
        "policies": [] if policy is None else [{"name": policy, "why": detail}],
    }


def _detail(text: str | None) -> Any:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"value": value}


def _audit(row: tuple[Any, ...]) -> dict[str, Any]:
    id_, time, event, actor, address, connector_id, detail = row
    return {
        "id": str(id_),
        "time": format_time(time),
        "epoch": time,
        "event": event,
        "actor": actor,
        "address": address,
        "connector_id": connector_id,
        "detail": _detail(detail),
    }


def select_events(
    txn: Any, query: Query, limit: int, up_to: int | None = None
) -> list[dict[str, Any]]:
    """
    The first C{limit} events matching C{query} (after its cursor), by id;
    with C{up_to}, none after that id.
    """
    where, params = where_clause(query)
    if up_to is not None:
        where += " AND id <= ?"
        params.append(up_to)
    sql = (
        f"SELECT {_COLUMNS[query.kind]} FROM {TABLES[query.kind]}"  # noqa: S608
        f" WHERE {where} ORDER BY id LIMIT ?"
    )
    txn.execute(sql, [*params, limit])
    convert = _sign_in if query.kind == "sign-ins" else _audit
    return [convert(tuple(row)) for row in txn.fetchall()]


def last_id(txn: Any, kind: str) -> int:
    """The highest row id of the list C{kind} now (0 if empty)."""
    txn.execute(f"SELECT coalesce(max(id), 0) FROM {TABLES[kind]}")  # noqa: S608
    return int(txn.fetchone()[0])


def purge_before(txn: Any, before: float) -> int:
    """
    Delete the sign-in and audit events older than C{before}; how many.

    The newest row of each table is kept, whatever its age: SQLite gives a
    new row the highest id plus one, so ids are never reused and a cursor
    never skips an event.
    """
    count = 0
    for table in TABLES.values():
        txn.execute(
            f"DELETE FROM {table} WHERE time < ?"  # noqa: S608
            f" AND id < (SELECT max(id) FROM {table})",
            (before,),
        )
        count += int(txn.rowcount)
    return count
