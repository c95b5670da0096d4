"""
L{AdmissionGate}: which connector certificates the tunnel listener admits,
kept current from the state database, and what happens to those it no longer
admits.

The registry (L{appproxy.state.connectors.Admission}) is read at start-up,
blocking, before the listener opens; then every L{POLL_INTERVAL} seconds off
the reactor thread.  Deny by default: until it has been read, or once it
has not been read for L{MAX_STALENESS} seconds, no tunnel connection and no
mutual-TLS call of the enrolment API is admitted.

A tunnel connection is checked once, after its handshake (the listener
issues no session tickets and keeps no session cache, so every connection
makes a full handshake).  After each read, the open tunnel connections of
connectors disabled, revoked or deleted since are aborted; those whose
certificate was merely retired by a renewal carry on (renewal must not drop
requests; a retired certificate is refused only on a new connection, and
audited as C{clone-suspected}).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from OpenSSL.SSL import X509VerificationCodes
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from appproxy.daemon import pki
from appproxy.daemon.tls import peer_certificate
from appproxy.state import connectors
from appproxy.state.database import StateDatabase, StateDatabaseClosed
from appproxy.state.schema import configure_connection
from appproxy.trust.audit import AuditTrail
from appproxy.trust.renewal import first_sight

if TYPE_CHECKING:
    from appproxy.tunnel.service import ServiceTunnelFactory, ServiceTunnelProtocol

__all__ = ["MAX_STALENESS", "POLL_INTERVAL", "TOUCH_INTERVAL", "AdmissionGate", "Checked"]

log = Logger()

#: How often (seconds) the registry is read again.
POLL_INTERVAL = 1.0
#: After how long (seconds) without a successful read nothing is admitted.
MAX_STALENESS = 60.0
#: How often (seconds) the inventory figures are written.
TOUCH_INTERVAL = 10.0

#: Why a certificate is refused, for the log.
_REASONS = {
    "retired": "was retired by a renewal: a copy of the connector's key in use elsewhere?",
    "disabled": "belongs to a disabled connector",
    "revoked": "belongs to a revoked connector",
    "unknown": "belongs to no registered connector (deleted, or never registered)",
    "stale": "cannot be checked: the connector registry has not been read (refused until it is)",
}


class Checked:
    """A client certificate checked against the registry."""

    def __init__(self, identity: pki.ConnectorIdentity, serial: str, refusal: str | None) -> None:
        self.identity = identity
        self.serial = serial
        #: L{None}: admitted; else C{retired}, C{disabled}, C{revoked}, C{unknown}, C{stale}.
        self.refusal = refusal

    @property
    def reason(self) -> str:
        return _REASONS.get(self.refusal or "", "")


class AdmissionGate:
    """
    The registry of connectors as one service process knows it, the hook of
    its tunnel factory (L{admit}) and of its tunnel listener's TLS
    (L{certificate_refused}), and the inventory figures it writes.
    """

    def __init__(
        self,
        database: StateDatabase,
        clock: IReactorTime,
        factory: ServiceTunnelFactory,
        *,
        interval: float = POLL_INTERVAL,
        touch_interval: float = TOUCH_INTERVAL,
        max_staleness: float = MAX_STALENESS,
    ) -> None:
        self.database = database
        self.clock = clock
        self.factory = factory
        self.interval = interval
        self.touch_interval = touch_interval
        self.max_staleness = max_staleness
        self.audit = AuditTrail(database, clock)
        self.admission: connectors.Admission | None = None
        self._read_at: float | None = None
        self._failing = False
        self._polling = False
        self._again = False
        self._waiters: list[defer.Deferred[None]] = []
        self._loops: list[LoopingCall] = []
        factory.admit = self.admit

    # -- start and stop

    def load_at_startup(self, path: Path) -> None:
        """
        Read the registry now, blocking (before the listener opens).  If it
        cannot be read, say so: nothing is admitted until a read succeeds.
        """
        try:
            connection = sqlite3.connect(str(path), timeout=5.0)
            try:
                configure_connection(connection)
                admission = connectors.read_admission(connection)
            finally:
                connection.close()
        except (sqlite3.Error, OSError, ValueError) as e:
            log.critical(
                "Cannot read the connector registry ({problem}): no connector is admitted until"
                " it can be read",
                problem=str(e),
            )
            self._failing = True
            return
        self._set(admission)
        log.info(
            "Connector registry loaded: {count} connectors admitted",
            count=len({c for c, _ in admission.current.values()}),
        )

    def start(self) -> None:
        """Read the registry every L{interval} s, write the inventory every L{touch_interval} s."""
        for call, every in ((self.poll, self.interval), (self.touch, self.touch_interval)):
            loop = LoopingCall(call)
            loop.clock = self.clock
            loop.start(every, now=False)
            self._loops.append(loop)

    def stop(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []

    # -- keeping current

    def poll(self) -> defer.Deferred[None]:
        """
        Read the registry and close the tunnels it no longer admits; never
        fails.  One read at a time: a call during a read gets a L{Deferred}
        that fires after the next one, so what it waits for was read after
        the call.
        """
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(waiter)
        if self._polling:
            self._again = True
        else:
            self._read()
        return waiter

    def _read(self) -> None:
        self._polling, self._again = True, False
        waiters, self._waiters = self._waiters, []
        now = self.clock.seconds()

        def read(admission: connectors.Admission) -> None:
            self._set(admission, now)
            if self._failing:
                self._failing = False
                log.info("The connector registry is read again")
            self.enforce()

        def failed(failure: Any) -> None:
            if failure.check(StateDatabaseClosed) or self._failing:
                return
            self._failing = True
            log.error(
                "Cannot read the connector registry: {problem}; new tunnel connections are"
                " refused if this lasts {seconds:.0f} s",
                problem=str(failure.value),
                seconds=self.max_staleness,
            )

        def done(_: object) -> None:
            self._polling = False
            # The next read (for those who asked during this one) starts
            # first: a waiter that polls again from its callback then waits
            # for a read after it, and no two reads run at once.
            if self._again:
                self._read()
            for waiter in waiters:
                waiter.callback(None)

        reading = self.database.run_interaction(connectors.read_admission)
        reading.addCallbacks(read, failed).addBoth(done)

    refresh = poll

    def _set(self, admission: connectors.Admission, now: float | None = None) -> None:
        self.admission = admission
        self._read_at = self.clock.seconds() if now is None else now

    def enforce(self) -> None:
        """Abort the tunnel connections of connectors no longer enabled (or gone)."""
        admission = self.admission
        if admission is None:
            return
        for protocol in list(self.factory.protocols):
            if protocol.group is None:
                continue  # not admitted (yet): closed by its handshake's check
            connector_id = protocol.connector_id
            if connector_id in admission.known and connector_id not in admission.stopped:
                continue
            state = "deleted" if connector_id not in admission.known else "disabled or revoked"
            log.info(
                "Closing a tunnel connection of connector {connector}: it was {state}",
                connector=connector_id,
                state=state,
            )
            protocol.abort()

    # -- checking certificates

    def check(self, certificate: x509.Certificate) -> Checked | None:
        """
        A (verified) client certificate against the registry; L{None} if it
        names no connector.
        """
        try:
            identity = pki.connector_identity(certificate)
        except ValueError:
            return None
        serial = pki.certificate_serial(certificate)
        admission = self.admission
        read_at = self._read_at
        if (
            admission is None
            or read_at is None
            or (self.clock.seconds() - read_at > self.max_staleness)
        ):
            return Checked(identity, serial, "stale")
        return Checked(identity, serial, admission.decide(serial, identity.connector_id))

    def refuse(self, checked: Checked, address: str, where: str) -> None:
        """
        Log and audit a certificate L{check} refused: rate limited per serial
        and reason (a connector disabled, then deleted, is told both times).
        """
        if checked.refusal == "stale":
            self.audit.log_limited(
                ("stale", address),
                "Refused {where} from {address}: the connector registry has not been read",
                where=where,
                address=address,
            )
            return
        event = "clone-suspected" if checked.refusal == "retired" else "refused"
        self.audit.record_limited(
            event,
            key=(checked.serial, checked.refusal),
            address=address,
            connector_id=checked.identity.connector_id,
            detail={
                "reason": checked.refusal,
                "serial": checked.serial,
                "group": checked.identity.group,
                "where": where,
            },
            message=(
                "Refused {where} from {peer}: the certificate (serial {serial}) of connector"
                " {connector} {reason}"
            ),
            error=event == "clone-suspected",
            where=where,
            peer=address,
            serial=checked.serial,
            connector=checked.identity.connector_id,
            reason=checked.reason,
        )

    def has_certificate(self, transport: Any) -> bool:
        """
        The listener's check of a tunnel (C{h2}) connection before the tunnel
        gets it: a client certificate naming a connector; else it is logged
        and audited C{refused} (rate limited per address).
        """
        certificate = peer_certificate(transport)
        try:
            if certificate is not None:
                pki.connector_identity(certificate)
                return True
            why = "presented no client certificate"
        except ValueError as e:
            why = f"presented a certificate that names no connector ({e})"
        address = _peer_host(transport)
        self.audit.record_limited(
            "refused",
            key=f"address:{address}",
            address=address,
            connector_id=None,
            detail={"reason": why},
            message="Refused a tunnel connection from {peer}: it {why}",
            peer=address,
            why=why,
        )
        return False

    def admit(self, protocol: ServiceTunnelProtocol, identity: pki.ConnectorIdentity) -> bool:
        """The tunnel factory's hook, after a connection's handshake."""
        transport = protocol.transport
        certificate = peer_certificate(transport)
        checked = self.check(certificate) if certificate is not None else None
        if checked is None:
            return False
        if checked.refusal is None:
            first_sight(self, checked)
            return True
        self.refuse(checked, _peer_host(transport), "a tunnel connection")
        return False

    def certificate_refused(
        self, address: str, certificate: x509.Certificate, code: int, depth: int
    ) -> None:
        """The tunnel listener's TLS hook: an expired connector certificate is audited."""
        if depth != 0 or code != X509VerificationCodes.ERR_CERT_HAS_EXPIRED:
            return
        try:
            identity: pki.ConnectorIdentity | None = pki.connector_identity(certificate)
        except ValueError:
            identity = None
        serial = pki.certificate_serial(certificate)
        self.audit.record_limited(
            "expired",
            key=serial,
            address=address,
            connector_id=identity.connector_id if identity is not None else None,
            detail={
                "serial": serial,
                "not_after": certificate.not_valid_after_utc.timestamp(),
            },
        )

    # -- the inventory

    def touch(self) -> defer.Deferred[None]:
        """
        Write each connected connector's figures: last seen, address, tunnel
        connections and streams in flight; a connector gone since the last
        touch gets 0 connections and 0 streams.
        """
        now = self.clock.seconds()
        figures: dict[str, tuple[str, float, str, int, int]] = {}
        for protocol in self.factory.protocols:
            if protocol.group is None:
                continue
            connector_id = protocol.connector_id
            _, _, address, connections, streams = figures.get(
                connector_id, (connector_id, now, _peer_host(protocol.transport), 0, 0)
            )
            figures[connector_id] = (
                connector_id,
                now,
                address,
                connections + 1,
                streams + len(protocol.active) + len(protocol.upgrades),
            )

        def failed(failure: Any) -> None:
            if not failure.check(StateDatabaseClosed):
                log.warn(
                    "Cannot write the connectors' inventory figures: {problem}",
                    problem=str(failure.value),
                )

        touching = self.database.run_interaction(
            connectors.touch_connectors, list(figures.values())
        )
        return touching.addCallbacks(lambda _: None, failed)


def _peer_host(transport: Any) -> str:
    try:
        peer = transport.getPeer()
    except Exception:
        return "?"
    return str(getattr(peer, "host", peer))
