"""
One owner for reading an HTTP/1.1 connection: twisted.web's channel pauses
the transport when its write buffer fills (and resumes it when it drains),
and a streaming request pauses it when the tunnel cannot take more of its
body.  Neither may undo the other's pause: the public channel
(L{appproxy.frontend.channels.StrictHTTPChannel}) holds the transport
paused while either wants it.

The real channel and request over L{StringTransport}, whose C{producerState}
is what the kernel would see: reading or not.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from appproxy.frontend.channels import InputGate, StrictHTTPChannel
from appproxy.frontend.deadlines import DeadlineHTTPChannel
from appproxy.frontend.exchange import BODY_BUFFER_LIMIT, ExchangeRequest
from appproxy.frontend.front_end import FrontEnd
from appproxy.tunnel.queue import ConnectorGroups

LENGTH = 4 * BODY_BUFFER_LIMIT
HEAD = b"POST /up HTTP/1.1\r\nHost: web.example\r\nContent-Length: %d\r\n\r\n" % LENGTH


class NeverQueued(ExchangeRequest):
    """A request no connector takes: its body buffers until reading pauses."""

    def _begin(self, length: int | None) -> None:
        pass


def connect(channel_class: type[StrictHTTPChannel]) -> tuple[StrictHTTPChannel, StringTransport]:
    clock = Clock()
    frontend = FrontEnd([], ConnectorGroups(clock, 5.0), clock)
    channel = channel_class()

    def factory(ch: Any, queued: object = None) -> NeverQueued:
        return NeverQueued(ch, frontend)

    channel.requestFactory = factory  # type: ignore[assignment]
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


class OwnershipTests(TestCase):
    def check_channel(self, channel_class: type[StrictHTTPChannel]) -> None:
        channel, transport = connect(channel_class)
        channel.dataReceived(HEAD + b"x" * (BODY_BUFFER_LIMIT + 1))
        self.assertEqual(transport.producerState, "paused")
        # The write buffer towards the client fills, then drains: the
        # channel's resume must leave the request's pause alone.
        channel.pauseProducing()
        channel.resumeProducing()
        self.assertEqual(transport.producerState, "paused")
        self.assertTrue(channel.input_paused())
        # The request takes its body again, while the channel wants a pause:
        # the channel's pause holds.
        request: Any = channel.requests[-1]
        channel.pauseProducing()
        request._input.resume(request)
        self.assertEqual(transport.producerState, "paused")
        channel.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertFalse(channel.input_paused())
        channel.connectionLost(Failure(ConnectionDone()))

    def test_strict_channel(self) -> None:
        self.check_channel(StrictHTTPChannel)

    def test_deadline_channel(self) -> None:
        self.check_channel(DeadlineHTTPChannel)

    def test_body_complete_releases(self) -> None:
        """
        The whole body is in while the request holds reading paused: what
        follows is the next request's, which the channel reads (and holds
        back) itself, so the request's hold goes.
        """
        channel, transport = connect(StrictHTTPChannel)
        channel.dataReceived(HEAD + b"x" * (BODY_BUFFER_LIMIT + 1))
        self.assertEqual(transport.producerState, "paused")
        channel.dataReceived(b"x" * (LENGTH - BODY_BUFFER_LIMIT - 1))
        self.assertEqual(transport.producerState, "producing")
        channel.connectionLost(Failure(ConnectionDone()))

    def test_gate(self) -> None:
        """The gate pauses on the first hold and resumes after the last."""
        transport = StringTransport()
        gate = InputGate(transport)
        gate.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        gate.hold("a")
        gate.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        gate.release("a")
        self.assertEqual(transport.producerState, "paused")
        gate.release("a")
        gate.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertFalse(gate.paused)
