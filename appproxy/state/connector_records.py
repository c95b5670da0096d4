"""
A connector's record as the state database keeps it (L{ConnectorRecord}),
how it is read, and the errors of changing one.  Re-exported by
L{appproxy.state.connectors}.

Pure: C{sqlite3} only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs

__all__ = [
    "COLUMNS",
    "CONNECTOR_STATES",
    "ConnectorRecord",
    "ConnectorStateError",
    "UnknownConnector",
    "record_of",
    "select_connector",
]

#: A connector's stored states.
CONNECTOR_STATES: Final = ("enabled", "disabled", "revoked")


class UnknownConnector(KeyError):
    """No connector has that id."""

    def __str__(self) -> str:
        return f"no connector {self.args[0]!r}"


class ConnectorStateError(ValueError):
    """A change a connector's state does not allow (enabling a revoked one...)."""


@attrs.frozen(kw_only=True)
class ConnectorRecord:
    """A connector as recorded."""

    id: str
    group: str
    host_name: str
    version: str
    state: str
    """The stored state: C{enabled}, C{disabled} or C{revoked}."""
    registered: float | None
    registered_by: str | None
    serial: str
    """Its current certificate's serial (lowercase hex)."""
    not_before: float | None
    not_after: float
    last_seen: float | None
    last_address: str | None
    connections: int
    """Tunnel connections open when last seen."""
    streams: int
    """Streams in flight when last seen."""

    def status(self, now: float, inactive_after: float) -> str:
        """
        C{active}, C{inactive} (enabled, but not seen, or registered if never
        seen, for more than C{inactive_after} seconds), C{disabled} or
        C{revoked}.
        """
        if self.state != "enabled":
            return self.state
        seen = self.last_seen if self.last_seen is not None else self.registered
        if seen is None or now - seen > inactive_after:
            return "inactive"
        return "active"


COLUMNS: Final = (
    "id, grp, host_name, version, state, registered, registered_by, serial, not_before,"
    " not_after, last_seen, last_address, connections, streams"
)


def record_of(row: Sequence[Any]) -> ConnectorRecord:
    return ConnectorRecord(
        id=row[0],
        group=row[1],
        host_name=row[2],
        version=row[3],
        state=row[4],
        registered=row[5],
        registered_by=row[6],
        serial=row[7],
        not_before=row[8],
        not_after=row[9],
        last_seen=row[10],
        last_address=row[11],
        connections=row[12],
        streams=row[13],
    )


def select_connector(cursor: Any, connector_id: str) -> ConnectorRecord | None:
    cursor.execute(f"SELECT {COLUMNS} FROM connectors WHERE id = ?", (connector_id,))  # noqa: S608
    row = cursor.fetchone()
    return None if row is None else record_of(row)
