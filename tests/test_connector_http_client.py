"""
The connector's HTTP client for internal apps (L{BackendClient}: an Agent
and a persistent pool per app) against a real loopback backend that parses
requests with C{h11} and answers with canned bytes, well-formed or not:
malformed responses refused, framing both ways, pooling and when a
connection must not be reused, back pressure, cancellation, the error kinds
users are shown, backend TLS.
"""

from __future__ import annotations

from typing import Any

import h11
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import deferLater
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from appproxy.connector.backend import (
    BackendApp,
    BackendClient,
    classify_failure,
    connection_tokens,
)
from appproxy.daemon import pki

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
#: Responses by path; C{{body}} is replaced by the request body's length.
ANSWERS: dict[bytes, bytes] = {
    b"/ok": OK,
    b"/close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"/chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    ),
    b"/eof": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    b"/head": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
    b"/204": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    b"/304": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
    b"/1xx": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK,
    b"/fold": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 2\r\n\r\nok",
    b"/hop": (
        b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
        b"Content-Length: 2\r\n\r\nok"
    ),
    b"/body": b"HTTP/1.1 200 OK\r\nX-Body: {body}\r\nContent-Length: 0\r\n\r\n",
    b"/big": b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"x" * 300_000,
    b"/short": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    b"/early": b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n",
}
#: Malformed responses: each must fail the request, as a malformed response.
MALFORMED: dict[bytes, bytes] = {
    b"/lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok",
    b"/sign": b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
    b"/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"/status": b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/version": b"HTTP/9 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/space-name": b"HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 2\r\n\r\nok",
    b"/garbage": b"<html>hello</html>\r\n\r\n",
}
#: Refused, but Twisted's client fails inside (a KeyError): told as a reset.
UNKNOWN_CODING = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok"
#: Responses whose head is fine but whose body is not.
BAD_BODY: dict[bytes, bytes] = {
    b"/chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
}
ANSWERS.update(MALFORMED)
ANSWERS[b"/te"] = UNKNOWN_CODING
ANSWERS.update(BAD_BODY)


class Backend(Protocol):
    """Parses requests with h11; answers each from L{ANSWERS} by path."""

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.conn = h11.Connection(h11.SERVER)
        self.target = b""
        self.body = 0

    def dataReceived(self, data: bytes) -> None:
        self.conn.receive_data(data)
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            if isinstance(event, h11.Request):
                self.target, self.body = event.target, 0
                self.factory.requests.append(event)
                if self.target == b"/early":
                    self.transport.write(ANSWERS[b"/early"])  # type: ignore[union-attr]
            elif isinstance(event, h11.Data):
                self.body += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.answer()
                return
            else:
                return

    def answer(self) -> None:
        transport = self.transport
        assert transport is not None
        if self.target in (b"/early", b"/never"):
            return
        if self.target == b"/idle-close":
            # Answers, then closes the connection while it sits in the pool.
            transport.write(OK)
            transport.loseConnection()
            return
        raw = ANSWERS.get(self.target, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        transport.write(raw.replace(b"{body}", b"%d" % self.body))
        if self.target in (b"/close", b"/eof", b"/short") or raw is ANSWERS.get(b"/garbage"):
            transport.loseConnection()
        self.conn = h11.Connection(h11.SERVER)  # the next request, if any


@inlineCallbacks
def settle() -> Any:
    """Let closes and returns to the pool happen (a few reactor turns)."""
    for _ in range(5):
        yield deferLater(reactor, 0.01, lambda: None)


class Collect(Protocol):
    """Collects a response body; fires C{done} with (bytes, reason)."""

    def __init__(self) -> None:
        self.done: Deferred[tuple[bytes, Failure]] = Deferred()
        self.data: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.done.callback((b"".join(self.data), reason))


class Body:
    """A request body producer: the whole body at once, known length or not."""

    def __init__(self, data: bytes, known: bool = True) -> None:
        self.data = data
        self.length: int | object = len(data) if known else UNKNOWN_LENGTH

    def startProducing(self, consumer: Any) -> Deferred[None]:
        for i in range(0, len(self.data), 1000):
            consumer.write(self.data[i : i + 1000])
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def fields(*pairs: tuple[bytes, bytes]) -> Headers:
    """Header fields as Twisted's C{Headers} (the client takes a list too)."""
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name, value)
    return headers


class ClientTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.factory = Factory.forProtocol(Backend)
        self.factory.noisy = False
        self.factory.connections = 0  # type: ignore[attr-defined]
        self.factory.requests = []  # type: ignore[attr-defined]
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.settle)
        self.client = BackendClient(reactor)
        self.addCleanup(self.client.close)
        self.addCleanup(self.settle)
        self.app = BackendApp("web", timeout=10.0)

    @property
    def connections(self) -> int:
        return int(self.factory.connections)  # type: ignore[attr-defined]

    def url(self, path: bytes, scheme: bytes = b"http") -> bytes:
        port = self.port.getHost().port  # type: ignore[attr-defined]
        return b"%s://127.0.0.1:%d%s" % (scheme, port, path)

    def request(self, path: bytes, method: bytes = b"GET", body: Any = None) -> Deferred[Any]:
        port = self.port.getHost().port  # type: ignore[attr-defined]
        headers = fields((b"host", b"127.0.0.1:%d" % port), (b"x-request-id", b"r1"))
        return self.client.request(
            self.app, method, self.url(path), headers, body, reactor, timed=False
        )

    @inlineCallbacks
    def fetch(self, path: bytes, method: bytes = b"GET", body: Any = None) -> Any:
        response = yield self.request(path, method, body)
        collect = Collect()
        response.deliverBody(collect)
        data, reason = yield collect.done
        return response, data, reason

    def settle(self) -> Any:
        return settle()

    @inlineCallbacks
    def test_pooled(self) -> Any:
        """Three requests in turn use one connection."""
        for _ in range(3):
            response, data, reason = yield self.fetch(b"/ok")
            self.assertEqual((response.code, data), (200, b"ok"))
            self.assertTrue(reason.check(ResponseDone))
        self.assertEqual(self.connections, 1)

    @inlineCallbacks
    def test_connection_close_not_reused(self) -> Any:
        yield self.fetch(b"/close")
        yield self.settle()
        yield self.fetch(b"/ok")
        self.assertEqual(self.connections, 2)

    @inlineCallbacks
    def test_framing(self) -> Any:
        """Chunked, up to the end of the connection, and 1xx before the answer."""
        response, data, _ = yield self.fetch(b"/chunked")
        self.assertEqual((data, response.length), (b"abcde", UNKNOWN_LENGTH))
        response, data, reason = yield self.fetch(b"/eof")
        self.assertEqual(data, b"until the end")
        self.assertTrue(reason.check(ResponseDone, PotentialDataLoss))
        response, data, _ = yield self.fetch(b"/1xx")
        self.assertEqual((response.code, data), (200, b"ok"))

    @inlineCallbacks
    def test_bodiless(self) -> Any:
        """HEAD, 204 and 304 have no body whatever their length says; reused."""
        for path, method, code in ((b"/head", b"HEAD", 200), (b"/204", b"GET", 204)):
            response, data, reason = yield self.fetch(path, method)
            self.assertEqual((response.code, data, response.length), (code, b"", 0))
            self.assertTrue(reason.check(ResponseDone))
        response, data, _ = yield self.fetch(b"/304")
        self.assertEqual((response.code, data), (304, b""))
        response, data, _ = yield self.fetch(b"/ok")
        self.assertEqual(data, b"ok")
        self.assertEqual(self.connections, 1)

    @inlineCallbacks
    def test_connection_tokens_noted(self) -> Any:
        """
        The headers the backend's Connection names are noted for the
        connector (which drops them), as well as Connection's own.
        """
        response, _, _ = yield self.fetch(b"/hop")
        self.assertEqual(connection_tokens(response), frozenset({b"x-secret"}))
        self.assertEqual(response.headers.getRawHeaders(b"x-secret"), [b"1"])

    @inlineCallbacks
    def test_malformed_responses(self) -> Any:
        """Each is refused: a 502 'backend-error', and the connection is dropped."""
        for path in MALFORMED:
            try:
                yield self.request(path)
            except Exception:
                error = classify_failure(Failure(), "http://internal/", 10.0)
            else:
                self.fail(f"{path!r} accepted")
            self.assertEqual((error.status, error.kind, path), (502, "backend-error", path))
            self.assertIn("malformed response", error.detail, path)
        try:
            yield self.request(b"/te")
        except Exception:
            error = classify_failure(Failure(), "http://internal/", 10.0)
        else:
            self.fail("an unknown transfer coding was accepted")
        self.assertEqual(error.status, 502)
        yield self.settle()
        self.assertEqual(self.connections, len(MALFORMED) + 1)

    @inlineCallbacks
    def test_bad_bodies(self) -> Any:
        """A bad chunk size or a body cut short fails the body, not as done."""
        for path in (*BAD_BODY, b"/short"):
            response, _, reason = yield self.fetch(path)
            self.assertEqual(response.code, 200)
            self.assertFalse(reason.check(ResponseDone), path)
        yield self.settle()
        yield self.fetch(b"/ok")
        self.assertEqual(self.connections, 3)

    @inlineCallbacks
    def test_request_bodies(self) -> Any:
        """Content-Length and chunked request bodies reach the backend whole."""
        data = b"y" * 50_000
        for known in (True, False):
            response, _, _ = yield self.fetch(b"/body", b"POST", Body(data, known))
            self.assertEqual(response.headers.getRawHeaders(b"x-body"), [b"50000"])
        first, second = self.factory.requests  # type: ignore[attr-defined]
        self.assertIn((b"content-length", b"50000"), list(first.headers))
        self.assertIn((b"transfer-encoding", b"chunked"), list(second.headers))
        # A POST without a body says so.
        yield self.fetch(b"/body", b"POST")
        self.assertIn((b"content-length", b"0"), list(self.factory.requests[2].headers))  # type: ignore[attr-defined]
        self.assertEqual(self.connections, 1)

    @inlineCallbacks
    def test_early_response_not_reused(self) -> Any:
        """An answer before the body ended: delivered, the connection dropped."""

        class Endless(Body):
            def startProducing(self, consumer: Any) -> Deferred[None]:
                consumer.write(b"z" * 100)
                return Deferred()  # never ends

        response, _, reason = yield self.fetch(b"/early", b"POST", Endless(b"", known=False))
        self.assertEqual(response.code, 413)
        self.assertTrue(reason.check(ResponseDone))
        yield self.settle()
        yield self.fetch(b"/ok")
        self.assertEqual(self.connections, 2)

    @inlineCallbacks
    def test_unread_body_not_reused(self) -> Any:
        """A body its reader stopped: the connection is dropped, not pooled."""
        response = yield self.request(b"/big")

        class Stop(Collect):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                self.transport.stopProducing()  # type: ignore[union-attr]

        stop = Stop()
        response.deliverBody(stop)
        _, reason = yield stop.done
        self.assertFalse(reason.check(ResponseDone))
        yield self.fetch(b"/ok")
        self.assertEqual(self.connections, 2)

    @inlineCallbacks
    def test_pause_resume(self) -> Any:
        """A paused body resumes where it stopped; nothing lost or reordered."""
        response = yield self.request(b"/big")

        class Slow(Collect):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                self.transport.pauseProducing()  # type: ignore[union-attr]
                reactor.callLater(0.001, self.transport.resumeProducing)  # type: ignore[union-attr]

        slow = Slow()
        response.deliverBody(slow)
        data, reason = yield slow.done
        self.assertEqual(data, b"x" * 300_000)
        self.assertTrue(reason.check(ResponseDone))
        yield self.fetch(b"/ok")
        self.assertEqual(self.connections, 1)

    @inlineCallbacks
    def test_idle_close_retried_once(self) -> Any:
        """
        The backend closes a connection just returned to the pool, as the
        next request goes out on it: a GET is sent again on a new
        connection; a POST with a body is not (it fails as a reset).
        """
        yield self.fetch(b"/idle-close")
        # Sent at once, from the body's end: on the pooled connection.
        _, data, _ = yield self.fetch(b"/ok")
        self.assertEqual(data, b"ok")
        self.assertEqual(self.connections, 2)
        yield self.fetch(b"/idle-close")
        try:
            yield self.request(b"/ok", b"POST", Body(b"data"))
        except Exception:
            error = classify_failure(Failure(), "http://internal/", 10.0)
        else:
            self.fail("a POST was sent twice")
        self.assertEqual(error.kind, "backend-reset")

    @inlineCallbacks
    def test_folded_header_unfolded(self) -> Any:
        """obs-fold in a response is joined into one line (RFC 9112 5.2)."""
        response, _, _ = yield self.fetch(b"/fold")
        [value] = response.headers.getRawHeaders(b"x-a")
        self.assertEqual(value.split(), [b"1", b"folded"])

    def test_unsendable(self) -> None:
        """Refused at once, before any connection: a space, non-ASCII, '@'."""
        for path, method in ((b"/a b", b"GET"), (b"/caf\xc3\xa9", b"GET"), (b"/", b"GE@T")):
            self.assertRaises(ValueError, self.request, path, method)
        self.assertEqual(self.connections, 0)

    @inlineCallbacks
    def test_cancel_drops_connection(self) -> Any:
        """A cancelled request (the stream's timeout) drops its connection."""
        d = self.request(b"/never")
        yield self.settle()
        d.cancel()
        try:
            yield d
        except Exception:
            error = classify_failure(Failure(), "http://internal/", 10.0)
        else:
            self.fail("a cancelled request answered")
        self.assertEqual(error.kind, "timeout")
        yield self.settle()
        yield self.fetch(b"/ok")
        self.assertEqual(self.connections, 2)

    @inlineCallbacks
    def test_timeout(self) -> Any:
        """Timed by the client: a 504 'timeout' when no head comes in time."""
        self.app = BackendApp("web", timeout=0.2)
        port = self.port.getHost().port  # type: ignore[attr-defined]
        d = self.client.request(
            self.app, b"GET", self.url(b"/never"), fields((b"host", b"x:%d" % port)), None, reactor
        )
        try:
            yield d
        except Exception:
            error = classify_failure(Failure(), "http://internal/", 0.2)
        self.assertEqual((error.status, error.kind), (504, "timeout"))

    @inlineCallbacks
    def test_refused(self) -> Any:
        port = self.port.getHost().port  # type: ignore[attr-defined]
        url = self.url(b"/ok")
        yield self.port.stopListening()
        try:
            yield self.client.request(
                self.app, b"GET", url, fields((b"host", b"x")), None, reactor, timed=False
            )
        except Exception:
            error = classify_failure(Failure(), f"http://127.0.0.1:{port}/", 10.0)
        self.assertEqual(error.kind, "backend-refused")


class TLSTests(TestCase):
    """Backend TLS: the app's CA bundle is trusted; a certificate it did not sign is not."""

    timeout = 30

    def setUp(self) -> None:
        ca = pki.generate_ca("backend CA")
        leaf = pki.issue_server_certificate(ca, ["localhost"])
        self.ca_pem = ca.cert_pem.decode()
        cert = PrivateCertificate.loadPEM(leaf.cert_pem + leaf.key_pem)
        factory = Factory.forProtocol(Backend)
        factory.noisy = False
        factory.connections = 0  # type: ignore[attr-defined]
        factory.requests = []  # type: ignore[attr-defined]
        tls = TLSMemoryBIOFactory(cert.options(), False, factory)
        self.port = reactor.listenTCP(0, tls, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(self.port.stopListening)
        self.client = BackendClient(reactor)
        self.addCleanup(self.client.close)
        self.addCleanup(settle)

    def get(self, app: BackendApp) -> Deferred[Any]:
        port = self.port.getHost()
        assert isinstance(port, IPv4Address)
        url = b"https://localhost:%d/ok" % port.port
        return self.client.request(app, b"GET", url, fields((b"host", b"localhost")), None, reactor)

    @inlineCallbacks
    def test_app_ca_trusted(self) -> Any:
        response = yield self.get(BackendApp("web", ca_pem=self.ca_pem))
        collect = Collect()
        response.deliverBody(collect)
        data, _ = yield collect.done
        self.assertEqual(data, b"ok")

    @inlineCallbacks
    def test_unknown_ca_refused(self) -> Any:
        other = pki.generate_ca("another CA").cert_pem.decode()
        try:
            yield self.get(BackendApp("web", ca_pem=other))
        except Exception:
            error = classify_failure(Failure(), "https://localhost/", 10.0)
        else:
            self.fail("an unknown CA was trusted")
        self.assertEqual(error.kind, "backend-tls")

    @inlineCallbacks
    def test_unverified_when_configured(self) -> Any:
        response = yield self.get(BackendApp("web", verify_tls=False))
        self.assertEqual(response.code, 200)
        response.deliverBody(Protocol())
