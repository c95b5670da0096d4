"""
Slow public clients: a deadline on the header block, a minimum rate for the
body and a bound on the connections one address may have reading headers.
Raw TLS connections against the real service (short configured limits), and
the configuration keys.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock, LoopingCall
from twisted.trial.unittest import SynchronousTestCase, TestCase

from appproxy.config import ConfigError, parse_service_config
from appproxy.config.model import ClientLimits
from appproxy.frontend.deadlines import ClientDeadlines
from tests import deployment
from tests.test_config import ConfigTestCase
from tests.test_integration import _wait_until

#: The configured header deadline: short, so the tests are quick.
HEADER_TIMEOUT = 2.5
#: The configured body rate, bytes per second.
MIN_RATE = 2000
HOST = b"Host: web." + deployment.DOMAIN.encode() + b"\r\n"


class SlowDeployment(deployment.Deployment):
    """A deployment whose [service] table sets short client limits."""

    def write_service_config(self, public: int = 0, tunnel: int = 0) -> Path:
        path = super().write_service_config(public, tunnel)
        text = path.read_text()
        limits = (
            f"client_header_timeout = {HEADER_TIMEOUT}\n"
            f"client_body_min_rate = {MIN_RATE}\n"
            "client_header_connections_per_address = 2\n"
        )
        path.write_text(text.replace("[service]\n", "[service]\n" + limits, 1))
        return path


class RawClient(Protocol):
    """A TLS client that sends what it is told and records what comes back."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self.open = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.open = False
        self.closed.callback(None)


class SlowClientTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        d = SlowDeployment(
            self, [{"name": "web", "external_url": f"https://web.{deployment.DOMAIN}/"}], 5.0
        )
        d.start_service()
        d.start_connector(connections=1)
        yield d.wait_for_connections(1)
        self.d = d

    def connect(self) -> Deferred[RawClient]:
        options = optionsForClientTLS(
            f"web.{deployment.DOMAIN}", trustRoot=Certificate.loadPEM(self.d.ca.cert_pem)
        )
        endpoint = wrapClientTLS(
            options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.d.public_port)
        )
        client = RawClient()

        def opened(protocol: RawClient) -> RawClient:
            self.addCleanup(lambda: protocol.open and protocol.transport.abortConnection())  # type: ignore[union-attr]
            return protocol

        return connectProtocol(endpoint, client).addCallback(opened)

    def trickle(self, client: RawClient, data: bytes, chunk: int, every: float) -> LoopingCall:
        """Send C{data} C{chunk} bytes every C{every} seconds while open."""
        pending = [data[i : i + chunk] for i in range(0, len(data), chunk)]

        def send() -> None:
            if pending and client.open:
                client.transport.write(pending.pop(0))  # type: ignore[union-attr]
            else:
                loop.stop()

        loop = LoopingCall(send)
        loop.clock = reactor
        loop.start(every)

        def stop() -> None:
            if loop.running:
                loop.stop()

        self.addCleanup(stop)
        return loop

    @inlineCallbacks
    def test_header_byte_by_byte(self) -> Any:
        """
        One header byte every 0.2 s (each restarts twisted.web's idle
        timer): the header deadline still ends it, with a 408, and nothing
        reaches the internal app.
        """
        started = reactor.seconds()
        client = yield self.connect()
        request = b"GET /echo HTTP/1.1\r\n" + HOST + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
        self.trickle(client, request, 1, 0.2)
        yield _wait_until(lambda: not client.open, timeout=HEADER_TIMEOUT + 10)
        elapsed = reactor.seconds() - started
        self.assertGreaterEqual(elapsed, HEADER_TIMEOUT - 0.1)
        self.assertLess(elapsed, HEADER_TIMEOUT + 5)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 408 "), client.received[:100])
        self.assertEqual(self.d.backend.hits, 0)

    @inlineCallbacks
    def test_body_below_minimum_rate(self) -> Any:
        """
        A POST whose body arrives at 100 bytes per second, below the
        configured minimum, is cut off once its credit runs out.
        """
        client = yield self.connect()
        head = b"POST /echo HTTP/1.1\r\n" + HOST + b"Content-Length: 100000\r\n\r\n"
        client.transport.write(head)
        started = reactor.seconds()
        self.trickle(client, b"x" * 100_000, 20, 0.2)
        yield _wait_until(lambda: not client.open, timeout=HEADER_TIMEOUT + 15)
        elapsed = reactor.seconds() - started
        self.assertGreaterEqual(elapsed, HEADER_TIMEOUT - 0.1)
        self.assertIn(b" 408 ", client.received.split(b"\r\n", 1)[0])

    @inlineCallbacks
    def test_fast_body_and_idle_keep_alive(self) -> Any:
        """
        A body sent at full speed is not cut; a kept-alive connection idle
        longer than the header deadline between requests is not cut either
        (the next request's deadline starts at its first byte).
        """
        client = yield self.connect()
        body = b"y" * 200_000
        client.transport.write(
            b"POST /echo HTTP/1.1\r\n" + HOST + b"Content-Length: 200000\r\n\r\n" + body
        )
        yield _wait_until(lambda: b'"body_length": 200000' in client.received)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200 "))
        idle_until = reactor.seconds() + HEADER_TIMEOUT + 0.5
        yield _wait_until(lambda: reactor.seconds() > idle_until)
        self.assertTrue(client.open)
        client.received = b""
        client.transport.write(b"GET /echo?again HTTP/1.1\r\n" + HOST + b"\r\n")
        yield _wait_until(lambda: b"/echo?again" in client.received)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200 "))

    @inlineCallbacks
    def test_connections_reading_headers_per_address(self) -> Any:
        """
        Two connections of an address may be reading a header block; a
        third is closed at once.  Once one has sent its headers, another
        may come.
        """
        first = yield self.connect()
        second = yield self.connect()
        first.transport.write(b"GET /echo HTTP/1.1\r\n")
        second.transport.write(b"GET /echo HTTP/1.1\r\n")
        third = yield self.connect()
        yield _wait_until(lambda: not third.open, timeout=5)
        self.assertTrue(first.open and second.open)
        first.transport.write(HOST + b"\r\n")
        yield _wait_until(lambda: first.received.startswith(b"HTTP/1.1 200 "))
        fourth = yield self.connect()
        fourth.transport.write(b"GET /echo HTTP/1.1\r\n" + HOST + b"\r\n")
        yield _wait_until(lambda: fourth.received.startswith(b"HTTP/1.1 200 "))


class ClientLimitsConfigTests(ConfigTestCase):
    def limits(self, **service: object) -> ClientLimits:
        data = self.service_data()
        data["service"].update(service)
        return parse_service_config(data, self.service_path).client_limits

    def test_defaults(self) -> None:
        self.assertEqual(self.limits(), ClientLimits())
        self.assertEqual(ClientLimits().header_timeout, 30.0)

    def test_set(self) -> None:
        self.assertEqual(
            self.limits(
                client_header_timeout=5,
                client_body_min_rate=0,
                client_header_connections_per_address=4,
            ),
            ClientLimits(header_timeout=5.0, body_min_rate=0, header_connections_per_address=4),
        )

    def test_bad(self) -> None:
        for key, value, problem in [
            ("client_header_timeout", 0, "must be more than 0 and at most 3600, not 0"),
            ("client_body_min_rate", -1, "must be from 0 to 1073741824, not -1"),
            ("client_header_connections_per_address", 0, "must be from 1 to 100000, not 0"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                self.limits(**{key: value})
            self.assertEqual(caught.exception.key, f"service.{key}")
            self.assertEqual(caught.exception.problem, problem)


class ClientDeadlinesTests(SynchronousTestCase):
    def test_count_per_address(self) -> None:
        deadlines = ClientDeadlines(Clock(), ClientLimits(header_connections_per_address=2))
        self.assertTrue(deadlines.enter("192.0.2.1"))
        self.assertTrue(deadlines.enter("192.0.2.1"))
        self.assertFalse(deadlines.enter("192.0.2.1"))
        self.assertTrue(deadlines.enter("192.0.2.2"))
        deadlines.leave("192.0.2.1")
        self.assertTrue(deadlines.enter("192.0.2.1"))
        for _ in range(2):
            deadlines.leave("192.0.2.1")
        deadlines.leave("192.0.2.2")
        self.assertEqual(deadlines.reading_headers, {})

    def test_trusted_proxies_exempt(self) -> None:
        """Behind a reverse proxy every connection is the proxy's: not bounded."""
        deadlines = ClientDeadlines(Clock())
        self.assertFalse(deadlines.exempt("10.0.0.5"))
        deadlines.trusted = lambda: (ipaddress.ip_network("10.0.0.0/8"),)
        self.assertTrue(deadlines.exempt("10.0.0.5"))
        self.assertTrue(deadlines.exempt("::ffff:10.0.0.5"))
        self.assertFalse(deadlines.exempt("192.0.2.1"))
        self.assertFalse(deadlines.exempt("not an address"))
