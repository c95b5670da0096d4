"""
The connector refuses a C{:path} that does not start with C{/}: the URL it
dials is C{:scheme://:authority} followed by C{:path}, so C{0/admin} on
C{127.0.0.1:9} would dial port 90, and C{.evil.example/} on C{intranet.test}
another host, past the origin check (which sees C{:scheme} and
C{:authority} only).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.connector.origins import AllowedOrigins, path_refusal
from tests.test_connector_websocket import UpgradeEnd

SETTINGS = b'{"apps": {"web": {"verify_tls": true, "timeout": 30.0}}}'
#: Paths that move the URL elsewhere (or mean nothing) after C{http://127.0.0.1:9}.
BAD_PATHS = [b"0/admin", b":22/", b".attacker.example/", b"@evil.example/", b"?x", b"*"]


class PathRefusalTests(SynchronousTestCase):
    def test_paths(self) -> None:
        self.assertIsNone(path_refusal(b"GET", b"/"))
        self.assertIsNone(path_refusal(b"GET", b"/a/b?c=d"))
        self.assertIsNone(path_refusal(b"OPTIONS", b"*"))
        for path in [*BAD_PATHS, b""]:
            self.assertIn("does not start with '/'", path_refusal(b"GET", path) or "", path)

    @given(st.binary(max_size=40))
    def test_property(self, path: bytes) -> None:
        """Whatever is admitted keeps the URL's authority as it was."""
        if path_refusal(b"GET", path) is None:
            self.assertTrue(path.startswith(b"/"))


class PathHookTests(SynchronousTestCase):
    """Refused streams never reach a backend, with or without the origin hook."""

    origins = True

    def end(self) -> UpgradeEnd:
        end = UpgradeEnd()
        self.addCleanup(end.close)
        if self.origins:
            end.factory.origins = AllowedOrigins.of([("web", "http://127.0.0.1:9/")]).refusal
            end.factory.settings_pushed = lambda: None
        end.push_settings(SETTINGS)
        return end

    def request(self, method: bytes, path: bytes, websocket: bool = False) -> dict[bytes, bytes]:
        end = self.end()
        fields = [
            (b":method", method),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1:9"),
            (b":path", path),
            (b"appproxy-app", b"web"),
        ]
        if websocket:
            fields[1:1] = [(b":protocol", b"websocket")]
            fields += [
                (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
                (b"sec-websocket-version", b"13"),
            ]
        sid = end.request(fields)
        self.dialled = [(host, port) for host, port, *_ in end.clock.tcpClients]
        return end.responses().get(sid, {})

    def test_good_path_dials_the_origin(self) -> None:
        self.request(b"GET", b"/admin")
        self.assertEqual(self.dialled, [("127.0.0.1", 9)])

    def test_bad_paths_refused(self) -> None:
        for path in BAD_PATHS:
            answer = self.request(b"GET", path)
            self.assertEqual(
                (answer.get(b":status"), answer.get(b"appproxy-error")),
                (b"502", b"connector-error"),
                path,
            )
            self.assertIn(b"does not start with '/'", answer[b"appproxy-error-detail"])
            self.assertEqual(self.dialled, [], path)

    def test_websocket_bad_path_refused(self) -> None:
        answer = self.request(b"CONNECT", b"0/ws", websocket=True)
        self.assertEqual(
            (answer.get(b":status"), answer.get(b"appproxy-error")), (b"502", b"connector-error")
        )
        self.assertEqual(self.dialled, [])

    def test_websocket_good_path_dials(self) -> None:
        self.request(b"CONNECT", b"/ws", websocket=True)
        self.assertEqual(self.dialled, [("127.0.0.1", 9)])


class PathWithoutOriginHookTests(PathHookTests):
    """Unit-test factories have no origin hook: the path check still holds."""

    origins = False
