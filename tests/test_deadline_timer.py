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
from appproxy.frontend.idle import IdleSweep

TIMEOUT = 10.0
GET = b"GET / HTTP/1.1\r\nHost: web.example\r\n\r\n"


def _own_calls(clock: Any) -> list[Any]:
    """The delayed calls of C{clock} but the idle sweep's (one per process, not per connection)."""
    return [
        c
        for c in clock.getDelayedCalls()
        if not isinstance(getattr(c.func, "__self__", None), IdleSweep)
    ]


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
        self.assertEqual(len(_own_calls(clock)), 1)
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


IDLE = 30.0


def connect_idle(clock: Clock) -> tuple[DeadlineHTTPChannel, StringTransport]:
    """A channel with twisted.web's idle timeout (and no header deadline)."""
    channel = DeadlineHTTPChannel()
    channel.callLater = clock.callLater  # type: ignore[assignment]
    channel.timeOut = IDLE  # type: ignore[assignment]
    channel.requestFactory = Held
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


class Held(http.Request):
    """Holds every request until the test finishes it."""

    held: list[http.Request] = []

    def process(self) -> None:
        Held.held.append(self)


class IdleTimerTests(TestCase):
    """
    twisted.web's idle timeout on the same channel: one timer per
    connection, parked (not cancelled and made anew) while a request is
    handled, with the same idle deadline as before.
    """

    def setUp(self) -> None:
        Held.held = []
        self.clock = Clock()
        self.channel, self.transport = connect_idle(self.clock)
        self.addCleanup(lambda: self.channel.connectionLost(Failure(ConnectionDone())))

    def answer(self) -> None:
        request = Held.held.pop()
        request.setResponseCode(204)
        request.finish()

    def test_one_idle_timer_per_connection(self) -> None:
        """Request after request, the idle timer is the same DelayedCall."""
        self.channel.dataReceived(GET)
        first = self.channel._idle_timer
        self.assertIsNotNone(first)
        for _ in range(3):
            self.answer()
            self.clock.advance(1)
            self.channel.dataReceived(GET)
        self.answer()
        self.assertIs(self.channel._idle_timer, first)
        self.assertEqual(len(_own_calls(self.clock)), 1)

    def test_idle_connection_times_out(self) -> None:
        """IDLE seconds after the last response, the connection is closed."""
        self.channel.dataReceived(GET)
        self.clock.advance(IDLE / 2)
        self.answer()
        self.clock.advance(IDLE - 1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(self.transport.disconnecting)

    def test_long_request_not_timed_out(self) -> None:
        """A request handled for longer than IDLE is not cut off."""
        self.channel.dataReceived(GET)
        self.clock.advance(IDLE * 3)
        self.assertFalse(self.transport.disconnecting)
        self.answer()
        self.assertIn(b"204", self.transport.value())
        self.clock.advance(IDLE + 1)
        self.assertTrue(self.transport.disconnecting)

    def test_lost_connection_leaves_no_timer(self) -> None:
        """A connection lost mid-request leaves nothing scheduled."""
        self.channel.dataReceived(GET)
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(_own_calls(self.clock), [])
