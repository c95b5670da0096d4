"""
Held writes on the tunnel (L{appproxy.tunnel.outbound.hold_writes}): a small
response's body goes in the DATA frame that carries its END_STREAM, and
everything in one write; DATA held without an end is sent on release.  The
peer is h2 itself, the frames read with hyperframe.
"""

from __future__ import annotations

from typing import Any

import attrs
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, ResponseReceived, StreamEnded
from h2.settings import SettingCodes
from hyperframe.frame import DataFrame, Frame
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.base import TunnelFactory, TunnelProtocol, TunnelStream
from appproxy.tunnel.outbound import MAX_HELD_BYTES, hold_writes, release_writes


@attrs.define(eq=False)
class _Factory(TunnelFactory["_Server"]):
    clock: Any
    ping_interval: float = 60.0
    protocols: set[Any] = attrs.field(factory=set)
    stream_errors: int = 0


class _Server(TunnelProtocol[_Factory]):
    """A tunnel end that takes every request as a bare stream."""

    def request_received(self, event: RequestReceived) -> None:
        self.streams[event.stream_id] = TunnelStream(event.stream_id)

    def stream_ended(self, stream_id: int) -> None:
        pass


class _CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def _frames(data: bytes) -> list[Frame]:
    frames = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


class HeldWritesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = _Server(_Factory(MemoryReactorClock()))
        self.transport = _CountingTransport()
        self.server.makeConnection(self.transport)
        self.client = H2Connection(H2Configuration(client_side=True))
        self.client.initiate_connection()
        # Room for more than MAX_HELD_BYTES at once.
        self.client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        self.client.increment_flow_control_window(1 << 20)
        self.client.send_headers(
            1,
            [(":method", "GET"), (":scheme", "https"), (":authority", "a"), (":path", "/")],
            end_stream=True,
        )
        self.server.dataReceived(self.client.data_to_send())
        self.client.receive_data(self.transport.value())
        self.transport.clear()
        self.transport.writes = 0
        self.stream = self.server.streams[1]
        self.addCleanup(self._close)

    def _close(self) -> None:
        if self.server.connected:
            self.server.connectionLost()

    def _respond(self, body: bytes, end: bool = True) -> None:
        self.server.conn.send_headers(1, [(b":status", b"200")])
        self.server.flush()
        self.assertTrue(self.server.send_data(self.stream, body))
        if end:
            self.server.end_stream(self.stream)

    def test_held(self) -> None:
        """Held: one write; the body's DATA frame ends the stream."""
        hold_writes()
        try:
            self._respond(b"x" * 1024)
            self.assertEqual(self.transport.writes, 0)
        finally:
            release_writes()
        self.assertEqual(self.transport.writes, 1)
        data = [f for f in _frames(self.transport.value()) if isinstance(f, DataFrame)]
        self.assertEqual([(len(f.data), "END_STREAM" in f.flags) for f in data], [(1024, True)])
        events = self.client.receive_data(self.transport.value())
        self.assertEqual([type(e) for e in events], [ResponseReceived, DataReceived, StreamEnded])
        self.assertTrue(self.stream.local_closed)

    def test_not_held(self) -> None:
        """Not held: each goes at once, the end in an empty DATA frame of its own."""
        self._respond(b"x" * 1024)
        self.assertEqual(self.transport.writes, 3)
        data = [f for f in _frames(self.transport.value()) if isinstance(f, DataFrame)]
        self.assertEqual(
            [(len(f.data), "END_STREAM" in f.flags) for f in data], [(1024, False), (0, True)]
        )

    def test_released_without_end(self) -> None:
        """DATA held without its end goes out on release; the end follows alone."""
        hold_writes()
        try:
            self._respond(b"y" * 10, end=False)
        finally:
            release_writes()
        data = [f for f in _frames(self.transport.value()) if isinstance(f, DataFrame)]
        self.assertEqual([(f.data, "END_STREAM" in f.flags) for f in data], [(b"y" * 10, False)])
        self.transport.clear()
        self.server.end_stream(self.stream)
        data = [f for f in _frames(self.transport.value()) if isinstance(f, DataFrame)]
        self.assertEqual([(f.data, "END_STREAM" in f.flags) for f in data], [(b"", True)])

    def test_large_not_held(self) -> None:
        """More than MAX_HELD_BYTES goes at once, held or not."""
        hold_writes()
        try:
            self._respond(b"z" * (MAX_HELD_BYTES + 1), end=False)
            sent = sum(
                len(f.data)
                for f in _frames(self.server.conn.data_to_send())
                if isinstance(f, DataFrame)
            )
            self.assertEqual(sent, MAX_HELD_BYTES + 1)
        finally:
            release_writes()

    def test_nested(self) -> None:
        """Only the outermost release sends."""
        hold_writes()
        hold_writes()
        self._respond(b"x")
        release_writes()
        self.assertEqual(self.transport.writes, 0)
        release_writes()
        self.assertEqual(self.transport.writes, 1)

    def test_stream_reset_while_held(self) -> None:
        """A stream closed before the release sends nothing more."""
        hold_writes()
        try:
            self._respond(b"x" * 100, end=False)
            self.server.reset_stream(1)
            self.stream.closed = True
        finally:
            release_writes()
        frames = _frames(self.transport.value())
        self.assertFalse([f for f in frames if isinstance(f, DataFrame)])
