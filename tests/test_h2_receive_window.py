"""
The windows the public HTTP/2 connection offers a client for request bodies
(L{appproxy.frontend.h2_settings.widen_receive_windows}): 256 KiB per
stream and 512 KiB in all instead of 64 KiB, so an upload is not paced by
round trips; and what the service holds for requests that cannot take
their body yet stays within the connection's window.
"""

from __future__ import annotations

from typing import Any

import h2.events
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http

from appproxy.frontend.h2_guard import GuardedH2Connection
from appproxy.frontend.h2_settings import CONNECTION_WINDOW, STREAM_WINDOW, SharedSettings
from tests.h2_client import h2_client, pseudo


class ReceiveWindowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        server = self.server = GuardedH2Connection(self.clock)
        channel: Any = server
        channel.requestFactory = http.Request
        channel.callLater = self.clock.callLater
        channel.timeOut = None
        self.transport = StringTransport()
        # As the public listener does (ProxyChannelProtocol): twisted.web
        # starts the connection (its SETTINGS sent), then the guard is set up.
        server.makeConnection(self.transport)
        server.start_guard()
        self.transport.registerProducer(server, True)
        self.client = h2_client()
        for _ in range(3):
            self.exchange()

    def exchange(self) -> list[h2.events.Event]:
        self.server.dataReceived(self.client.data_to_send())
        events = self.client.receive_data(self.transport.value())
        self.transport.clear()
        return events

    def test_windows_offered(self) -> None:
        """The client may send 256 KiB on a stream, 512 KiB in all; settings shared again."""
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, pseudo(b"POST", b"/"), end_stream=False)
        self.assertEqual(self.client.local_flow_control_window(sid), STREAM_WINDOW)
        self.assertEqual(self.client.outbound_flow_control_window, CONNECTION_WINDOW)
        settings: Any = self.server.conn.local_settings
        self.assertIsInstance(settings, SharedSettings)
        self.assertTrue(settings._shared)

    def test_upload_without_waiting(self) -> None:
        """A 250 KiB body goes in one flight, with no WINDOW_UPDATE waited for."""
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, pseudo(b"POST", b"/"), end_stream=False)
        body = b"u" * (250 * 1024)
        for start in range(0, len(body), 16384):
            self.client.send_data(sid, body[start : start + 16384])
        self.client.end_stream(sid)
        self.server.dataReceived(self.client.data_to_send())
        request: Any = self.server.streams[sid]._request
        request.content.seek(0)
        self.assertEqual(request.content.read(), body)

    def test_held_bodies_bounded_by_the_connection_window(self) -> None:
        """
        Requests that take no body (paused): the client can send no more
        than the connection's window in all, and that is all the service holds.
        """
        streams = []
        for _ in range(4):
            sid = self.client.get_next_available_stream_id()
            self.client.send_headers(sid, pseudo(b"POST", b"/"), end_stream=False)
            self.server.dataReceived(self.client.data_to_send())
            self.server.streams[sid].pauseProducing()
            streams.append(sid)
        sent = 0
        for sid in streams * 40:
            room = min(self.client.local_flow_control_window(sid), 16384)
            if room <= 0:
                continue
            self.client.send_data(sid, b"p" * room)
            sent += room
            self.exchange()
        self.assertEqual(sent, CONNECTION_WINDOW)
        held = sum(
            len(chunk)
            for sid in streams
            for chunk, _ in self.server.streams[sid]._inboundDataBuffer
        )
        self.assertEqual(held, CONNECTION_WINDOW)
        # Taken up again, the bodies flow and the window opens (h2 gives
        # it back once at least half of it is consumed).
        self.assertEqual(self.client.outbound_flow_control_window, 0)
        for sid in streams:
            self.server.streams[sid].resumeProducing()
        self.exchange()
        self.assertGreaterEqual(self.client.outbound_flow_control_window, CONNECTION_WINDOW // 2)
