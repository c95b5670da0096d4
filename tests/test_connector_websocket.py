"""
The connector's end of upgraded (WebSocket) streams, in memory: a raw h2
client plays the service (L{tests.tunnel_memory}), and the internal app's
connection is a memory transport the test answers for the app.  What is
checked: the settings advertised and answered, each kind's own capacity,
the HTTP/1.1 handshake sent, the 101 relayed (and a refusal), bytes both
ways with flow control end to end, and how each end's close or reset
reaches the other.  (L{tests.test_connector_websocket_live} does the same
against a real app served by the C{websockets} library.)
"""

from __future__ import annotations

import json
from typing import Any, cast

import h11
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, DataReceived, StreamEnded, StreamReset
from h2.settings import SettingCodes
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appproxy.connector.backend import BackendClient
from appproxy.connector.tunnel import ConnectorTunnelFactory
from appproxy.connector.websocket import UpgradeStream
from tests.tunnel_memory import ConnectorEnd, Transport

SETTINGS = json.dumps({"apps": {"web": {"timeout": 30.0}}}).encode()
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: " + ACCEPT + b"\r\nSec-WebSocket-Protocol: chat\r\n"
    b"Set-Cookie: app=1\r\nKeep-Alive: timeout=5\r\n\r\n"
)


class UpgradeEnd(ConnectorEnd):
    """L{ConnectorEnd} with room for C{websocket_capacity} WebSockets."""

    def __init__(self, capacity: int = 10, websocket_capacity: int = 4) -> None:
        self.clock = MemoryReactorClock()
        self.factory = ConnectorTunnelFactory(
            self.clock, BackendClient(self.clock), capacity, 15.0, websocket_capacity
        )
        self.proto = self.factory.buildProtocol(None)
        self.transport = Transport()
        self.proto.makeConnection(self.transport)
        self.peer = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.peer.initiate_connection()
        self.events = []
        self.pump()

    def websocket(
        self,
        path: bytes = b"/ws",
        app: bytes = b"web",
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> int:
        """Open a WebSocket stream (an extended CONNECT, no END_STREAM)."""
        sid: int = self.peer.get_next_available_stream_id()
        self.peer.send_headers(
            sid,
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"websocket"),
                (b":scheme", b"http"),
                (b":authority", b"127.0.0.1:9"),
                (b":path", path),
                (b"appproxy-app", app),
                (b"x-request-id", b"rid-ws"),
                (b"sec-websocket-key", KEY),
                (b"sec-websocket-version", b"13"),
                *extra,
            ],
        )
        self.pump()
        return sid

    def data(self, sid: int) -> bytes:
        return b"".join(
            e.data for e in self.events if isinstance(e, DataReceived) and e.stream_id == sid
        )

    def ended(self, sid: int) -> bool:
        return any(isinstance(e, StreamEnded) and e.stream_id == sid for e in self.events)

    def reset_code(self, sid: int) -> int | None:
        for e in self.events:
            if isinstance(e, StreamReset) and e.stream_id == sid:
                return int(e.error_code)
        return None


class App:
    """The app's side of the connector's connection, answered by the test."""

    def __init__(self, end: UpgradeEnd) -> None:
        self.end = end
        wrapping: Any = end.clock.tcpClients[-1][2].buildProtocol(None)
        self.transport = Transport()
        wrapping.makeConnection(self.transport)
        self.wrapping = wrapping
        self.connection: Any = wrapping._wrappedProtocol

    def request(self) -> h11.Request:
        """The handshake the connector sent, parsed with h11."""
        server = h11.Connection(h11.SERVER)
        server.receive_data(self.transport.value())
        event = server.next_event()
        assert isinstance(event, h11.Request), event
        return event

    def send(self, data: bytes) -> None:
        self.wrapping.dataReceived(data)
        self.end.pump()

    def lose(self) -> None:
        self.wrapping.connectionLost(Failure(ConnectionDone()))
        self.end.pump()

    def written(self) -> bytes:
        """What the connector wrote after the handshake."""
        _head, _, rest = self.transport.value().partition(b"\r\n\r\n")
        return rest


class Base(SynchronousTestCase):
    def end(self, capacity: int = 10, websocket_capacity: int = 4) -> UpgradeEnd:
        end = UpgradeEnd(capacity, websocket_capacity)
        self.addCleanup(end.close)
        sid = end.push_settings(SETTINGS)
        self.assertEqual(end.responses()[sid][b":status"], b"204")
        return end

    def open(self, end: UpgradeEnd) -> tuple[int, App]:
        sid = end.websocket()
        app = App(end)
        app.send(SWITCH)
        self.assertEqual(end.responses()[sid][b":status"], b"200")
        return sid, app

    def stream(self, end: UpgradeEnd, sid: int) -> UpgradeStream:
        stream = end.proto.streams[sid]
        assert isinstance(stream, UpgradeStream)
        return stream


class SettingsTests(Base):
    def test_advertised(self) -> None:
        """
        Both kinds' room in MAX_CONCURRENT_STREAMS, the connect protocol
        enabled, and the settings answer says how many WebSockets.
        """
        end = UpgradeEnd(10, 4)
        self.addCleanup(end.close)
        remote = end.peer.remote_settings
        self.assertEqual(remote[SettingCodes.MAX_CONCURRENT_STREAMS], 14)
        self.assertEqual(remote[SettingCodes.ENABLE_CONNECT_PROTOCOL], 1)
        sid = end.push_settings(SETTINGS)
        self.assertEqual(end.responses()[sid][b"appproxy-upgrade-capacity"], b"4")

    def test_draining_ends_websockets(self) -> None:
        """
        A WebSocket cannot be drained: draining advertises no room, resets
        every upgraded stream (CANCEL: one open, one whose handshake is in
        flight), drops their apps' connections at once, then GOAWAY and
        close at once: nothing waits for them.  Each logs its end.
        """
        lines: list[dict[str, Any]] = []
        observer = cast(ILogObserver, lines.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        end = self.end()
        sid, app = self.open(end)
        waiting = end.websocket()
        waiting_app = App(end)
        drained = end.proto.drain()
        end.pump()
        self.assertEqual(end.peer.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS], 0)
        self.assertEqual(end.reset_code(sid), ErrorCodes.CANCEL)
        self.assertEqual(end.reset_code(waiting), ErrorCodes.CANCEL)
        self.assertTrue(app.transport.aborted)
        self.assertTrue(waiting_app.transport.aborted)
        self.assertEqual(end.proto.machine.upgrades, 0)
        self.assertTrue(any(isinstance(e, ConnectionTerminated) for e in end.events))
        self.assertTrue(end.transport.disconnecting)
        # What the apps do afterwards is moot.
        app.send(b"late")
        waiting_app.send(SWITCH)
        self.assertEqual(end.data(sid), b"")
        self.assertNotIn(waiting, end.responses())
        end.proto.connectionLost()
        self.successResultOf(drained)
        [line] = [e for e in lines if "closed by" in e.get("log_format", "")]
        self.assertEqual(line["who"], "drain")

    def test_draining_lets_a_refusal_finish(self) -> None:
        """A refusal being relayed is a response: the drain waits for its end."""
        end = self.end()
        sid = end.websocket()
        app = App(end)
        app.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nno")
        end.proto.drain()
        end.pump()
        self.assertIsNone(end.reset_code(sid))
        self.assertFalse(end.transport.disconnecting)
        app.send(b"pe!")
        self.assertEqual(end.data(sid), b"nope!")
        self.assertTrue(end.ended(sid))
        self.assertTrue(end.transport.disconnecting)

    def test_websockets_beyond_their_share_refused(self) -> None:
        """
        Past C{websocket_capacity}, a WebSocket is refused (the service may
        try another connector) while requests still have their own room,
        and the reverse; a WebSocket that ends frees its room.
        """
        end = self.end(capacity=2, websocket_capacity=2)
        first = end.websocket()
        end.websocket()
        refused = end.websocket()
        self.assertIsNone(end.reset_code(first))
        self.assertEqual(end.reset_code(refused), ErrorCodes.REFUSED_STREAM)
        self.assertEqual(len(end.clock.tcpClients), 2)
        end.peer.reset_stream(first)
        end.pump()
        end.user_request(b"GET", b"/a")
        end.user_request(b"GET", b"/b")
        self.assertEqual(len(end.clock.tcpClients), 4)
        third = end.user_request(b"GET", b"/c")
        self.assertEqual(end.reset_code(third), ErrorCodes.REFUSED_STREAM)
        again = end.websocket()
        self.assertIsNone(end.reset_code(again))
        self.assertEqual(len(end.clock.tcpClients), 5)

    def test_plain_connect_refused(self) -> None:
        end = self.end()
        sid = end.request(
            [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:22"), (b"appproxy-app", b"web")]
        )
        self.assertEqual(end.reset_code(sid), ErrorCodes.PROTOCOL_ERROR)
        self.assertEqual(end.clock.tcpClients, [])


class HandshakeTests(Base):
    def test_handshake_sent(self) -> None:
        """
        A GET with Upgrade and Connection, Host the internal netloc, the
        stream's fields without pseudo-header or appproxy fields, cookies
        joined again.
        """
        end = self.end()
        end.websocket(extra=((b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"origin", b"https://x")))
        host, port = end.clock.tcpClients[-1][:2]
        self.assertEqual((host, port), ("127.0.0.1", 9))
        request = App(end).request()
        self.assertEqual(request.method, b"GET")
        self.assertEqual(request.target, b"/ws")
        fields = dict(request.headers)
        self.assertEqual(fields[b"host"], b"127.0.0.1:9")
        self.assertEqual(fields[b"upgrade"], b"websocket")
        self.assertEqual(fields[b"connection"], b"Upgrade")
        self.assertEqual(fields[b"sec-websocket-key"], KEY)
        self.assertEqual(fields[b"cookie"], b"a=1; b=2")
        self.assertEqual(fields[b"x-request-id"], b"rid-ws")
        self.assertFalse([n for n in fields if n.startswith(b"appproxy-")])

    def test_101_relayed(self) -> None:
        """
        The 101 becomes a 200 with C{appproxy-upgraded}, its WebSocket
        fields and cookies kept, hop-by-hop ones dropped; bytes that came
        with the 101 go first.
        """
        end = self.end()
        sid = end.websocket()
        app = App(end)
        app.send(SWITCH + b"\x81\x02hi")
        fields = end.responses()[sid]
        self.assertEqual(fields[b":status"], b"200")
        self.assertEqual(fields[b"appproxy-upgraded"], b"websocket")
        self.assertEqual(fields[b"sec-websocket-accept"], ACCEPT)
        self.assertEqual(fields[b"sec-websocket-protocol"], b"chat")
        self.assertEqual(fields[b"set-cookie"], b"app=1")
        for name in (b"upgrade", b"connection", b"keep-alive"):
            self.assertNotIn(name, fields)
        self.assertEqual(end.data(sid), b"\x81\x02hi")
        self.assertFalse(end.ended(sid))

    def test_refusal_relayed(self) -> None:
        """Another answer is an ordinary response; the app's connection closes."""
        end = self.end()
        sid = end.websocket()
        app = App(end)
        app.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\nX-Why: no\r\n\r\nnope!")
        app.send(b"HTTP/1.1 200 OK\r\n\r\n")  # after the end: ignored
        fields = end.responses()[sid]
        self.assertEqual(fields[b":status"], b"403")
        self.assertEqual(fields[b"x-why"], b"no")
        self.assertNotIn(b"appproxy-upgraded", fields)
        self.assertEqual(end.data(sid), b"nope!")
        self.assertTrue(end.ended(sid))
        self.assertTrue(app.transport.disconnecting)
        self.assertEqual(end.proto.machine.upgrades, 0)

    def test_refusal_until_close(self) -> None:
        """A refusal whose body ends with the connection."""
        end = self.end()
        sid = end.websocket()
        app = App(end)
        app.send(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\nbad")
        self.assertFalse(end.ended(sid))
        app.lose()
        self.assertEqual(end.data(sid), b"bad")
        self.assertTrue(end.ended(sid))

    def test_unreachable(self) -> None:
        end = self.end()
        sid = end.websocket()
        connector = end.clock.connectors[-1]
        end.clock.tcpClients[-1][2].clientConnectionFailed(
            connector, Failure(ConnectionRefusedError())
        )
        end.clock.advance(0.5)  # the endpoint reports once its attempts are over
        end.pump()
        fields = end.responses()[sid]
        self.assertEqual(fields[b":status"], b"502")
        self.assertEqual(fields[b"appproxy-error"], b"backend-refused")
        self.assertTrue(end.ended(sid))
        self.assertEqual(end.proto.machine.upgrades, 0)

    def test_closed_before_answering(self) -> None:
        end = self.end()
        sid = end.websocket()
        App(end).lose()
        self.assertEqual(end.responses()[sid][b"appproxy-error"], b"backend-reset")

    def test_101_not_accepting_refused(self) -> None:
        """
        A 101 that does not accept the WebSocket (RFC 6455 4.1: no
        C{Upgrade: websocket}, C{Connection} without upgrade, a missing or
        wrong C{Sec-WebSocket-Accept}) is a 502 (C{backend-error}, as any
        malformed answer); nothing of it is relayed, the app's connection
        dropped.
        """
        good = {
            b"Upgrade": b"websocket",
            b"Connection": b"Upgrade",
            b"Sec-WebSocket-Accept": ACCEPT,
        }
        bad: list[dict[bytes, bytes | None]] = [
            {b"Upgrade": None},
            {b"Upgrade": b"h2c"},
            {b"Connection": b"close"},
            {b"Connection": None},
            {b"Sec-WebSocket-Accept": None},
            {b"Sec-WebSocket-Accept": b"dGhlIHNhbXBsZSBub25jZQ=="},
        ]
        for change in bad:
            with self.subTest(change=change):
                fields = {**good, **change}
                head = b"".join(b"%s: %s\r\n" % (n, v) for n, v in fields.items() if v)
                end = self.end()
                sid = end.websocket()
                app = App(end)
                app.send(b"HTTP/1.1 101 Switching Protocols\r\n" + head + b"\r\nbody bytes")
                answer = end.responses()[sid]
                self.assertEqual(answer[b":status"], b"502")
                self.assertEqual(answer[b"appproxy-error"], b"backend-error")
                self.assertNotIn(b"appproxy-upgraded", answer)
                self.assertEqual(end.data(sid), b"")
                self.assertTrue(end.ended(sid))
                self.assertTrue(app.transport.aborted)
                self.assertEqual(end.proto.machine.upgrades, 0)

    def test_101_tokens_case_insensitive(self) -> None:
        """Tokens among others, in any case, are an acceptance all the same."""
        end = self.end()
        sid = end.websocket()
        app = App(end)
        app.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n"
            b"Connection: keep-alive, UPGRADE\r\nSec-WebSocket-Accept: " + ACCEPT + b"\r\n\r\n"
        )
        self.assertEqual(end.responses()[sid][b"appproxy-upgraded"], b"websocket")

    def test_malformed_answer(self) -> None:
        end = self.end()
        sid = end.websocket()
        app = App(end)
        app.send(b"HTTP/1.1 ABC\r\n\r\n")
        self.assertEqual(end.responses()[sid][b"appproxy-error"], b"backend-error")
        self.assertTrue(app.transport.aborted)

    def test_handshake_times_out(self) -> None:
        """The app's backend timeout bounds the answer: a 504, the connection dropped."""
        end = self.end()
        sid = end.websocket()
        app = App(end)
        end.clock.advance(29.0)
        end.pump()
        self.assertNotIn(sid, end.responses())
        end.clock.advance(1.5)
        end.pump()
        fields = end.responses()[sid]
        self.assertEqual(fields[b":status"], b"504")
        self.assertEqual(fields[b"appproxy-error"], b"timeout")
        self.assertTrue(app.transport.aborted)

    def test_unknown_app(self) -> None:
        end = self.end()
        sid = end.websocket(app=b"gone")
        self.assertEqual(end.responses()[sid][b"appproxy-error"], b"backend-error")
        self.assertEqual(end.clock.tcpClients, [])

    def test_fault_ends_that_stream_only(self) -> None:
        """
        Handling a WebSocket's app connection raises: a 502 for that stream,
        its app connection dropped; the WebSocket beside it goes on.
        """
        end = self.end()
        other, other_app = self.open(end)
        sid = end.websocket()
        app = App(end)
        accepted = UpgradeStream.accepted

        def faulty(stream: UpgradeStream, headers: list[tuple[bytes, bytes]]) -> None:
            if stream.stream_id == sid:
                raise RuntimeError("a fault in the shell")
            accepted(stream, headers)

        self.patch(UpgradeStream, "accepted", faulty)
        app.send(SWITCH)
        self.assertEqual(end.responses()[sid][b":status"], b"502")
        self.assertEqual(end.responses()[sid][b"appproxy-error"], b"connector-error")
        self.assertTrue(app.transport.aborted)
        other_app.send(b"still here")
        self.assertEqual(end.data(other), b"still here")
        self.assertFalse(other_app.transport.disconnecting)
        self.assertEqual(end.factory.stream_errors, 1)
        self.assertEqual(end.proto.machine.upgrades, 1)
        self.flushLoggedErrors(RuntimeError)


class RelayTests(Base):
    def test_bytes_both_ways(self) -> None:
        end = self.end()
        sid, app = self.open(end)
        end.peer.send_data(sid, b"to the app")
        end.pump()
        self.assertEqual(app.written(), b"to the app")
        app.send(b"to the service")
        self.assertEqual(end.data(sid), b"to the service")

    def test_bytes_before_the_101_wait(self) -> None:
        end = self.end()
        sid = end.websocket()
        end.peer.send_data(sid, b"early")
        end.pump()
        app = App(end)
        self.assertEqual(app.written(), b"")
        app.send(SWITCH)
        self.assertEqual(app.written(), b"early")

    def test_service_window_opens_as_the_app_takes(self) -> None:
        """
        The service's DATA is acknowledged only while the app's write
        buffer is not full: a paused transport holds the window shut.
        """
        end = self.end()
        sid, app = self.open(end)
        window = end.peer.local_flow_control_window(sid)
        # More than half the window: h2 sends WINDOW_UPDATE in batches that large.
        chunks = [bytes([n]) * 16384 for n in range(40)]
        for chunk in chunks:
            end.peer.send_data(sid, chunk)
            end.pump()
        taken = end.peer.local_flow_control_window(sid)
        self.assertGreater(taken, window // 2)
        app.connection.pauseProducing()  # the app's transport: buffer full
        more = [bytes([n]) * 16384 for n in range(taken // 16384)]
        for chunk in more:
            end.peer.send_data(sid, chunk)
            end.pump()
        self.assertEqual(end.peer.local_flow_control_window(sid), taken - 16384 * len(more))
        app.connection.resumeProducing()  # drained
        end.pump()
        self.assertGreaterEqual(end.peer.local_flow_control_window(sid), window // 2)
        self.assertEqual(app.written(), b"".join(chunks + more))

    def test_app_paused_while_window_shut(self) -> None:
        """
        The service does not acknowledge: once its window is used up, the
        app's connection is no longer read, and the connector holds only
        what it read last; read again once the window opens.
        """
        end = self.end()
        sid, app = self.open(end)
        chunk = b"z" * 16384
        for _ in range(3):
            app.send(chunk)
        self.assertEqual(app.transport.producerState, "producing")
        app.send(chunk)  # past the peer's 65535-byte window
        self.assertEqual(app.transport.producerState, "paused")
        stream = self.stream(end, sid)
        self.assertEqual(stream.outbound_size, 1)
        self.assertEqual(len(end.data(sid)), 65535)
        end.peer.acknowledge_received_data(65535, sid)
        end.pump()
        self.assertEqual(app.transport.producerState, "producing")
        self.assertEqual(len(end.data(sid)), 4 * len(chunk))


class EndTests(Base):
    def test_app_eof(self) -> None:
        """EOF from the app: END_STREAM; the service's END_STREAM then ends the stream."""
        end = self.end()
        sid, app = self.open(end)
        app.send(b"last")
        app.lose()
        self.assertEqual(end.data(sid), b"last")
        self.assertTrue(end.ended(sid))
        self.assertEqual(end.proto.machine.upgrades, 1)
        end.peer.end_stream(sid)
        end.pump()
        self.assertEqual(end.proto.machine.upgrades, 0)
        self.assertNotIn(sid, end.proto.streams)

    def test_service_end_closes_after_flush(self) -> None:
        """END_STREAM from the service: the app's connection closes once flushed."""
        end = self.end()
        sid, app = self.open(end)
        end.peer.send_data(sid, b"bye", end_stream=True)
        end.pump()
        self.assertEqual(app.written(), b"bye")
        self.assertTrue(app.transport.disconnecting)
        self.assertFalse(app.transport.aborted)
        self.assertFalse(end.ended(sid))
        app.lose()
        self.assertTrue(end.ended(sid))
        self.assertEqual(end.proto.machine.upgrades, 0)

    def test_reset_closes_at_once(self) -> None:
        end = self.end()
        sid, app = self.open(end)
        end.peer.reset_stream(sid)
        end.pump()
        self.assertTrue(app.transport.aborted)
        self.assertEqual(end.proto.machine.upgrades, 0)

    def test_reset_while_connecting(self) -> None:
        end = self.end()
        sid = end.websocket()
        connector = end.clock.connectors[-1]
        end.peer.reset_stream(sid)
        end.pump()
        self.assertTrue(connector.stoppedConnecting)
        self.assertEqual(end.proto.machine.upgrades, 0)

    def test_tunnel_lost_closes_at_once(self) -> None:
        end = self.end()
        _, app = self.open(end)
        _, other = self.open(end)
        end.proto.connectionLost()
        self.assertTrue(app.transport.aborted)
        self.assertTrue(other.transport.aborted)

    def test_one_log_line(self) -> None:
        """One line per WebSocket at its end: who closed it, bytes each way."""
        lines: list[dict[str, Any]] = []
        end = self.end()
        observer = cast(ILogObserver, lines.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        sid, app = self.open(end)
        end.peer.send_data(sid, b"12345")
        end.pump()
        app.send(b"abc")
        app.lose()
        end.peer.end_stream(sid)
        end.pump()
        [line] = [e for e in lines if "closed by" in e.get("log_format", "")]
        self.assertEqual((line["who"], line["up"], line["down"]), ("app", 5, 3))
        self.assertEqual((line["rid"], line["app"]), ("rid-ws", "web"))
