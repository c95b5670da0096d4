"""
WebSockets behind sign-in, end to end through the real daemons
(L{tests.websocket_deployment}): what never reaches the app (no session, a
foreign C{Origin}, an app with WebSockets off, a malformed handshake, the
caps), C{Upgrade: h2c} (never passed on: a plain GET reaches the app), an
app refusing the upgrade, and open WebSockets closed
with 1008 when their session ends (sign-out, C{appproxy sessions revoke},
C{appproxy users disable}; between two frames of an app that is pushing),
other sessions' going on.
"""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from websockets.exceptions import ConnectionClosed

from tests.websocket_app import pattern
from tests.websocket_deployment import (
    ALLOWED_ORIGIN,
    WebSocketDaemons,
    closed_within,
    echoes,
    headers_of,
    in_thread,
    start,
)

#: A session's end closes its WebSockets within this many seconds.
SESSION_END = 5.0
KEY = base64.b64encode(b"0123456789abcdef").decode()


def handshake_headers(cookie: str, origin: str, **changes: str) -> dict[str, str]:
    headers = {
        "Cookie": cookie,
        "Origin": origin,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": KEY,
    }
    headers.update(changes)
    return headers


class RefusalTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_refused_before_the_app(self) -> Any:
        """
        No session: 401 (not a redirect). A foreign origin, or another app's:
        403, as is C{Origin: null}. An app with C{websocket = false}: 403. A key that is not 16
        bytes: 400; version 8: 426 naming version 13. None of these reaches
        the app; an origin listed in C{websocket_origins} does, and so does a
        handshake without C{Origin} (not a browser's). C{Upgrade:
        h2c} is never passed on: the app gets a plain GET.  The app's own
        refusal of the upgrade reaches the client as it is.  An app with
        C{max_websockets} open refuses one more with 503; a user with
        C{websockets_per_user} open (across apps), with 429.
        """
        d: WebSocketDaemons = yield start(self, service="websockets_per_user = 2")
        cookie = yield d.sign_in("alice")
        nows = yield d.sign_in("alice", app="nows")
        before = len((yield d.seen()))

        status, body = yield in_thread(d.handshake, "/echo?no-session", None)
        self.assertEqual(status, 401, body)
        self.assertIn(b"sign in", body.lower())
        foreign = (
            "https://evil.example",
            d.origin("idle"),
            f"http://{d.host()}:{d.public}",
            "null",
        )
        for origin in foreign:
            status, body = yield in_thread(d.handshake, "/echo?foreign", cookie, origin=origin)
            self.assertEqual(status, 403, (origin, body))
        status, body = yield in_thread(d.handshake, "/echo?off", nows, app="nows")
        self.assertEqual(status, 403, body)
        self.assertIn(b"websocket", body.lower())
        status, headers, body = yield in_thread(
            d.request,
            "GET",
            "/echo?bad-key",
            handshake_headers(cookie, d.origin(), **{"Sec-WebSocket-Key": "c2hvcnQ="}),
        )
        self.assertEqual(status, 400, body)
        status, headers, body = yield in_thread(
            d.request,
            "GET",
            "/echo?old-version",
            handshake_headers(cookie, d.origin(), **{"Sec-WebSocket-Version": "8"}),
        )
        self.assertEqual(status, 426, body)
        self.assertEqual(headers.get("sec-websocket-version"), "13")
        seen = yield d.seen()
        self.assertEqual(seen[before:], [], "refused handshakes reached the app")

        status, body = yield in_thread(d.handshake, "/echo?listed", cookie, origin=ALLOWED_ORIGIN)
        self.assertEqual(status, 101, body)
        # Only browsers send Origin: a client without one is not refused for it.
        status, body = yield in_thread(d.handshake, "/echo?no-origin", cookie, origin=None)
        self.assertEqual(status, 101, body)
        status, body = yield in_thread(d.handshake, "/refuse?status=403", cookie)
        self.assertEqual((status, body), (403, b"refused by the app\n"))
        # The app's cap (max_websockets = 1): the second gets 503 while the first is open.
        capped = yield d.sign_in("alice", app="capped")
        first = yield in_thread(d.open, "/echo?capped-1", capped, app="capped")
        self.addCleanup(in_thread, first.close)
        status, body = yield in_thread(d.handshake, "/echo?capped-2", capped, app="capped")
        self.assertEqual(status, 503, body)
        yield in_thread(first.close)
        yield d.logged("WebSocket capped alice", "closed by")
        status, body = yield in_thread(d.handshake, "/echo?capped-3", capped, app="capped")
        self.assertEqual(status, 101, body)
        yield d.logged("WebSocket capped alice", "closed by", count=2)
        # The user's cap (websockets_per_user = 2), across apps: the third gets 429.
        yield d.logged("WebSocket web alice", "closed by", count=2)
        for n in (1, 2):
            ws = yield in_thread(d.open, f"/echo?user-{n}", cookie)
            self.addCleanup(in_thread, ws.close)
        status, body = yield in_thread(d.handshake, "/echo?capped-4", capped, app="capped")
        self.assertEqual(status, 429, body)

        # The h2c smuggling attempt: a plain request reaches the app.
        status, headers, body = yield in_thread(
            d.request,
            "GET",
            "/h2c",
            {
                "Cookie": cookie,
                "Upgrade": "h2c",
                "Connection": "Upgrade, HTTP2-Settings",
                "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA",
            },
        )
        self.assertEqual(status, 200, body)
        self.assertNotIn("upgrade", headers)
        seen = yield d.seen()
        self.assertEqual(
            [r["path"] for r in seen[before:]],
            [
                "/echo?listed",
                "/echo?no-origin",
                "/refuse?status=403",
                "/",
                "/echo?capped-1",
                "/echo?capped-3",
                "/echo?user-1",
                "/echo?user-2",
                "/h2c",
            ],
        )
        self.assertEqual(headers_of(seen[before])["origin"], [ALLOWED_ORIGIN])
        smuggled = headers_of(seen[-1])
        self.assertNotIn("upgrade", smuggled)
        self.assertNotIn("http2-settings", smuggled)
        self.assertEqual(smuggled.get("x-remote-user"), ["alice"])


class SessionEndTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_session_end_closes_its_websockets(self) -> Any:
        """
        Sign-out closes that session's WebSocket with 1008 within 5 seconds
        (the app's side is closed too); C{appproxy sessions revoke --user}
        and C{appproxy users disable} (other processes) close the others of
        that user. Other sessions' WebSockets go on meanwhile.
        """
        d: WebSocketDaemons = yield start(self, connections=1)
        first = yield d.sign_in("alice")
        second = yield d.sign_in("alice")
        bob = yield d.sign_in("bob")
        ws_first = yield in_thread(d.open, "/echo?first", first)
        ws_second = yield in_thread(d.open, "/echo?second", second)
        ws_bob = yield in_thread(d.open, "/echo?bob", bob)
        for ws in (ws_first, ws_second, ws_bob):
            self.addCleanup(in_thread, ws.close)
            self.assertTrue((yield in_thread(echoes, ws)))

        yield d.sign_out(first)
        code, reason, took = yield in_thread(closed_within, ws_first, SESSION_END + 3)
        self.assertEqual(code, 1008, reason)
        self.assertLess(took, SESSION_END)
        yield d.app_closed("/echo?first", SESSION_END)
        yield d.logged("WebSocket web alice", "closed by session-ended")
        self.assertTrue((yield in_thread(echoes, ws_second)))
        self.assertTrue((yield in_thread(echoes, ws_bob)))

        yield d.appproxy("sessions", "revoke", "--user", "alice")
        code, reason, took = yield in_thread(closed_within, ws_second, SESSION_END + 3)
        self.assertEqual(code, 1008, reason)
        self.assertLess(took, SESSION_END)
        yield d.app_closed("/echo?second", SESSION_END)
        self.assertTrue((yield in_thread(echoes, ws_bob)))

        yield d.appproxy("users", "disable", "bob")
        code, reason, took = yield in_thread(closed_within, ws_bob, SESSION_END + 3)
        self.assertEqual(code, 1008, reason)
        self.assertLess(took, SESSION_END)
        yield d.app_closed("/echo?bob", SESSION_END)

    @inlineCallbacks
    def test_session_end_between_frames(self) -> Any:
        """
        The app pushes 1 MiB messages as fast as the client reads when the
        session ends: the close frame (1008) comes between two of the app's
        frames (every message before it intact, no protocol error), within
        5 seconds of the sign-out.
        """
        d: WebSocketDaemons = yield start(self, connections=1)
        cookie = yield d.sign_in("alice")
        size = 1 << 20
        ws = yield in_thread(d.open, f"/push?bytes={1 << 40}&size={size}", cookie, compression=None)
        self.addCleanup(in_thread, ws.close)
        reading = threading.Event()

        def read_until_closed() -> tuple[int, Any, float]:
            index = 0
            try:
                while True:
                    message = ws.recv(timeout=20)
                    if message != pattern(index, size):
                        raise AssertionError(f"message {index} is not what the app sent")
                    index += 1
                    if index == 3:
                        reading.set()
            except ConnectionClosed:
                pass
            return index, ws.protocol.close_rcvd, time.monotonic()

        reader = in_thread(read_until_closed)
        self.assertTrue((yield in_thread(reading.wait, 20)), "the push did not start")
        yield d.sign_out(cookie)
        signed_out = time.monotonic()
        messages, close, closed = yield reader
        self.assertIsNotNone(close, "no close frame: the connection was cut")
        self.assertEqual((close.code, close.reason), (1008, "session ended"))
        self.assertGreater(messages, 3)
        self.assertLess(closed - signed_out, SESSION_END)
        yield d.app_closed(f"/push?bytes={1 << 40}&size={size}", SESSION_END)
