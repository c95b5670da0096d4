"""
Connector certificates the tests mint themselves, recorded in the state
database of the service that must admit them.

The service admits on its tunnel listener only the certificates its state
database knows (L{appproxy.state.connectors.read_admission}): a harness that
issues a connector certificate with L{pki.issue_connector_certificate} for a
real service records it here first, as C{appproxy init} does for the one it
issues.  Blocking C{sqlite3}, for a test's set-up: each call opens, migrates
if needed and closes the database, so it is safe while the service runs.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509

from appproxy import __version__
from appproxy.daemon import pki
from appproxy.state.connectors import record_connector, renew_connector
from appproxy.state.schema import BUSY_TIMEOUT_MS, DATABASE_NAME, configure_connection, migrate_now

__all__ = ["issue", "record", "renew"]

#: Who recorded the tests' connectors, in the audit log.
ACTOR = "tests"


@contextmanager
def _database(state_dir: Path) -> Iterator[sqlite3.Connection]:
    """The state database in C{state_dir} (made and migrated if missing)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / DATABASE_NAME
    migrate_now(path)
    connection = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        configure_connection(connection)
        yield connection
    finally:
        connection.close()


def record(state_dir: Path, cert_pem: bytes, *, host_name: str = "test-host") -> None:
    """
    Record the connector C{cert_pem} names (its id and group) in the state
    database of the service whose C{service.state_dir} is C{state_dir}.
    """
    identity = pki.connector_identity(x509.load_pem_x509_certificate(cert_pem))
    with _database(state_dir) as connection:
        record_connector(
            connection,
            connector_id=identity.connector_id,
            group=identity.group,
            host_name=host_name,
            version=__version__,
            cert_pem=cert_pem,
            actor=ACTOR,
            address="127.0.0.1",
            now=time.time(),
        )


def renew(state_dir: Path, old_cert_pem: bytes, new_cert_pem: bytes) -> None:
    """
    Record C{new_cert_pem} as the current certificate of the connector
    C{old_cert_pem} names (as a renewal does: the old serial is retired).
    """
    identity = pki.connector_identity(x509.load_pem_x509_certificate(new_cert_pem))
    with _database(state_dir) as connection:
        renew_connector(
            connection,
            connector_id=identity.connector_id,
            old_serial=pki.certificate_serial(old_cert_pem),
            cert_pem=new_cert_pem,
            address="127.0.0.1",
            now=time.time(),
        )


def issue(state_dir: Path, ca: pki.KeyPair, connector_id: str, group: str) -> pki.KeyPair:
    """L{pki.issue_connector_certificate}, recorded with L{record}."""
    pair = pki.issue_connector_certificate(ca, connector_id, group)
    record(state_dir, pair.cert_pem)
    return pair
