"""
Disable, enable and delete, end to end: three distinct ends of a
connector's trust (revocation has its own module), each closing its tunnels
at once (L{tests.trust_deployment}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.trust_deployment import WAIT, Connector, TrustDeployment, start
from tests.websocket_clients import wait_until


def refusals(d: TrustDeployment, connector: Connector, reason: str) -> Any:
    """A condition for L{wait_until}: the audited refusals of C{connector} for C{reason}."""

    def check() -> Any:
        return d.audit("refused").addCallback(
            lambda events: [
                e
                for e in events
                if e["connector_id"] == connector.id and e["detail"].get("reason") == reason
            ]
        )

    return check


class LifecycleTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_disable_enable_delete(self) -> Any:
        """
        C{disable} closes the connector's tunnels and refuses its redials
        (audited) until C{enable}, after which the same certificate is
        admitted again and requests flow; C{delete} forgets the connector:
        its tunnels close, its certificate is then unknown, and the
        inventory no longer lists it, while the audit log keeps the story.
        """
        d = yield start(self)
        connector = yield d.register_with_token("one")
        yield d.start_connector_daemon(connector, connections=2)

        yield d.appproxy("connectors", "disable", connector.id, "--reason", "patching")
        yield wait_until(lambda: d.connections(connector) == 0, "the tunnels closed", 5)
        yield wait_until(refusals(d, connector, "disabled"), "a refused redial", 15)
        items = yield d.list_json()
        self.assertEqual(items[connector.id]["status"], "disabled")
        status, answer = yield d.api("GET", "/v1/config", cert=connector.files())
        self.assertEqual((status, answer["error"]), (403, "connector_disabled"), answer)

        yield d.appproxy("connectors", "enable", connector.id)
        yield d.wait_connections(connector, 2, timeout=45)
        response = yield d.client().get(d.url("web", "/back"), timeout=WAIT)
        self.assertEqual(response.code, 200)

        yield d.appproxy("connectors", "delete", connector.id, "--reason", "decommissioned")
        yield wait_until(lambda: d.connections(connector) == 0, "the tunnels closed", 5)
        items = yield d.list_json()
        self.assertNotIn(connector.id, items)
        status, answer = yield d.api("GET", "/v1/config", cert=connector.files())
        self.assertEqual((status, answer["error"]), (403, "connector_unknown"), answer)

        events = yield d.audit("register", "disable", "enable", "delete")
        self.assertEqual(
            [(e["event"], e["connector_id"]) for e in events],
            [(name, connector.id) for name in ("register", "disable", "enable", "delete")],
        )
        self.assertIn("patching", str(events[1]))
        self.assertIn("decommissioned", str(events[3]))
