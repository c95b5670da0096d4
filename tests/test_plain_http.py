"""
Plain HTTP sent to the HTTPS port gets a 400 that says to use HTTPS (as
nginx's 497), not an empty reply; TLS on the same port is unchanged.

The first class drives L{HTTPSOnlyFactory} in memory; the second runs the
real service (C{twistd appproxy}) and real C{curl}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from appproxy.daemon import pki
from appproxy.daemon.plain_http import (
    FIRST_BYTE_TIMEOUT,
    HEADER_LIMIT,
    HEADER_TIMEOUT,
    LINGER,
    PLAIN_HTTP_REPLY,
    HTTPSOnlyFactory,
)
from appproxy.daemon.tls import SNIServerContextFactory
from tests.test_daemons import APP, DOMAIN, free_ports, init, twistd

#: Bound on each curl run.
CURL_MAX_TIME = "10"


@implementer(IHandshakeListener)
class _Recorder(Protocol):
    """What the TLS side would be: records what it gets."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None
        self.made = False
        self.handshook = False

    def handshakeCompleted(self) -> None:
        self.handshook = True

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.lost = reason


class _Inner:
    """A factory of one L{_Recorder}, standing for the TLS factory."""

    def __init__(self) -> None:
        self.protocol = _Recorder()
        self.started = 0

    def doStart(self) -> None:
        self.started += 1

    def doStop(self) -> None:
        self.started -= 1

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.protocol


class _Transport(StringTransport):
    """A StringTransport that can also half-close."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True


class FirstByteTests(SynchronousTestCase):
    def connect(self) -> tuple[Clock, _Inner, _Transport, Protocol]:
        clock = Clock()
        inner = _Inner()
        factory = HTTPSOnlyFactory(inner, clock)  # type: ignore[arg-type]
        transport = _Transport()
        protocol = factory.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        return clock, inner, transport, protocol

    def test_tls_passes_through(self) -> None:
        """A TLS record goes to the TLS side, whole, and so does the rest."""
        clock, inner, transport, protocol = self.connect()
        protocol.dataReceived(b"\x16\x03\x01\x00\x05hello")
        protocol.dataReceived(b"more")
        self.assertTrue(inner.protocol.made)
        self.assertEqual(inner.protocol.received, b"\x16\x03\x01\x00\x05hellomore")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(clock.getDelayedCalls(), [])
        protocol.connectionLost(Failure(ConnectionError("gone")))
        self.assertIsNotNone(inner.protocol.lost)

    def test_tls_bytes_go_straight_through(self) -> None:
        """
        Once the first byte said TLS, the transport's bytes reach the TLS
        protocol directly: no layer of the sniffer on every chunk.
        """
        _clock, inner, _transport, protocol = self.connect()
        protocol.dataReceived(b"\x16\x03\x01")
        self.assertEqual(protocol.dataReceived, inner.protocol.dataReceived)
        protocol.connectionLost(Failure(ConnectionError("gone")))

    def test_factory_starts_inner(self) -> None:
        inner = _Inner()
        factory = HTTPSOnlyFactory(inner, Clock())  # type: ignore[arg-type]
        factory.doStart()
        self.assertEqual(inner.started, 1)
        factory.doStop()
        self.assertEqual(inner.started, 0)

    def test_plain_request_answered(self) -> None:
        """
        A plain HTTP request, in pieces: answered once its header block is
        in, then the write side is closed and the rest discarded.
        """
        clock, inner, transport, protocol = self.connect()
        protocol.dataReceived(b"GET /<script> HTTP/1.1\r\nHost: x\r")
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"\n\r\n")
        self.assertEqual(transport.value(), PLAIN_HTTP_REPLY)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertNotIn(b"script", transport.value())
        self.assertTrue(transport.write_closed)
        self.assertFalse(inner.protocol.made)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(transport.value(), PLAIN_HTTP_REPLY)
        # The client does not close: dropped after LINGER.
        clock.advance(LINGER)
        self.assertTrue(transport.aborted)

    def test_plain_request_client_closes(self) -> None:
        clock, _inner, transport, protocol = self.connect()
        protocol.dataReceived(b"POST / HTTP/1.0\n\n")
        self.assertEqual(transport.value(), PLAIN_HTTP_REPLY)
        protocol.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_slow_headers(self) -> None:
        """A header block that never ends is answered after HEADER_TIMEOUT."""
        clock, _inner, transport, protocol = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        clock.advance(HEADER_TIMEOUT - 0.1)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.2)
        self.assertEqual(transport.value(), PLAIN_HTTP_REPLY)

    def test_header_limit(self) -> None:
        """More than HEADER_LIMIT bytes without an end: answered anyway."""
        _clock, _inner, transport, protocol = self.connect()
        protocol.dataReceived(b"GET /" + b"a" * HEADER_LIMIT)
        self.assertEqual(transport.value(), PLAIN_HTTP_REPLY)

    def test_silent_connection(self) -> None:
        """Nothing at all: dropped after FIRST_BYTE_TIMEOUT."""
        clock, inner, transport, _protocol = self.connect()
        clock.advance(FIRST_BYTE_TIMEOUT - 0.1)
        self.assertFalse(transport.aborted)
        clock.advance(0.2)
        self.assertTrue(transport.aborted)
        self.assertFalse(inner.protocol.made)

    def test_other_bytes_go_to_tls(self) -> None:
        """Anything that is not a letter is left to TLS to refuse."""
        _clock, inner, transport, protocol = self.connect()
        protocol.dataReceived(b"\x80\x2e\x01")
        self.assertEqual(inner.protocol.received, b"\x80\x2e\x01")
        self.assertEqual(transport.value(), b"")

    def test_real_tls_factory(self) -> None:
        """
        Wrapping Twisted's TLSMemoryBIOFactory as the service does, a real
        ClientHello gets the server's handshake answer.
        """
        ca = pki.generate_ca("test CA")
        cert = pki.issue_server_certificate(ca, ["x.test"])
        contexts = SNIServerContextFactory([(cert.cert_pem, cert.key_pem)])
        tls = TLSMemoryBIOFactory(contexts, False, _Inner())  # type: ignore[arg-type]
        factory = HTTPSOnlyFactory(tls, Clock())
        server = _Transport()
        protocol = factory.buildProtocol(server.getPeer())
        protocol.makeConnection(server)

        client_options = optionsForClientTLS("x.test", trustRoot=Certificate.loadPEM(ca.cert_pem))
        client_tls = TLSMemoryBIOFactory(client_options, True, _Inner())  # type: ignore[arg-type]
        client = _Transport()
        client_protocol = client_tls.buildProtocol(client.getPeer())
        client_protocol.makeConnection(client)
        self.assertEqual(client.value()[:1], b"\x16")  # the ClientHello
        # Shuttle bytes both ways (a handshake takes a few flights).
        for _ in range(5):
            to_server, to_client = client.value(), server.value()
            client.clear()
            server.clear()
            if to_server:
                protocol.dataReceived(to_server)
            if to_client:
                self.assertNotEqual(to_client, PLAIN_HTTP_REPLY)
                client_protocol.dataReceived(to_client)
        server_side: Any = tls.wrappedFactory
        self.assertTrue(server_side.protocol.handshook)
        client_side: Any = client_tls.wrappedFactory
        self.assertTrue(client_side.protocol.handshook)


def curl(*args: str) -> Any:
    return getProcessOutputAndValue("curl", ["-sS", "--max-time", CURL_MAX_TIME, *args])


class ServicePlainHTTPTests(TestCase):
    """The real service, real curl: plain HTTP and HTTPS on one port."""

    timeout = 60

    @inlineCallbacks
    def test_plain_http_then_https(self) -> Any:
        public, tunnel = free_ports(2)
        state = yield init(
            self,
            "--port",
            str(public),
            "--tunnel-port",
            str(tunnel),
            "--listen",
            f"tcp:{public}:interface=127.0.0.1",
        )
        service = twistd(self, "appproxy", state / "service.toml", state.parent)
        yield service.wait_for("appproxy service ready")

        out, err, code = yield curl("-i", f"http://127.0.0.1:{public}/some/path")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith(b"HTTP/1.1 400 Bad Request\r\n"), out)
        head, _, body = out.partition(b"\r\n\r\n")
        self.assertIn(b"content-type: text/plain", head.lower())
        self.assertIn(b"https://", body)

        host = f"{APP}.{DOMAIN}:{public}"
        https = ("--resolve", f"{host}:127.0.0.1", "--cacert", str(state / "ca.pem"))
        out, err, code = yield curl(*https, "-i", f"https://{host}/robots.txt")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith(b"HTTP/2 200"), out)
        self.assertIn(b"User-agent: *", out)
        out, err, code = yield curl(*https, "--http1.1", "-i", f"https://{host}/robots.txt")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out)
        self.assertTrue(service.running, service.describe())
        self.assertNotIn("Traceback", service.output())
