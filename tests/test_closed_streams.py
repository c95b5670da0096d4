"""
How many closed streams an HTTP/2 connection remembers: h2 keeps 65,536
per connection (about 8 MiB once that many requests have gone through it),
which every busy tunnel connection and every busy client's HTTP/2
connection reached; appproxy keeps a few thousand, still enough for the
frames a peer had in flight when a stream was reset.
"""

from __future__ import annotations

from h2.errors import ErrorCodes
from h2.events import RequestReceived, StreamReset
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from appproxy.frontend.h2_guard import CLOSED_STREAMS_KEPT as PUBLIC_KEPT
from appproxy.frontend.h2_guard import GuardedH2Connection
from appproxy.tunnel.connection import CLOSED_STREAMS_KEPT, TunnelConnection

REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
RESPONSE = [(b":status", b"200")]


def pair() -> tuple[TunnelConnection, TunnelConnection]:
    client, server = TunnelConnection(client_side=True), TunnelConnection(client_side=False)
    client.initiate_connection()
    server.initiate_connection()
    pump(client, server)
    return client, server


def pump(client: TunnelConnection, server: TunnelConnection) -> list[object]:
    """Carry the bytes both ways until both are quiet; the server's events."""
    events: list[object] = []
    for _ in range(10):
        to_server, to_client = client.data_to_send(), server.data_to_send()
        if not to_server and not to_client:
            break
        if to_server:
            events += server.receive_data(to_server)
        if to_client:
            client.receive_data(to_client)
    return events


class TunnelClosedStreamsTests(SynchronousTestCase):
    def test_bounded(self) -> None:
        """
        After more requests than L{CLOSED_STREAMS_KEPT} on one connection,
        each end remembers that many closed streams, not one per request.
        """
        client, server = pair()
        for _ in range(CLOSED_STREAMS_KEPT + 500):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, REQUEST, end_stream=True)
            pump(client, server)
            server.send_headers(sid, RESPONSE, end_stream=True)
            pump(client, server)
        for end in (client, server):
            self.assertEqual(len(end._closed_streams), CLOSED_STREAMS_KEPT)
            self.assertLessEqual(len(end.streams), 1)  # h2 forgets the last one lazily

    def test_late_frames_after_reset(self) -> None:
        """
        A stream reset by the server while the client still sends on it:
        the client's late DATA is recognised (a stream we reset: ignored, as
        RFC 9113 section 5.1 requires, not taken for a protocol error), and
        the connection goes on, also with a thousand other streams closed
        meanwhile.
        """
        client, server = pair()
        reset = client.get_next_available_stream_id()
        client.send_headers(reset, [*REQUEST[:-1], (b":path", b"/upload")])
        pump(client, server)
        server.reset_stream(reset, ErrorCodes.CANCEL)
        server.data_to_send()  # the RST is "in flight": the client has not seen it
        for _ in range(1000):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, REQUEST, end_stream=True)
            pump(client, server)
            server.send_headers(sid, RESPONSE, end_stream=True)
            pump(client, server)
        client.send_data(reset, b"late", end_stream=True)
        events = server.receive_data(client.data_to_send())
        self.assertEqual([type(e) for e in events], [])
        # Nothing back: no RST_STREAM, no GOAWAY.
        self.assertEqual(server.data_to_send(), b"")
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, REQUEST, end_stream=True)
        got = pump(client, server)
        self.assertIn(RequestReceived, [type(e) for e in got])
        self.assertNotIn(StreamReset, [type(e) for e in got])


class PublicClosedStreamsTests(SynchronousTestCase):
    def test_bounded(self) -> None:
        """A client's HTTP/2 connection keeps L{PUBLIC_KEPT} closed streams at most."""
        connection = GuardedH2Connection(Clock())
        connection.start_guard()
        closed = connection.conn._closed_streams
        for sid in range(1, 2 * (PUBLIC_KEPT + 100), 2):
            closed[sid] = None
        self.assertEqual(len(closed), PUBLIC_KEPT)
