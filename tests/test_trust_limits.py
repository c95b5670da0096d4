"""
The tunnel listener's limits against peers that hold connections (the real
service in process, real TLS on loopback): a connection that does not
finish its TLS handshake is closed after the handshake deadline, an
enrolment API request that trickles its bytes is closed at its deadline
however often a byte comes, connections beyond the caps per address
and in total are closed at once, and refused registrations do not fill the
audit log.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from appproxy.state import connectors
from appproxy.trust import api
from appproxy.trust.listener import ListenerFactory
from tests.trust_harness import TUNNEL_HOST, TrustDeployment, start


class _Watch(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: Deferred[float] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.lost.callback(time.monotonic())

    @property
    def open(self) -> bool:
        return not self.lost.called


class LimitTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.d: TrustDeployment = start(self)
        assert self.d.service is not None
        self.listener: ListenerFactory = self.d.service.trust.factory
        self.watches: list[_Watch] = []
        self.addCleanup(self._close)

    def _close(self) -> None:
        for watch in self.watches:
            if watch.open and watch.transport is not None:
                watch.transport.abortConnection()  # type: ignore[attr-defined]

    @inlineCallbacks
    def raw(self, source: str = "127.0.0.1") -> Generator[Deferred[Any], Any, _Watch]:
        """A TCP connection to the tunnel listener that sends nothing."""
        watch = _Watch()
        endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", self.d.tunnel_port, bindAddress=(source, 0)
        )
        yield connectProtocol(endpoint, watch)
        self.watches.append(watch)
        return watch

    @inlineCallbacks
    def until(self, condition: Any) -> Generator[Deferred[Any], Any, None]:
        for _ in range(1000):  # 10 s at most
            if condition():
                return
            yield deferLater(reactor, 0.01, lambda: None)
        self.fail("timed out")

    @inlineCallbacks
    def test_handshake_deadline(self) -> Generator[Deferred[Any], Any, None]:
        """A TCP connection that never sends a ClientHello is closed."""
        self.listener.handshake_timeout = 0.5
        started = time.monotonic()
        watch = yield self.raw()
        lost_at = yield watch.lost
        self.assertGreater(lost_at - started, 0.4)
        self.assertEqual(self.listener.open.total(), 0)

    @inlineCallbacks
    def test_request_deadline(self) -> Generator[Deferred[Any], Any, None]:
        """One byte every 0.2 s resets the idle timeout but not the request's deadline."""
        self.patch(api, "REQUEST_DEADLINE", 1.0)
        options = optionsForClientTLS(
            TUNNEL_HOST,
            trustRoot=Certificate.loadPEM(self.d.ca.cert_pem),
            acceptableProtocols=[b"http/1.1"],
        )
        slow = _Watch()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.d.tunnel_port)
        yield connectProtocol(wrapClientTLS(options, endpoint), slow)
        self.watches.append(slow)
        started = time.monotonic()
        transport: Any = slow.transport
        transport.write(b"POST /v1/register HTTP/1.1\r\nHost: x\r\ncontent-length: 100\r\n\r\n")
        for _ in range(50):  # 10 s at most
            if not slow.open:
                break
            transport.write(b" ")
            yield deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(slow.open, "the trickled request was not timed out")
        lost_at = yield slow.lost
        self.assertLess(lost_at - started, 5.0)
        # Requests answered in time are not affected.
        status, _ = yield self.d.call("GET", "/v1/ca")
        self.assertEqual(status, 200)

    @inlineCallbacks
    def test_caps(self) -> Generator[Deferred[Any], Any, None]:
        """Beyond 2 per address or 3 in all, a new connection is closed at once."""
        self.listener.max_per_address = 2
        self.listener.max_connections = 3
        first = [(yield self.raw()), (yield self.raw())]
        yield self.until(lambda: self.listener.open["127.0.0.1"] == 2)
        third = yield self.raw()
        yield third.lost  # over the address's cap
        other = yield self.raw("127.0.0.2")
        yield self.until(lambda: self.listener.open.total() == 3)
        fourth = yield self.raw("127.0.0.3")
        yield fourth.lost  # over the total
        self.assertTrue(all(w.open for w in [*first, other]))
        # Once one closes, the address may connect again: the API answers.
        first[0].transport.abortConnection()
        yield first[0].lost
        yield self.until(lambda: self.listener.open["127.0.0.1"] == 1)
        status, _ = yield self.d.call("GET", "/v1/ca")
        self.assertEqual(status, 200)


class AuditFloodTests(TestCase):
    """Refused registrations cannot fill the disk with audit rows."""

    timeout = 30

    def setUp(self) -> None:
        self.d: TrustDeployment = start(self)
        _, self.csr = self.d.new_csr()

    def register(self, token: str) -> Deferred[Any]:
        body = {"token": token, "csr": self.csr, "host_name": "h", "version": "1"}
        result: Deferred[Any] = self.d.call("POST", "/v1/register", body)
        return result

    def refused(self) -> list[connectors.AuditEvent]:
        with self.d.database() as db:
            events = connectors.read_audit(db, since=None, limit=1000)
        return [e for e in events if e.event == "register-refused"]

    @inlineCallbacks
    def test_oversized_tokens_not_audited(self) -> Generator[Deferred[Any], Any, None]:
        for token in ("appproxy-enrol." + "A" * 250 * 1024, "eyJ" + "A" * 100 * 1024):
            status, answer = yield self.register(token)
            self.assertEqual((status, answer["error"]), (400, "bad_request"))
        self.assertEqual(self.refused(), [])

    @inlineCallbacks
    def test_refusals_rate_limited(self) -> Generator[Deferred[Any], Any, None]:
        """
        One row per address and reason per interval, with a short actor;
        the next row counts those left out.
        """
        assert self.d.service is not None
        gate = self.d.service.trust.gate
        # An interval far longer than the 20 requests take, however slow
        # the machine; then a short one, which has passed after a wait.
        gate.audit.interval = 300.0
        junk = "appproxy-enrol." + "A" * 900
        for _ in range(20):
            status, answer = yield self.register(junk)
            self.assertEqual((status, answer["error"]), (401, "invalid_token"))
        [event] = self.refused()
        self.assertEqual(event.actor, "token:(malformed)")
        self.assertEqual(event.address, "127.0.0.1")
        gate.audit.interval = 0.2
        yield deferLater(reactor, 0.3, lambda: None)  # the interval passes
        status, _ = yield self.register(junk)
        self.assertEqual(status, 401)
        _, second = self.refused()
        self.assertEqual(second.detail["repeated"], 19)
