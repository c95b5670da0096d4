"""
The service's end of upgraded streams (WebSockets), in memory against a raw
h2 server playing the connector (L{tests.tunnel_memory}): the extended
CONNECT it sends, the connector's answers (accepted, refused, error), bytes
both ways with end-to-end flow control, each direction's end, the idle
timeout, the connection's losses, and the upgrade budget apart from the
requests'.
"""

from __future__ import annotations

from typing import Any

from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded, StreamReset
from h2.settings import SettingCodes
from hpack import NeverIndexedHeaderTuple
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.base import STREAM_WINDOW
from appproxy.tunnel.queue import ProxyJob
from appproxy.tunnel.service_upgrade import UpgradeStream
from tests.tunnel_memory import APP, FakeExchange, ServiceEnd, job

ACCEPTED = [
    (b":status", b"200"),
    (b"appproxy-upgraded", b"websocket"),
    (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    (b"sec-websocket-protocol", b"chat"),
]
HANDSHAKE = [
    (b"origin", b"https://web.example.test"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-protocol", b"chat"),
    (b"x-request-id", b"rid-ws"),
    (b"cookie", b"app=1"),
]


class Exchange(FakeExchange):
    """Records the drains too."""

    def body_drained(self) -> None:
        self.events.append(("drained",))


def upgrade_job(exchange: FakeExchange, path: bytes = b"/ws?x=1", **kw: Any) -> ProxyJob:
    j = job(path, headers=list(kw.pop("headers", HANDSHAKE)), exchange=exchange, **kw)
    j.upgrade = True
    return j


class Base(SynchronousTestCase):
    def end(
        self, capacity: int = 1, upgrades: int = 2, connect: bool = True, offer: bool = True
    ) -> ServiceEnd:
        """A ready service end whose connector takes C{capacity} requests and C{upgrades}."""
        end = ServiceEnd(capacity + upgrades)
        self.addCleanup(end.close)
        if connect:
            end.peer.update_settings({SettingCodes.ENABLE_CONNECT_PROTOCOL: 1})
            end.pump()
        answer = [(b":status", b"204")]
        if offer:
            answer.append((b"appproxy-upgrade-capacity", str(upgrades).encode()))
        end.answer(end.settings_stream(), answer)
        self.assertTrue(end.proto.ready)
        return end

    def put(self, end: ServiceEnd, *jobs: ProxyJob) -> None:
        for j in jobs:
            queue = end.groups.upgrade_queue("g") if j.upgrade else end.group
            queue.put(j, lambda _: self.fail("queue timeout"))
        end.pump()
        end.clock.advance(0)

    def opened(self, end: ServiceEnd, ex: Exchange | None = None) -> tuple[Exchange, UpgradeStream]:
        ex = ex or Exchange()
        self.put(end, upgrade_job(ex))
        self.assertEqual(ex.names(), ["opened"])
        stream = ex.stream
        self.assertIsInstance(stream, UpgradeStream)
        return ex, stream

    def accept(self, end: ServiceEnd) -> tuple[Exchange, UpgradeStream]:
        ex, stream = self.opened(end)
        end.answer(stream.stream_id, ACCEPTED, end=False)
        self.assertEqual(ex.events[-1], ("response", 101))
        return ex, stream

    def peer_events(self, end: ServiceEnd, kind: type, sid: int) -> list[Any]:
        return [e for e in end.events if isinstance(e, kind) and getattr(e, "stream_id", 0) == sid]


class ConnectTests(Base):
    def test_extended_connect(self) -> None:
        """
        The handshake goes as an extended CONNECT: C{:protocol websocket}, the
        internal target, the app, the handshake's fields (secrets never
        indexed), no hop-by-hop field, no dispatch acknowledgement, and the
        stream left open for the client's bytes.
        """
        end = self.end()
        ex = Exchange()
        headers = [*HANDSHAKE, (b"connection", b"upgrade"), (b"upgrade", b"websocket")]
        self.put(end, upgrade_job(ex, headers=headers))
        sid = ex.stream.stream_id
        sent = end.requests()[sid]
        self.assertEqual(sent[b":method"], b"CONNECT")
        self.assertEqual(sent[b":protocol"], b"websocket")
        self.assertEqual(sent[b":scheme"], b"http")
        self.assertEqual(sent[b":authority"], b"127.0.0.1:9")
        self.assertEqual(sent[b":path"], b"/ws?x=1")
        self.assertEqual(sent[b"appproxy-app"], b"web")
        self.assertEqual(sent[b"sec-websocket-key"], b"dGhlIHNhbXBsZSBub25jZQ==")
        for absent in (b"connection", b"upgrade", b"appproxy-ack"):
            self.assertNotIn(absent, sent)
        self.assertEqual(self.peer_events(end, StreamEnded, sid), [])
        block = self.peer_events(end, RequestReceived, sid)[0].headers
        secret = [h for h in block if h[0] in (b"cookie", b"x-request-id")]
        self.assertTrue(all(isinstance(h, NeverIndexedHeaderTuple) for h in secret), secret)
        self.assertEqual(ex.stream.job.attempts, 1)

    def test_unsendable_path_ends_that_stream_only(self) -> None:
        end = self.end()
        bad, good = Exchange(), Exchange()
        self.put(end, upgrade_job(bad, path=b"/ws\x7f"), upgrade_job(good))
        self.assertEqual(bad.events[-1][:2], ("error", 400))
        self.assertEqual(good.names(), ["opened"])
        self.assertTrue(end.proto.connected)


class AnswerTests(Base):
    def test_accepted_bytes_both_ways(self) -> None:
        """
        The connector's C{200} with C{appproxy-upgraded} is the app's 101;
        then bytes flow both ways, each way ends on its own, and the room
        is free once both have.
        """
        end = self.end()
        ex, stream = self.accept(end)
        sid = stream.stream_id
        end.peer.send_data(sid, b"\x81\x05hello")
        end.pump()
        self.assertEqual(ex.events[-1], ("data", b"\x81\x05hello"))
        self.assertTrue(stream.write_body(b"\x81\x85mask!"))
        end.pump()
        got = b"".join(e.data for e in self.peer_events(end, DataReceived, sid))
        self.assertEqual(got, b"\x81\x85mask!")
        end.peer.end_stream(sid)
        end.pump()
        self.assertEqual(ex.events[-1], ("ended",))
        self.assertEqual(end.proto.machine.upgrades, 1)  # the client's side still open
        self.assertTrue(stream.write_body(b"late"))
        stream.end_body()
        end.pump()
        self.assertEqual(len(self.peer_events(end, StreamEnded, sid)), 1)
        self.assertEqual(self.peer_events(end, StreamReset, sid), [])
        self.assertEqual(end.proto.machine.upgrades, 0)
        self.assertTrue(end.proto.machine.wanting_upgrade)

    def test_fields_of_the_101(self) -> None:
        end = self.end()
        seen: list[Any] = []
        ex = Exchange()
        ex.response_started = lambda status, headers: seen.append((status, headers))  # type: ignore[method-assign]
        _, stream = self.opened(end, ex)
        end.answer(stream.stream_id, ACCEPTED, end=False)
        self.assertEqual(
            seen,
            [
                (
                    101,
                    [
                        (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                        (b"sec-websocket-protocol", b"chat"),
                    ],
                )
            ],
        )

    def test_refused_is_relayed_as_a_response(self) -> None:
        """The app's 403 (no C{appproxy-upgraded}) is an ordinary response."""
        end = self.end()
        ex, stream = self.opened(end)
        sid = stream.stream_id
        end.answer(sid, [(b":status", b"403"), (b"content-type", b"text/plain")], end=False)
        end.peer.send_data(sid, b"no", end_stream=True)
        end.pump()
        self.assertEqual(ex.events[1:], [("response", 403), ("data", b"no"), ("ended",)])
        # Our side never ended: the stream is reset (nothing more is wanted).
        self.assertEqual([e.error_code for e in self.peer_events(end, StreamReset, sid)], [0])
        self.assertEqual(end.proto.machine.upgrades, 0)

    def test_200_without_mark_is_not_an_upgrade(self) -> None:
        end = self.end()
        ex, stream = self.opened(end)
        end.answer(stream.stream_id, [(b":status", b"200")])
        self.assertEqual(ex.events[1:], [("response", 200), ("ended",)])

    def test_error_answer(self) -> None:
        end = self.end()
        ex, stream = self.opened(end)
        end.answer(
            stream.stream_id, [(b":status", b"502"), (b"appproxy-error", b"backend-unreachable")]
        )
        self.assertEqual(ex.events[-1], ("error", 502, "backend-unreachable"))
        self.assertEqual(end.proto.machine.upgrades, 0)

    def test_user_side_failing_ends_that_stream_only(self) -> None:
        end = self.end(upgrades=2)
        bad = Exchange(raise_on_response=True)
        _, stream = self.opened(end, bad)
        other, _ = self.accept(end)
        end.answer(stream.stream_id, ACCEPTED, end=False)
        end.clock.advance(0)
        self.assertEqual(bad.events[-1][:2], ("error", 502))
        self.assertIn(stream.stream_id, end.resets())
        self.assertTrue(end.proto.connected)
        self.assertEqual(end.proto.machine.upgrades, 1)
        self.assertEqual(other.events[-1], ("response", 101))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class FlowTests(Base):
    def test_client_not_reading_holds_the_window(self) -> None:
        """
        While the user side has paused the stream, the app's bytes are not
        acknowledged: the connector can send one window, no more, until
        the user side resumes.
        """
        end = self.end()
        ex, stream = self.accept(end)
        sid = stream.stream_id
        stream.pauseProducing()
        chunk = b"x" * 16384
        sent = 0
        while end.peer.local_flow_control_window(sid) >= len(chunk):
            end.peer.send_data(sid, chunk)
            sent += len(chunk)
            end.pump()
        self.assertGreaterEqual(sent, STREAM_WINDOW - len(chunk))
        self.assertLess(end.peer.local_flow_control_window(sid), len(chunk))
        end.clock.advance(APP.websocket_idle_timeout * 3)  # busy, not idle
        self.assertNotIn("lost", ex.names())
        stream.resumeProducing()
        end.pump()
        self.assertEqual(end.peer.local_flow_control_window(sid), STREAM_WINDOW)
        received = sum(len(e[1]) for e in ex.events if e[0] == "data")
        self.assertEqual(received, sent)

    def test_app_not_reading_pauses_the_client(self) -> None:
        """
        The connector's window shut: C{write_body} says stop; once it reads,
        the rest goes and the user side is told to read the client again.
        """
        end = self.end()
        ex, stream = self.accept(end)
        sid = stream.stream_id
        window = end.proto.conn.local_flow_control_window(sid)
        self.assertFalse(stream.write_body(b"y" * (window + 10)))
        end.pump()
        self.assertNotIn(("drained",), ex.events)
        got = sum(e.flow_controlled_length for e in self.peer_events(end, DataReceived, sid))
        self.assertEqual(got, window)
        end.peer.acknowledge_received_data(got, sid)
        end.pump()
        self.assertIn(("drained",), ex.events)
        got = sum(e.flow_controlled_length for e in self.peer_events(end, DataReceived, sid))
        self.assertEqual(got, window + 10)


class EndTests(Base):
    def test_idle_timeout(self) -> None:
        end = self.end()
        ex, stream = self.accept(end)
        end.clock.advance(APP.websocket_idle_timeout - 1)
        end.peer.send_data(stream.stream_id, b"ping")
        end.pump()
        end.clock.advance(APP.websocket_idle_timeout - 1)
        self.assertNotIn("lost", ex.names())
        end.clock.advance(2)
        end.pump()
        self.assertEqual(
            ex.events[-1], ("lost", f"idle for {APP.websocket_idle_timeout:g} seconds")
        )
        codes = [e.error_code for e in self.peer_events(end, StreamReset, stream.stream_id)]
        self.assertEqual(codes, [ErrorCodes.CANCEL])
        self.assertEqual(end.proto.machine.upgrades, 0)

    def test_no_answer(self) -> None:
        end = self.end()
        ex, stream = self.opened(end)
        end.clock.advance(APP.backend_timeout + 10)
        end.pump()
        self.assertEqual(ex.events[-1][:2], ("error", 504))
        self.assertIn(stream.stream_id, end.resets())

    def test_cancel(self) -> None:
        end = self.end()
        _, stream = self.accept(end)
        stream.cancel()
        end.pump()
        codes = [e.error_code for e in self.peer_events(end, StreamReset, stream.stream_id)]
        self.assertEqual(codes, [ErrorCodes.CANCEL])
        self.assertEqual(end.proto.machine.upgrades, 0)

    def test_connector_reset(self) -> None:
        end = self.end()
        ex, stream = self.accept(end)
        end.peer.reset_stream(stream.stream_id, ErrorCodes.CANCEL)
        end.pump()
        self.assertEqual(ex.events[-1], ("lost", "the stream was reset (CANCEL)"))
        self.assertEqual(end.proto.machine.upgrades, 0)

    def test_connection_lost_ends_every_websocket(self) -> None:
        end = self.end(upgrades=3)
        exchanges = [self.accept(end)[0] for _ in range(3)]
        end.proto.connectionLost()
        for ex in exchanges:
            self.assertEqual(ex.events[-1], ("lost", "the tunnel connection was lost"))
        self.assertEqual(end.groups.upgrade_queue("g").connections, {})

    def test_goaway_loses_unprocessed(self) -> None:
        end = self.end(upgrades=2)
        kept, kept_stream = self.accept(end)
        gone, gone_stream = self.opened(end)
        end.peer.close_connection(last_stream_id=kept_stream.stream_id)
        end.pump()
        self.assertEqual(gone.events[-1], ("lost", "the connector is shutting down"))
        self.assertFalse(gone_stream.job.dispatched)
        self.assertEqual(kept.events[-1], ("response", 101))
        self.assertEqual(end.proto.machine.upgrades, 1)


class BudgetTests(Base):
    def test_websockets_do_not_take_request_room(self) -> None:
        """
        With every upgraded stream taken, requests still go, and a further
        WebSocket waits for upgrade room, not request room.
        """
        end = self.end(capacity=1, upgrades=2)
        a, b = self.accept(end)[0], self.accept(end)[0]
        waiting = Exchange()
        self.put(end, upgrade_job(waiting))
        self.assertEqual(waiting.names(), [])
        request = FakeExchange()
        self.put(end, job(b"/plain", exchange=request))
        self.assertEqual(request.names(), ["opened"])
        a.stream.cancel()
        end.pump()
        end.clock.advance(0)
        self.assertEqual(waiting.names(), ["opened"])
        self.assertEqual(b.events[-1], ("response", 101))

    def test_no_connect_protocol_no_upgrades(self) -> None:
        """
        A connector that did not enable the extended CONNECT is never given
        a WebSocket, whatever its answer says: the upgrade queue has no
        connection and answers after its grace, not the queue timeout.
        """
        end = self.end(connect=False)
        self.assertEqual(end.proto.machine.upgrade_capacity, 0)
        self.assertEqual(end.proto.machine.capacity, 3)
        timed_out: list[ProxyJob] = []
        j = upgrade_job(Exchange())
        end.groups.upgrade_queue("g").put(j, timed_out.append)
        end.clock.advance(5)
        self.assertEqual(timed_out, [j])

    def test_old_connector_no_upgrades(self) -> None:
        end = self.end(offer=False)
        self.assertEqual(end.proto.machine.upgrade_capacity, 0)
        self.assertNotIn(end.proto, end.groups.upgrade_queue("g").connections)
