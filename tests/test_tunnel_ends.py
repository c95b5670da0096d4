"""
Both ends of the tunnel together in memory (C{iosim}): the service's
settings push is what the connector takes for control traffic, and nothing
a user sends is.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from appproxy.connector.backend import BackendClient
from appproxy.connector.tunnel import ConnectorTunnelFactory
from appproxy.tunnel.fields import CONTROL_FIELD
from appproxy.tunnel.queue import ConnectorGroups
from appproxy.tunnel.service import ServiceTunnelFactory
from tests.tunnel_memory import APP, FakeExchange, job, join_ends


class BothEndsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        groups = ConnectorGroups(self.clock, 3600.0)
        self.group = groups["g"]
        self.service = ServiceTunnelFactory(self.clock, groups, [APP]).buildProtocol(None)
        self.connector_factory = ConnectorTunnelFactory(
            self.clock, BackendClient(self.clock), 4, 15.0
        )
        self.connector = self.connector_factory.buildProtocol(None)
        self.pump = join_ends(self.service, self.connector, self.group)
        self.addCleanup(self.close)

    def close(self) -> None:
        for proto in (self.service, self.connector):
            if proto.connected:
                proto.connectionLost()

    def test_settings_then_user_requests(self) -> None:
        """
        The push reaches the connector as settings (the service becomes
        ready); a user request to the old settings path, even one claiming
        to be control traffic, reaches the connector as a user request and
        leaves its settings alone.
        """
        self.assertTrue(self.service.ready)
        self.assertEqual(set(self.connector_factory.backend.apps), {"web"})
        exchange = FakeExchange()
        user = job(
            b"/.appproxy/config",
            b"POST",
            [(CONTROL_FIELD, b"settings"), (b"content-type", b"application/json")],
            exchange=exchange,
        )
        self.group.put(user, lambda _: self.fail("queue timeout"))
        self.pump.flush()
        self.assertEqual(exchange.names(), ["opened"])
        self.assertEqual(self.connector_factory.streams_started, 1)
        self.assertEqual(len(self.clock.tcpClients), 1)
        self.assertEqual(set(self.connector_factory.backend.apps), {"web"})
        self.assertEqual(self.service.factory.stream_errors, 0)
        self.assertEqual(self.connector_factory.stream_errors, 0)
