"""
The service's end of the tunnel passes a response's last data on with its
end, in one step (L{appproxy.tunnel.service_events}): the user side gets
C{response_data(data, last=True)}, not the data and then a separate end;
the stream's bytes are still acknowledged and its room given to the next
job.  A trailers block after the data ends the response as before.  In
memory, against a raw h2 connector (L{tests.tunnel_memory}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.tunnel_memory import FakeExchange, ServiceEnd, job

HEAD = [(b":status", b"200"), (b"content-type", b"text/plain")]


def unacknowledged(end: ServiceEnd) -> int:
    """Bytes the service received on the connection and has not acknowledged."""
    window = end.proto.conn.inbound
    return int(window.maximum - window.current - window.processed)


class ResponseEndTests(SynchronousTestCase):
    def started(self) -> tuple[ServiceEnd, FakeExchange, FakeExchange, int]:
        """A ready end of capacity 1, a job on it answered 200, a second queued."""
        end = ServiceEnd(1)
        self.addCleanup(end.close)
        end.answer_settings()
        a, b = FakeExchange(), FakeExchange()
        for j in (job(b"/a", exchange=a), job(b"/b", exchange=b)):
            end.group.put(j, lambda _: self.fail("queue timeout"))
        end.pump()
        sid = a.stream.stream_id
        end.answer(sid, HEAD, end=False)
        self.assertEqual(a.names(), ["opened", "response"])
        self.assertEqual(b.names(), [])
        return end, a, b, sid

    def test_last_data_with_its_end(self) -> None:
        """
        DATA with END_STREAM reaches the user side as one call (the old code
        made two: the data, then the end); its bytes are acknowledged, and
        the next job gets the room.
        """
        end, a, b, sid = self.started()
        end.peer.send_data(sid, b"x" * 3000, end_stream=True)
        end.pump()
        self.assertEqual(a.last, [b"x" * 3000])
        self.assertEqual(a.events[2:], [("data", b"x" * 3000), ("ended",)])
        self.assertEqual(unacknowledged(end), 0)
        self.assertEqual(b.names(), ["opened"])
        self.assertNotIn(sid, end.proto.streams)
        self.assertNotIn(sid, end.resets())
        self.assertEqual(end.proto.bytes_received, 3000)

    def test_earlier_data_then_last(self) -> None:
        """Data before the last piece goes as before; only the last carries the end."""
        end, a, _b, sid = self.started()
        end.peer.send_data(sid, b"a" * 10)
        end.pump()
        end.peer.send_data(sid, b"b" * 20, end_stream=True)
        end.pump()
        self.assertEqual(a.last, [b"b" * 20])
        self.assertEqual(a.events[2:], [("data", b"a" * 10), ("data", b"b" * 20), ("ended",)])

    def test_paused_stream_acknowledged_at_its_end(self) -> None:
        """
        Bytes held back while the user side is paused, and those of the last
        data, are acknowledged when the stream ends: the connection's window
        is whole again.
        """
        end, a, b, sid = self.started()
        a.stream.pauseProducing()
        end.peer.send_data(sid, b"a" * 1000)
        end.pump()
        self.assertEqual(unacknowledged(end), 1000)
        end.peer.send_data(sid, b"b" * 500, end_stream=True)
        end.pump()
        self.assertEqual(a.last, [b"b" * 500])
        self.assertEqual(unacknowledged(end), 0)
        self.assertEqual(b.names(), ["opened"])

    def test_trailers_end_the_response(self) -> None:
        """A trailers block after the data ends the response: the end comes on its own."""
        end, a, b, sid = self.started()
        end.peer.send_data(sid, b"x" * 100)
        end.peer.send_headers(sid, [(b"x-checksum", b"1")], end_stream=True)
        end.pump()
        self.assertEqual(a.last, [])
        self.assertEqual(a.events[2:], [("data", b"x" * 100), ("ended",)])
        self.assertEqual(unacknowledged(end), 0)
        self.assertEqual(b.names(), ["opened"])

    def test_empty_last_data(self) -> None:
        """An empty DATA frame with END_STREAM ends the response in one call too."""
        end, a, _b, sid = self.started()
        end.peer.send_data(sid, b"x" * 7)
        end.peer.send_data(sid, b"", end_stream=True)
        end.pump()
        self.assertEqual(a.last, [b""])
        self.assertEqual(a.events[2:], [("data", b"x" * 7), ("data", b""), ("ended",)])

    def test_cancelled_before_the_last_data(self) -> None:
        """The user left before the last data arrived: it is dropped, not passed on."""
        end, a, b, sid = self.started()
        a.stream.cancel()  # its reset not yet at the peer, which sends the end
        end.peer.send_data(sid, b"x" * 200, end_stream=True)
        end.pump()
        self.assertNotIn(sid, end.proto.streams)
        self.assertEqual(b.names(), ["opened"])
        self.assertEqual(unacknowledged(end), 0)
        self.assertEqual(a.names(), ["opened", "response"])

    def test_user_side_failing_on_the_last_data(self) -> None:
        """
        The user side raising as it takes the last data: the response is cut
        short (C{stream_lost}), the stream let go, the next job served.
        """
        end = ServiceEnd(1)
        self.addCleanup(end.close)
        end.answer_settings()
        a, b = FailingExchange(), FakeExchange()
        for j in (job(b"/a", exchange=a), job(b"/b", exchange=b)):
            end.group.put(j, lambda _: self.fail("queue timeout"))
        end.pump()
        sid = a.stream.stream_id
        end.answer(sid, HEAD, end=False)
        end.peer.send_data(sid, b"x" * 10, end_stream=True)
        end.pump()
        end.clock.advance(0)
        self.assertEqual(a.names()[-1], "lost")
        self.assertEqual(b.names(), ["opened"])
        self.assertNotIn(sid, end.proto.streams)
        self.assertEqual(unacknowledged(end), 0)
        self.flushLoggedErrors(RuntimeError)


class FailingExchange(FakeExchange):
    def response_data(self, data: bytes, last: bool = False) -> None:
        raise RuntimeError("the user side failed")
