"""
What the tunnel listener admits (L{Admission}, read from the state
database by L{read_admission}: the current certificates of enabled
connectors), and what the service records of the connectors it sees
(L{touch_connectors}).  Re-exported by L{appproxy.state.connectors}.

Pure: C{sqlite3} only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from appproxy.state._transaction import transaction

__all__ = ["Admission", "read_admission", "touch_connectors"]


@attrs.frozen
class Admission:
    """
    What the tunnel listener admits, read at once from the database.

    @ivar current: serial -> (connector id, group), for the current
        certificates of enabled connectors.
    @ivar retired: serials retired by a renewal (of any connector).
    @ivar stopped: ids of the connectors disabled or revoked.
    @ivar known: the id of every recorded connector.
    @ivar revoked: ids of the connectors revoked (a subset of C{stopped}).
    @ivar pending: serials of renewed certificates not used yet: the
        certificate they were renewed with is still current (in C{current}
        too) until one is seen (L{appproxy.state.connectors.first_seen}).
    """

    current: Mapping[str, tuple[str, str]]
    retired: frozenset[str]
    stopped: frozenset[str]
    known: frozenset[str]
    revoked: frozenset[str] = frozenset()
    pending: frozenset[str] = frozenset()

    def decide(self, serial: str, connector_id: str) -> str | None:
        """
        None to admit the certificate C{serial} naming C{connector_id}, else
        why not: C{retired} (a renewed connector's old certificate again: a
        copied key?), C{revoked}, C{disabled} or C{unknown}.
        """
        owner = self.current.get(serial)
        if owner is not None and owner[0] == connector_id:
            return None
        if serial in self.retired:
            return "retired"
        if connector_id in self.revoked:
            return "revoked"
        if connector_id in self.stopped:
            return "disabled"
        return "unknown"


def read_admission(conn: Any) -> Admission:
    """
    What the tunnel listener admits now: one statement, so one snapshot of
    the database, whoever holds the connection.
    """
    with transaction(conn, write=False) as cursor:
        cursor.execute(
            "SELECT 'certificate', c.serial, c.connector_id, c.status, n.grp, n.state, n.serial"
            " FROM connector_certificates c LEFT JOIN connectors n ON n.id = c.connector_id"
            " UNION ALL SELECT 'connector', NULL, id, NULL, grp, state, serial FROM connectors"
        )
        rows = cursor.fetchall()
    current: dict[str, tuple[str, str]] = {}
    retired: set[str] = set()
    states: dict[str, str] = {}
    newest: dict[str, str] = {}  # connector id -> its newest serial, if others are current
    currents: dict[str, int] = {}
    for kind, serial, connector_id, status, group, state, newest_serial in rows:
        if kind == "connector":
            states[connector_id] = state
        elif status == "retired":
            retired.add(serial)
        elif status == "current" and state == "enabled":
            current[serial] = (connector_id, group)
            currents[connector_id] = currents.get(connector_id, 0) + 1
            newest[connector_id] = newest_serial
    pending = frozenset(
        serial
        for connector_id, serial in newest.items()
        if currents[connector_id] > 1 and serial in current
    )
    return Admission(
        current=current,
        retired=frozenset(retired),
        stopped=frozenset(id for id, state in states.items() if state != "enabled"),
        known=frozenset(states),
        revoked=frozenset(id for id, state in states.items() if state == "revoked"),
        pending=pending,
    )


def touch_connectors(conn: Any, seen: Sequence[tuple[str, float, str, int, int]]) -> None:
    """
    Record what the service sees of its connected connectors: for each
    (connector id, last seen, address, tunnel connections, streams in
    flight).  Every connector not in C{seen} has no connection now: its
    connections and streams become 0 (its last sighting stays).
    """
    with transaction(conn, write=True) as cursor:
        cursor.execute(
            "UPDATE connectors SET connections = 0, streams = 0"
            " WHERE connections != 0 OR streams != 0"
        )
        cursor.executemany(
            "UPDATE connectors SET last_seen = ?, last_address = ?, connections = ?, streams = ?"
            " WHERE id = ?",
            [
                (last_seen, address, connections, streams, connector_id)
                for connector_id, last_seen, address, connections, streams in seen
            ],
        )
