"""
How the service closes an open WebSocket for reasons of its own, in memory
(L{tests.websocket_front}): the stream lost after the 101 (idle timeout,
the connector gone or draining, a reset) and the service stopping give the
client a close frame 1001 "going away" at a frame boundary; the client's
connection ends within 5 s of the decision even when the client reads
nothing (L{appproxy.frontend.ws_relay}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode

from appproxy.frontend.ws_registry import SWEEP_INTERVAL
from appproxy.frontend.ws_relay import CLOSE_GRACE, FRAME_WAIT
from appproxy.gate.replies import Admit
from tests.websocket_front import Front, app, session

HEAD_END = b"\r\n\r\n"
server = FrameProtocol(client=False, extensions=[])
HELLO = bytes(server.send_data(b"hello"))
BIG = bytes(server.send_data(b"x" * 1000))
GOING_AWAY = CloseReason.GOING_AWAY


def sent(transport: Any) -> list[Any]:
    """The frames the client got after the 101's head."""
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(transport.value().split(HEAD_END, 1)[1])
    return [(f.opcode, f.payload) for f in client.received_frames()]


class StreamLostTests(SynchronousTestCase):
    def test_idle_timeout_at_a_boundary(self) -> None:
        """The tunnel's idle timeout: 1001 "idle timeout" after the last whole frame."""
        front = Front(self, [app()])
        _, transport, job, _ = front.open()
        job.exchange.response_data(HELLO)
        job.exchange.stream_lost(job, "idle for 900 seconds")
        self.assertEqual(
            sent(transport),
            [(Opcode.BINARY, b"hello"), (Opcode.CLOSE, (GOING_AWAY, "idle timeout"))],
        )
        self.assertTrue(transport.disconnecting)
        (line,) = front.access_lines()
        self.assertEqual((line["who"], line["why"]), ("idle-timeout", "idle for 900 seconds"))

    def test_connector_gone(self) -> None:
        """
        The connector lost, or its reset (it drains): 1001 "the app's
        connector went away".
        """
        front = Front(self, [app()])
        for reason in ("the tunnel connection was lost", "the stream was reset (CANCEL)"):
            _, transport, job, _ = front.open()
            job.exchange.stream_lost(job, reason)
            self.assertEqual(
                sent(transport), [(Opcode.CLOSE, (GOING_AWAY, "the app's connector went away"))]
            )
            self.assertTrue(transport.disconnecting)
        self.assertEqual([e["who"] for e in front.access_lines()], ["connector-lost"] * 2)
        self.assertEqual(front.frontend.websockets.count(app="web"), 0)

    def test_mid_frame_or_after_the_apps_close(self) -> None:
        """
        Lost in the middle of a frame: no close frame (it would corrupt the
        frame); after the app's own close frame: no second one.
        """
        front = Front(self, [app()])
        _, transport, job, _ = front.open()
        job.exchange.response_data(BIG[:100])
        job.exchange.stream_lost(job, "the tunnel connection was lost")
        self.assertEqual(transport.value().split(HEAD_END, 1)[1], BIG[:100])
        self.assertTrue(transport.disconnecting)
        self.assertIn("closed without a close frame", front.access_lines()[-1]["why"])

        _, transport, job, _ = front.open()
        job.exchange.response_data(bytes(server.close(1000, "bye")))
        job.exchange.stream_lost(job, "the tunnel connection was lost")
        self.assertEqual(sent(transport), [(Opcode.CLOSE, (CloseReason.NORMAL_CLOSURE, "bye"))])
        self.assertTrue(transport.disconnecting)

    def test_lost_while_waiting_for_a_boundary(self) -> None:
        """
        The session ended mid-frame, then the stream is lost: the boundary
        will never come, so the connection closes at once, without a frame.
        """
        front = Front(self, [app()])
        _, transport, job, _ = front.open()
        job.exchange.response_data(BIG[:100])
        exchange: Any = job.exchange
        exchange.close("session-ended", "signed out", 1008, "session ended")
        self.assertFalse(transport.disconnecting)
        job.exchange.stream_lost(job, "the tunnel connection was lost")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value().split(HEAD_END, 1)[1], BIG[:100])
        (line,) = front.access_lines()
        self.assertEqual(line["who"], "session-ended")
        front.clock.advance(FRAME_WAIT + CLOSE_GRACE)
        self.assertEqual(len(front.access_lines()), 1)


class ServiceStoppingTests(SynchronousTestCase):
    def test_close_all(self) -> None:
        """
        The service stops: every open WebSocket gets 1001 "service stopping"
        at its next frame boundary and its stream is reset; the registry
        says which connections are still closing until they are gone.
        """
        front = Front(self, [app()])
        registry = front.frontend.websockets
        between, t1, job1, s1 = front.open()
        job1.exchange.response_data(HELLO)
        mid, t2, job2, s2 = front.open()
        job2.exchange.response_data(BIG[:10])
        self.assertEqual(registry.close_all("service-stopping", "stopping", "service stopping"), 2)
        self.assertEqual(
            sent(t1),
            [(Opcode.BINARY, b"hello"), (Opcode.CLOSE, (GOING_AWAY, "service stopping"))],
        )
        self.assertTrue(t1.disconnecting and s1.cancelled)
        self.assertFalse(t2.disconnecting)
        job2.exchange.response_data(BIG[10:] + HELLO)
        self.assertEqual(
            sent(t2),
            [(Opcode.BINARY, b"x" * 1000), (Opcode.CLOSE, (GOING_AWAY, "service stopping"))],
        )
        self.assertTrue(t2.disconnecting and s2.cancelled)
        self.assertEqual(len(registry.closing), 2)
        between.connectionLost(Failure(ConnectionDone()))
        mid.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(registry.closing, set())
        self.assertEqual([e["who"] for e in front.access_lines()], ["service-stopping"] * 2)


class NotReadingTests(SynchronousTestCase):
    def revocable(self, front: Front) -> set[str]:
        the_session = session()
        revoked: set[str] = set()

        class SignIn:
            def admit(self, app: Any, **kw: Any) -> Admit:
                return Admit(headers=(), user="alice", session=the_session)

        front.frontend.sign_in = SignIn()  # type: ignore[assignment]
        front.frontend.websockets.standing = lambda s, now: (
            "revoked" if s.session_id in revoked else "valid"
        )
        revoked.add(the_session.session_id)
        return revoked

    def test_cut_within_five_seconds(self) -> None:
        """
        A client that reads nothing (its transport paused the app's bytes),
        mid-frame or between frames when its session ends: its connection is
        aborted within 5 s of the session's end, sweep included.
        """
        self.assertLessEqual(SWEEP_INTERVAL + FRAME_WAIT + CLOSE_GRACE, 5)
        for first in (BIG[:100], HELLO):
            front = Front(self, [app(pre_authentication="oidc")])
            self.revocable(front)
            channel, transport, job, stream = front.open()
            job.exchange.response_data(first)
            channel.pauseProducing()  # the client's window is full
            self.assertTrue(stream.paused)
            elapsed = 0.0
            while not transport.disconnected and elapsed < 10:
                front.clock.advance(0.1)
                elapsed += 0.1
            self.assertTrue(transport.disconnected, "never aborted")
            self.assertLessEqual(elapsed, 5.0)
            self.assertTrue(stream.cancelled)
