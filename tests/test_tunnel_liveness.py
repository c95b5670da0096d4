"""
Tunnel liveness: PING every interval; a peer that does not answer before the
next one is dropped.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import Event
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from appproxy.connector.backend import BackendClient
from appproxy.connector.tunnel import ConnectorTunnelFactory


class AbortableTransport(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class LivenessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        factory = ConnectorTunnelFactory(self.clock, BackendClient(self.clock), 10, 15.0)
        self.proto = factory.buildProtocol(None)
        self.transport = AbortableTransport()
        self.proto.makeConnection(self.transport)
        # The service's end, speaking real HTTP/2.
        self.peer = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.peer.initiate_connection()
        self.proto.dataReceived(self.peer.data_to_send())
        self.peer.receive_data(self.transport.value())
        self.transport.clear()

    def exchange(self) -> list[Event]:
        events = self.peer.receive_data(self.transport.value())
        self.transport.clear()
        self.proto.dataReceived(self.peer.data_to_send())
        return events

    def test_answered_pings_keep_connection(self) -> None:
        for _ in range(5):
            self.clock.advance(15)
            events = self.exchange()
            self.assertIn("PingReceived", [type(e).__name__ for e in events])
        self.assertFalse(self.transport.aborted)
        self.proto.connectionLost()

    def test_silent_peer_dropped(self) -> None:
        self.clock.advance(15)
        self.assertFalse(self.transport.aborted)
        self.clock.advance(15)
        self.assertTrue(self.transport.aborted)
        self.proto.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])
