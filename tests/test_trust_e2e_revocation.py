"""
Revocation under load, end to end: two connectors of one group serve a
stream of requests; C{appproxy connectors revoke} closes the first one's
tunnel connections within a second while the second keeps serving, and the
first is refused from then on (L{tests.trust_deployment}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.trust_deployment import start
from tests.trust_load import RequestLoop
from tests.websocket_clients import wait_until

#: The contract: a revoked connector's tunnels close within a second of the
#: change (the service reads admission every second); the rest is slack for
#: the log line's way here on a busy machine.
CLOSED_WITHIN = 1.5


class RevocationTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_revoke_under_load(self) -> Any:
        """
        With requests flowing through two connectors of one group, revoking
        the first closes its tunnel connections within a second; requests
        go on succeeding through the second (only those in flight on a
        closed connection at that moment may fail). The revoked connector's
        redials and its configuration pulls are refused and audited; the
        inventory says revoked (kept for the audit trail) for it and shows
        the second one's connections.
        """
        d = yield start(self)
        one = yield d.register_with_token("one")
        two = yield d.register_with_token("two")
        yield d.start_connector_daemon(one, connections=2)
        yield d.start_connector_daemon(two, connections=2)
        loop = RequestLoop(d).start()
        self.addCleanup(loop.stop)
        yield loop.wait(40)
        self.assertEqual(loop.failures(), [])

        yield d.appproxy("connectors", "revoke", one.id, "--reason", "laptop stolen")
        revoked = reactor.seconds()
        yield wait_until(lambda: d.connections(one) == 0, "the revoked tunnels closed", 10)
        closed_in = reactor.seconds() - revoked
        self.assertLess(closed_in, CLOSED_WITHIN, d.tails())
        self.assertEqual(d.connections(two), 2)
        closed = reactor.seconds()

        yield loop.wait(80)
        yield loop.stop()
        failures = loop.failures()
        self.assertLessEqual(len(failures), loop.workers, failures)
        for started, ended, outcome in failures:
            # Only a request in flight when the tunnels closed.
            self.assertLess(started, closed, (started, ended, outcome))
            self.assertGreater(ended, revoked, (started, ended, outcome))
        after = [r for r in loop.results if r[0] > closed]
        self.assertGreaterEqual(len(after), 40)
        self.assertTrue(all(outcome == 200 for _, _, outcome in after))

        # The revoked connector is still running and redialling: refused.
        def refused_redial() -> Any:
            d_ = d.audit("refused")
            d_.addCallback(lambda events: [e for e in events if e["connector_id"] == one.id])
            return d_

        refusals = yield wait_until(refused_redial, "a refused redial, audited", 15)
        self.assertIn("revoked", str(refusals[0]))
        # Its operator is told why, not only that the service closed the
        # connection: a refused redial makes the connector ask the API.
        process = one.process
        assert process is not None
        yield wait_until(
            lambda: "connector_revoked" in process.output(), "the connector saying why", 15
        )
        self.assertEqual(d.connections(one), 0)
        status, answer = yield d.api("GET", "/v1/config", cert=one.files())
        self.assertEqual((status, answer["error"]), (403, "connector_revoked"), answer)

        revocations = yield d.audit("revoke")
        self.assertEqual(len(revocations), 1)
        self.assertEqual(revocations[0]["connector_id"], one.id)
        self.assertIn("laptop stolen", str(revocations[0]))
        self.assertTrue(revocations[0]["actor"].startswith("local:"))

        def inventory() -> Any:
            listed = d.list_json()
            listed.addCallback(lambda items: items if items[two.id]["connections"] == 2 else None)
            return listed

        # The figures are written every 10 s.
        items = yield wait_until(inventory, "the inventory's figures", 25)
        self.assertEqual(items[one.id]["status"], "revoked")
        self.assertEqual(items[two.id]["status"], "active")
        self.assertEqual(items[two.id]["group"], "default")
        self.assertEqual(items[two.id]["host_name"], "two.internal")
