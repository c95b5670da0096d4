"""
Slow HTTP/2 clients get the HTTP/1.1 limits (short ones configured here):
a header block sent as one CONTINUATION frame at a time closes the
connection at the header deadline; a request body below the minimum rate
gets a 408 on its stream, and the connection's other streams go on.

The raw h2 client of L{tests.h2_client}, over a blocking TLS socket in a
thread, against the real service.
"""

from __future__ import annotations

import time
from typing import Any, cast

import h2.events
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, HeadersFrame
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests import deployment, h2_client
from tests.test_slow_clients import HEADER_TIMEOUT, SlowDeployment
from tests.test_upload_backpressure import EarlyAnswerBackend

#: How long past the deadline the service may take to act.
GRACE = 5.0
#: Interval between the slow client's frames (each restarts an idle timer).
DRIP = 0.25


def slow_header_block(d: deployment.Deployment) -> tuple[float, bool]:
    """
    Send a request's header block as a HEADERS frame without END_HEADERS
    and one-byte CONTINUATIONs, one every L{DRIP} seconds, until the
    service closes the connection or the deadline plus L{GRACE} passes.
    Returns the seconds it took and whether the service closed.
    """
    block = Encoder().encode([*h2_client.pseudo(b"GET", b"/echo"), (b"x-padding", b"p" * 200)])
    with h2_client.tls_socket(d) as tls:
        conn = h2_client.h2_client()
        tls.sendall(conn.data_to_send())
        tls.sendall(HeadersFrame(1, data=block[:1]).serialize())
        started = time.monotonic()
        tls.settimeout(DRIP)
        for i in range(1, len(block)):
            if time.monotonic() - started > HEADER_TIMEOUT + GRACE:
                break
            try:
                tls.sendall(ContinuationFrame(1, data=block[i : i + 1]).serialize())
                while True:
                    data = tls.recv(65536)
                    if not data:
                        return time.monotonic() - started, True
                    if any(
                        isinstance(e, h2.events.ConnectionTerminated)
                        for e in conn.receive_data(data)
                    ):
                        return time.monotonic() - started, True
            except TimeoutError:
                continue
            except OSError:
                return time.monotonic() - started, True
        return time.monotonic() - started, False


def slow_body(d: deployment.Deployment) -> tuple[h2_client.Session, float]:
    """
    Stream 1: a POST whose body comes at one byte per L{DRIP} seconds; once
    it has an answer (or the deadline plus L{GRACE} passed), stream 3: a
    GET on the same connection.
    """
    session = h2_client.Session()
    with h2_client.tls_socket(d) as tls:
        conn = h2_client.h2_client()
        conn.send_headers(1, [*h2_client.pseudo(b"POST", b"/echo"), (b"content-length", b"100000")])
        tls.sendall(conn.data_to_send())
        session.streams[1] = h2_client.Exchange()
        started = time.monotonic()
        tls.settimeout(DRIP)
        while time.monotonic() - started < HEADER_TIMEOUT + GRACE:
            stream = session.streams[1]
            if stream.reset is not None or (stream.status and conn.streams[1].closed):
                break
            if not conn.streams[1].closed and conn.local_flow_control_window(1) > 0:
                try:
                    conn.send_data(1, b"x")
                except Exception:  # the stream was closed by the service
                    pass
                tls.sendall(conn.data_to_send())
            try:
                data = tls.recv(65536)
            except TimeoutError:
                continue
            if not data:
                session.closed = True
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    session.streams[1].status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    session.streams[1].body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamReset):
                    session.streams[1].reset = event.error_code
            tls.sendall(conn.data_to_send())
        took = time.monotonic() - started
        if not session.closed:
            tls.settimeout(h2_client.SOCKET_TIMEOUT)
            conn.send_headers(3, h2_client.pseudo(b"GET", b"/echo?after=1"), end_stream=True)
            tls.sendall(conn.data_to_send())
            h2_client.read_until_done(tls, conn, session, [3])
    return session, took


def held_upload(d: deployment.Deployment, size: int) -> h2_client.Session:
    """A POST of C{size} bytes on stream 1, sent as fast as the windows allow."""
    session = h2_client.Session(streams={1: h2_client.Exchange()})
    with h2_client.tls_socket(d) as tls:
        conn = h2_client.h2_client()
        conn.send_headers(
            1, [*h2_client.pseudo(b"POST", b"/upload"), (b"content-length", b"%d" % size)]
        )
        left = size
        while not conn.streams[1].closed and session.streams[1].reset is None:
            while left and conn.local_flow_control_window(1) > 0:
                piece = min(left, conn.local_flow_control_window(1), conn.max_outbound_frame_size)
                left -= piece
                conn.send_data(1, b"u" * piece, end_stream=not left)
            tls.sendall(conn.data_to_send())
            data = tls.recv(65536)
            if not data:
                session.closed = True
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    session.streams[1].status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    session.streams[1].body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamReset):
                    session.streams[1].reset = event.error_code
    return session


class H2DeadlineTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        d = SlowDeployment(
            self, [{"name": "web", "external_url": f"https://web.{deployment.DOMAIN}/"}], 5.0
        )
        d.start_service()
        d.start_connector(connections=1)
        yield d.wait_for_connections(1)
        self.d = d

    @inlineCallbacks
    def test_slow_continuations(self) -> Any:
        took, closed = yield deferToThread(slow_header_block, self.d)
        self.assertTrue(closed, f"still open after {took:.1f} s")
        self.assertGreaterEqual(took, HEADER_TIMEOUT - 1.0)
        self.assertEqual(self.d.backend.hits, 0)

    @inlineCallbacks
    def test_slow_body(self) -> Any:
        session, took = yield deferToThread(slow_body, self.d)
        self.assertEqual(session.streams[1].status, 408, f"after {took:.1f} s")
        self.assertIn(b"not sent in time", session.streams[1].body)
        self.assertGreaterEqual(took, HEADER_TIMEOUT - 1.0)
        self.assertFalse(session.closed)
        self.assertEqual(session.streams[3].status, 200)


class H2HeldBodyTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_held_body_is_not_too_slow(self) -> Any:
        """
        The backend reads nothing of an upload for four times the header deadline:
        the service pauses the stream, which is not the client's fault; once
        the backend reads, the upload completes.
        """
        backends: list[EarlyAnswerBackend] = []
        EarlyAnswerBackend.instances = backends
        EarlyAnswerBackend.events = []
        port = reactor.listenTCP(
            0,
            Factory.forProtocol(EarlyAnswerBackend),  # type: ignore[arg-type]
            interface="127.0.0.1",
        )
        self.addCleanup(port.stopListening)
        internal = f"http://127.0.0.1:{cast(IPv4Address, port.getHost()).port}/"
        web = {"name": "web", "external_url": f"https://web.{deployment.DOMAIN}/"}
        d = SlowDeployment(self, [{**web, "internal_url": internal}], 5.0)
        d.start_service()
        d.start_connector(connections=1)
        yield d.wait_for_connections(1)

        def read() -> None:
            for backend in backends:
                backend.start_reading()

        # What the test is about (the hold outlasting the deadline), not a
        # synchronisation: the client's thread waits on the service.
        call = reactor.callLater(4 * HEADER_TIMEOUT, read)

        def stop() -> None:
            if call.active():
                call.cancel()

        self.addCleanup(stop)
        size = 8 << 20
        session = yield deferToThread(held_upload, d, size)
        self.assertEqual(session.streams[1].status, 200)
        self.assertIn(b"done %d" % size, session.streams[1].body)
        self.assertFalse(call.active())
