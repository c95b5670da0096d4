"""
The abuse limits of C{[limits]} on a real service (in this process, real
TLS on loopback): clients from 127.0.0.1 and 127.0.0.2 are two addresses.

  - a flood from one address gets 429 (with C{Retry-After} and a page
    naming the limit) while another address is served;
  - the caps on open connections, per address and in total;
  - the queue cap of a connector group: 503 at once, not after the queue
    timeout;
  - the HTTP/2 frame budgets (empty DATA frames, stream resets), as
    configured.
"""

from __future__ import annotations

import json
from typing import Any

import h2.errors
import h2.events
import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from appproxy.observe.metrics import REGISTRY
from tests.deployment import DOMAIN, Deployment
from tests.h2_client import Session, h2_client, pseudo, tls_socket
from tests.test_h2_flood import _empty_data_flood
from tests.websocket_clients import wait_until

PROXY_LIMITS = "[limits]\nanonymous_rate = 0.01\nanonymous_burst = 2\nconnections_per_address = 1"
WEB = [{"name": "web", "external_url": f"https://web.{DOMAIN}/"}]
URL = f"https://web.{DOMAIN}"


def hits(limit: str) -> float:
    return REGISTRY.get_sample_value("appproxy_limit_hits_total", {"limit": limit}) or 0.0


@implementer(IAgentEndpointFactory)
class FromAddress:
    """Every host name to 127.0.0.1:port over TLS, from the source address C{source}."""

    def __init__(self, port: int, ca_pem: bytes, source: str) -> None:
        self.port, self.source = port, source
        self.trust = Certificate.loadPEM(ca_pem)

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        options = optionsForClientTLS(uri.host.decode("ascii"), trustRoot=self.trust)
        tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, bindAddress=(self.source, 0))
        return wrapClientTLS(options, tcp)


def client(d: Deployment, source: str) -> HTTPClient:
    pool = HTTPConnectionPool(reactor, persistent=False)
    endpoints = FromAddress(d.public_port, d.ca.cert_pem, source)
    return HTTPClient(Agent.usingEndpointFactory(reactor, endpoints, pool=pool))


class Held(Protocol):
    """A TCP connection that sends nothing; C{closed} once the service closes it."""

    closed = False

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True


class BehindProxy(Deployment):
    """A deployment whose C{trusted_proxies} is 127.0.0.3 (a reverse proxy in front)."""

    def write_service_config(self, public: int = 0, tunnel: int = 0) -> Any:
        path = super().write_service_config(public, tunnel)
        text = path.read_text().replace(
            "[service]\n", '[service]\ntrusted_proxies = ["127.0.0.3"]\n', 1
        )
        path.write_text(text)
        return path


class LimitsTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def deployment(self, limits: str, connections: int = 1, **connector: Any) -> Any:
        d = Deployment(self, WEB, 15.0, extra_toml=f"[limits]\n{limits}\n")
        d.start_service()
        if connections:
            d.start_connector(connections=connections, **connector)
            yield d.wait_for_connections(connections)
        return d

    @inlineCallbacks
    def test_flood_gets_429_other_address_served(self) -> Any:
        """
        Past its burst, an address gets 429 with Retry-After and a page
        naming the limit (JSON for a client that asks for it); the app never
        sees those requests; another address is served all along.
        """
        d = yield self.deployment("anonymous_rate = 0.01\nanonymous_burst = 5")
        before = hits("anonymous")
        flood, other = client(d, "127.0.0.2"), client(d, "127.0.0.1")
        codes = []
        for _ in range(8):
            response = yield flood.get(URL + "/echo")
            body = yield response.content()
            codes.append(response.code)
        self.assertEqual(codes, [200] * 5 + [429] * 3)
        (retry,) = response.headers.getRawHeaders(b"retry-after")
        self.assertGreaterEqual(int(retry), 1)
        self.assertLessEqual(int(retry), 101)
        self.assertIn(b"Too many requests", body)
        self.assertIn(b"anonymous_rate", body)
        self.assertEqual(d.backend.hits, 5)

        response = yield flood.get(
            URL + "/echo", headers=Headers({b"accept": [b"application/json"]})
        )
        page = json.loads((yield response.content()))
        self.assertEqual((response.code, page["status"]), (429, 429))
        self.assertIn("anonymous_rate", page["detail"])
        self.assertEqual(hits("anonymous"), before + 4)

        response = yield other.get(URL + "/echo")
        self.assertEqual(response.code, 200)
        yield response.content()
        self.assertEqual(d.backend.hits, 6)

        # A reload that turns the budget off lets the address in at once.
        assert d.service is not None
        d.extra_toml = "[limits]\nanonymous_rate = 0"
        d.write_service_config()
        d.service.reload()
        self.assertEqual(d.service.config.limits.anonymous_rate, 0.0)
        response = yield flood.get(URL + "/echo")
        self.assertEqual(response.code, 200)
        yield response.content()

    @inlineCallbacks
    def test_connection_caps(self) -> Any:
        """
        One connection past C{connections_per_address} is closed at once;
        so is one past C{connections_total}, from any address; once one
        closes, the address is served again.
        """
        d = yield self.deployment("connections_per_address = 2\nconnections_total = 3", 0)
        assert d.service is not None
        counts = d.service.connections
        per_address, total = hits("connections_per_address"), hits("connections_total")

        def hold(source: str) -> Deferred[Held]:
            endpoint = TCP4ClientEndpoint(
                reactor, "127.0.0.1", d.public_port, bindAddress=(source, 0)
            )
            return connectProtocol(endpoint, Held())

        held = []
        for _ in range(2):
            held.append((yield hold("127.0.0.2")))
        self.addCleanup(lambda: [h.transport.loseConnection() for h in held])
        yield wait_until(lambda: counts.open == 2, "two connections counted")
        third = yield hold("127.0.0.2")
        yield wait_until(lambda: third.closed, "the third connection of 127.0.0.2 closed")
        self.assertEqual(hits("connections_per_address"), per_address + 1)

        held.append((yield hold("127.0.0.1")))
        yield wait_until(lambda: counts.open == 3, "three connections counted")
        local = client(d, "127.0.0.1")
        with self.assertRaises(Exception):  # noqa: B017 (closed before TLS: which error varies)
            yield local.get(URL + "/robots.txt")
        self.assertEqual(hits("connections_total"), total + 1)

        held.pop(0).transport.loseConnection()
        yield wait_until(lambda: counts.open == 2, "a connection closed")
        response = yield client(d, "127.0.0.2").get(URL + "/robots.txt")
        self.assertEqual(response.code, 200)
        yield response.content()

    @inlineCallbacks
    def test_queue_cap_at_once(self) -> Any:
        """
        With C{queued_per_group} requests waiting, one more gets 503 at once
        (the waiting ones still wait, and are served later).
        """
        d = yield self.deployment("queued_per_group = 2", 1, capacity=1)
        assert d.service is not None
        queue = d.service.groups["default"]
        before = hits("queued_per_group")
        local = client(d, "127.0.0.1")
        first = local.get(URL + "/slow?delay=60")
        yield wait_until(lambda: d.backend.hits == 1, "the first request at the app")
        waiting = [local.get(URL + "/echo") for _ in range(2)]
        answered: list[object] = []

        def answer(result: Any) -> Any:
            answered.append(result)
            return result

        for w in waiting:
            w.addBoth(answer)
        yield wait_until(lambda: queue.waiting == 2, "two requests queued")
        response = yield local.get(URL + "/echo")
        body = yield response.content()
        self.assertEqual(response.code, 503)
        self.assertIn(b"Service busy", body)
        self.assertEqual(answered, [])
        self.assertEqual(hits("queued_per_group"), before + 1)
        # The app answers the slow request: the queued ones go to the connector.
        (slow,) = d.backend.pending
        slow.reset(0)
        response = yield first
        self.assertEqual(response.code, 200)
        yield treq.content(response)
        for w in waiting:
            response = yield w
            self.assertEqual(response.code, 200)
            yield treq.content(response)

    @inlineCallbacks
    def test_h2_frame_budget(self) -> Any:
        """C{h2_empty_data_burst} and C{_rate} bound an HTTP/2 connection's empty DATA frames."""
        d = yield self.deployment("h2_empty_data_burst = 10\nh2_empty_data_rate = 1", 0)
        before = hits("h2_empty_data")
        allowed, session = yield deferToThread(_empty_data_flood, d, 10, 30)
        self.assertEqual(hits("h2_empty_data"), before + 1)
        self.assertTrue(allowed)
        self.assertEqual(session.goaway, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(session.closed)

    @inlineCallbacks
    def test_behind_trusted_proxy(self) -> Any:
        """
        Behind a trusted proxy, requests count against the address in
        C{X-Forwarded-For}, not the proxy's; the proxy's connections count
        only in the total.
        """
        d = BehindProxy(self, WEB, 15.0, extra_toml=PROXY_LIMITS)
        d.start_service()
        d.start_connector(connections=1)
        yield d.wait_for_connections(1)
        proxy = client(d, "127.0.0.3")

        def via(address: bytes) -> Any:
            return proxy.get(URL + "/echo", headers=Headers({b"x-forwarded-for": [address]}))

        codes = []
        for _ in range(3):
            response = yield via(b"198.51.100.7")
            yield response.content()
            codes.append(response.code)
        response = yield via(b"198.51.100.8")
        yield response.content()
        codes.append(response.code)
        self.assertEqual(codes, [200, 200, 429, 200])

        assert d.service is not None
        counts = d.service.connections
        held = []
        for _ in range(3):
            endpoint = TCP4ClientEndpoint(
                reactor, "127.0.0.1", d.public_port, bindAddress=("127.0.0.3", 0)
            )
            held.append((yield connectProtocol(endpoint, Held())))
        self.addCleanup(lambda: [h.transport.loseConnection() for h in held])
        yield wait_until(lambda: counts.open == 3, "the proxy's three connections counted")
        self.assertFalse(any(h.closed for h in held))

    @inlineCallbacks
    def test_other_addresses_do_not_reset_a_bucket(self) -> Any:
        """
        With C{tracked_addresses} full, a client over its budget stays over it
        after requests from as many other /64s (the table forgets no bucket
        that is not full; the others share one bucket).
        """
        limits = "[limits]\nanonymous_rate = 0.01\nanonymous_burst = 2\ntracked_addresses = 8"
        d = BehindProxy(self, WEB, 15.0, extra_toml=limits)
        d.start_service()
        d.start_connector(connections=1)
        yield d.wait_for_connections(1)
        proxy = client(d, "127.0.0.3")

        @inlineCallbacks
        def codes(address: str, count: int = 1) -> Any:
            headers = Headers({b"x-forwarded-for": [address.encode()]})
            result = []
            for _ in range(count):
                response = yield proxy.get(URL + "/echo", headers=headers)
                yield response.content()
                result.append(response.code)
            return result

        self.assertEqual((yield codes("2001:db8:1:1::1", 3)), [200, 200, 429])
        others = []
        for n in range(2, 10):
            others += yield codes(f"2001:db8:1:{n:x}::1")
        # Seven take the table's other places; the eighth has the shared bucket.
        self.assertEqual(others, [200] * 8)
        self.assertEqual((yield codes("2001:db8:1:1::ffff", 2)), [429, 429])
        self.assertEqual((yield codes("2001:db8:1:a::1", 3)), [200, 429, 429])

    @inlineCallbacks
    def test_h2_reset_budget(self) -> Any:
        """C{h2_reset_burst}: a client resetting more streams at once gets GOAWAY."""
        d = yield self.deployment("h2_reset_burst = 5\nh2_reset_rate = 1", 0)
        session = yield deferToThread(_reset_flood, d, 20)
        self.assertEqual(session.goaway, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)


def _reset_flood(d: Deployment, count: int) -> Session:
    """Open and at once reset C{count} streams; read until GOAWAY or the close."""
    session = Session()
    with tls_socket(d) as tls:
        conn = h2_client()
        for _ in range(count):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, pseudo(b"GET", b"/echo"), end_stream=True)
            conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
        tls.sendall(conn.data_to_send())
        while not session.closed and session.goaway is None:
            data = tls.recv(65536)
            session.closed = not data
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    session.goaway = event.error_code
    return session
