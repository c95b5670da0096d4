"""
What the connector must not pass on: query strings (and the secrets in
them) to any log line of the service or the connector, and the response
headers a backend names in its C{Connection} header to the user.  Through
the real service and connector on loopback (L{tests.deployment}).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from appproxy.http.redact import REDACTED, redact_query
from tests import deployment

SECRETS = ("SEKRIT123", "hunter2", "bare-secret")
#: A query parameter's name or value: none of what ends or splits a query.
_PART = r"[^\s#\"'<>?&;=]+"


class RawBackend(Protocol):
    """
    Answers every request with a fixed HTTP/1.1 response whose Connection
    header names other headers.
    """

    RESPONSE = (
        b"HTTP/1.1 200 OK\r\n"
        b"Connection: keep-alive, X-Secret\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"X-Secret: s\r\n"
        b"Connection: X-Other\r\n"
        b"X-Other: o\r\n"
        b"X-Fine: ok\r\n"
        b"Content-Length: 2\r\n"
        b"\r\n"
        b"ok"
    )

    def __init__(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.transport.write(self.RESPONSE)  # type: ignore[union-attr]


class ConnectionHeaderTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_connection_named_headers_dropped(self) -> Generator[Deferred[Any], Any, None]:
        # forProtocol is typed as a Factory, listenTCP wants a ServerFactory.
        backend = ServerFactory.forProtocol(RawBackend)
        port = reactor.listenTCP(0, backend, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{cast(IPv4Address, port.getHost()).port}/"
        d = yield deployment.start(
            self,
            apps=[
                {
                    "name": "raw",
                    "external_url": f"https://raw.{deployment.DOMAIN}/",
                    "internal_url": url,
                }
            ],
        )
        for _ in range(2):  # the second on a reused backend connection
            response = yield d.client().get(d.url("raw", "/"))
            body = yield response.content()
            self.assertEqual((response.code, body), (200, b"ok"))
            headers = response.headers
            self.assertEqual(headers.getRawHeaders(b"x-fine"), [b"ok"])
            for name in (b"x-secret", b"x-other", b"keep-alive", b"connection"):
                self.assertIsNone(headers.getRawHeaders(name), name)


class QueryLogTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_no_secret_in_logs(self) -> Generator[Deferred[Any], Any, None]:
        """
        A request with secrets in its query to a backend that is down: no
        log line of the service or the connector, at any level, holds them.
        """
        nothing = ServerFactory.forProtocol(Protocol)
        closed = reactor.listenTCP(0, nothing, interface="127.0.0.1")  # type: ignore[arg-type]
        down = cast(IPv4Address, closed.getHost()).port
        yield maybeDeferred(closed.stopListening)
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        d = yield deployment.start(
            self,
            apps=[
                {
                    "name": "echo",
                    "external_url": f"https://echo.{deployment.DOMAIN}/",
                    "internal_url": f"http://127.0.0.1:{down}/",
                }
            ],
        )
        path = "/down?access_token=SEKRIT123&password=hunter2&bare-secret"
        response = yield d.client().get(d.url("echo", path))
        yield response.content()
        self.assertEqual(response.code, 502)
        lines = [formatEvent(e) + " " + repr(e) for e in events]
        mentions = [line for line in lines if "/down" in line]
        # The failure is logged (by both ends), with the parameter names.
        self.assertTrue(any("access_token=" + REDACTED in line for line in mentions), mentions)
        for secret in SECRETS:
            self.assertEqual([line for line in lines if secret in line], [], secret)


class RedactTests(SynchronousTestCase):
    def test_examples(self) -> None:
        self.assertEqual(
            redact_query("http://b:1/down?access_token=S&password=h refused."),
            "http://b:1/down?access_token=...&password=... refused.",
        )
        self.assertEqual(redact_query("/p?S;a=1#frag"), "/p?...;a=...#frag")
        self.assertEqual(redact_query("no query? none."), "no query? none.")
        self.assertEqual(redact_query("/p"), "/p")

    @given(st.from_regex(_PART, fullmatch=True), st.from_regex(_PART, fullmatch=True))
    def test_value_never_kept(self, name: str, value: str) -> None:
        """Whatever the value (up to where a query ends), only the name is kept."""
        text = f"GET /x?{name}={value}&other={value} failed"
        self.assertEqual(redact_query(text), f"GET /x?{name}={REDACTED}&other={REDACTED} failed")
