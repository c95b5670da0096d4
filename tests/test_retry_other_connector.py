"""
A connector dies with a request in flight: the one retry of an idempotent
request goes to another connector, not to a sibling connection of the dying
one (real service, real connectors, real TLS on loopback).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests import deployment
from tests.test_integration import _kill, _wait_until


class RetryOnAnotherConnectorTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_killed_connector_retry_skips_its_siblings(self) -> Any:
        """
        Connector A has two tunnel connections.  The one carrying a GET dies
        first (as when a killed connector's connections are noticed one by
        one); its sibling is still connected and the first to wait for a
        job, yet the retry goes to connector B, so it survives the rest of A
        going away.
        """
        d = yield deployment.start(self, connectors=0)
        first = d.start_connector(connections=2, name="connector-a")
        yield d.wait_for_connections(2)
        second = d.start_connector(connections=2, name="connector-b")
        yield d.wait_for_connections(4)
        assert d.service is not None
        group = d.service.groups["default"]

        pending = d.client().get(d.url("web", "/slow?delay=1"))
        yield _wait_until(lambda: d.backend.hits >= 1)
        [victim] = [c for c in d.connectors if any(p._busy() for p in c.factory.protocols)]
        self.assertIs(victim, first, "the first connector's connections wait first")
        [carrier] = [p for p in victim.factory.protocols if p._busy()]
        carrier.abort()
        yield _wait_until(lambda: len(group.connections) == 3)
        # The retry has been placed: now the rest of connector A goes.
        _kill(victim)
        response = yield pending
        body = yield response.content()
        self.assertEqual(response.code, 200, body)
        self.assertEqual(json.loads(body)["uri"], "/slow?delay=1")
        self.assertEqual(second.factory.streams_started, 1)
        self.assertEqual(d.backend.hits, 2)
