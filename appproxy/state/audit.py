"""
The audit log of connector trust: who registered, renewed, disabled,
revoked or deleted which connector, when and from where, the refusals, and
the enrolment tokens made and revoked.

Rows are only appended.  C{detail} is a JSON object that never holds a
token, a key or a cookie: L{audit} replaces any string that looks like one
before it writes.  Rows are bounded, whatever a peer sends: the actor,
address and connector id are cut to L{MAX_FIELD} characters, each string of
the detail to L{MAX_DETAIL_STRING}, the whole detail to L{MAX_DETAIL}.
Pure: C{sqlite3} only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import attrs

from appproxy.state._transaction import transaction

__all__ = [
    "AUDIT_EVENTS",
    "ENROLMENT_TOKEN_PREFIX",
    "MAX_DETAIL",
    "MAX_DETAIL_STRING",
    "MAX_FIELD",
    "REDACTED",
    "AuditEvent",
    "audit",
    "read_audit",
]

#: The prefix of enrolment tokens (the same as
#: L{appproxy.tunnel.enrolment.ENROLMENT_TOKEN_PREFIX}; the state package may
#: not import the tunnel's, and a test checks that they agree).
ENROLMENT_TOKEN_PREFIX: Final = "appproxy-enrol."  # noqa: S105 (a prefix, not a secret)

#: The events the audit log records.
AUDIT_EVENTS: Final = frozenset(
    {
        "register",
        "register-refused",
        "renew",
        "renew-refused",
        "disable",
        "enable",
        "revoke",
        "delete",
        "expired",
        "clone-suspected",
        "refused",
        "token-create",
        "token-revoke",
        "admin-sign-in",
        "admin-sign-in-refused",
    }
)

#: What replaces a secret found in an audit entry's detail.
REDACTED: Final = "[redacted]"
#: The longest actor, address or connector id stored (characters).
MAX_FIELD: Final = 256
#: The longest string of a detail stored (characters).
MAX_DETAIL_STRING: Final = 1024
#: The longest detail stored (characters of JSON); a longer one is cut.
MAX_DETAIL: Final = 4096
#: Marks a cut string.
_CUT: Final = "..."


def _cut(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - len(_CUT)] + _CUT


# Text that marks a string as a secret: an enrolment token, a PEM key, a JWT
# (three base64url parts starting with a JSON object's "{").
_SECRET_MARKS: Final = (ENROLMENT_TOKEN_PREFIX, "PRIVATE KEY", "eyJ")


@attrs.frozen(kw_only=True)
class AuditEvent:
    """One audit log entry (times are POSIX seconds)."""

    id: int
    time: float
    event: str
    actor: str | None
    address: str | None
    connector_id: str | None
    detail: Mapping[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The entry as a JSON object (C{appproxy logs audit --json})."""
        return {
            "id": self.id,
            "time": self.time,
            "event": self.event,
            "actor": self.actor,
            "address": self.address,
            "connector_id": self.connector_id,
            "detail": dict(self.detail),
        }


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        if any(mark in value for mark in _SECRET_MARKS):
            return REDACTED
        return _cut(value, MAX_DETAIL_STRING)
    if isinstance(value, Mapping):
        return {str(key): _scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _scrub(str(value))


def audit(
    conn: Any,
    event: str,
    *,
    actor: str | None,
    address: str | None,
    connector_id: str | None,
    detail: Mapping[str, Any] | None,
    now: float,
) -> int:
    """
    Append an entry to the audit log; its row id.

    @param event: one of L{AUDIT_EVENTS}.
    @param detail: a JSON object: why, the group, the serial... (strings
        that look like a token or a key are replaced by L{REDACTED}).
    @raise ValueError: if C{event} is not one of L{AUDIT_EVENTS}.
    """
    if event not in AUDIT_EVENTS:
        raise ValueError(f"{event!r} is not an audit event")
    text = json.dumps(_scrub(dict(detail or {})), sort_keys=True, separators=(",", ":"))
    whole, size = text, MAX_DETAIL
    while len(text) > MAX_DETAIL:  # the JSON cut, kept as a string (escaped: halve until it fits)
        size //= 2
        text = json.dumps({"cut": _cut(whole, size)}, separators=(",", ":"))
    fields = (_cut(actor, MAX_FIELD), _cut(address, MAX_FIELD), _cut(connector_id, MAX_FIELD))
    with transaction(conn, write=True) as cursor:
        cursor.execute(
            "INSERT INTO audit (time, event, actor, address, connector_id, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (now, event, *fields, text),
        )
        return int(cursor.lastrowid)


def _detail(text: str | None) -> Mapping[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"value": value}


def read_audit(conn: Any, *, since: float | None = None, limit: int = 1000) -> list[AuditEvent]:
    """The newest C{limit} entries at or after C{since} (any time if None), oldest first."""
    with transaction(conn, write=False) as cursor:
        cursor.execute(
            "SELECT id, time, event, actor, address, connector_id, detail FROM audit"
            " WHERE ? IS NULL OR time >= ? ORDER BY time DESC, id DESC LIMIT ?",
            (since, since, max(0, limit)),
        )
        rows = cursor.fetchall()
    return [
        AuditEvent(
            id=row[0],
            time=row[1],
            event=row[2],
            actor=row[3],
            address=row[4],
            connector_id=row[5],
            detail=_detail(row[6]),
        )
        for row in reversed(rows)
    ]
