"""
How the public HTTP/2 connection (L{appproxy.frontend.h2_guard}) sends a
response, in memory on a driven clock: the header block with the first data
in one write, data sent at once while twisted.web's sending loop is idle
(no turn of it on the reactor's next pass), and twisted.web's own path,
in order, whenever the transport or a flow-control window holds data back.
"""

from __future__ import annotations

from typing import Any

import h2.events
import h2.settings
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http

from appproxy.frontend.h2_guard import GuardedH2Connection
from appproxy.frontend.idle import IdleSweep
from tests.h2_client import h2_client, pseudo


def _own_calls(clock: Any) -> list[Any]:
    """The delayed calls of C{clock} but the idle sweep's (one per process, not per connection)."""
    return [
        c
        for c in clock.getDelayedCalls()
        if not isinstance(getattr(c.func, "__self__", None), IdleSweep)
    ]


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


class SendingBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        server = self.server = GuardedH2Connection(self.clock)
        server.start_guard()
        channel: Any = server
        channel.requestFactory = http.Request
        channel.callLater = self.clock.callLater
        channel.timeOut = None
        self.transport = CountingTransport()
        server.makeConnection(self.transport)
        self.transport.registerProducer(server, True)
        self.client = h2_client()
        self.exchange()

    def turn(self) -> None:
        """
        One pass of the reactor: the calls due now, not those they add
        (twisted.web's sending loop re-arms itself while a stream has data
        it cannot send, so advance(0) would never return).
        """
        due = [call for call in self.clock.calls if call.getTime() <= self.clock.seconds()]
        for call in due:
            self.clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)

    def exchange(self) -> list[h2.events.Event]:
        """Client to server and back, the clock run for what is due now."""
        self.server.dataReceived(self.client.data_to_send())
        self.turn()
        events = self.client.receive_data(self.transport.value())
        self.transport.clear()
        self.server.dataReceived(self.client.data_to_send())
        return events

    def request(self) -> tuple[int, Any]:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, pseudo(b"GET", b"/"), end_stream=True)
        self.server.dataReceived(self.client.data_to_send())
        request: Any = self.server.streams[sid]._request
        request.setResponseCode(200)
        request.responseHeaders.setRawHeaders(b"Content-Type", [b"text/plain"])
        return sid, request

    def response(self, events: list[h2.events.Event], sid: int) -> tuple[bytes, bytes, bool]:
        status, body, ended = b"", b"", False
        for event in events:
            if getattr(event, "stream_id", None) != sid:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers)[b":status"]
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                self.client.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, h2.events.StreamEnded):
                ended = True
        return status, body, ended


class SendingTests(SendingBase):
    def test_one_write_and_no_loop_turn(self) -> None:
        """Headers and data in one write, the end in one more; nothing left for the reactor."""
        sid, request = self.request()
        self.transport.clear()
        self.transport.writes = 0
        self.server.write_first(request, b"x" * 1000)
        self.assertEqual(self.transport.writes, 1)
        request.finish()
        self.assertEqual(self.transport.writes, 2)
        self.assertEqual(_own_calls(self.clock), [])
        events = self.client.receive_data(self.transport.value())
        self.assertEqual(self.response(events, sid), (b"200", b"x" * 1000, True))
        self.assertEqual(self.server.streams, {})

    def test_later_writes(self) -> None:
        """A response written in pieces: each goes at once, in order."""
        sid, request = self.request()
        self.server.write_first(request, b"a" * 10)
        for piece in (b"b" * 20, b"c" * 30):
            request.write(piece)
        request.finish()
        events = self.client.receive_data(self.transport.value())
        self.assertEqual(
            self.response(events, sid), (b"200", b"a" * 10 + b"b" * 20 + b"c" * 30, True)
        )

    def test_transport_paused(self) -> None:
        """While the transport is full nothing jumps the queue: all goes, in order, on resume."""
        sid, request = self.request()
        self.transport.clear()
        self.server.pauseProducing()
        self.server.write_first(request, b"x" * 100)
        request.write(b"y" * 100)
        request.finish()
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.server.resumeProducing()
        for _ in range(10):
            self.turn()
        events = self.client.receive_data(self.transport.value())
        self.assertEqual(self.response(events, sid), (b"200", b"x" * 100 + b"y" * 100, True))

    def test_small_window(self) -> None:
        """Data beyond the stream's window waits for the client's WINDOW_UPDATE."""
        self.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
        self.exchange()
        sid, request = self.request()
        self.transport.clear()
        self.server.write_first(request, b"x" * 250)
        request.finish()
        status, body, ended = b"", b"", False
        for _ in range(10):
            self.turn()
            events = self.client.receive_data(self.transport.value())
            self.transport.clear()
            got = self.response(events, sid)
            status, body, ended = status or got[0], body + got[1], ended or got[2]
            if ended:
                break
            self.client.increment_flow_control_window(100, sid)
            self.server.dataReceived(self.client.data_to_send())
        self.assertEqual((status, body, ended), (b"200", b"x" * 250, True))

    def test_two_streams(self) -> None:
        """Two responses at once: each complete, neither held up by the other."""
        first, request1 = self.request()
        second, request2 = self.request()
        self.server.write_first(request1, b"1" * 50)
        self.server.write_first(request2, b"2" * 60)
        request2.finish()
        request1.write(b"1" * 5)
        request1.finish()
        self.turn()
        events = self.client.receive_data(self.transport.value())
        self.assertEqual(self.response(events, first), (b"200", b"1" * 55, True))
        self.assertEqual(self.response(events, second), (b"200", b"2" * 60, True))


class LastDataTests(SendingBase):
    """
    The response's last data with its end (L{GuardedH2Connection.write_last}):
    one DATA frame with END_STREAM when it goes at once, not the data and
    then an empty DATA frame; twisted.web's path, in order, otherwise.
    """

    def frames(self, sid: int) -> list[tuple[int, bool]]:
        """The DATA frames the client got on C{sid}: their length, whether they ended it."""
        events = self.client.receive_data(self.transport.value())
        self.transport.clear()
        got = []
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
                got.append((len(event.data), event.stream_ended is not None))
                self.client.acknowledge_received_data(event.flow_controlled_length, sid)
        return got

    def test_last_data_ends_the_stream(self) -> None:
        """After earlier data: one write, one frame with END_STREAM; finish writes nothing."""
        sid, request = self.request()
        self.server.write_first(request, b"a" * 10)
        self.transport.writes = 0
        self.server.write_last(request, b"b" * 20)
        self.assertEqual(self.transport.writes, 1)
        request.finish()
        self.assertEqual(self.transport.writes, 1)
        self.assertEqual(self.frames(sid), [(10, False), (20, True)])
        self.assertEqual(self.server.streams, {})
        self.assertEqual(_own_calls(self.clock), [])
        self.assertEqual(request.sentLength, 30)

    def test_whole_response_in_one_write(self) -> None:
        """A first write that is also the last: headers and ended data in one write."""
        sid, request = self.request()
        self.transport.clear()
        self.transport.writes = 0
        self.server.write_last(request, b"x" * 1000)
        request.finish()
        self.assertEqual(self.transport.writes, 1)
        events = self.client.receive_data(self.transport.value())
        self.assertEqual(self.response(events, sid), (b"200", b"x" * 1000, True))
        ends = [e for e in events if isinstance(e, h2.events.DataReceived)]
        self.assertEqual([e.stream_ended is not None for e in ends], [True])
        self.assertEqual(self.server.streams, {})

    def test_empty_last_data(self) -> None:
        """Nothing left to send: the end goes on its own, as before."""
        sid, request = self.request()
        self.server.write_first(request, b"a" * 10)
        self.server.write_last(request, b"")
        request.finish()
        self.assertEqual(self.frames(sid), [(10, False), (0, True)])
        self.assertEqual(self.server.streams, {})

    def test_no_body(self) -> None:
        """A 204 written last with nothing: its headers, then its end."""
        sid, request = self.request()
        request.setResponseCode(204)
        self.transport.clear()
        self.server.write_last(request, b"")
        request.finish()
        events = self.client.receive_data(self.transport.value())
        self.assertEqual(self.response(events, sid), (b"204", b"", True))
        self.assertEqual(self.server.streams, {})

    def test_beyond_the_window(self) -> None:
        """Last data beyond the stream's window waits for WINDOW_UPDATE, then ends the stream."""
        self.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
        self.exchange()
        sid, request = self.request()
        self.server.write_first(request, b"a" * 50)
        self.server.write_last(request, b"b" * 200)
        request.finish()
        body, ended = b"", False
        for _ in range(10):
            self.turn()
            events = self.client.receive_data(self.transport.value())
            self.transport.clear()
            got = self.response(events, sid)
            body, ended = body + got[1], ended or got[2]
            if ended:
                break
            self.client.increment_flow_control_window(100, sid)
            self.server.dataReceived(self.client.data_to_send())
        self.assertEqual((body, ended), (b"a" * 50 + b"b" * 200, True))
        self.assertEqual(self.server.streams, {})

    def test_transport_paused(self) -> None:
        """While the transport is full the last data queues behind the rest, in order."""
        sid, request = self.request()
        self.transport.clear()
        self.server.pauseProducing()
        self.server.write_first(request, b"x" * 100)
        self.server.write_last(request, b"y" * 100)
        request.finish()
        self.turn()
        self.assertEqual(self.transport.value(), b"")
        self.server.resumeProducing()
        for _ in range(10):
            self.turn()
        events = self.client.receive_data(self.transport.value())
        self.assertEqual(self.response(events, sid), (b"200", b"x" * 100 + b"y" * 100, True))
        self.assertEqual(self.server.streams, {})

    def test_two_streams(self) -> None:
        """One stream ended with its last data; the other goes on, and ends its own way."""
        first, request1 = self.request()
        second, request2 = self.request()
        self.server.write_first(request1, b"1" * 50)
        self.server.write_first(request2, b"2" * 60)
        self.server.write_last(request2, b"2" * 6)
        request2.finish()
        request1.write(b"1" * 5)
        request1.finish()
        self.turn()
        events = self.client.receive_data(self.transport.value())
        self.assertEqual(self.response(events, first), (b"200", b"1" * 55, True))
        self.assertEqual(self.response(events, second), (b"200", b"2" * 66, True))
        self.assertEqual(self.server.streams, {})
