"""
What the public listener refuses, and how: a method an endpoint of the
built-in provider does not serve (405 with C{Allow}, no traceback), an
HTTP/2 CONNECT (400 with a request id), a bare LF in the header block (400
at once), connections that never start TLS (held to the per-address bound),
and log lines that name a client as C{host:port}.

The real service in process (L{tests.deployment}), real TLS on loopback, a
raw h2 client (L{tests.h2_client}) and raw sockets.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import attrs
import h2.events
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import http, resource

from appproxy.frontend.channels import StrictHTTPChannel
from appproxy.frontend.h2_guard import EMPTY_DATA_BURST, GuardedH2Connection
from tests import deployment
from tests.deployment import DOMAIN, raw_exchange
from tests.h2_client import HOST, h2_client, pseudo, tls_socket
from tests.signin_deployment import LOGIN, start_builtin
from tests.test_signin import sign_in, sign_ins

WEB = f"https://web.{DOMAIN}"
PEER = IPv4Address("TCP", "127.0.0.1", 52548)


@contextmanager
def captured_log() -> Iterator[list[dict[str, Any]]]:
    """Every log event emitted inside the block."""
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(event) for event in events]


class ProviderMethodTests(TestCase):
    """The built-in provider's endpoints, asked with a method they do not serve."""

    timeout = 60

    @inlineCallbacks
    def test_wrong_method_is_405(self) -> Any:
        """
        405 with an C{Allow} field naming what the endpoint serves, never a
        500, a traceback or a critical log line.
        """
        d = yield start_builtin(self)
        browser = d.browser()
        cases = [
            ("GET", "/token", {"POST"}),
            ("PUT", "/authorize", {"GET", "HEAD", "POST"}),
            ("DELETE", "/userinfo", {"GET", "HEAD", "POST"}),
            ("PUT", "/jwks", {"GET", "HEAD"}),
            ("DELETE", "/end-session", {"GET", "HEAD", "POST"}),
            ("PUT", "/device", {"GET", "HEAD", "POST"}),
            ("PUT", "/.well-known/openid-configuration", {"GET", "HEAD"}),
        ]
        with captured_log() as events:
            for method, path, allowed in cases:
                response = yield browser.request(method, f"https://{LOGIN}{path}")
                self.assertEqual(response.status, 405, (method, path, response.text[:200]))
                served = {m.strip() for m in (response.header("allow") or "").split(",")}
                self.assertTrue(served, (method, path))
                self.assertNotIn(method, served)
                self.assertLessEqual(allowed, served, (method, path, served))
            # HEAD, which Allow names wherever GET is, is served as GET.
            head = yield browser.request("HEAD", f"https://{LOGIN}/jwks")
            self.assertEqual(head.status, 200)
            self.assertEqual(head.body, b"")
        bad = [
            formatEvent(e)
            for e in events
            if e.get("log_failure") is not None or e.get("log_level") == LogLevel.critical
        ]
        self.assertEqual(bad, [])

    @inlineCallbacks
    def test_unsupported_method_from_any_own_resource(self) -> Any:
        """
        Any of the service's own resources that raises twisted.web's
        C{UnsupportedMethod} gets a 405 with C{Allow}, not a 500.
        """
        d = yield start_builtin(self)

        class GetOnly(resource.Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                return b"ok"

        d.service.frontend.login_hosts[LOGIN.encode()].putChild(b"get-only", GetOnly())
        with captured_log() as events:
            response = yield d.browser().request("DELETE", f"https://{LOGIN}/get-only")
        self.assertEqual(response.status, 405, response.text[:200])
        self.assertIn("GET", response.header("allow") or "")
        self.assertEqual([e for e in events if e.get("log_failure") is not None], [])


class SignOutLogTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_only_an_ended_session_is_logged(self) -> Any:
        """
        A sign-out without a session (or with one already ended) writes no
        row to the sign-in log; ending a session writes one.
        """
        d = yield start_builtin(self)
        anonymous = d.browser()
        for _ in range(3):
            page = yield anonymous.request("GET", f"{WEB}/.appproxy/sign-out")
            self.assertEqual(page.status, 200)
        rows = yield sign_ins(d)
        self.assertEqual([r for r in rows if r.result == "signed-out"], [])

        browser = d.browser()
        yield sign_in(browser, f"{WEB}/")
        cookie = browser.cookies(f"web.{DOMAIN}")["__Host-appproxy-web"]
        yield browser.go(f"{WEB}/.appproxy/sign-out")
        # The same (now revoked) cookie again: nothing more is ended.
        replay = d.browser()
        yield replay.request(
            "GET",
            f"{WEB}/.appproxy/sign-out",
            headers={"cookie": [f"__Host-appproxy-web={cookie}"]},
        )
        rows = yield sign_ins(d)
        signed_out = [r for r in rows if r.result == "signed-out"]
        self.assertEqual([r.user for r in signed_out], ["alice"])


def _h2_connect(d: deployment.Deployment) -> tuple[int, dict[bytes, bytes], bool]:
    """An HTTP/2 CONNECT (C{:method} and C{:authority} only): status, headers, reset."""
    with tls_socket(d) as tls:
        conn = h2_client()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", HOST.encode())])
        tls.sendall(conn.data_to_send())
        status, headers, reset = 0, {}, False
        while not status and not reset:
            data = tls.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                    headers = dict(event.headers)
                    status = int(headers[b":status"])
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    reset = True
            tls.sendall(conn.data_to_send())
        return status, headers, reset


class H2ConnectTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_h2_connect_is_refused_with_a_request_id(self) -> Any:
        d = yield deployment.start(self, connectors=0)
        with captured_log() as events:
            status, headers, _ = yield deferToThread(_h2_connect, d)
        self.assertEqual(status, 400)
        self.assertRegex(headers.get(b"x-request-id", b"").decode(), r"^\S+$")
        self.assertEqual([e for e in events if e.get("log_failure") is not None], [])
        # The connection (and the service) go on serving.
        status, _, _ = yield deferToThread(_h2_connect, d)
        self.assertEqual(status, 400)


HOST_LINE = f"Host: web.{DOMAIN}".encode()


class BareLFTests(TestCase):
    """RFC 9112 section 2.2: a bare LF is not a line end here."""

    timeout = 60

    @inlineCallbacks
    def test_bare_lf_request_is_400_at_once(self) -> Any:
        d = yield deployment.start(self)
        # Well within the header deadline (30 s): the answer must not wait for it.
        reply = yield raw_exchange(d, b"GET / HTTP/1.1\n" + HOST_LINE + b"\n\n", timeout=10)
        self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply[:200])
        reply = yield raw_exchange(
            d, b"GET / HTTP/1.1\r\n" + HOST_LINE + b"\nX-A: 1\r\n\r\n", timeout=10
        )
        self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply[:200])
        self.assertEqual(d.backend.hits, 0)

    @inlineCallbacks
    def test_lf_in_a_body_is_data(self) -> Any:
        """A body sent with its header block may hold LFs: it is forwarded."""
        d = yield deployment.start(self)
        body = b"a\nb\n\n"
        raw = (
            b"POST /echo HTTP/1.1\r\n"
            + HOST_LINE
            + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            + body
        )
        reply = yield raw_exchange(d, raw, timeout=20)
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 "), reply[:300])
        self.assertEqual(d.backend.hits, 1)


def _raw_connections(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(count)]


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes C{sock} (within its timeout) without a byte sent."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _extra_connection_closed(port: int) -> bool:
    """
    Whether the server closes one more connection without a byte sent.  A
    server that closes at once can reset it before C{connect} returns here.
    """
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    except ConnectionResetError:
        return True
    with sock:
        return _closed_by_server(sock)


def _https_get(port: int, ca_pem: bytes) -> bytes:
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        with context.wrap_socket(sock, server_hostname=f"web.{DOMAIN}") as tls:
            tls.sendall(b"GET /echo HTTP/1.1\r\n" + HOST_LINE + b"\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := tls.recv(65536):
                reply += chunk
            return reply


class PreTLSConnectionBoundTests(TestCase):
    """C{client_header_connections_per_address} counts from the TCP accept."""

    timeout = 60
    CAP = 3

    @inlineCallbacks
    def start(self) -> Any:
        d = yield deployment.start(self)
        deadlines = d.service.client_deadlines
        deadlines.limits = attrs.evolve(deadlines.limits, header_connections_per_address=self.CAP)
        return d

    def close_all(self, sockets: list[socket.socket]) -> None:
        for sock in sockets:
            sock.close()

    @inlineCallbacks
    def wait_counted(self, d: Any, count: int) -> Any:
        """Until the service counts C{count} connections of 127.0.0.1 (bounded)."""
        for _ in range(400):
            if d.service.client_deadlines.reading_headers.get("127.0.0.1", 0) == count:
                return
            yield deferLater(reactor, 0.05, lambda: None)
        self.fail(f"not {count}: {d.service.client_deadlines.reading_headers}")

    @inlineCallbacks
    def test_silent_connections_count(self) -> Any:
        d = yield self.start()
        held = yield deferToThread(_raw_connections, d.public_port, self.CAP)
        self.addCleanup(self.close_all, held)
        yield self.wait_counted(d, self.CAP)
        closed = yield deferToThread(_extra_connection_closed, d.public_port)
        self.assertTrue(closed, "one connection more than the bound stays open")
        # Once one of them goes, a real client is served again.
        held[0].close()
        yield self.wait_counted(d, self.CAP - 1)
        reply = yield deferToThread(_https_get, d.public_port, d.ca.cert_pem)
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 "), reply[:200])
        self.close_all(held)
        yield self.wait_counted(d, 0)

    @inlineCallbacks
    def test_trusted_proxy_exempt(self) -> Any:
        d = yield self.start()
        d.service.frontend.trusted_proxies = (ipaddress.ip_network("127.0.0.0/8"),)
        held = yield deferToThread(_raw_connections, d.public_port, self.CAP + 2)
        self.addCleanup(self.close_all, held)
        reply = yield deferToThread(_https_get, d.public_port, d.ca.cert_pem)
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 "), reply[:200])
        self.assertEqual(d.service.client_deadlines.reading_headers, {})


class PeerInLogTests(SynchronousTestCase):
    """Log lines name the client as C{host:port}, not an address object's repr."""

    def assertPeerLogged(self, events: list[dict[str, Any]], start: str) -> None:
        lines = [t for t in texts(events) if t.startswith(start)]
        self.assertTrue(lines, texts(events))
        for line in lines:
            self.assertIn("127.0.0.1:52548", line)
            self.assertNotIn("IPv4Address(", line)

    def test_http1_timeout(self) -> None:
        clock = MemoryReactorClock()
        channel: Any = StrictHTTPChannel()
        channel.callLater = clock.callLater
        channel.requestFactory = http.Request
        channel.makeConnection(StringTransport(peerAddress=PEER))
        with captured_log() as events:
            channel.timeoutConnection()
            clock.advance(channel.abortTimeout or 0)
        self.assertPeerLogged(events, "Timing out client")
        self.assertPeerLogged(events, "Forcibly timing out client")

    def make_h2(self) -> tuple[GuardedH2Connection, Any, MemoryReactorClock]:
        clock = MemoryReactorClock()
        server = GuardedH2Connection(clock)
        server.start_guard()
        channel: Any = server
        channel.requestFactory = http.Request
        channel.callLater = clock.callLater
        channel.timeOut = None
        transport = StringTransport(peerAddress=PEER)
        server.makeConnection(transport)
        transport.registerProducer(server, True)
        client = h2_client()
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, pseudo(b"POST", b"/"), end_stream=False)
        server.dataReceived(client.data_to_send())
        return server, (client, sid), clock

    def test_h2_flood(self) -> None:
        server, (client, sid), _ = self.make_h2()
        with captured_log() as events:
            for _ in range(EMPTY_DATA_BURST + 10):
                client.send_data(sid, b"")
            server.dataReceived(client.data_to_send())
        self.assertPeerLogged(events, "Empty DATA frame flood from")

    def test_h2_timeout(self) -> None:
        server, _, clock = self.make_h2()
        with captured_log() as events:
            server.timeoutConnection()
            clock.advance(server.abortTimeout or 0)
        self.assertPeerLogged(events, "Timing out HTTP/2 client")
        self.assertPeerLogged(events, "Forcibly timing out HTTP/2 client")
