"""
One bad stream never costs other users their requests, end to end on
loopback (the real service and connector, real TLS): a hostile backend, a
request the connector's HTTP client cannot send, a user path that looks
like control traffic, a queue at full capacity.  Each time a concurrent
request on the same tunnel connection completes and the connection stays.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests import deployment
from tests.deployment import DOMAIN, Deployment, LoopbackTLS, h2_exchange, raw_exchange

#: The hostile backend's answers, by path.
ANSWERS = {
    b"/nul": b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    b"/length": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok",
    b"/length-sign": b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
}
SLOW = 1.0


class HostileBackend(Protocol):
    """
    Reads one request head and answers from L{ANSWERS}, or after L{SLOW}
    seconds with a good response for C{/slow}; then closes.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.call: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer or self.call is not None:
            return
        path = self.buffer.split(b" ", 2)[1]
        if path == b"/slow":
            self.call = reactor.callLater(
                SLOW, self.answer, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow"
            )
            return
        self.answer(ANSWERS.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))

    def answer(self, raw: bytes) -> None:
        assert self.transport is not None
        self.transport.write(raw)
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()


@inlineCallbacks
def wait_until(check: Any, timeout: float = 10.0) -> Any:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        yield deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("condition not met in time")


class IsolationTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def start(self, apps: Any = None, capacity: int = 100) -> Any:
        d = Deployment(
            self, apps or [{"name": "web", "external_url": f"https://web.{DOMAIN}/"}], 5.0
        )
        d.start_service()
        d.start_connector(connections=1, capacity=capacity)
        yield d.wait_for_connections(1)
        self.connector = d.connectors[0].factory
        self.tunnel = set(self.connector.protocols)
        self.assertEqual(len(self.tunnel), 1)
        return d

    def assert_same_tunnel(self) -> None:
        self.assertEqual(set(self.connector.protocols), self.tunnel)

    @inlineCallbacks
    def test_hostile_backend(self) -> Any:
        """
        A backend header with a NUL byte, a bad Content-Length: 502 for that
        request (the connector's HTTP client refuses each as a malformed
        response); the slow request on the same tunnel connection completes.
        """
        hostile = reactor.listenTCP(
            0,
            Factory.forProtocol(HostileBackend),  # type: ignore[arg-type]
            interface="127.0.0.1",
        )
        self.addCleanup(hostile.stopListening)
        internal = f"http://127.0.0.1:{cast(IPv4Address, hostile.getHost()).port}/"
        d = yield self.start(
            [{"name": "web", "external_url": f"https://web.{DOMAIN}/", "internal_url": internal}]
        )
        client = d.client()
        slow: Deferred[Any] = client.get(d.url("web", "/slow"))
        for path in ANSWERS:
            response = yield client.get(d.url("web", path.decode()))
            yield response.content()
            self.assertEqual(response.code, 502, path)
        response = yield slow
        self.assertEqual(response.code, 200)
        self.assertEqual((yield response.content()), b"slow")
        self.assert_same_tunnel()

    @inlineCallbacks
    def test_unsendable_request_lines(self) -> Any:
        """
        A path with a space or a raw UTF-8 byte, a method with C{@} (HTTP/2)
        and a raw UTF-8 byte in an HTTP/1.1 path: 400, nothing forwarded; a
        slow request on the same tunnel connection completes.
        """
        d = yield self.start()
        slow: Deferred[Any] = d.client().get(d.url("web", f"/slow?delay={SLOW}"))
        yield wait_until(lambda: d.backend.hits == 1)
        results = yield h2_exchange(
            d, [("GET", "/a b", b""), ("GET", "/café", b""), ("GE@T", "/", b"")]
        )
        self.assertEqual([status for status, _ in results], [400, 400, 400])
        raw = yield raw_exchange(
            d,
            f"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: web.{DOMAIN}\r\nConnection: close\r\n\r\n".encode(
                "latin-1"
            ),
        )
        self.assertTrue(raw.startswith(b"HTTP/1.1 400"), raw[:100])
        response = yield slow
        self.assertEqual(response.code, 200)
        self.assertEqual(d.backend.hits, 1)
        self.assert_same_tunnel()

    @inlineCallbacks
    def test_settings_path_reaches_backend(self) -> Any:
        """
        A user request to C{/.appproxy/config} is an ordinary request.
        """
        d = yield self.start()
        for method in ("GET", "POST"):
            response = (
                yield d.client()
                .request(
                    method,
                    d.url("web", "/.appproxy/config"),
                    data=b"{}" if method == "POST" else None,
                )
                .addTimeout(10, reactor)
            )
            self.assertEqual(response.code, 200)
            body = yield response.json()
            self.assertEqual((body["method"], body["uri"]), (method, "/.appproxy/config"))
        self.assert_same_tunnel()

    @inlineCallbacks
    def test_full_capacity_queue(self) -> Any:
        """
        Capacity 1: a user who leaves while the next request waits gives it
        the room once the stream is reset; the next request gets its answer,
        never "400 The request cannot be forwarded".
        """
        d = yield self.start(capacity=1)
        endpoint = LoopbackTLS(d.public_port, d.ca.cert_pem).endpointForURI(
            type("U", (), {"host": f"web.{DOMAIN}".encode()})()
        )
        leaver = yield connectProtocol(endpoint, Protocol())
        leaver.transport.write(
            f"GET /slow?delay=30 HTTP/1.1\r\nHost: web.{DOMAIN}\r\n\r\n".encode()
        )
        yield wait_until(lambda: d.backend.hits == 1)
        waiting: Deferred[Any] = d.client().get(d.url("web", "/echo"))
        assert d.service is not None
        service = d.service
        yield wait_until(lambda: service.groups["default"].waiting == 1)
        leaver.transport.abortConnection()
        response = yield waiting
        self.assertEqual(response.code, 200)
        yield response.content()
        self.assert_same_tunnel()

    @inlineCallbacks
    def test_reload_removes_app_in_flight(self) -> Any:
        """
        A reload removes an app while one of its requests is in flight: that
        request ends with a 502 page; the other app's request on the same
        tunnel connection completes.
        """
        d = yield self.start(
            [
                {"name": "web", "external_url": f"https://web.{DOMAIN}/"},
                {"name": "gone", "external_url": f"https://gone.{DOMAIN}/"},
            ]
        )
        assert d.service is not None
        service = d.service
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        client = d.client()
        gone: Deferred[Any] = client.get(d.url("gone", f"/slow?delay={SLOW}"))
        kept: Deferred[Any] = client.get(d.url("web", f"/slow?delay={SLOW}"))
        yield wait_until(lambda: d.backend.hits == 2)
        d.apps.pop()
        d.write_service_config(d.public_port, d.tunnel_port)
        service.reload()
        response = yield gone
        page = yield response.text()
        self.assertEqual(response.code, 502)
        (rid,) = response.headers.getRawHeaders("x-request-id")
        self.assertIn(f"gone (https://gone.{DOMAIN}/)", page)
        self.assertIn("Application withdrawn", page)
        response = yield kept
        self.assertEqual(response.code, 200)
        yield response.content()
        self.assert_same_tunnel()
        # Handled, not contained: one clear line with the request id, no
        # traceback, nothing for the stream error boundary.
        self.assertEqual([e for e in events if "log_failure" in e], [])
        lines = [formatEvent(e) for e in events if "removed by a reload" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"{rid} (gone)", lines[0])


__all__ = ["deployment"]
