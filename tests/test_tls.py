"""
Tests for L{appproxy.daemon.tls}: real TLS handshakes over loopback with the real
reactor.
"""

from __future__ import annotations

import warnings
from collections.abc import Generator
from typing import Any, cast

from cryptography import x509
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReactorTCP,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, TLSVersion, optionsForClientTLS
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from appproxy.daemon import pki, tls

# Key generation is the slow part: one set of certificates for the module.
_CA = pki.generate_ca("appproxy test CA")
_OTHER_CA = pki.generate_ca("another CA")
_A = pki.issue_server_certificate(_CA, ["*.a.test"])
_B = pki.issue_server_certificate(_CA, ["b.test"])
_TUNNEL = pki.issue_server_certificate(_CA, ["tunnel.test"])
_WRONG_TUNNEL = pki.issue_server_certificate(_CA, ["other.test"])
_CONNECTOR = pki.issue_connector_certificate(_CA, "connector-1", "finance")
_FOREIGN_CONNECTOR = pki.issue_connector_certificate(_OTHER_CA, "connector-1", "finance")


@implementer(IHandshakeListener)
class _Side(Protocol):
    """One end of a test connection, recording how the handshake went."""

    def __init__(self) -> None:
        # Fires with True when the handshake completes, False if the
        # connection is lost first.
        self.handshake: Deferred[bool] = Deferred()
        self.handshook: bool | None = None
        # Fires (with None) when the connection is lost; the reason is kept.
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshook = True
        self.handshake.callback(True)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if not self.handshake.called:
            self.handshook = False
            self.handshake.callback(False)
        self.reason = reason
        self.lost.callback(None)


class _ServerFactory(Factory):
    def __init__(self) -> None:
        self.built: Deferred[_Side] = Deferred()

    def buildProtocol(self, addr: Any) -> _Side:
        side = _Side()
        side.factory = self
        if not self.built.called:
            self.built.callback(side)
        return side


@implementer(IOpenSSLClientConnectionCreator)
class _TLS11Client:
    """A client that offers TLS 1.1 only (and allows it, at security level 0)."""

    def __init__(self, server_name: bytes) -> None:
        self.server_name = server_name

    def context(self) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_1_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_1_VERSION)
        ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        return ctx

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self.context())
        connection.set_tlsext_host_name(self.server_name)
        return connection


def _tls11_possible() -> bool:
    """
    Can this OpenSSL do a TLS 1.1 handshake at all (against a server that
    allows it)? Done in memory.
    """
    client = _TLS11Client(b"b.test")
    server_ctx = client.context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_ctx.use_certificate(x509.load_pem_x509_certificate(_B.cert_pem))
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        server_ctx.use_privatekey(load_pem_private_key(_B.key_pem, None))  # type: ignore[arg-type]
    server = SSL.Connection(server_ctx)
    server.set_accept_state()
    conn = client.clientConnectionForTLS(None)
    conn.set_connect_state()
    try:
        for _ in range(10):
            for a, b in ((conn, server), (server, conn)):
                try:
                    a.do_handshake()
                except SSL.WantReadError:
                    pass
                try:
                    b.bio_write(a.bio_read(65536))
                except SSL.WantReadError:
                    pass
        return (
            conn.get_protocol_version_name() == "TLSv1.1"
            and server.get_protocol_version_name() == "TLSv1.1"
        )
    except SSL.Error:
        return False


class _LoopbackTestCase(TestCase):
    """Run TLS connections over 127.0.0.1 and clean up after them."""

    timeout = 10

    @inlineCallbacks
    def connect(
        self, server_creator: Any, client_creator: Any
    ) -> Generator[Deferred[Any], Any, tuple[_Side, _Side]]:
        """
        Connect; wait until both handshakes are over (completed or failed).
        Successful connections are closed at cleanup and waited for.
        """
        server_factory = _ServerFactory()
        port = cast(IReactorTCP, reactor).listenTCP(
            0,
            TLSMemoryBIOFactory(server_creator, False, server_factory),  # type: ignore[arg-type]
            interface="127.0.0.1",
        )
        self.addCleanup(port.stopListening)
        port_number = cast(IPv4Address, port.getHost()).port
        endpoint = wrapClientTLS(
            client_creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port_number)
        )
        client = _Side()
        yield connectProtocol(endpoint, client)
        server = yield server_factory.built
        self.addCleanup(self.close, client, server)
        yield client.handshake
        yield server.handshake
        return server, client

    @inlineCallbacks
    def close(self, client: _Side, server: _Side) -> Generator[Deferred[Any], Any, None]:
        if not client.lost.called:
            client.transport.loseConnection()  # type: ignore[union-attr]
        yield client.lost
        if not server.lost.called and server.transport is not None:
            server.transport.loseConnection()
        yield server.lost

    @inlineCallbacks
    def assertFails(
        self, server_creator: Any, client_creator: Any
    ) -> Generator[Deferred[Any], Any, tuple[_Side, _Side]]:
        """
        The server never completes the handshake and both ends are
        disconnected. (With TLS 1.3 a client may finish its side before the
        server rejects its certificate.)
        """
        server, client = yield self.connect(server_creator, client_creator)
        self.assertFalse(server.handshook)
        yield server.lost
        yield client.lost
        return server, client


def _client(host: str, protocols: list[bytes] | None = None) -> Any:
    return optionsForClientTLS(
        host, trustRoot=Certificate.loadPEM(_CA.cert_pem), acceptableProtocols=protocols
    )


def _dns_names(side: _Side) -> list[str]:
    cert = side.transport.getPeerCertificate().to_cryptography()  # type: ignore[union-attr]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.DNSName))


class SNIServerTests(_LoopbackTestCase):
    def sni(self, *pairs: pki.KeyPair) -> tls.SNIServerContextFactory:
        return tls.SNIServerContextFactory([(p.cert_pem, p.key_pem) for p in pairs])

    @inlineCallbacks
    def test_sni_selects_certificate(self) -> Generator[Deferred[Any], Any, None]:
        """
        Whichever certificate is first (the default), a client asking for a
        name verifies the certificate naming it: the other one would fail
        service_identity verification.
        """
        for order in [(_A, _B), (_B, _A)]:
            factory = self.sni(*order)
            for host, expected in [("x.a.test", ["*.a.test"]), ("b.test", ["b.test"])]:
                server, client = yield self.connect(factory, _client(host))
                self.assertTrue(client.handshook, (host, order))
                self.assertTrue(server.handshook)
                self.assertEqual(_dns_names(client), expected)

    @inlineCallbacks
    def test_wrong_certificate_fails(self) -> Generator[Deferred[Any], Any, None]:
        """
        The control for the test above: a name no certificate carries gets
        the default certificate, which the client rejects.
        """
        _, client = yield self.connect(self.sni(_A, _B), _client("c.test"))
        self.assertFalse(client.handshook)
        yield client.lost
        assert client.reason is not None
        self.assertTrue(client.reason.check(VerificationError), client.reason)

    @inlineCallbacks
    def test_alpn(self) -> Generator[Deferred[Any], Any, None]:
        """
        ALPN is negotiated on the context chosen by SNI as well as on the
        default one.
        """
        factory = self.sni(_A, _B)
        for host in ["x.a.test", "b.test"]:
            server, client = yield self.connect(factory, _client(host, [b"h2", b"http/1.1"]))
            self.assertEqual(tls.negotiated_protocol(client.transport), b"h2")
            self.assertEqual(tls.negotiated_protocol(server.transport), b"h2")
            server, client = yield self.connect(factory, _client(host, [b"http/1.1"]))
            self.assertEqual(tls.negotiated_protocol(client.transport), b"http/1.1")
            server, client = yield self.connect(factory, _client(host))
            self.assertIsNone(tls.negotiated_protocol(client.transport))
            self.assertIsNone(tls.negotiated_protocol(server.transport))

    def test_tls11_disabled(self) -> None:
        """
        Every context disables TLS 1.0 and 1.1 itself. (OpenSSL's default
        security level refuses them too, so the handshake test below alone
        would not notice if our minimum were lowered.)
        """
        factory = self.sni(_A, _B)
        for name in (b"x.a.test", b"b.test"):
            options = factory.context_for_name(name).set_options(0)
            self.assertTrue(options & SSL.OP_NO_TLSv1_1, name)
            self.assertTrue(options & SSL.OP_NO_TLSv1, name)

    @inlineCallbacks
    def test_tls11_refused(self) -> Generator[Deferred[Any], Any, None]:
        """
        A client offering only TLS 1.1 cannot connect, although it can
        complete a TLS 1.1 handshake with a server that allows it.
        """
        self.assertTrue(_tls11_possible(), "the TLS 1.1 client must be able to handshake")
        yield self.assertFails(self.sni(_A, _B), _TLS11Client(b"b.test"))

    @inlineCallbacks
    def test_tls12_accepted(self) -> Generator[Deferred[Any], Any, None]:
        client = optionsForClientTLS(
            "b.test",
            trustRoot=Certificate.loadPEM(_CA.cert_pem),
            extraCertificateOptions={"lowerMaximumSecurityTo": TLSVersion.TLSv1_2},
        )
        server, client_side = yield self.connect(self.sni(_A, _B), client)
        self.assertTrue(server.handshook)
        handle = client_side.transport.getHandle()
        self.assertEqual(handle.get_protocol_version_name(), "TLSv1.2")


class ContextForNameTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.factory = tls.SNIServerContextFactory(
            [(_B.cert_pem, _B.key_pem), (_A.cert_pem, _A.key_pem)]
        )
        self.b = self.factory.context_for_name(None)
        self.a = self.factory.context_for_name(b"x.a.test")
        self.assertIsNot(self.a, self.b)

    def test_lookup(self) -> None:
        for name, expected in [
            (b"b.test", self.b),
            (b"B.Test.", self.b),
            (b"x.a.test", self.a),
            (b"X.A.TEST", self.a),
            # A wildcard covers exactly one label.
            (b"a.test", self.b),
            (b"y.x.a.test", self.b),
            (b".a.test", self.b),
            (b"unknown.test", self.b),
            (b"", self.b),
            (b"\xff.a.test", self.b),
        ]:
            self.assertIs(self.factory.context_for_name(name), expected, name)

    def test_errors(self) -> None:
        with self.assertRaises(ValueError):
            tls.SNIServerContextFactory([])
        with self.assertRaises(ValueError):
            tls.SNIServerContextFactory([(_A.cert_pem, _B.key_pem)])
        with self.assertRaises(ValueError):
            tls.SNIServerContextFactory([(b"not a certificate", _B.key_pem)])

    def test_chain(self) -> None:
        """Certificates after the leaf are served as the chain."""
        factory = tls.SNIServerContextFactory([(_B.cert_pem + _CA.cert_pem, _B.key_pem)])
        self.assertIsNotNone(factory.context_for_name(b"b.test"))


class TunnelTests(_LoopbackTestCase):
    def server(self, pair: pki.KeyPair = _TUNNEL) -> Any:
        return tls.tunnel_server_context(pair.cert_pem, pair.key_pem, _CA.cert_pem)

    def client(self, connector: pki.KeyPair = _CONNECTOR, host: str = "tunnel.test") -> Any:
        return tls.tunnel_client_options(host, _CA.cert_pem, connector.cert_pem, connector.key_pem)

    @inlineCallbacks
    def test_good_connector(self) -> Generator[Deferred[Any], Any, None]:
        server, client = yield self.connect(self.server(), self.client())
        self.assertTrue(server.handshook)
        self.assertTrue(client.handshook)
        self.assertEqual(
            tls.peer_connector_identity(server.transport),
            pki.ConnectorIdentity(connector_id="connector-1", group="finance"),
        )
        # The service's certificate names no connector.
        self.assertIsNone(tls.peer_connector_identity(client.transport))
        self.assertEqual(tls.negotiated_protocol(server.transport), b"h2")
        self.assertEqual(tls.negotiated_protocol(client.transport), b"h2")

    @inlineCallbacks
    def test_no_client_certificate(self) -> Generator[Deferred[Any], Any, None]:
        """
        A client certificate is optional at the handshake (the enrolment
        API's registration has none): the connection names no connector,
        and the tunnel closes such a connection once it is up.
        """
        server, _ = yield self.connect(self.server(), _client("tunnel.test", [b"h2"]))
        self.assertTrue(server.handshook)
        self.assertIsNone(tls.peer_connector_identity(server.transport))

    @inlineCallbacks
    def test_enrolment_alpn(self) -> Generator[Deferred[Any], Any, None]:
        """The tunnel listener also speaks http/1.1 (the enrolment API)."""
        server, client = yield self.connect(self.server(), _client("tunnel.test", [b"http/1.1"]))
        self.assertEqual(tls.negotiated_protocol(server.transport), b"http/1.1")
        self.assertEqual(tls.negotiated_protocol(client.transport), b"http/1.1")

    @inlineCallbacks
    def test_foreign_client_certificate(self) -> Generator[Deferred[Any], Any, None]:
        yield self.assertFails(self.server(), self.client(_FOREIGN_CONNECTOR))

    @inlineCallbacks
    def test_wrong_service_name(self) -> Generator[Deferred[Any], Any, None]:
        """The connector refuses a service certificate for another name."""
        _, client = yield self.connect(self.server(_WRONG_TUNNEL), self.client())
        self.assertFalse(client.handshook)
        yield client.lost
        assert client.reason is not None
        self.assertTrue(client.reason.check(VerificationError), client.reason)

    def test_bad_key(self) -> None:
        with self.assertRaises(ValueError):
            tls.tunnel_server_context(_TUNNEL.cert_pem, _B.key_pem, _CA.cert_pem)
        with self.assertRaises(ValueError):
            tls.tunnel_client_options("tunnel.test", _CA.cert_pem, _CONNECTOR.cert_pem, _B.key_pem)


class HelperTests(SynchronousTestCase):
    def test_peer_connector_identity_failures(self) -> None:
        class NoCert:
            def getPeerCertificate(self) -> None:
                return None

        class Broken:
            def getPeerCertificate(self) -> None:
                raise SSL.Error("nope")

        self.assertIsNone(tls.peer_connector_identity(NoCert()))
        self.assertIsNone(tls.peer_connector_identity(Broken()))
        self.assertIsNone(tls.peer_connector_identity(object()))

    def test_negotiated_protocol_without_tls(self) -> None:
        self.assertIsNone(tls.negotiated_protocol(object()))
