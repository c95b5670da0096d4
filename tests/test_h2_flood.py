"""
A flood of empty HTTP/2 DATA frames on the public listener: with the raw h2
client against the real service, and L{GuardedH2Connection} in memory on a
driven clock; and a connection ended for a protocol error is closed.
"""

from __future__ import annotations

import ssl
from typing import Any

import h2.errors
import h2.events
from hyperframe.frame import DataFrame
from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import http

from appproxy.frontend.h2_guard import EMPTY_DATA_BURST, EMPTY_DATA_RATE, GuardedH2Connection
from tests import deployment
from tests.h2_client import Session, h2_client, pseudo, read_until_done, tls_socket


def _empty_data_flood(d: deployment.Deployment, allowed: int, flood: int) -> tuple[bool, Session]:
    """
    Open a POST stream and send C{allowed} empty DATA frames then a PING,
    and wait for its answer (True if it came, before any GOAWAY); then send
    C{flood} more empty DATA frames at once and read until the server
    closes.
    """
    session = Session()
    with tls_socket(d) as tls:
        conn = h2_client()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, pseudo(b"POST", b"/echo"), end_stream=False)
        for _ in range(allowed):
            conn.send_data(sid, b"")
        conn.ping(b"allowed!")
        tls.sendall(conn.data_to_send())
        pong = False
        while not pong:
            data = tls.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.PingAckReceived):
                    pong = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return False, session
        for _ in range(flood):
            conn.send_data(sid, b"")
        tls.sendall(conn.data_to_send())
        read_until_done(tls, conn, session, [sid])
        while not session.closed:
            # After GOAWAY the server must also close the connection.
            try:
                session.closed = tls.recv(65536) == b""
            except (ConnectionResetError, ssl.SSLError):
                session.closed = True
    return pong, session


class FloodTests(TestCase):
    """The raw h2 client against the real service."""

    timeout = 60

    @inlineCallbacks
    def test_empty_data_flood(self) -> Any:
        """
        A stream flooded with empty DATA frames (they cost the sender nothing
        and pass every flow-control window) gets GOAWAY ENHANCE_YOUR_CALM and
        a closed connection, once past the allowed burst.
        """
        # No connector: the request waits in the queue while the flood comes
        # (the tunnel's handling of a request cancelled mid-flight is not
        # what this test is about).
        d = yield deployment.start(self, connectors=0)
        allowed, session = yield deferToThread(_empty_data_flood, d, EMPTY_DATA_BURST, 200)
        self.assertTrue(allowed)
        self.assertEqual(session.goaway, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(session.closed)
        self.assertEqual(d.backend.hits, 0)

    @inlineCallbacks
    def test_few_empty_data_frames_allowed(self) -> Any:
        """
        A few empty DATA frames (some clients send one to flush, or to end the
        stream) do not trip the flood guard, and the body still arrives.
        """
        d = yield deployment.start(self)

        def run() -> Session:
            session = Session()
            with tls_socket(d) as tls:
                conn = h2_client()
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, pseudo(b"POST", b"/echo"), end_stream=False)
                for _ in range(5):
                    conn.send_data(sid, b"")
                conn.send_data(sid, b"abc")
                conn.send_data(sid, b"", end_stream=True)
                tls.sendall(conn.data_to_send())
                read_until_done(tls, conn, session, [sid])
            return session

        session = yield deferToThread(run)
        self.assertIsNone(session.goaway)
        self.assertEqual(session.streams[1].status, 200)
        self.assertEqual(session.streams[1].echo()["body_length"], 3)


class EmptyDataBucketTests(SynchronousTestCase):
    """
    L{GuardedH2Connection} in memory, on a driven clock: the burst, the
    refill rate, and what a flood gets.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        server = self.server = GuardedH2Connection(self.clock)
        server.start_guard()
        # What twisted.web's protocol sets on the connection it makes.
        channel: Any = server
        channel.requestFactory = http.Request
        channel.callLater = self.clock.callLater
        channel.timeOut = None
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        # As twisted.web's protocol does once ALPN said h2.
        self.transport.registerProducer(self.server, True)
        self.client = h2_client()
        self.sid = self.client.get_next_available_stream_id()
        self.client.send_headers(self.sid, pseudo(b"POST", b"/"), end_stream=False)
        self.server.dataReceived(self.client.data_to_send())

    def send_empty(self, frames: int) -> int | None:
        """Send C{frames} empty DATA frames; the GOAWAY code, if one came."""
        for _ in range(frames):
            self.client.send_data(self.sid, b"")
        self.server.dataReceived(self.client.data_to_send())
        events = self.client.receive_data(self.transport.value())
        self.transport.clear()
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated) and event.error_code is not None:
                return int(event.error_code)
        return None

    def test_burst_then_rate(self) -> None:
        self.assertIsNone(self.send_empty(EMPTY_DATA_BURST))
        self.clock.advance(1)
        self.assertIsNone(self.send_empty(int(EMPTY_DATA_RATE)))
        self.assertEqual(self.send_empty(1), h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(self.transport.disconnecting)
        # Nothing more is read.
        self.server.dataReceived(DataFrame(self.sid).serialize() * 10)
        self.assertEqual(self.transport.value(), b"")

    def test_data_and_end_of_stream_do_not_count(self) -> None:
        for _ in range(3 * EMPTY_DATA_BURST):
            self.client.send_data(self.sid, b"x")
        self.assertIsNone(self.send_empty(EMPTY_DATA_BURST))
        self.client.send_data(self.sid, b"", end_stream=True)
        self.server.dataReceived(self.client.data_to_send())
        self.assertFalse(self.transport.disconnecting)


def _protocol_error(d: deployment.Deployment) -> tuple[int | None, bool]:
    """Send a DATA frame on stream 0; the GOAWAY code, and whether it closed."""
    goaway = None
    with tls_socket(d) as tls:
        conn = h2_client()
        # Length 0, type DATA, no flags, stream 0: hyperframe refuses to make it.
        tls.sendall(conn.data_to_send() + bytes(9))
        while True:
            try:
                data = tls.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            if not data:
                return goaway, True
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    goaway = event.error_code


class ProtocolErrorTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_closed_after_goaway(self) -> Any:
        """
        A connection ended for a protocol error gets GOAWAY and is closed at
        once, not left open until the idle timeout.
        """
        d = yield deployment.start(self, connectors=0)
        goaway, closed = yield deferToThread(_protocol_error, d)
        self.assertEqual(goaway, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self.assertTrue(closed)
