"""
The tunnel listener of the real service (in process, real TLS on loopback,
real connectors, a real SQLite state database): connections dispatched by
ALPN, tunnel connections admitted by the connector registry, the tunnels of
a revoked connector closed within a second, retired and expired
certificates refused and audited, and no TLS session resumption.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Generator
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from OpenSSL._util import lib
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from appproxy.daemon import pki, tls
from appproxy.state import connectors
from tests import connectors_db
from tests.test_trust_api import wait_for_events
from tests.trust_harness import TUNNEL_HOST, TrustDeployment, start


@implementer(IHandshakeListener)
class _Dialler(Protocol):
    def __init__(self) -> None:
        self.handshook = False
        self.data = b""
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshook = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.reason = reason
        self.lost.callback(None)


class _Base(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.d: TrustDeployment = start(self)
        self.log: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.log.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    @inlineCallbacks
    def dial(self, pair: pki.KeyPair | None) -> Generator[Deferred[Any], Any, _Dialler]:
        """A TLS connection to the tunnel listener offering h2, with C{pair}'s certificate."""
        options = optionsForClientTLS(
            TUNNEL_HOST,
            trustRoot=Certificate.loadPEM(self.d.ca.cert_pem),
            clientCertificate=(
                PrivateCertificate.loadPEM(pair.cert_pem + pair.key_pem) if pair else None
            ),
            acceptableProtocols=[b"h2"],
        )
        endpoint = wrapClientTLS(
            options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.d.tunnel_port)
        )
        dialler = _Dialler()
        yield connectProtocol(endpoint, dialler)
        self.addCleanup(self.hang_up, dialler)
        return dialler

    def hang_up(self, dialler: _Dialler) -> Deferred[None]:
        if not dialler.lost.called and dialler.transport is not None:
            dialler.transport.abortConnection()  # type: ignore[attr-defined]
        return dialler.lost

    def ready(self, connector_id: str) -> int:
        assert self.d.service is not None
        group = self.d.service.groups["default"]
        connections: dict[Any, str | None] = group.connections
        return sum(1 for c, who in connections.items() if who == connector_id and c.ready)

    def connections(self, connector_id: str) -> set[Any]:
        """The tunnel connections of C{connector_id} ready now."""
        assert self.d.service is not None
        group = self.d.service.groups["default"]
        connections: dict[Any, str | None] = group.connections
        return {c for c, who in connections.items() if who == connector_id and c.ready}

    def admitted(self, connector_id: str) -> int:
        """Tunnel connections of C{connector_id} admitted (ready or not)."""
        assert self.d.service is not None
        protocols = self.d.service.tunnel_factory.protocols
        return sum(1 for p in protocols if p.group is not None and p.connector_id == connector_id)

    @inlineCallbacks
    def wait(self, condition: Any, what: str, seconds: float = 10.0) -> Generator[Any, Any, float]:
        """Seconds until C{condition()} held (checked every 10 ms)."""
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > seconds:
                raise AssertionError(f"{what}: not within {seconds} s")
            yield deferLater(reactor, 0.01, lambda: None)
        return time.monotonic() - started


class AdmissionTests(_Base):
    @inlineCallbacks
    def test_h2_without_certificate_closed(self) -> Generator[Deferred[Any], Any, None]:
        """Closed before any HTTP/2 byte is sent; audited once per address and minute."""
        dialler = yield self.dial(None)
        yield dialler.lost
        self.assertTrue(dialler.handshook)
        self.assertEqual(dialler.data, b"")
        dialler = yield self.dial(None)
        yield dialler.lost
        [refused] = yield wait_for_events(self.d, "refused")
        self.assertEqual(refused.detail["reason"], "presented no client certificate")
        assert self.d.service is not None
        self.assertEqual(
            [p for p in self.d.service.tunnel_factory.protocols if p.group is not None], []
        )

    @inlineCallbacks
    def test_revocation_closes_live_tunnels(self) -> Generator[Deferred[Any], Any, None]:
        """
        A revoked connector's tunnels close within a second of the change in
        the database, and it is refused from then on; another keeps serving.
        """
        self.d.start_connector(name="doomed", connections=2)
        self.d.start_connector(name="other", connections=2)
        yield self.d.wait_for_connections(4)
        other = self.connections("other")
        self.assertTrue(other)
        with self.d.database() as db:
            connectors.set_connector_state(
                db, "doomed", "revoked", actor="tests", reason="stolen", now=time.time()
            )
        elapsed = yield self.wait(lambda: self.ready("doomed") == 0, "revoked tunnels closed")
        self.assertLess(elapsed, 1.5)
        self.assertLessEqual(other, self.connections("other"))
        refused = (yield wait_for_events(self.d, "refused"))[0]
        self.assertEqual((refused.connector_id, refused.detail["reason"]), ("doomed", "revoked"))
        self.assertEqual(self.ready("doomed"), 0)
        response = yield self.d.client().get(self.d.url("web"))
        self.assertEqual(response.code, 200)
        yield response.content()

    @inlineCallbacks
    def test_retired_certificate(self) -> Generator[Deferred[Any], Any, None]:
        """
        A renewal keeps the old certificate admitted until the new one is
        first used (here at the tunnel); then the old one retires: live
        tunnels with it carry on, a new connection with it is refused and
        audited clone-suspected.
        """
        self.d.start_connector(name="renewed", connections=1)
        yield self.d.wait_for_connections(1)
        live = self.connections("renewed")
        old = pki.KeyPair(
            cert_pem=(self.d.root / "renewed" / "connector.pem").read_bytes(),
            key_pem=(self.d.root / "renewed" / "connector.key").read_bytes(),
        )
        new = pki.issue_connector_certificate(self.d.ca, "renewed", "default")
        connectors_db.renew(self.d.state_dir, old.cert_pem, new.cert_pem)
        assert self.d.service is not None
        yield self.d.service.refresh_admission()
        yield self.d.service.refresh_admission()
        self.assertLessEqual(live, self.connections("renewed"))
        # The new certificate is not used yet (its answer may be lost): the old one works.
        admitted = self.admitted("renewed")
        yield self.dial(old)
        yield self.wait(lambda: self.admitted("renewed") > admitted, "the old one still admitted")
        # The new one's first use retires the old one.
        admitted = self.admitted("renewed")
        yield self.dial(new)
        yield self.wait(lambda: self.admitted("renewed") > admitted, "the new one admitted")
        gate = self.d.service.trust.gate
        old_serial = pki.certificate_serial(old.cert_pem)
        yield self.wait(
            lambda: gate.admission is not None and old_serial in gate.admission.retired,
            "the old certificate retired",
        )

        dialler = yield self.dial(old)
        yield dialler.lost
        suspected = (yield wait_for_events(self.d, "clone-suspected"))[0]
        self.assertEqual(suspected.connector_id, "renewed")
        self.assertEqual(suspected.detail["serial"], pki.certificate_serial(old.cert_pem))
        lines = [
            formatEvent(e)
            for e in self.log
            if e.get("log_level") == LogLevel.error and "the certificate (serial" in formatEvent(e)
        ]
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r"^Refused a (tunnel connection|call to the configuration) from")
        self.assertIn("a copy of the connector's key in use elsewhere?", lines[0])
        self.assertLessEqual(live, self.connections("renewed"))

    @inlineCallbacks
    def test_inventory_figures(self) -> Generator[Deferred[Any], Any, None]:
        """What the 10 s touch writes: tunnel connections, streams, address, last seen."""
        self.d.start_connector(name="counted", connections=2)
        yield self.d.wait_for_connections(2)
        assert self.d.service is not None
        before = time.time()
        live = self.admitted("counted")
        yield self.d.service.trust.gate.touch()
        with self.d.database() as db:
            record = connectors.get_connector(db, "counted")
        assert record is not None and record.last_seen is not None
        self.assertEqual((record.connections, record.streams), (live, 0))
        self.assertEqual(record.last_address, "127.0.0.1")
        self.assertGreaterEqual(record.last_seen, before - 1)

    @inlineCallbacks
    def test_expired_certificate_audited(self) -> Generator[Deferred[Any], Any, None]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
        cert_pem = pki.connector_certificate(
            self.d.ca, key.public_key(), "old", "default", datetime.timedelta(days=1), now
        )
        from cryptography.hazmat.primitives import serialization

        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        dialler = yield self.dial(pki.KeyPair(cert_pem=cert_pem, key_pem=key_pem))
        yield dialler.lost
        [expired] = yield wait_for_events(self.d, "expired")
        self.assertEqual(expired.connector_id, "old")
        self.assertEqual(expired.detail["serial"], pki.certificate_serial(cert_pem))


def _pump(client: SSL.Connection, server: SSL.Connection) -> None:
    """Move bytes both ways until neither side has any to send (bounded)."""
    for _ in range(50):
        moved = False
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except (SSL.WantReadError, SSL.Error):
                pass
            try:
                data = a.bio_read(65536)
            except SSL.WantReadError:
                continue
            if data:
                b.bio_write(data)
                moved = True
        if not moved:
            return


class SessionTests(SynchronousTestCase):
    """The tunnel listener resumes no TLS session: no tickets, no session cache."""

    def setUp(self) -> None:
        self.ca = pki.generate_ca("session test CA")
        self.server = pki.issue_server_certificate(self.ca, [TUNNEL_HOST])

    def handshake(
        self, server_context: Any, client_context: Any, session: SSL.Session | None
    ) -> SSL.Connection:
        client = SSL.Connection(client_context)
        client.set_connect_state()
        if session is not None:
            client.set_session(session)
        server = SSL.Connection(server_context)
        server.set_accept_state()
        _pump(client, server)
        # TLS 1.3 tickets come after the handshake, with the first data.
        server.send(b"hello")
        _pump(client, server)
        self.assertEqual(client.recv(5), b"hello")
        return client

    def resumed(self, server_context: Any, version: int) -> bool:
        client_context = SSL.Context(SSL.TLS_METHOD)
        client_context.set_min_proto_version(version)
        client_context.set_max_proto_version(version)
        first = self.handshake(server_context, client_context, None)
        again = self.handshake(server_context, client_context, first.get_session())
        # pyOpenSSL has no public call for it.
        return bool(lib.SSL_session_reused(again._ssl))

    def test_no_resumption(self) -> None:
        creator = tls.tunnel_server_context(
            self.server.cert_pem, self.server.key_pem, self.ca.cert_pem
        )
        context = creator.getContext()  # type: ignore[attr-defined]
        for version in (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION):
            self.assertFalse(self.resumed(context, version), version)

    def test_the_check_sees_resumption(self) -> None:
        """The same check against a server that issues tickets sees resumptions: it can fail."""
        options = PrivateCertificate.loadPEM(self.server.cert_pem + self.server.key_pem).options()
        options.enableSessionTickets = True
        options._options &= ~SSL.OP_NO_TICKET
        context = options.getContext()
        for version in (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION):
            self.assertTrue(self.resumed(context, version), version)
