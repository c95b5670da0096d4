"""
An open WebSocket at the public front end, in memory
(L{tests.websocket_front}): the switch of the HTTP/1.1 connection to raw
bytes on the app's 101, flow control both ways, the ways it ends (client,
app, tunnel), the access log line, and the sweep that closes the WebSockets
of ended sessions with a 1008 close frame at a frame boundary.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode

from appproxy.frontend.ws_relay import CLOSE_GRACE, FRAME_WAIT
from appproxy.gate.replies import Admit
from tests.websocket_front import FakeStream, Front, app, session

HEAD_END = b"\r\n\r\n"

#: What the app sends: frames written by wsproto as a server would.
server = FrameProtocol(client=False, extensions=[])
HELLO = bytes(server.send_data(b"hello"))
BIG = bytes(server.send_data(b"x" * 1000))


def after_head(data: bytes) -> bytes:
    return data.split(HEAD_END, 1)[1]


def frames(data: bytes) -> list[Any]:
    """The frames the client reads from C{data}, as wsproto's client reads them."""
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(data)
    return [(f.opcode, f.payload) for f in client.received_frames()]


class SwitchTests(SynchronousTestCase):
    def test_switch_and_relay(self) -> None:
        """
        On the app's 101: the head (the app's fields, translated, without
        appproxy's cookies), then raw bytes both ways, the ones sent before
        the 101 first.  The channel's timeouts no longer apply.
        """
        front = Front(self, [app()])
        fields = [
            (b"sec-websocket-accept", b"acc"),
            (b"sec-websocket-protocol", b"chat"),
            (b"set-cookie", b"__Host-appproxy-web=forged"),
            (b"set-cookie", b"theme=dark"),
            (b"connection", b"keep-alive"),
        ]
        channel, transport, job, stream = front.open(b"early bytes", fields)
        head = transport.value().split(HEAD_END)[0].split(b"\r\n")
        self.assertEqual(
            head,
            [
                b"HTTP/1.1 101 Switching Protocols",
                b"Upgrade: websocket",
                b"Connection: Upgrade",
                b"sec-websocket-accept: acc",
                b"sec-websocket-protocol: chat",
                b"set-cookie: theme=dark",
            ],
        )
        self.assertEqual(stream.written, [b"early bytes"])
        channel.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(stream.written[-1], b"GET / HTTP/1.1\r\n\r\n")
        job.exchange.response_data(HELLO)
        self.assertEqual(after_head(transport.value()), HELLO)
        # Well past the header deadline and the idle timeout: still open.
        front.clock.advance(3600)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(front.frontend.websockets.count(app="web"), 1)

    def test_flow_control(self) -> None:
        """
        A full tunnel window stops reading the client until it drains; a full
        client write buffer pauses the stream until it drains.
        """
        front = Front(self, [app()])
        channel, transport, job, stream = front.open()
        stream.accept = False
        channel.dataReceived(b"a")
        self.assertEqual(transport.producerState, "paused")
        channel.dataReceived(b"b")  # already in flight: still taken
        self.assertEqual(stream.written, [b"a", b"b"])
        stream.accept = True
        job.exchange.body_drained()
        self.assertEqual(transport.producerState, "producing")
        # The transport's write buffer fills (the transport calls its producer).
        channel.pauseProducing()
        self.assertTrue(stream.paused)
        self.assertEqual(transport.producerState, "producing", "reading the client goes on")
        channel.resumeProducing()
        self.assertFalse(stream.paused)

    def test_refused_upgrade(self) -> None:
        """The app's answer other than 101 is an ordinary response; the place is freed."""
        front = Front(self, [app()])
        _, transport = front.connect(
            b"GET / HTTP/1.1\r\nHost: web.example\r\nUpgrade: websocket\r\nConnection: upgrade"
            b"\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n\r\n"
        )
        job = front.take()
        stream = _stream(job)
        job.exchange.response_started(403, [(b"content-length", b"2")])
        job.exchange.response_data(b"no")
        job.exchange.response_ended()
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403 Forbidden\r\n"))
        self.assertTrue(transport.value().endswith(b"\r\n\r\nno"))
        self.assertEqual(front.frontend.websockets.count(app="web"), 0)
        self.assertFalse(stream.written or stream.cancelled)

    def test_ends(self) -> None:
        """
        Client gone: the stream's client side ends (then it is reset if the
        app does not close); app's EOF and a lost stream: the client's
        connection closes.  Each logs one access line.
        """
        front = Front(self, [app()])
        channel, transport, job, stream = front.open()
        channel.dataReceived(b"12345")
        job.exchange.response_data(HELLO)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(stream.ended)
        self.assertFalse(stream.cancelled)
        front.clock.advance(CLOSE_GRACE)
        self.assertTrue(stream.cancelled)

        _, transport, job, stream = front.open()
        job.exchange.response_ended()
        self.assertTrue(transport.disconnecting)
        # Nothing left registered as the transport's producer: TLS only
        # begins its close once none is.
        self.assertIsNone(transport.producer)

        _, transport, job, stream = front.open()
        job.exchange.stream_lost(job, "idle for 900 seconds")
        self.assertTrue(transport.disconnecting)
        _, transport, job, stream = front.open()
        job.exchange.stream_lost(job, "the connector's connection was lost")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(front.frontend.websockets.count(app="web"), 0)

        lines = front.access_lines()
        self.assertEqual(
            [e["who"] for e in lines], ["client", "app", "idle-timeout", "connector-lost"]
        )
        first = lines[0]
        self.assertEqual(
            (first["app"], first["bytes_in"], first["bytes_out"]), ("web", 5, len(HELLO))
        )
        self.assertEqual(lines[-1]["rid"], job.request_id)

    def test_who_closed(self) -> None:
        """
        The client's close frame first, then the app's reply and EOF: closed
        by the client; the app's close frame first: by the app.
        """
        front = Front(self, [app()])
        client = FrameProtocol(client=True, extensions=[])
        channel, _, job, _ = front.open()
        channel.dataReceived(bytes(client.close(1000, "bye")))
        job.exchange.response_data(bytes(server.close(1000, "bye")))
        job.exchange.response_ended()
        channel, _, job, _ = front.open()
        job.exchange.response_data(bytes(server.close(4001, "done")))
        channel.dataReceived(bytes(client.close(4001)))
        job.exchange.response_ended()
        lines = front.access_lines()
        self.assertEqual([e["who"] for e in lines], ["client", "app"])
        self.assertIn("code 1000", lines[0]["why"])
        self.assertIn("code 4001", lines[1]["why"])

    def test_stream_ended_whatever_the_order(self) -> None:
        """
        Whichever side ends first (the app's EOF, the client's close frame
        or its EOF, both), the tunnel stream is ended at once when the user
        side is done, so its upgrade room is freed at both ends of the
        tunnel; reset if the app does not end after the client.
        """
        client = FrameProtocol(client=True, extensions=[])
        gone = Failure(ConnectionDone())
        orders: list[list[str]] = [
            ["app-eof", "client-eof"],
            ["client-close", "app-close", "app-eof"],
            ["app-close", "client-close", "app-eof", "client-eof"],
            ["client-eof", "app-eof"],
            ["client-close", "client-eof", "app-close", "app-eof"],
        ]
        for order in orders:
            front = Front(self, [app()])
            channel, transport, job, stream = front.open()
            for step in order:
                if step == "app-eof":
                    job.exchange.response_ended()
                elif step == "client-eof":
                    channel.connectionLost(gone)
                elif step == "client-close":
                    channel.dataReceived(bytes(client.close(1000)))
                else:
                    job.exchange.response_data(bytes(server.close(1000)))
            self.assertTrue(stream.ended, order)
            self.assertTrue(transport.disconnecting or "client-eof" in order, order)
            front.clock.advance(CLOSE_GRACE)
            self.assertEqual(front.frontend.websockets.count(app="web"), 0, order)
        # The client gone and the app silent: reset after the grace.
        front = Front(self, [app()])
        channel, _, job, stream = front.open()
        channel.connectionLost(gone)
        self.assertTrue(stream.ended)
        front.clock.advance(CLOSE_GRACE)
        self.assertTrue(stream.cancelled)


def _stream(job: Any) -> FakeStream:
    stream = FakeStream()
    job.exchange.stream_opened(stream)
    return stream


class SweepTests(SynchronousTestCase):
    def signed_in(self, front: Front, expires_at: int = 10_000) -> Any:
        the_session = session(expires_at=expires_at)
        revoked: set[str] = set()

        class SignIn:
            def admit(self, app: Any, **kw: Any) -> Admit:
                return Admit(headers=(), user="alice", session=the_session)

        front.frontend.sign_in = SignIn()  # type: ignore[assignment]
        front.frontend.websockets.standing = lambda s, now: (
            "revoked" if s.session_id in revoked else "valid"
        )
        return revoked, the_session

    def test_revoked_at_a_boundary(self) -> None:
        """
        Revoked between two frames: within a second the client gets a 1008
        close frame after the whole frame, the connection closes, the stream
        is reset.
        """
        front = Front(self, [app(pre_authentication="oidc")])
        revoked, the_session = self.signed_in(front)
        _, transport, job, stream = front.open()
        job.exchange.response_data(HELLO)
        front.clock.advance(1)
        self.assertFalse(transport.disconnecting)
        revoked.add(the_session.session_id)
        front.clock.advance(1)
        self.assertEqual(
            frames(after_head(transport.value())),
            [
                (Opcode.BINARY, b"hello"),
                (Opcode.CLOSE, (CloseReason.POLICY_VIOLATION, "session ended")),
            ],
        )
        self.assertTrue(transport.disconnecting)
        self.assertTrue(stream.cancelled)
        (line,) = front.access_lines()
        self.assertEqual((line["who"], line["user"]), ("session-ended", "alice"))
        self.assertIn("signed out", line["why"])
        self.assertEqual(front.frontend.websockets.count(user="alice"), 0)

    def test_expired_mid_frame(self) -> None:
        """
        The session's lifetime ends in the middle of a frame: the close frame
        waits for the frame's end, and nothing after it is sent.
        """
        front = Front(self, [app(pre_authentication="oidc")])
        self.signed_in(front, expires_at=5)
        _, transport, job, stream = front.open()
        job.exchange.response_data(BIG[:100])
        front.clock.advance(6)
        self.assertFalse(transport.disconnecting)
        job.exchange.response_data(BIG[100:] + HELLO)
        self.assertEqual(
            frames(after_head(transport.value())),
            [
                (Opcode.BINARY, b"x" * 1000),
                (Opcode.CLOSE, (CloseReason.POLICY_VIOLATION, "session ended")),
            ],
        )
        self.assertTrue(transport.disconnecting)
        self.assertTrue(stream.cancelled)

    def test_no_boundary_comes(self) -> None:
        """No frame end within a while: closed without a close frame."""
        front = Front(self, [app(pre_authentication="oidc")])
        revoked, the_session = self.signed_in(front)
        _, transport, job, stream = front.open()
        job.exchange.response_data(BIG[:100])
        revoked.add(the_session.session_id)
        front.clock.advance(1)
        self.assertFalse(transport.disconnecting)
        front.clock.advance(FRAME_WAIT)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(stream.cancelled)
        self.assertEqual(after_head(transport.value()), BIG[:100])

    def test_passthrough_not_swept(self) -> None:
        """A passthrough app's WebSocket has no session: it stays open."""
        front = Front(self, [app()])
        _, transport, _, stream = front.open()
        front.clock.advance(100_000)
        self.assertFalse(transport.disconnecting)
        self.assertFalse(stream.cancelled)
