"""
The header deadline's timer on a keep-alive HTTP/1.1 connection
(L{appproxy.frontend.deadlines.DeadlineHTTPChannel}): one timer per
connection, moved on from request to request, not a new one per request;
parked between requests, it ends nothing.

The real channel over L{StringTransport}, with a L{Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web import http

from appproxy.config.model import ClientLimits
from appproxy.frontend.deadlines import ClientDeadlines, DeadlineHTTPChannel

TIMEOUT = 10.0
GET = b"GET / HTTP/1.1\r\nHost: web.example\r\n\r\n"


class Answered(http.Request):
    """Answers every request at once with an empty 204."""

    def process(self) -> None:
        self.setResponseCode(204)
        self.finish()


def connect() -> tuple[DeadlineHTTPChannel, StringTransport, Clock]:
    clock = Clock()
    channel = DeadlineHTTPChannel()
    channel.deadlines = ClientDeadlines(clock, ClientLimits(header_timeout=TIMEOUT))
    channel.callLater = clock.callLater  # type: ignore[assignment]
    channel.timeOut = None
    channel.requestFactory = Answered
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport, clock


class DeadlineTimerTests(TestCase):
    def tearDown(self) -> None:
        for channel in self._channels:
            channel.connectionLost(Failure(ConnectionDone()))

    def setUp(self) -> None:
        self._channels: list[DeadlineHTTPChannel] = []

    def open(self) -> tuple[DeadlineHTTPChannel, StringTransport, Clock]:
        channel, transport, clock = connect()
        self._channels.append(channel)
        return channel, transport, clock

    def test_one_timer_per_connection(self) -> None:
        """Request after request, the same timer is moved on, not replaced."""
        channel, transport, clock = self.open()
        channel.dataReceived(GET)
        first: Any = channel._timer
        self.assertIsNotNone(first)
        clock.advance(1)
        channel.dataReceived(GET)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertIs(channel._timer, first)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual(transport.value().count(b"HTTP/1.1 204"), 2)

    def test_parked_timer_ends_nothing(self) -> None:
        """Between requests no deadline runs: the parked timer fires idly."""
        channel, transport, clock = self.open()
        channel.dataReceived(GET)
        clock.advance(TIMEOUT * 3)
        self.assertFalse(transport.disconnecting)
        self.assertNotIn(b"408", transport.value())

    def test_next_headers_deadline_holds(self) -> None:
        """The next request's header block still has its full deadline, no more."""
        channel, transport, clock = self.open()
        channel.dataReceived(GET)
        clock.advance(TIMEOUT / 2)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        clock.advance(TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertTrue(transport.disconnecting)
        self.assertIn(b"408", transport.value())
