"""
The state database C{appproxy init} starts: created (mode 0600) and migrated
in the service's state directory, with the connector init issued recorded in
it (actor C{appproxy init}), since the service admits on its tunnel listener
only the connector certificates its state database knows.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

from appproxy import __version__
from appproxy.cli.arguments import hand_over
from appproxy.state.connectors import get_connector, record_connector
from appproxy.state.schema import (
    BUSY_TIMEOUT_MS,
    configure_connection,
    migrate_now,
    unusable,
)

__all__ = ["ACTOR", "record_init_connector"]

#: Who registered the connector, in the audit log.
ACTOR = "appproxy init"


def record_init_connector(
    database: Path, *, connector_id: str, group: str, cert_pem: bytes
) -> None:
    """
    Create and migrate C{database} if needed and record the connector
    C{cert_pem} (issued to C{connector_id} of C{group}) in it.

    @raise ValueError: (one line) if the database is not usable, or already
        records a connector C{connector_id} (a state directory kept from an
        earlier service).
    @raise OSError: if the database cannot be created.
    """
    migrate_now(database)
    try:
        connection = sqlite3.connect(str(database), timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as e:
        raise unusable(database, e) from None
    try:
        configure_connection(connection)
        if get_connector(connection, connector_id) is not None:
            raise ValueError(
                f"{database} already records a connector {connector_id!r} (a state directory"
                " kept from another service?): choose another --connector-id, or another"
                " --data-dir"
            )
        record_connector(
            connection,
            connector_id=connector_id,
            group=group,
            host_name=socket.gethostname(),
            version=__version__,
            cert_pem=cert_pem,
            actor=ACTOR,
            address=None,
            now=time.time(),
        )
    except sqlite3.Error as e:
        raise unusable(database, e) from None
    finally:
        connection.close()
    # Made by root in a directory of the service's user: the user's.
    hand_over(database)
