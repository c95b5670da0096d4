"""
Connectors the service trusts, in the state database: their records, their
certificates (current, or retired by a renewal), what the tunnel listener
admits, and, re-exported from L{appproxy.state.audit} and
L{appproxy.state.enrolment_tokens}, the audit log and enrolment tokens.

A connector is C{enabled}, C{disabled} (reversible) or C{revoked} (final;
the record stays for the audit trail); deleting it removes the record and its
certificates, so they become unknown and are refused.  The tunnel listener
admits a certificate only if it is a current certificate of an enabled
connector (L{Admission}).

A renewal does not retire the certificate it was made with at once: if its
answer is lost, the connector still has only that one.  Both stay current
until the new one is first used (L{first_seen}: then the old one retires,
and a later use of it is a copied key?), or the old one expires.  A renewal
made again with the old certificate meanwhile retires the unused new one.

Blocking functions over a C{sqlite3.Connection} (their own transaction) or the
service's adbapi transaction (see L{appproxy.state._transaction}).  Times are
POSIX seconds, passed in.  Pure: C{sqlite3} and C{cryptography} only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs
from cryptography import x509

from appproxy.state._transaction import transaction
from appproxy.state.admission import Admission, read_admission, touch_connectors
from appproxy.state.audit import (
    ENROLMENT_TOKEN_PREFIX,
    MAX_DETAIL,
    MAX_FIELD,
    AuditEvent,
    audit,
    read_audit,
)
from appproxy.state.connector_records import (
    COLUMNS,
    CONNECTOR_STATES,
    ConnectorRecord,
    ConnectorStateError,
    UnknownConnector,
    record_of,
    select_connector,
)
from appproxy.state.enrolment_tokens import (
    TokenRecord,
    TokenRefused,
    UnknownToken,
    consume_token,
    create_token,
    list_tokens,
    revoke_token,
    token_id,
)
from appproxy.state.signins import format_time

__all__ = [
    "CONNECTOR_STATES",
    "ENROLMENT_TOKEN_PREFIX",
    "MAX_DETAIL",
    "MAX_FIELD",
    "Admission",
    "AuditEvent",
    "ConnectorRecord",
    "ConnectorStateError",
    "TokenRecord",
    "TokenRefused",
    "UnknownConnector",
    "UnknownToken",
    "audit",
    "consume_token",
    "create_token",
    "delete_connector",
    "first_seen",
    "get_connector",
    "list_connectors",
    "list_tokens",
    "read_admission",
    "read_audit",
    "record_connector",
    "renew_connector",
    "revoke_token",
    "set_connector_state",
    "token_id",
    "touch_connectors",
]

_STATE_EVENTS: Final = {"enabled": "enable", "disabled": "disable", "revoked": "revoke"}


def _certificate_facts(cert_pem: bytes) -> tuple[str, float, float]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return (
        format(cert.serial_number, "x"),
        cert.not_valid_before_utc.timestamp(),
        cert.not_valid_after_utc.timestamp(),
    )


def _retire_others(cursor: Any, connector_id: str, serial: str, keep: str | None = None) -> int:
    """Retire the connector's current certificates but C{serial} (and C{keep}); how many."""
    cursor.execute(
        "UPDATE connector_certificates SET status = 'retired'"
        " WHERE connector_id = ? AND status = 'current' AND serial != ? AND serial != ?",
        (connector_id, serial, keep if keep is not None else serial),
    )
    return int(cursor.rowcount)


def _add_certificate(
    cursor: Any,
    connector_id: str,
    serial: str,
    now: float,
    not_after: float,
    keep: str | None = None,
) -> None:
    """
    C{serial} becomes the connector's current certificate; the others retire
    (but C{keep}, which stays current too).
    """
    cursor.execute("SELECT connector_id FROM connector_certificates WHERE serial = ?", (serial,))
    row = cursor.fetchone()
    if row is not None and row[0] != connector_id:
        raise ConnectorStateError(f"certificate {serial} is another connector's ({row[0]})")
    _retire_others(cursor, connector_id, serial, keep)
    # The same certificate recorded again (a harness recording twice) stays current.
    cursor.execute(
        "INSERT INTO connector_certificates (serial, connector_id, issued, not_after, status)"
        " VALUES (?, ?, ?, ?, 'current')"
        " ON CONFLICT (serial) DO UPDATE SET status = 'current'",
        (serial, connector_id, now, not_after),
    )


def record_connector(
    conn: Any,
    *,
    connector_id: str,
    group: str,
    host_name: str,
    version: str,
    cert_pem: bytes,
    actor: str | None,
    address: str | None,
    now: float,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """
    Record a registered connector (enabled) and its certificate, the
    current one; audited C{register}.  One transaction.

    Recording an id already recorded gives it C{cert_pem} as its current
    certificate (the previous ones are retired) and the new host name and
    version; its state does not change.

    @raise ConnectorStateError: if the id is that of a revoked connector.
    """
    serial, not_before, not_after = _certificate_facts(cert_pem)
    with transaction(conn, write=True) as cursor:
        existing = select_connector(cursor, connector_id)
        if existing is not None and existing.state == "revoked":
            raise ConnectorStateError(f"connector {connector_id!r} is revoked")
        _add_certificate(cursor, connector_id, serial, now, not_after)
        cursor.execute(
            "INSERT INTO connectors (id, grp, host_name, version, state, registered,"
            " registered_by, serial, not_before, not_after, changed)"
            " VALUES (?, ?, ?, ?, 'enabled', ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET grp = excluded.grp, host_name = excluded.host_name,"
            " version = excluded.version, registered = excluded.registered,"
            " registered_by = excluded.registered_by, serial = excluded.serial,"
            " not_before = excluded.not_before, not_after = excluded.not_after,"
            " changed = excluded.changed",
            (
                connector_id,
                group,
                host_name,
                version,
                now,
                actor,
                serial,
                not_before,
                not_after,
                now,
            ),
        )
        audit(
            cursor,
            "register",
            actor=actor,
            address=address,
            connector_id=connector_id,
            detail={
                **(detail or {}),
                "group": group,
                "host_name": host_name,
                "version": version,
                "serial": serial,
                "not_after": format_time(not_after),
            },
            now=now,
        )


def renew_connector(
    conn: Any,
    *,
    connector_id: str,
    old_serial: str,
    cert_pem: bytes,
    address: str | None,
    now: float,
) -> None:
    """
    Record C{cert_pem} as the connector's newest certificate; audited
    C{renew}.  C{old_serial}, the certificate the renewal was made with,
    must be a current one: it stays current until the new one is first used
    (L{first_seen}); any other current one (a renewal's answer lost, never
    used) retires now.

    @raise UnknownConnector: if there is no such connector.
    @raise ConnectorStateError: if it is not enabled, or C{old_serial} is not
        a current certificate of it (retired: a copied key, or a race).
    """
    serial, not_before, not_after = _certificate_facts(cert_pem)
    with transaction(conn, write=True) as cursor:
        record = select_connector(cursor, connector_id)
        if record is None:
            raise UnknownConnector(connector_id)
        if record.state != "enabled":
            raise ConnectorStateError(f"connector {connector_id!r} is {record.state}")
        cursor.execute(
            "SELECT 1 FROM connector_certificates"
            " WHERE serial = ? AND connector_id = ? AND status = 'current'",
            (old_serial, connector_id),
        )
        if cursor.fetchone() is None:
            raise ConnectorStateError(
                f"certificate {old_serial} is not a current certificate of connector "
                f"{connector_id!r}"
            )
        _add_certificate(cursor, connector_id, serial, now, not_after, keep=old_serial)
        cursor.execute(
            "UPDATE connectors SET serial = ?, not_before = ?, not_after = ?, changed = ?"
            " WHERE id = ?",
            (serial, not_before, not_after, now, connector_id),
        )
        audit(
            cursor,
            "renew",
            actor=f"connector:{connector_id}",
            address=address,
            connector_id=connector_id,
            detail={
                "old_serial": old_serial,
                "serial": serial,
                "not_after": format_time(not_after),
            },
            now=now,
        )


def first_seen(conn: Any, connector_id: str, serial: str, now: float) -> bool:
    """
    The certificate C{serial} of the connector was used (at the tunnel or the
    API): if it is its newest, the ones before it retire now (a renewal's
    old certificate: a later use of it is refused as a copy).

    @return: whether any certificate retired.
    """
    with transaction(conn, write=True) as cursor:
        cursor.execute(
            "SELECT 1 FROM connectors WHERE id = ? AND serial = ?", (connector_id, serial)
        )
        if cursor.fetchone() is None:
            return False
        retired = _retire_others(cursor, connector_id, serial)
        if retired:
            cursor.execute("UPDATE connectors SET changed = ? WHERE id = ?", (now, connector_id))
        return retired > 0


def set_connector_state(
    conn: Any, connector_id: str, state: str, *, actor: str, reason: str | None, now: float
) -> ConnectorRecord:
    """
    Disable, enable or revoke a connector; audited C{disable}, C{enable} or
    C{revoke} (nothing changes, nor is audited, if it is in C{state} already).

    @return: the record as changed.
    @raise UnknownConnector: if there is no such connector.
    @raise ConnectorStateError: if it is revoked (that is final) or
        C{state} is not one of L{CONNECTOR_STATES}.
    """
    if state not in _STATE_EVENTS:
        raise ConnectorStateError(f"{state!r} is not a connector state")
    with transaction(conn, write=True) as cursor:
        record = select_connector(cursor, connector_id)
        if record is None:
            raise UnknownConnector(connector_id)
        if record.state == state:
            return record
        if record.state == "revoked":
            raise ConnectorStateError(
                f"connector {connector_id!r} is revoked: that is final (register it again "
                "to get a new connector)"
            )
        cursor.execute(
            "UPDATE connectors SET state = ?, changed = ? WHERE id = ?", (state, now, connector_id)
        )
        audit(
            cursor,
            _STATE_EVENTS[state],
            actor=actor,
            address=None,
            connector_id=connector_id,
            detail={"reason": reason, "group": record.group, "serial": record.serial},
            now=now,
        )
        return attrs.evolve(record, state=state)


def delete_connector(
    conn: Any, connector_id: str, *, actor: str, reason: str | None, now: float
) -> None:
    """
    Delete a connector's record and its certificates (so they become unknown:
    refused); audited C{delete}.

    @raise UnknownConnector: if there is no such connector.
    """
    with transaction(conn, write=True) as cursor:
        record = select_connector(cursor, connector_id)
        if record is None:
            raise UnknownConnector(connector_id)
        cursor.execute("DELETE FROM connector_certificates WHERE connector_id = ?", (connector_id,))
        cursor.execute("DELETE FROM connectors WHERE id = ?", (connector_id,))
        audit(
            cursor,
            "delete",
            actor=actor,
            address=None,
            connector_id=connector_id,
            detail={
                "reason": reason,
                "group": record.group,
                "state": record.state,
                "serial": record.serial,
            },
            now=now,
        )


def get_connector(conn: Any, connector_id: str) -> ConnectorRecord | None:
    """The connector C{connector_id}'s record, if there is one."""
    with transaction(conn, write=False) as cursor:
        return select_connector(cursor, connector_id)


def list_connectors(conn: Any) -> list[ConnectorRecord]:
    """Every connector's record, by group then id."""
    with transaction(conn, write=False) as cursor:
        cursor.execute(f"SELECT {COLUMNS} FROM connectors ORDER BY grp, id")  # noqa: S608
        return [record_of(row) for row in cursor.fetchall()]
