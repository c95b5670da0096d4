"""
WebSocket handshakes at the public front end's gate, in memory
(L{tests.websocket_front}): what is refused is answered (400, 426, 401,
403, 429, 503) with nothing queued for a connector; what is let through is
queued as an upgraded job with the fields the app may see.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from appproxy.gate.gate import Gate
from appproxy.gate.replies import Admit, Reply, error_page, redirect
from tests.websocket_front import Front, app, handshake, session, status_of


class StubContext:
    """What the gate asks of its context, for a browser with no session."""

    class sessions:
        @staticmethod
        def standing(session: Any, now: float) -> str:
            return "valid"

    def now(self) -> int:
        return 0

    def session(self, app: Any, cookies: Any, now: int) -> None:
        return None

    def send_to_sign_in(
        self, app: Any, method: bytes, uri: bytes, requester: Any, **kw: Any
    ) -> Reply:
        return redirect("https://login.example/.appproxy/sign-in?r=x")

    def error_page(
        self, status: int, title: str, detail: str, requester: Any, *, headers: Any = ()
    ) -> Reply:
        return error_page(status, title, detail, requester=requester, now=0, headers=headers)


class StubSignIn:
    """A sign-in whose gate answers C{decided} to everything."""

    def __init__(self, decided: Admit | Reply) -> None:
        self.decided = decided

    def admit(self, app: Any, **kw: Any) -> Admit | Reply:
        return self.decided


def signed_in(front: Front, user: str = "alice") -> None:
    front.frontend.sign_in = StubSignIn(  # type: ignore[assignment]
        Admit(headers=((b"x-remote-user", user.encode()),), user=user, session=session(user))
    )


class RefusalTests(SynchronousTestCase):
    def test_malformed_and_versions(self) -> None:
        """400 for a malformed handshake, 426 naming version 13: nothing queued."""
        front = Front(self, [app()])
        _, transport = front.connect(handshake(Sec_WebSocket_Key=b"c2hvcnQ="))
        self.assertEqual(status_of(transport), b"HTTP/1.1 400 Bad Request")
        _, transport = front.connect(handshake(Sec_WebSocket_Version=b"8"))
        self.assertEqual(status_of(transport), b"HTTP/1.1 426 Upgrade Required")
        self.assertIn(b"\r\nSec-Websocket-Version: 13\r\n", transport.value())
        _, transport = front.connect(handshake().replace(b"GET", b"POST", 1))
        self.assertEqual(status_of(transport), b"HTTP/1.1 400 Bad Request")
        self.assertEqual(front.waiting(), (0, 0))

    def test_origin_and_switch(self) -> None:
        """A foreign Origin, an app with WebSockets off: 403, nothing queued."""
        front = Front(
            self,
            [
                app(),
                app("quiet", websocket=False),
                app("wide", websocket_origins=("https://a.example",)),
            ],
        )
        _, transport = front.connect(handshake(Origin=b"https://evil.example"))
        self.assertEqual(status_of(transport), b"HTTP/1.1 403 Forbidden")
        self.assertIn(b"Only pages of https://web.example", transport.value())
        _, transport = front.connect(handshake(Origin=b"http://web.example"))
        self.assertEqual(status_of(transport), b"HTTP/1.1 403 Forbidden")
        _, transport = front.connect(handshake(b"quiet.example"))
        self.assertEqual(status_of(transport), b"HTTP/1.1 403 Forbidden")
        self.assertIn(b"WebSockets are not enabled for this app", transport.value())
        self.assertEqual(front.waiting(), (0, 0))
        # Listed origins, and no Origin at all (not a browser), go on.
        front.connect(handshake(b"wide.example", Origin=b"https://A.example:443"))
        front.connect(handshake(Origin=None))
        self.assertEqual(front.waiting(), (0, 2))

    def test_h2c_is_an_ordinary_request(self) -> None:
        """Upgrade: h2c is dropped: the app gets a plain GET, never an upgrade."""
        front = Front(self, [app()])
        front.connect(handshake(Upgrade=b"h2c", HTTP2_Settings=b"AAMAAABkAAQAAP__"))
        self.assertEqual(front.waiting(), (1, 0))
        job = front.take(upgrade=False)
        self.assertFalse(job.upgrade)
        names = [name for name, _ in job.headers]
        for name in (b"upgrade", b"connection", b"http2-settings"):
            self.assertNotIn(name, names)

    def test_no_session(self) -> None:
        """
        No session: the gate's way to sign in is a redirect, which a
        WebSocket cannot follow: 401 with a page that says to sign in.
        """
        front = Front(self, [app(pre_authentication="oidc")])
        front.frontend.sign_in = Gate(context=StubContext())  # type: ignore[arg-type,assignment]
        _, transport = front.connect(handshake())
        self.assertEqual(status_of(transport), b"HTTP/1.1 401 Unauthorized")
        self.assertIn(b"to sign in", transport.value())
        self.assertIn(b"WWW-Authenticate: Cookie", transport.value())
        self.assertEqual(front.waiting(), (0, 0))
        # An ordinary request is still sent to sign in.
        _, transport = front.connect(b"GET / HTTP/1.1\r\nHost: web.example\r\n\r\n")
        self.assertEqual(status_of(transport), b"HTTP/1.1 302 Found")

    def test_policy_refusal(self) -> None:
        """The gate's 403 (policy) is the answer: nothing queued."""
        front = Front(self, [app(pre_authentication="oidc")])
        refused = Reply(403, b"text/plain", b"refused by policy")
        front.frontend.sign_in = StubSignIn(refused)  # type: ignore[assignment]
        _, transport = front.connect(handshake())
        self.assertEqual(status_of(transport), b"HTTP/1.1 403 Forbidden")
        self.assertEqual(front.waiting(), (0, 0))

    def test_caps(self) -> None:
        """Past the app's cap: 503; past the user's: 429; nothing more queued."""
        front = Front(self, [app(max_websockets=1), app("other", pre_authentication="oidc")])
        front.connect(handshake())
        _, transport = front.connect(handshake())
        self.assertEqual(status_of(transport), b"HTTP/1.1 503 Service Unavailable")
        self.assertEqual(front.waiting(), (0, 1))
        signed_in(front)
        front.frontend.websockets.per_user = 1
        front.connect(handshake(b"other.example"))
        _, transport = front.connect(handshake(b"other.example"))
        self.assertEqual(status_of(transport), b"HTTP/1.1 429 Too Many Requests")
        self.assertEqual(front.waiting(), (0, 2))
        # Another user still may.
        signed_in(front, "bob")
        front.connect(handshake(b"other.example"))
        self.assertEqual(front.waiting(), (0, 3))

    def test_place_given_back(self) -> None:
        """A handshake that fails (the client leaves while it waits) frees its place."""
        front = Front(self, [app(max_websockets=1)])
        channel, _ = front.connect(handshake())
        self.assertEqual(front.frontend.websockets.count(app="web"), 1)
        channel.transport.loseConnection()  # type: ignore[union-attr]
        channel.connectionLost(Exception("gone"))  # type: ignore[arg-type]
        self.assertEqual(front.frontend.websockets.count(app="web"), 0)
        self.assertEqual(front.waiting(), (0, 0))

    def test_forwarded_fields(self) -> None:
        """
        The upgraded job: GET, no body, the WebSocket fields and Origin, the
        identity headers, forwarding fields; no Connection or Upgrade, no
        spoofed identity header, none of appproxy's cookies.
        """
        front = Front(self, [app(pre_authentication="oidc")])
        signed_in(front)
        front.connect(
            handshake(
                Connection=b"keep-alive, Upgrade",
                Sec_WebSocket_Protocol=b"chat",
                Sec_WebSocket_Extensions=b"permessage-deflate",
                X_Remote_User=b"mallory",
                Cookie=b"__Host-appproxy-web=secret; theme=dark",
            )
        )
        job = front.take()
        self.assertTrue(job.upgrade)
        self.assertEqual((job.method, job.path, job.has_body), (b"GET", b"/chat?room=1", False))
        fields = dict(job.headers)
        self.assertEqual(fields[b"sec-websocket-key"], b"MDEyMzQ1Njc4OWFiY2RlZg==")
        self.assertEqual(fields[b"sec-websocket-version"], b"13")
        self.assertEqual(fields[b"sec-websocket-protocol"], b"chat")
        self.assertEqual(fields[b"sec-websocket-extensions"], b"permessage-deflate")
        self.assertEqual(fields[b"origin"], b"https://web.example")
        self.assertEqual(fields[b"cookie"], b"theme=dark")
        self.assertEqual([v for n, v in job.headers if n.lower() == b"x-remote-user"], [b"alice"])
        self.assertIn(b"x-forwarded-for", fields)
        self.assertNotIn(b"connection", fields)
        self.assertNotIn(b"upgrade", fields)
