"""
The first use of a renewed connector certificate (L{first_sight}).

A renewal keeps the certificate it was made with current: if its answer is
lost, the connector has only that one.  When the service first sees the new
certificate (a tunnel connection, C{/v1/config} or C{/v1/renew}), the old
one retires (L{appproxy.state.connectors.first_seen}): presented again, it
is refused as a copy (C{clone-suspected}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from appproxy.state import connectors
from appproxy.state.database import StateDatabaseClosed

if TYPE_CHECKING:
    from appproxy.trust.admission import AdmissionGate, Checked

__all__ = ["first_sight", "record_renewal"]

log = Logger(namespace="appproxy.trust.admission")


def first_sight(gate: AdmissionGate, checked: Checked) -> defer.Deferred[None]:
    """
    An admitted certificate was used: if it is a renewed one not seen
    before, the certificate it was renewed with retires now.  Fires once the
    registry read again knows it; never fails.
    """
    admission = gate.admission
    if checked.refusal is not None or admission is None:
        return defer.succeed(None)
    if checked.serial not in admission.pending:
        return defer.succeed(None)
    connector_id, serial = checked.identity.connector_id, checked.serial

    def written(retired: bool) -> defer.Deferred[None]:
        if retired:
            log.info(
                "Connector {connector} uses its renewed certificate (serial {serial}):"
                " the one it was renewed with is retired",
                connector=connector_id,
                serial=serial,
            )
        return gate.poll()

    def failed(failure: Any) -> None:
        if not failure.check(StateDatabaseClosed):
            log.warn(
                "Cannot record the first use of the renewed certificate {serial} of"
                " connector {connector}: {problem}",
                serial=serial,
                connector=connector_id,
                problem=str(failure.value),
            )

    writing = gate.database.run_interaction(
        connectors.first_seen, connector_id, serial, gate.clock.seconds()
    )
    return writing.addCallback(written).addErrback(failed)


def record_renewal(
    txn: Any, connector_id: str, old_serial: str, cert_pem: bytes, address: str, now: float
) -> None:
    """L{connectors.renew_connector} in the service's pool (C{runInteraction})."""
    connectors.renew_connector(
        txn,
        connector_id=connector_id,
        old_serial=old_serial,
        cert_pem=cert_pem,
        address=address,
        now=now,
    )
