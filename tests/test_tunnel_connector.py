"""
The connector's end of the tunnel, in memory against a raw h2 client playing
the service (L{tests.tunnel_memory}): control streams are told apart by
their marker field, never by path; a request its HTTP client refuses ends
that stream only.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.fields import CONTROL_FIELD
from tests.tunnel_memory import ConnectorEnd

SETTINGS = json.dumps(
    {"apps": {"web": {"verify_tls": True, "ca_pem": None, "timeout": 30.0}}}
).encode()


class Base(SynchronousTestCase):
    def end(self) -> ConnectorEnd:
        end = ConnectorEnd()
        self.addCleanup(end.close)
        sid = end.push_settings(SETTINGS)
        self.assertEqual(end.responses()[sid][b":status"], b"204")
        self.assertIn("web", end.factory.backend.apps)
        return end

    def backend_requests(self, end: ConnectorEnd) -> int:
        """How many backend connections the connector has dialled."""
        return len(end.clock.tcpClients)


class ControlTests(Base):
    def test_settings_path_is_a_user_path(self) -> None:
        """
        A request to C{/.appproxy/config} without the control field is a user
        request like any other: it goes to the backend.
        """
        end = self.end()
        sid = end.user_request(b"POST", b"/.appproxy/config")
        self.assertNotIn(sid, end.responses())
        self.assertEqual(self.backend_requests(end), 1)

    def test_unknown_control_refused(self) -> None:
        end = self.end()
        sid = end.request(
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", b"appproxy"),
                (b":path", b"/"),
                (CONTROL_FIELD, b"something-else"),
            ]
        )
        self.assertIn(sid, end.resets())
        self.assertEqual(self.backend_requests(end), 0)


class BoundaryTests(Base):
    def test_unsendable_requests_end_their_stream_only(self) -> None:
        """
        A path with a space or a raw UTF-8 byte, a method with C{@}: the
        connector's HTTP client refuses them.  Each stream gets a 502 and
        is counted; the request in flight on the same connection is left
        alone and the connection stays up.
        """
        end = self.end()
        pending = end.user_request(b"GET", b"/slow")
        self.assertEqual(self.backend_requests(end), 1)
        bad = [
            end.user_request(b"GET", b"/a b"),
            end.user_request(b"GET", b"/caf\xc3\xa9"),
            end.user_request(b"GE@T", b"/"),
        ]
        responses = end.responses()
        for sid in bad:
            self.assertEqual(responses[sid][b":status"], b"502")
            self.assertEqual(responses[sid][b"appproxy-error"], b"connector-error")
        self.assertEqual(end.factory.stream_errors, len(bad))
        self.assertNotIn(pending, responses)
        self.assertNotIn(pending, end.resets())
        self.assertFalse(end.transport.disconnecting)
        self.assertIn(end.proto, end.factory.protocols)
        # ... and it still takes requests.
        end.user_request(b"GET", b"/next")
        self.assertEqual(self.backend_requests(end), 2)
        self.flushLoggedErrors(ValueError)

    def test_app_removed(self) -> None:
        """
        A request for an app the connector has no settings for (removed by a
        reload) gets a 502; the connection goes on.
        """
        end = self.end()
        sid = end.user_request(b"GET", b"/", app=b"gone")
        self.assertEqual(end.responses()[sid][b":status"], b"502")
        self.assertFalse(end.transport.disconnecting)
