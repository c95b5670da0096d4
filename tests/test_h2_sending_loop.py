"""
The public HTTP/2 connection's sending loop (L{appproxy.frontend.h2_sending}):
several DATA frames per turn of the reactor, and otherwise twisted.web's
loop: the same frames in the same order, for any number of streams,
response sizes and frame sizes (Hypothesis, against twisted.web's own loop
on the same connection class), in fewer turns.  And, unlike twisted.web's,
it rests while a client's window is closed (twisted.web's went round on
every turn of the reactor until the window opened), and goes on once the
window opens, by WINDOW_UPDATE or SETTINGS.
"""

from __future__ import annotations

import time
from typing import Any

import h2.events
import h2.settings
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import http
from twisted.web._http2 import H2Connection

from appproxy.frontend.h2_guard import GuardedH2Connection
from appproxy.frontend.h2_sending import FRAMES_PER_TURN
from appproxy.frontend.idle import IdleSweep
from tests import deployment
from tests.h2_client import h2_client, pseudo


class TwistedLoop(GuardedH2Connection):
    """The same connection with twisted.web's own sending loop: one frame per turn."""

    def _sendPrioritisedData(self, *args: Any) -> None:
        H2Connection._sendPrioritisedData(self, *args)


class Peer:
    """A server connection (of C{kind}) and an h2 client, on a driven clock."""

    def __init__(
        self, kind: type[GuardedH2Connection], window: int, frame: int, timeout: int | None = None
    ) -> None:
        self.clock = MemoryReactorClock()
        server = self.server = kind(self.clock)
        server.start_guard()
        channel: Any = server
        channel.requestFactory = http.Request
        channel.callLater = self.clock.callLater
        channel.timeOut = timeout
        self.transport = StringTransport()
        server.makeConnection(self.transport)
        self.transport.registerProducer(server, True)
        self.client = h2_client()
        self.client.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: frame,
            }
        )
        self.turns = 0
        #: The most turns the reactor took to rest, in one pump.
        self.longest = 0
        #: What the client received: (event, stream, data length), in order.
        self.received: list[tuple[str, int, int]] = []
        self.bodies: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.pump()

    def turn(self) -> bool:
        """One pass of the reactor (the sending loop's turns; not the idle sweep's)."""
        due = [
            call
            for call in self.clock.calls
            if call.getTime() <= self.clock.seconds()
            and not isinstance(getattr(call.func, "__self__", None), IdleSweep)
        ]
        for call in due:
            self.clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)
        self.turns += bool(due)
        return bool(due)

    def rest(self) -> None:
        """Run the reactor until it rests (bounded: a loop that never rests shows as 1,000)."""
        turns = 0
        while turns < 999 and self.turn():
            turns += 1
        self.longest = max(self.longest, turns)

    def pump(self, acknowledge: bool = True) -> None:
        """Run the reactor until it rests, then move bytes both ways."""
        self.rest()
        self.server.dataReceived(self.client.data_to_send())
        self.rest()
        for event in self.client.receive_data(self.transport.value()):
            sid = getattr(event, "stream_id", 0) or 0
            if isinstance(event, h2.events.DataReceived):
                self.received.append(("data", sid, len(event.data)))
                self.bodies[sid] = self.bodies.get(sid, b"") + event.data
                if event.flow_controlled_length and acknowledge:
                    self.client.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, h2.events.StreamEnded):
                self.received.append(("end", sid, 0))
                self.ended.add(sid)
            elif isinstance(event, h2.events.ResponseReceived):
                self.received.append(("headers", sid, 0))
        self.transport.clear()
        self.server.dataReceived(self.client.data_to_send())

    def respond(self, sizes: list[int], chunk: int) -> list[int]:
        """One request per size; each response written in chunks and finished."""
        requests = []
        for size in sizes:
            sid = self.client.get_next_available_stream_id()
            self.client.send_headers(sid, pseudo(b"GET", b"/"), end_stream=True)
            self.server.dataReceived(self.client.data_to_send())
            requests.append((sid, self.server.streams[sid]._request, size))
        for sid, request, size in requests:
            request.setResponseCode(200)
            body = bytes([sid % 251]) * size
            for start in range(0, size, chunk):
                request.write(body[start : start + chunk])
            request.finish()
        return [sid for sid, _, _ in requests]


class SendingLoopTests(SynchronousTestCase):
    def assert_whole(self, p: Peer, sizes: list[int], chunk: int, rounds: int) -> None:
        """Responses of C{sizes} written in C{chunk}s: each arrives whole and ended."""
        sids = p.respond(sizes, chunk)
        for _ in range(rounds):
            if p.ended >= set(sids):
                break
            p.pump()
        for sid, size in zip(sids, sizes, strict=True):
            self.assertEqual(p.bodies.get(sid, b""), bytes([sid % 251]) * size)
        self.assertEqual(p.ended, set(sids))

    def test_frames_per_turn(self) -> None:
        """A 1 MiB response goes in 16 KiB frames, up to FRAMES_PER_TURN of them per turn."""
        peer = Peer(GuardedH2Connection, window=1 << 24, frame=1 << 14)
        twisted = Peer(TwistedLoop, window=1 << 24, frame=1 << 14)
        for p in (peer, twisted):
            p.client.increment_flow_control_window(1 << 24)
            p.pump()
            (sid,) = p.respond([1 << 20], 1 << 18)
            p.turns = 0
            for _ in range(100):
                p.pump()
                if sid in p.ended:
                    break
            self.assertEqual(p.bodies[sid], bytes([sid % 251]) * (1 << 20))
        self.assertEqual(peer.received, twisted.received)
        frames = sum(1 for kind, _, _ in peer.received if kind == "data")
        self.assertGreaterEqual(frames, 64)
        self.assertLessEqual(peer.turns, frames // FRAMES_PER_TURN + 2)
        self.assertGreater(twisted.turns, frames - 2)

    @settings(max_examples=60, deadline=None)
    @given(
        sizes=st.lists(st.integers(0, 200_000), min_size=1, max_size=4),
        chunk=st.integers(1000, 70_000),
        frame=st.integers(1 << 14, 1 << 16),
    )
    def test_same_frames_as_twisted(self, sizes: list[int], chunk: int, frame: int) -> None:
        """
        Whatever the streams, sizes and frame sizes (windows that stay
        open: twisted.web's loop never rests while one is closed): the
        client receives the same frames in the same order as from
        twisted.web's loop, every response whole and ended, in fewer turns.
        """
        peers = [Peer(kind, 1 << 24, frame) for kind in (GuardedH2Connection, TwistedLoop)]
        for p in peers:
            p.client.increment_flow_control_window(1 << 24)
            p.pump()
            p.turns = 0
            self.assert_whole(p, sizes, chunk, rounds=100)
        ours, theirs = peers
        self.assertEqual(ours.received, theirs.received)
        self.assertLessEqual(ours.turns, theirs.turns)

    @settings(max_examples=60, deadline=None)
    @given(
        sizes=st.lists(st.integers(0, 100_000), min_size=1, max_size=4),
        chunk=st.integers(1000, 70_000),
        window=st.integers(1024, 1 << 18),
        frame=st.integers(1 << 14, 1 << 16),
    )
    def test_closed_windows_rest(
        self, sizes: list[int], chunk: int, window: int, frame: int
    ) -> None:
        """
        Any windows: every response whole and ended, and whenever the
        client's windows are closed the reactor rests, in a few turns,
        until the client opens them.
        """
        p = Peer(GuardedH2Connection, window, frame)
        self.assert_whole(p, sizes, chunk, rounds=2_000)
        self.assertLess(p.longest, 20)

    def test_window_closed_then_opened(self) -> None:
        """
        A client that stops reading: the loop waits (no turn of the reactor
        is taken for it), and goes on when the window opens, by a
        WINDOW_UPDATE or by SETTINGS.
        """
        p = Peer(GuardedH2Connection, 65535, 1 << 14)
        (sid,) = p.respond([300_000], 100_000)
        p.pump(acknowledge=False)
        p.pump(acknowledge=False)
        received = len(p.bodies[sid])
        self.assertEqual(received, 65535)
        self.assertFalse(p.turn(), "the loop rests while the window is closed")
        self.assertIsNotNone(p.server._sendingDeferred)
        # The connection's window opens, and the stream's by a WINDOW_UPDATE.
        p.client.increment_flow_control_window(1 << 20)
        p.client.increment_flow_control_window(10_000, sid)
        p.pump(acknowledge=False)
        self.assertEqual(len(p.bodies[sid]), received + 10_000)
        self.assertFalse(p.turn())
        # SETTINGS with a larger initial window opens it too.
        p.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        for _ in range(5):
            p.pump(acknowledge=False)
        self.assertEqual(len(p.bodies[sid]), 300_000)
        self.assertIn(sid, p.ended)

    def test_data_for_a_window_used_to_the_byte(self) -> None:
        """
        A response that used its window to the byte, then more data while
        it is closed: a WINDOW_UPDATE sends it, with no further write or end
        to wake the loop (twisted.web's put the stream back in its tree
        without waking the loop: the response stalled).
        """
        p = Peer(GuardedH2Connection, 16384, 1 << 14)
        p.client.increment_flow_control_window(1 << 20)
        p.pump()
        sid = p.client.get_next_available_stream_id()
        p.client.send_headers(sid, pseudo(b"GET", b"/"), end_stream=True)
        p.server.dataReceived(p.client.data_to_send())
        request: Any = p.server.streams[sid]._request
        request.setResponseCode(200)
        request.write(b"a" * 16384)
        p.pump(acknowledge=False)
        self.assertEqual(p.server.conn.local_flow_control_window(sid), 0)
        request.write(b"b" * 1000)
        p.pump(acknowledge=False)
        self.assertEqual(len(p.bodies[sid]), 16384)
        p.client.increment_flow_control_window(5000, sid)
        p.pump(acknowledge=False)
        self.assertEqual(p.bodies[sid], b"a" * 16384 + b"b" * 1000)
        request.finish()
        p.pump(acknowledge=False)
        self.assertIn(sid, p.ended)

    def test_idle_timeout_ends_a_closed_window(self) -> None:
        """
        A client that never opens its window: its connection ends at the
        idle timeout (twisted.web's loop restarted the timeout on each of its
        turns, so it never came).
        """
        p = Peer(GuardedH2Connection, 65535, 1 << 14, timeout=30)
        p.respond([300_000], 100_000)
        p.pump(acknowledge=False)
        p.pump(acknowledge=False)
        self.assertFalse(p.transport.disconnecting)
        p.clock.advance(31)
        self.assertTrue(p.transport.disconnecting)

    def test_twisted_loop_spins(self) -> None:
        """
        What was wrong with twisted.web's loop: with the window closed it
        goes round on every turn of the reactor (bounded here at 1,000).
        """
        p = Peer(TwistedLoop, 65535, 1 << 14)
        p.respond([300_000], 100_000)
        p.pump(acknowledge=False)
        self.assertEqual(p.longest, 999)

    def test_stops_behind_a_full_transport(self) -> None:
        """The transport asks to pause: nothing more is sent until it resumes."""
        peer = Peer(GuardedH2Connection, window=1 << 24, frame=1 << 14)
        peer.client.increment_flow_control_window(1 << 24)
        peer.pump()
        (sid,) = peer.respond([1 << 20], 1 << 20)
        peer.server.pauseProducing()
        before = len(peer.transport.value())
        peer.rest()
        self.assertLess(len(peer.transport.value()) - before, 1 << 15)
        peer.server.resumeProducing()
        for _ in range(100):
            peer.pump()
            if sid in peer.ended:
                break
        self.assertEqual(len(peer.bodies[sid]), 1 << 20)


class _ClosedWindowClient(Protocol):
    """
    An HTTP/2 client over real TLS that asks for a large response and never
    opens its window (64 KiB, h2's default) after the first bytes.
    """

    def __init__(self, host: str, path: str) -> None:
        self.host, self.path = host, path
        self.conn = h2_client()
        self.received = 0
        self.window_full: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        headers = [(b":method", b"GET"), (b":scheme", b"https")]
        headers += [(b":authority", self.host.encode()), (b":path", self.path.encode())]
        self.conn.send_headers(1, headers, end_stream=True)
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                self.received += len(event.data)
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())  # SETTINGS ACKs, no window
        if self.received >= 65535 and not self.window_full.called:
            self.window_full.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.lost.called:
            self.lost.callback(None)


class ClosedWindowDeploymentTests(TestCase):
    """The real service and connector, a real TLS client whose window stays closed."""

    @inlineCallbacks
    def test_service_rests(self) -> Any:
        """
        While the client's window is closed the service does not go round
        its sending loop: the process (service, connector and app are all
        in it) uses a small fraction of a second of CPU in one second
        (twisted.web's loop used all of it), and still answers others.
        """
        d = yield deployment.start(self)
        host = f"web.{deployment.DOMAIN}"
        options = optionsForClientTLS(
            host, trustRoot=Certificate.loadPEM(d.ca.cert_pem), acceptableProtocols=[b"h2"]
        )
        endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", d.public_port))
        client = _ClosedWindowClient(host, "/bytes?n=2000000")
        yield connectProtocol(endpoint, client)
        yield client.window_full.addTimeout(10, reactor)
        self.assertEqual(client.received, 65535)
        before = time.process_time()
        yield deferLater(reactor, 1.0, lambda: None)
        used = time.process_time() - before
        self.assertLess(used, 0.3, f"{used:.2f} s of CPU in 1 s with the window closed")
        # Others are served meanwhile.
        response = yield d.client().get(d.url("web", "/hello"))
        self.assertEqual(response.code, 200)
        yield response.content()
        self.assertEqual(client.received, 65535)
        assert client.transport is not None
        client.transport.loseConnection()
        yield client.lost
