"""
Idle timeouts with both ends of the tunnel together in memory (C{iosim}) and
a fake internal app behind the connector's real backend client: a slow but
steady upload far longer than the app's timeout is answered; a response
body that stalls after its headers is cut at both ends and the internal
app's connection is stopped.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from appproxy.connector.backend import BackendClient
from appproxy.connector.tunnel import ConnectorTunnelFactory
from appproxy.tunnel.queue import ConnectorGroups
from appproxy.tunnel.service import RESPONSE_GRACE, ServiceTunnelFactory
from tests.tunnel_memory import APP, FakeExchange, job, join_ends

TIMEOUT = APP.backend_timeout


class _BodyTransport:
    """The internal app's connection, as the response body's producer."""

    stopped = False

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True


class _Request:
    """What the response answers (the backend client keys its parser by it)."""


class _Response:
    def __init__(self) -> None:
        self.request = _Request()
        self.code = 200
        self.headers = Headers()
        self.length = UNKNOWN_LENGTH
        self.protocol: Protocol | None = None
        self.transport = _BodyTransport()

    def deliverBody(self, protocol: Protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


class _App:
    """The internal app: takes the request body at once, answers when told."""

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.answer: Deferred[Any] | None = None

    def request(self, method: bytes, url: bytes, headers: Any, body: Any) -> Deferred[Any]:
        if body is not None:
            body.startProducing(self)
        self.answer = Deferred()
        return self.answer

    def write(self, data: bytes) -> None:
        self.body.append(data)

    def respond(self) -> _Response:
        assert self.answer is not None
        response = _Response()
        self.answer.callback(response)
        return response


class BothEndsIdleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.app = _App()
        self.patch(BackendClient, "_agent_for", lambda _self, _app: self.app)
        groups = ConnectorGroups(self.clock, 3600.0)
        self.group = groups["g"]
        self.service = ServiceTunnelFactory(
            self.clock, groups, [APP], ping_interval=1e6
        ).buildProtocol(None)
        connector_factory = ConnectorTunnelFactory(self.clock, BackendClient(self.clock), 4, 1e6)
        self.connector = connector_factory.buildProtocol(None)
        self.pump = join_ends(self.service, self.connector, self.group)
        self.assertTrue(self.service.ready)
        self.addCleanup(self.close)

    def close(self) -> None:
        for proto in (self.service, self.connector):
            if proto.connected:
                proto.connectionLost()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.pump.flush()

    def test_slow_steady_upload_answered(self) -> None:
        exchange = FakeExchange()
        self.group.put(job(b"/up", b"POST", has_body=True, exchange=exchange), lambda _: None)
        self.pump.flush()
        self.assertEqual(exchange.names(), ["opened", "body-wanted"])
        for _ in range(8):
            self.advance(TIMEOUT * 0.7)
            exchange.stream.write_body(b"x" * 100)
            self.pump.flush()
        exchange.stream.end_body()
        self.pump.flush()
        self.assertEqual(b"".join(self.app.body), b"x" * 800)
        self.advance(TIMEOUT - 1)
        response = self.app.respond()
        self.pump.flush()
        assert response.protocol is not None
        response.protocol.dataReceived(b"done")
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.pump.flush()
        self.assertEqual(exchange.events[2], ("response", 200))
        self.assertEqual(exchange.names()[-1], "ended")
        self.assertEqual(b"".join(e[1] for e in exchange.events if e[0] == "data"), b"done")

    def test_stalled_response_body_cut(self) -> None:
        exchange = FakeExchange()
        self.group.put(job(b"/dl", exchange=exchange), lambda _: None)
        self.pump.flush()
        response = self.app.respond()
        self.pump.flush()
        assert response.protocol is not None
        response.protocol.dataReceived(b"abc")
        self.pump.flush()
        self.assertEqual(exchange.names(), ["opened", "response", "data"])
        self.advance(TIMEOUT + RESPONSE_GRACE - 1)
        self.assertEqual(exchange.names()[-1], "data")
        self.advance(2)
        self.assertEqual(exchange.names()[-1], "lost")
        self.assertTrue(response.transport.stopped)
        self.assertTrue(self.service.connected)
