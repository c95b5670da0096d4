"""
An upgraded tunnel stream ends at both ends once the WebSocket is over,
whichever side closed first (L{appproxy.frontend.ws_relay}, in memory with
L{tests.websocket_front}): never left open, with its upgrade room, until the
app's WebSocket idle timeout.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appproxy.frontend.ws_relay import CLOSE_GRACE
from tests.websocket_front import Front, app


class StreamEndTests(SynchronousTestCase):
    def test_app_closes_first(self) -> None:
        """
        The app's side ends (END_STREAM from the connector): the client's
        connection closes and the stream's client side ends too, so the
        stream is done; reset if its end has not gone out within the grace.
        """
        front = Front(self, [app()])
        channel, transport, job, stream = front.open()
        job.exchange.response_ended()
        self.assertTrue(transport.disconnecting)
        self.assertTrue(stream.ended)
        self.assertFalse(stream.cancelled)
        channel.connectionLost(Failure(ConnectionDone()))
        front.clock.advance(CLOSE_GRACE)
        self.assertTrue(stream.cancelled)
        self.assertEqual(front.frontend.websockets.count(app="web"), 0)

    def test_client_closes_first(self) -> None:
        """
        The client goes first: the stream's client side ends then; the app's
        end that follows finishes the stream, and nothing resets it later.
        """
        front = Front(self, [app()])
        channel, _transport, job, stream = front.open()
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(stream.ended)
        job.exchange.response_ended()
        front.clock.advance(CLOSE_GRACE * 2)
        self.assertFalse(stream.cancelled)
